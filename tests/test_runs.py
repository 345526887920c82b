"""Runs at a glance: `jmeta runs` (the table, status), `jmeta runs compare` (config differences,
paired differences) and `jmeta plot` (learning curves, shared with the results page), on three
tiny sinusoid runs trained once: two finished and meta-tested on the same episodes, one
interrupted."""

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jmeta.cli import main
from jmeta.train import (
    ConfigError,
    RunDir,
    compare_runs,
    evaluate,
    list_runs,
    load_config,
    plot_curves,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.hidden=(16,16)", "train.meta_steps=40", "train.log_every=10",
        "train.save_every=20", "train.meta_batch_size=4", "train.baseline=false",
        "eval.val_tasks=20", "eval.tasks=50", "eval.steps=(1,10)"]
Z95 = 1.959963984540054


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/a and runs/b (inner_lr 0.01 and 0.02; finished, meta-tested on the same 50 tasks),
    runs/nested/c (60 steps planned, crashed at step 35; meta-tested on 40 other tasks)."""
    root = tmp_path_factory.mktemp("runs")
    demo = str(ROOT / "configs" / "sinusoid_demo.py")
    seen = {}

    def watch(step, state):
        if step == 1:  # what `jmeta runs` sees while the run trains
            seen["status"] = RunDir(root / "a").status()
            seen["process"] = RunDir(root / "a").process()
        return state

    train(load_config(demo, TINY), root / "a", progress=False, step_hook=watch)
    train(load_config(demo, TINY + ["learner.inner_lr=0.02"]), root / "b", progress=False)

    def crash(step, state):
        if step == 35:
            raise Crash(step)
        return state

    with pytest.raises(Crash):
        train(load_config(demo, TINY + ["train.meta_steps=60"]), root / "nested" / "c",
              progress=False, step_hook=crash)
    evals = {name: evaluate(root / name) for name in ("a", "b")}
    evals["nested/c"] = evaluate(root / "nested" / "c", num_tasks=40, steps=(1,))
    return root, evals, seen


def _rows(out: str) -> dict:
    """The table's lines as {run: {column: cell}}."""
    lines = out.strip().splitlines()
    head = re.split(r"\s{2,}", lines[0])
    return {cells[0]: dict(zip(head, cells))
            for cells in (re.split(r"\s{2,}", line) for line in lines[1:])}


def _best_mse(run: Path) -> tuple[float, int]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [(-r["val_score"], r["step"]) for r in rows if "val_score" in r]
    return min(val)


