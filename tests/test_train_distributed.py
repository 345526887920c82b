"""`jmeta train` across devices and processes gives the meta-parameters of a single device."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.meta_steps=40", "train.log_every=10", "train.save_every=20",
        "train.meta_batch_size=4", "model.hidden=(16,16)", "train.baseline=False",
        "eval.val_tasks=20", "eval.tasks=600"]
TOL = dict(rtol=1e-5, atol=1e-6)  # float32: the task mean is reduced in another order


def _train(run, *extra, devices=1, overrides=()):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    cmd = [sys.executable, "-m", "jmeta.cli", "train", str(ROOT / "configs/sinusoid_demo.py"),
           *TINY, *overrides, "--run-dir", str(run), "--no-progress", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _params(run):
    from jmeta.train._rundir import RunDir

    return jax.tree.leaves(RunDir(run).params("final")[0])


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


def test_a_model_axis_splits_weights_and_still_equals_one_device(single, tmp_path):
    run = tmp_path / "run"
    out = _train(run, "--no-eval", devices=4, overrides=["train.mesh_model=2"])
    assert out.returncode == 0, out.stderr
    import json

    assert json.loads((run / "results.json").read_text())["mesh"] == {"data": 2, "model": 2}
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
    out = _train(tmp_path / "run", "--no-eval", devices=4, overrides=["train.meta_batch_size=6"])
    assert out.returncode == 2
    assert "not divisible" in out.stderr and "6" in out.stderr
    out = _train(tmp_path / "run2", "--num-processes", "2", overrides=["train.meta_batch_size=5"])
    assert out.returncode == 2 and "not divisible" in out.stderr


PROTONETS_CHILD = """
import json, sys, jax, numpy as np, optax
from jmeta import distributed as dist
from jmeta.algorithms import protonets
from jmeta.core import init_state, make_meta_step
from jmeta.data import ClassDataset, device_sampler
from jmeta.models import mlp
from jmeta.models import flatten_inputs
rng = np.random.default_rng(0)
ds = ClassDataset.from_labels(rng.integers(0, 255, (200, 6, 6, 1), dtype=np.uint8),
                              np.arange(200) % 20, [str(i) for i in range(20)])
sampler = device_sampler(ds, 5, 2, 3, 16)
learner = protonets(flatten_inputs(mlp(36, 8, hidden=(16,))), ways=5)
# SGD, not Adam: the embedding's last bias gets an exactly-zero gradient under squared distances
# (a shift of all embeddings changes no distance), and Adam would blow its rounding noise up to
# full-size steps that differ between any two reduction orders.
tx = optax.sgd(0.5)
mesh = dist.make_mesh()
out = {}
for name, sharding in (("plain", None), ("sharded", dist.task_sharding(mesh))):
    state = init_state(learner, tx, jax.random.key(0))
    if sharding is not None:
        state = dist.shard_state(state, mesh)
    given = make_meta_step(learner, tx, donate=False, batch_sharding=sharding)
    drawn = make_meta_step(learner, tx, donate=False, sampler=sampler, batch_sharding=sharding)
    for i in range(3):
        state, _ = given(state, sampler(jax.random.key(i))); jax.block_until_ready(state)
        state, _ = drawn(state); jax.block_until_ready(state)
    out[name] = [np.asarray(x).tolist() for x in jax.tree.leaves(state.params)]
print(json.dumps({"devices": jax.device_count(), **out}))
"""


@pytest.mark.slow  # long; `make test-slow` runs it
def test_protonets_sharded_over_eight_devices_equals_unsharded():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", PROTONETS_CHILD], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 8
    for a, b in zip(res["plain"], res["sharded"]):
        np.testing.assert_allclose(np.array(a), np.array(b), **TOL)
