"""Checkpoints that never lose work: resume equals uninterrupted, fallbacks, SIGTERM, NaN."""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.train import Config, ConfigError, NonFiniteLossError, evaluate, paired_difference, train
from jmeta.train._checkpoint import RunCheckpoints
from jmeta.train._rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(model=dict(name="mlp", hidden=(16, 16)),
            train=dict(meta_steps=60, log_every=10, save_every=20, meta_batch_size=4,
                       baseline=False),
            eval=dict(val_tasks=20, tasks=600))


def _config(**changes):
    """``BASE`` with each section of ``changes`` merged into its own."""
    return Config(**BASE).replace(**changes)


def _params(run):
    params, _ = RunDir(run).params("final")
    return jax.tree.leaves(params)


def _assert_identical(a, b):
    for x, y in zip(_params(a), _params(b)):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    train(_config(), run, progress=False)
    return run


class Crash(Exception):
    pass


def _crash_at(step_to_crash):
    def hook(step, state):
        if step == step_to_crash:
            raise Crash(step)
        return state

    return hook


def test_resume_after_a_crash_equals_the_uninterrupted_run(reference, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Crash):
        train(_config(), run, progress=False, step_hook=_crash_at(47))
    assert RunCheckpoints(run / "checkpoints" / "steps").steps() == [20, 40]
    results = train(_config(), run, progress=False)
    assert results["resumed_from"] == [40]
    _assert_identical(reference, run)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40, 50, 60]  # rows logged after step 40 were replaced, not doubled


def test_sigterm_between_saves_saves_at_once_and_resumes_exactly(reference, tmp_path, monkeypatch):
    """A SIGTERM at step 47 (saves every 20) checkpoints step 47 without validating it (validation
    can outlast a scheduler's grace period); the resumed run equals the uninterrupted one, and
    the best checkpoint is chosen among the validated steps."""
    import jmeta.train._training as loop

    validated = []
    score = loop.validation_score
    monkeypatch.setattr(loop, "validation_score",
                        lambda *a, **k: validated.append(1) or score(*a, **k))

    def sigterm_at_47(step, state):
        if step == 47:
            os.kill(os.getpid(), signal.SIGTERM)
        return state

    run = tmp_path / "run"
    results = train(_config(), run, progress=False, step_hook=sigterm_at_47)
    assert results["preempted"] and results["step"] == 47
    assert len(validated) == 2  # steps 20 and 40, not 47
    ckpts = RunCheckpoints(run / "checkpoints" / "steps")
    assert ckpts.steps() == [20, 40, 47] and ckpts.val_score(47) is None
    assert ckpts.val_score(40) is not None
    ckpts.close()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 47 and "val_score" not in rows[-1]
    train(_config(), run, progress=False)
    _assert_identical(reference, run)
    ckpts = RunCheckpoints(run / "checkpoints" / "steps")
    assert ckpts.best_step() in (20, 40, 60)
    ckpts.close()


def test_newest_checkpoint_corrupt_falls_back_with_a_warning(reference, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Crash):
        train(_config(), run, progress=False, step_hook=_crash_at(47))
    newest = run / "checkpoints" / "steps" / "40"
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncate every file
    with pytest.warns(UserWarning, match="step 40 .* cannot be restored"):
        results = train(_config(), run, progress=False)
    assert results["resumed_from"] == [20]
    assert (run / "checkpoints" / "steps" / "corrupt-40").is_dir()  # kept for inspection
    _assert_identical(reference, run)


def test_keeps_the_last_k_and_the_best(tmp_path):
    run = tmp_path / "run"
    train(_config(train=dict(meta_steps=100, save_every=10, keep_checkpoints=2)), run,
          progress=False)
    ckpts = RunCheckpoints(run / "checkpoints" / "steps")
    steps, best = ckpts.steps(), ckpts.best_step()
    assert steps[-2:] == [90, 100] and best in steps and len(steps) <= 3
    scores = {row["step"]: row["val_score"] for row in RunDir(run).metrics()}
    assert best == max(scores, key=scores.get)


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"

    def poison(step, state):
        if step == 25:
            params = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state.params)
            return state._replace(params=params)
        return state

    with pytest.raises(NonFiniteLossError, match="at step 26"):
        train(_config(), run, progress=False, step_hook=poison)
    ckpts = RunCheckpoints(run / "checkpoints" / "steps")
    assert ckpts.steps() == [20]
    state, _ = ckpts.restore_latest(_initial(run))
    assert int(state.step) == 20
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def _initial(run):
    from jmeta.core import init_state
    from jmeta.train._build import build_learner, build_optimizer, build_task
    from jmeta.train._evaluation import seed_key

    cfg = RunDir(run).config
    return init_state(build_learner(cfg, build_task(cfg)), build_optimizer(cfg), seed_key(cfg))


