"""The command line end to end on a tiny config, and its errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jmeta.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "train.meta_steps=60", "train.log_every=20", "train.meta_batch_size=5", "model.hidden=(16,16)",
    "train.baseline_steps=100", "eval.baseline_lrs=(0.01,0.1)", "eval.val_tasks=20",
    "eval.tasks=600", "eval.queries=20",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "jmeta.cli", "train", str(ROOT / "configs/sinusoid_demo.py"), *TINY,
         "--run-dir", str(run), "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr
    return run, proc.stdout


def test_train_writes_the_run_directory(run_dir):
    run, stdout = run_dir
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["meta_steps"] == 60 and cfg["model"]["hidden"] == [16, 16]
    assert cfg["name"] == "sinusoid_demo"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40, 60]
    assert all({"loss", "steps_per_sec", "grad_norm"} <= set(r) for r in rows)
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 60 and results["compile_s"] > 0
    assert "commit" in results["environment"]
    assert (run / "checkpoints" / "meta").is_dir() and (run / "checkpoints" / "pretrained").is_dir()
    assert "| maml |" in stdout and "| pretrained |" in stdout


def test_eval_reports_mean_and_ci_over_600_tasks(run_dir, capsys):
    run, _ = run_dir
    assert main(["eval", str(run), "--steps", "0,1,5", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["num_tasks"] == 600 and ev["steps"] == [0, 1, 5]
    for method in ("maml", "pretrained"):
        for s in ("0", "1", "5"):
            r = ev["results"][method][s]
            assert r["n"] == 600 and 0 < r["ci95"] < r["mean"]
    # Adapting helps the meta-learned initialisation.
    assert ev["results"]["maml"]["5"]["mean"] < ev["results"]["maml"]["0"]["mean"]
    assert json.loads((run / "eval.json").read_text())["steps"] == [0, 1, 5]
    # Each task's score is kept, and they make up the reported mean.
    for method in ("maml", "pretrained"):
        for s in ("0", "1", "5"):
            scores = ev["per_task"][method][s]
            assert len(scores) == 600
            assert abs(sum(scores) / 600 - ev["results"][method][s]["mean"]) < 1e-5
    assert len(ev["episodes_sha256"]) == 64


def test_bad_key_is_a_clear_error_before_any_work(tmp_path, capsys):
    run = tmp_path / "never"
    code = main(["train", str(ROOT / "configs/sinusoid_demo.py"), "learner.inner_lrr=0.1",
                 "--run-dir", str(run)])
    assert code == 2
    err = capsys.readouterr().err
    assert "Unknown option learner.inner_lrr" in err and "Did you mean 'inner_lr'" in err
    assert not run.exists()


def test_existing_run_is_never_overwritten(run_dir, capsys):
    run, _ = run_dir
    before = (run / "metrics.jsonl").read_text()
    demo = str(ROOT / "configs/sinusoid_demo.py")
    assert main(["train", demo, *TINY, "--run-dir", str(run)]) == 0
    assert "already holds the finished run" in capsys.readouterr().err
    assert main(["train", demo, *TINY, "learner.inner_lr=0.02", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "learner.inner_lr: run has 0.01, requested 0.02" in err
    assert (run / "metrics.jsonl").read_text() == before


def test_eval_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    from jmeta.train import Config, NonFiniteLossError, train

    cfg = Config(model=dict(name="mlp", hidden=(16, 16)), learner=dict(name="maml", inner_lr=1e6),
                 train=dict(meta_steps=40, log_every=20, meta_batch_size=4, baseline=False))
    with pytest.raises(NonFiniteLossError, match=r"at step \d+"):
        train(cfg, tmp_path / "nan", progress=False)
    assert not list((tmp_path / "nan" / "checkpoints" / "steps").glob("[0-9]*"))


def test_eval_with_few_tasks_says_it_is_not_the_full_protocol(run_dir, capsys):
    run, _ = run_dir
    assert main(["eval", str(run), "--tasks", "50", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "50 new tasks" in out and "at least 600" in out
    assert "pretrained" not in out.split("|---")[-1]


def test_eval_in_chunks_of_tasks_gives_the_same_scores(run_dir, tmp_path, capsys, monkeypatch):
    """eval.chunk_size adapts the test tasks a few at a time (to bound memory); each task's
    scores, for the meta-learned model and the fine-tuned baseline, are those of all at once."""
    import jmeta.train._evaluation as loop

    mappings = []

    def spy(fn):
        def wrapped(*args, **kwargs):
            mappings.append((kwargs["task_map"], kwargs.get("chunk_size")))
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(loop, "adaptation_curves", spy(loop.adaptation_curves))
    monkeypatch.setattr(loop, "finetune_curves", spy(loop.finetune_curves))
    run, _ = run_dir
    assert json.loads((run / "config.json").read_text())["eval"]["chunk_size"] == 0
    chunked = tmp_path / "chunked"
    shutil.copytree(run, chunked)
    cfg = json.loads((chunked / "config.json").read_text())
    cfg["eval"]["chunk_size"] = 3
    (chunked / "config.json").write_text(json.dumps(cfg))
    scores = []
    for path, flags in ((run, []), (chunked, []), (run, ["--chunk-size", "4"])):
        assert main(["eval", str(path), "--tasks", "100", "--steps", "0,5", "--json", *flags]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    # All 100 tasks at once, then chunks of 2 (3 lowered to a divisor of 100), then of 4.
    assert mappings == [("vmap", None)] * 2 + [("map", 2)] * 2 + [("map", 4)] * 2
    whole = scores[0]
    for parts in scores[1:]:
        assert parts["episodes_sha256"] == whole["episodes_sha256"]
        for method in ("maml", "pretrained"):
            for s in ("0", "5"):
                np.testing.assert_allclose(parts["per_task"][method][s],
                                           whole["per_task"][method][s], rtol=1e-4, atol=1e-6)
    assert main(["eval", str(run), "--chunk-size", "-1"]) == 2
    assert "eval.chunk_size must be at least 0" in capsys.readouterr().err


def test_rows_lists_every_published_row_with_its_make_target(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["rows"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("reproduce-omniglot_maml-5w1s") and "98.7 +- 0.4" in line
               for line in out)
    assert any(line.startswith("reproduce-miniimagenet_protonets-5w5s") for line in out)
    assert main(["rows", "--configs", str(ROOT / "tests")]) == 2


def test_compile_cache_can_be_turned_off_and_never_fails_a_run(tmp_path, monkeypatch):
    import jax

    from jmeta import enable_compile_cache

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("JMETA_COMPILE_CACHE", "off")
    assert enable_compile_cache() is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="no compile cache"):
        assert enable_compile_cache(blocker / "xla") is None
    assert jax.config.jax_compilation_cache_dir == before
