"""`jmeta train` across devices and processes gives the meta-parameters of a single device."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["num_steps=40", "log_every=10", "save_every=20", "meta_batch_size=4", "hidden=(16,16)",
        "baseline=False", "val_tasks=20", "eval_tasks=600"]
TOL = dict(rtol=1e-5, atol=1e-6)  # float32: the task mean is reduced in another order


def _train(run, *extra, devices=1, overrides=()):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    cmd = [sys.executable, "-m", "jmeta.cli", "train", str(ROOT / "configs/sinusoid_demo.py"), *TINY,
           *overrides, "--run-dir", str(run), "--no-progress", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _params(run):
    from jmeta.train._loop import load_meta_params

    return jax.tree.leaves(load_meta_params(run)[1])


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run = tmp_path_factory.mktemp("single") / "run"
    out = _train(run, "--no-eval")
    assert out.returncode == 0, out.stderr
    return run


def test_four_devices_equal_one(single, tmp_path):
    run = tmp_path / "run"
    out = _train(run, "--no-eval", devices=4)
    assert out.returncode == 0, out.stderr
    import json

    assert json.loads((run / "results.json").read_text())["mesh"] == {"data": 4, "model": 1}
    for a, b in zip(_params(single), _params(run)):
        np.testing.assert_allclose(a, b, **TOL)


def test_two_processes_equal_one_and_are_meta_tested(single, tmp_path):
    run = tmp_path / "run"
    out = _train(run, "--num-processes", "2")
    assert out.returncode == 0, out.stderr
    import json

    results = json.loads((run / "results.json").read_text())
    assert results["processes"] == 2 and results["mesh"] == {"data": 2, "model": 1}
    assert "| maml |" in out.stdout  # the launcher meta-tests the finished run
    for a, b in zip(_params(single), _params(run)):
        np.testing.assert_allclose(a, b, **TOL)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4  # only process 0 logged


def test_a_batch_that_does_not_split_is_a_clear_error(tmp_path):
    out = _train(tmp_path / "run", "--no-eval", devices=4, overrides=["meta_batch_size=6"])
    assert out.returncode == 2
    assert "not divisible" in out.stderr and "6" in out.stderr
    out = _train(tmp_path / "run2", "--num-processes", "2", overrides=["meta_batch_size=5"])
    assert out.returncode == 2 and "not divisible" in out.stderr