def test_incompatible_config_is_a_clear_error_naming_the_fields(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Crash):
        train(_config(), run, progress=False, step_hook=_crash_at(25))
    with pytest.raises(ConfigError,
                       match=r"learner\.inner_lr: run has 0.01, requested 0.05.*optimizer\.lr"):
        train(_config(learner=dict(inner_lr=0.05), optimizer=dict(lr=3e-3)), run, progress=False)
    assert RunCheckpoints(run / "checkpoints" / "steps").steps() == [20]
    # Fields that do not change the trajectory may change: a longer schedule resumes.
    assert train(_config(train=dict(meta_steps=80)), run, progress=False)["resumed_from"] == [20]


def _cli(run, *extra):
    sections = dict(BASE, train=dict(BASE["train"], meta_steps=3000, save_every=250,
                                     log_every=250))
    args = [f"{section}.{k}={v!r}" for section, d in sections.items() for k, v in d.items()]
    return [sys.executable, "-m", "jmeta.cli", "train", str(ROOT / "configs/sinusoid_demo.py"),
            *args, "--run-dir", str(run), "--no-progress", "--no-eval", *extra]


# The command-line runs share one compile cache (every program, however quick to compile): a
# run that resumes compiles nothing new.
CACHE = Path(tempfile.mkdtemp(prefix="jmeta-xla-"))


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), JMETA_COMPILE_CACHE=str(CACHE),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _cached_programs():
    return sorted(p.name for p in CACHE.iterdir() if not p.name.endswith("-atime"))