def test_the_table_lists_every_run_with_its_status_steps_and_scores(runs, capsys):
    root, evals, seen = runs
    assert main(["runs", str(root)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert list(rows) == ["a", "b", "nested/c"]  # sorted by path, found at any depth
    assert [rows[n]["status"] for n in rows] == ["finished", "finished", "interrupted"]
    assert [rows[n]["steps"] for n in rows] == ["40/40", "40/40", "30/60"]  # last logged step
    for name in rows:
        assert rows[name]["algorithm"] == "maml" and rows[name]["dataset"] == "sinusoid K=10"
        mse, step = _best_mse(root / name)
        assert rows[name]["best validation"] == f"MSE {mse:.3f} @ {step}"
        r = evals[name]["results"]["maml"]["1"]  # the step count MAML trained with
        assert rows[name]["test (95% CI)"] == f"MSE {r['mean']:.3f} +- {r['ci95']:.3f}, 1 step"
        assert rows[name]["wall time"].endswith(" s")
    assert _best_mse(root / "nested" / "c")[1] == 20  # the interrupted run validated once
    # While `train` ran, process.json named this process and the run read as running; once
    # `train` returned or raised (this process lives on), it says when the process ended.
    assert seen["status"] == "running" and seen["process"]["pid"] == os.getpid()
    assert "ended" not in seen["process"]
    for name in rows:
        info = RunDir(root / name).process()
        assert info["pid"] == os.getpid() and info["ended"] >= info["started"]


def test_status_is_read_from_the_training_process_else_from_recent_activity(runs, tmp_path):
    root, _, _ = runs
    run = tmp_path / "c"
    shutil.copytree(root / "nested" / "c", run)
    marker = run / "process.json"
    here = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    def status(**info):
        marker.write_text(json.dumps({**here, **info}))
        return RunDir(run).status()

    assert status() == "running"
    assert status(ended=time.time()) == "interrupted"  # train() returned or raised
    # This pid, but the process.json is older than this process: a reused pid, not the trainer.
    assert status(started=time.time() - 10 * 24 * 3600) == "interrupted"
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    assert status(pid=gone.pid, started=time.time()) == "interrupted"  # a dead pid
    # A process of another machine (a shared file system): running while the files change.
    assert status(host="elsewhere") == "running"
    old = time.time() - 3600
    for f in (marker, run / "metrics.jsonl", run / "checkpoints" / "steps"):
        os.utime(f, (old, old))
    assert RunDir(run).status() == "interrupted"
    marker.unlink()  # a run from before process.json: activity only
    assert RunDir(run).status() == "interrupted"
    (run / "metrics.jsonl").touch()
    assert RunDir(run).status() == "running"
    (run / "results.json").write_text("{}")
    assert RunDir(run).status() == "finished"


def test_a_failed_start_leaves_no_directory_behind(tmp_path):
    from jmeta.train import Config

    bad = Config(learner=dict(name="maml", inner_lrr=0.1))
    with pytest.raises(ConfigError):
        train(bad, tmp_path / "new" / "run", progress=False)
    assert not (tmp_path / "new").exists()


def test_empty_and_missing_folders_are_one_line(tmp_path, capsys):
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("jmeta: no run directories under") and "\n" not in out
    assert main(["runs", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"jmeta: error: {tmp_path / 'missing'} does not exist"
    assert list_runs(tmp_path) == []
    assert main(["runs", "compare", str(tmp_path)]) == 2
    assert "two or more" in capsys.readouterr().err


def test_compare_shows_differing_keys_and_the_paired_difference(runs, capsys):
    root, evals, _ = runs
    a, b, c = (str(root / n) for n in ("a", "b", "nested/c"))
    cmp = compare_runs([a, b, c])
    assert cmp["config"] == {"learner.inner_lr": [0.01, 0.02, 0.01],
                             "train.meta_steps": [40, 40, 60]}
    by = {(d["run"], d["step"]): d for d in cmp["differences"]}
    assert set(by) == {(b, 1), (b, 10), (c, 1)}
    for step in (1, 10):
        x = np.asarray(evals["b"]["per_task"]["maml"][str(step)], np.float64)
        y = np.asarray(evals["a"]["per_task"]["maml"][str(step)], np.float64)
        d = x - y
        mean, ci = d.mean(), Z95 * d.std(ddof=1) / np.sqrt(d.size)
        got = by[(b, step)]
        assert got["paired"] and got["n"] == 50
        assert got["mean"] == pytest.approx(mean, abs=1e-9)
        assert got["ci95"] == pytest.approx(ci, abs=1e-9)
        # Pairing removes the tasks' shared difficulty: tighter than the CIs in quadrature.
        ra, rb = evals["a"]["results"]["maml"][str(step)], evals["b"]["results"]["maml"][str(step)]
        assert ci < (ra["ci95"] ** 2 + rb["ci95"] ** 2) ** 0.5
    unpaired = by[(c, 1)]  # 40 other test tasks: no pairing, CIs in quadrature
    assert not unpaired["paired"] and "other episodes" in unpaired["why"]

    assert main(["runs", "compare", a, b]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"A: {a}\nB: {b}\n")
    lines = out.splitlines()
    config = [line.split() for line in lines[lines.index("config (differing keys)") + 1:
                                             lines.index("results")]]
    assert config == [["learner.inner_lr", "0.01", "0.02"]]
    assert re.search(r"status\s+finished\s+finished", out)
    d = by[(b, 1)]
    assert (f"B - A, MSE after 1 step: {d['mean']:+.4f} +- {d['ci95']:.4f} (paired over the "
            "same 50 test tasks)") in out


def test_plot_writes_the_learning_curves_png(runs, tmp_path, capsys, monkeypatch):
    from PIL import Image

    pytest.importorskip("matplotlib")
    root, _, _ = runs
    out = plot_curves(root / "nested" / "c")
    assert out == root / "nested" / "c" / "curves.png"
    with Image.open(out) as im:
        assert (im.format, im.size) == ("PNG", (1100, 700))
    several = tmp_path / "cmp.png"
    assert main(["plot", str(root / "a"), str(root / "b"), "-o", str(several)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {several}"
    with Image.open(several) as im:
        assert im.size == (1100, 700)
    assert main(["plot", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["plot", str(root / "a")]) == 2
    assert "pip install 'jmeta[plots]'" in capsys.readouterr().err


def test_the_results_page_draws_with_the_same_function(runs, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from PIL import Image

    root, _, _ = runs
    spec = importlib.util.spec_from_file_location("_jmeta_results_page_runs",
                                                  ROOT / "benchmarks" / "results_page.py")
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    assert page.plot_curves is plot_curves
    calls = []
    monkeypatch.setattr(page, "plot_curves",
                        lambda *a, **k: calls.append(a) or plot_curves(*a, **k))
    md = page.build([root], tmp_path / "docs" / "results.md")
    assert "![sinusoid learning curves](img/sinusoid.png)" in md
    assert [[Path(d).name for d in a[0]] for a in calls] == [["a", "b"]]
    with Image.open(tmp_path / "docs" / "img" / "sinusoid.png") as im:
        assert im.size == (1650, 700)  # the learning curves and the meta-test panel