def _wait_for_checkpoint(run, proc, timeout=120):
    steps_dir = run / "checkpoints" / "steps"
    t = time.time()
    while time.time() - t < timeout:
        if steps_dir.exists() and any(p.name.isdigit() for p in steps_dir.iterdir()):
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise TimeoutError("no checkpoint appeared")


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("cliref") / "run"
    subprocess.run(_cli(run), check=True, env=_env(), capture_output=True, timeout=600)
    return run


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(cli_reference, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli(run), env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(run, proc)
    time.sleep(random.uniform(0.0, 0.8))
    proc.kill()  # SIGKILL: no handler runs, an async save may be cut in half
    proc.wait(timeout=30)
    survivors = RunCheckpoints(run / "checkpoints" / "steps").steps()
    assert survivors and max(survivors) < 3000
    done = subprocess.run(_cli(run), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    _assert_identical(cli_reference, run)


def test_sigterm_saves_and_exits_cleanly(cli_reference, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli(run), env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "SIGTERM: saved step" in err
    saved = int(err.split("SIGTERM: saved step ")[1].split()[0])
    assert saved in RunCheckpoints(run / "checkpoints" / "steps").steps()
    programs = _cached_programs()
    done = subprocess.run(_cli(run), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    _assert_identical(cli_reference, run)
    # The resumed process read every program from the compile cache; it compiled none anew.
    new = sorted(set(_cached_programs()) - set(programs))
    assert programs and _cached_programs() == programs, new


def test_evaluation_tests_the_best_validation_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(_config(train=dict(meta_steps=60, save_every=10, keep_checkpoints=1)), run,
          progress=False)
    ckpts = RunCheckpoints(run / "checkpoints" / "steps")
    best, score = ckpts.best_step(), ckpts.val_score(ckpts.best_step())
    ckpts.close()
    ev = evaluate(run, num_tasks=20, steps=(1,), baseline=False)
    assert (ev["checkpoint"], ev["checkpoint_step"], ev["val_score"]) == ("best", best, score)
    same = evaluate(run, num_tasks=20, steps=(1,), baseline=False, checkpoint=best)
    assert same["results"] == ev["results"]
    final = evaluate(run, num_tasks=20, steps=(1,), baseline=False, checkpoint="final")
    assert final["checkpoint"] == "final" and final["checkpoint_step"] == 60
    # Both were scored on the same 20 episodes, so they compare episode by episode.
    assert final["episodes_sha256"] == ev["episodes_sha256"]
    paired = paired_difference(final, ev, "maml", "maml", "1", "1")
    diff = final["results"]["maml"]["1"]["mean"] - ev["results"]["maml"]["1"]["mean"]
    assert paired["n"] == 20 and abs(paired["mean"] - diff) < 1e-5
    other = evaluate(run, num_tasks=21, steps=(1,), baseline=False)
    assert other["episodes_sha256"] != ev["episodes_sha256"]
    assert paired_difference(other, ev, "maml", "maml", "1", "1") is None
    if best != 60:
        assert final["results"] != ev["results"]
    with pytest.raises(ConfigError, match="no checkpoint at step 7"):
        evaluate(run, num_tasks=20, checkpoint=7)
    with pytest.raises(ConfigError, match="cannot be tested 3-way"):
        evaluate(run, num_tasks=20, ways=3)
    # The same run as an interrupted one leaves it (no final parameters, no results.json): its
    # step checkpoints still evaluate, and "final" says the run has not finished.
    import shutil

    cut = tmp_path / "interrupted"
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "checkpoints" / "meta")
    (cut / "results.json").unlink()
    again = evaluate(cut, num_tasks=20, steps=(1,), baseline=False)
    assert (again["checkpoint_step"], again["results"]) == (best, ev["results"])
    with pytest.raises(FileNotFoundError, match="has not finished.*--checkpoint STEP or best"):
        evaluate(cut, num_tasks=20, steps=(1,), baseline=False, checkpoint="final")


def test_frozen_leaves_are_not_saved_and_come_back_from_the_initial_parameters(tmp_path):
    """A pretrained encoder that training never changes is left out of every checkpoint and
    read back from the freshly initialised parameters; checkpoints that do hold it (written
    before this mode) restore the same way."""
    from jmeta.core._types import MetaState
    from jmeta.train._checkpoint import restore_tree, save_tree

    frozen = lambda path: path.startswith("model/backbone")  # noqa: E731
    big = jax.random.normal(jax.random.key(0), (50_000,))
    params = {"model": {"backbone": {"w": big}, "lora": {"b": jnp.full(3, 2.0)}}, "rule": ()}
    state = MetaState(jnp.asarray(7), params, (), jax.random.key(1))

    def size(d):
        return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())

    full, lean = RunCheckpoints(tmp_path / "full", asynchronous=False), \
        RunCheckpoints(tmp_path / "lean", asynchronous=False, frozen=frozen)
    full.save(7, state)
    lean.save(7, state)
    # the 200 kB array, incompressible
    assert size(tmp_path / "full") - size(tmp_path / "lean") > 150_000
    fresh = MetaState(jnp.asarray(0), jax.tree.map(jnp.zeros_like, params), (), jax.random.key(2))
    fresh.params["model"]["backbone"]["w"] = big  # what init reads from the pretrained file
    for ckpts in (lean, RunCheckpoints(tmp_path / "full", asynchronous=False, frozen=frozen)):
        restored, _ = ckpts.restore_latest(fresh)
        assert int(restored.step) == 7
        np.testing.assert_array_equal(restored.params["model"]["lora"]["b"], np.full(3, 2.0))
        np.testing.assert_array_equal(restored.params["model"]["backbone"]["w"], big)
    # An abstract template needs the values; without them the error comes before any
    # checkpoint is set aside as unreadable.
    abstract = jax.eval_shape(lambda: {"step": state.step, "params": params, "opt_state": (),
                                       "rng": jax.random.key_data(state.rng)})
    with pytest.raises(ValueError, match="frozen_values"):
        lean.restore_latest(abstract)
    assert lean.steps() == [7]
    restored, _ = lean.restore_latest(abstract, frozen_values=lambda: fresh.params)
    np.testing.assert_array_equal(restored.params["model"]["backbone"]["w"], big)

    save_tree(tmp_path / "meta", params, frozen=frozen)
    assert size(tmp_path / "meta") < 50_000
    back = restore_tree(tmp_path / "meta", jax.eval_shape(lambda: params), frozen=frozen,
                        frozen_values=fresh.params)
    np.testing.assert_array_equal(back["model"]["backbone"]["w"], big)
    np.testing.assert_array_equal(back["model"]["lora"]["b"], np.full(3, 2.0))
