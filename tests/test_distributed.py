"""jmeta.distributed: sharded == unsharded on 8 fake CPU devices, two processes == one process.

The main pytest process has a single CPU device, so every multi-device check runs in a child
process (``tests/_sharded_worker.py`` with ``--xla_force_host_platform_device_count=8``;
``tests/_multiprocess_worker.py`` twice, joined over loopback by ``jax.distributed``). Every child
has a timeout so that nothing hangs.

Tolerance for "the same meta-parameters": ``rtol=1e-5, atol=1e-6`` (float32; the sharded runs sum
the task gradients in a different order; measured differences are below 1e-7 absolute).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from jmeta import distributed as dist
from jmeta.algorithms import maml
from jmeta.core import init_state, make_meta_step
from jmeta.data import sinusoid_sampler, sinusoid_tasks
from jmeta.models import mlp

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = pathlib.Path(__file__).resolve().parent
RTOL, ATOL = 1e-5, 1e-6
TIMEOUT = 180
LAUNCHER_VARS = ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_COORDINATOR_ADDRESS",
                 "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _child_env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(out: pathlib.Path):
    report = json.loads((out / "report.json").read_text())
    with np.load(out / "params.npz") as f:
        arrays = {k: f[k] for k in f.files}
    return report, arrays


def _leaves(arrays: dict, prefix: str) -> list[np.ndarray]:
    n = len([k for k in arrays if k.startswith(prefix + "/")])
    assert n > 0, f"no arrays under {prefix!r}"
    return [arrays[f"{prefix}/{i}"] for i in range(n)]


def _assert_same(got: list, want: list, what: str) -> None:
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"{what}, leaf {i}")


# ----------------------------------------------------------------------------------------------
# One process, 8 simulated devices
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    proc = subprocess.run(
        [sys.executable, str(TESTS / "_sharded_worker.py"), str(out)],
        env=_child_env(8), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert proc.returncode == 0, (f"8-device child failed:\n{proc.stdout[-3000:]}\n"
                                  f"{proc.stderr[-5000:]}")
    return _load(out)


@pytest.mark.parametrize("mode", ["batch", "sampler"])
@pytest.mark.parametrize("algo", ["maml", "fomaml", "reptile"])
def test_sharded_equals_unsharded(sharded_run, algo, mode):
    """3 meta-steps, meta-batch 16 over 8 devices (2 tasks each) == the same on one device."""
    report, arrays = sharded_run
    assert report["device_count"] == 8 and report["mesh_shape"] == {"data": 8, "model": 1}
    sharded = _leaves(arrays, f"{algo}/{mode}/sharded")
    unsharded = _leaves(arrays, f"{algo}/{mode}/unsharded")
    init = _leaves(arrays, f"{algo}/init")
    # The comparison means something only if training moved the parameters.
    assert max(np.max(np.abs(a - b)) for a, b in zip(unsharded, init)) > 1e-2
    _assert_same(sharded, unsharded, f"{algo} ({mode}): sharded vs unsharded")
    # The sharded state stayed replicated over all 8 devices.
    assert report[f"{algo}/{mode}/params_devices"] == 8
    if mode == "batch":
        assert report[f"{algo}/batch/params_replicated"]
    else:  # the in-graph sampler's batch is split too: the step averages across devices
        assert report[f"{algo}/sampler/all_reduce_in_hlo"]


def test_second_order_matters(sharded_run):
    """MAML and first-order MAML differ, so the MAML comparison does test second order."""
    _, arrays = sharded_run
    a, b = _leaves(arrays, "maml/batch/sharded"), _leaves(arrays, "fomaml/batch/sharded")
    assert max(np.max(np.abs(x - y)) for x, y in zip(a, b)) > 1e-5


def test_task_axis_really_split(sharded_run):
    report, _ = sharded_run
    assert report["batch_shape"] == [16, 5, 1]
    assert report["shard_devices"] == 8
    assert report["shard_shapes"] == [[2, 5, 1]] * 8
    assert report["shard_rows"] == [[2 * i, 2 * i + 2] for i in range(8)]
    assert report["shards_match_rows"]
    assert report["process_slice"] == [0, 16]


def test_errors_on_8_devices(sharded_run):
    report, _ = sharded_run
    msg = report["check_batch_10"]
    assert msg and "10" in msg and "8" in msg and "multiple of 8" in msg
    mesh_3 = report["make_mesh_3"]
    assert mesh_3 and "data=3" in mesh_3 and "8 devices" in mesh_3
    assert report["make_mesh_model_3"] and "model=3" in report["make_mesh_model_3"]
    assert report["make_mesh_4x2"] == {"data": 4, "model": 2}
    assert report["global_batch_10"] and "multiple of 8" in report["global_batch_10"]


# ----------------------------------------------------------------------------------------------
# In-process checks (one device, nothing started)
# ----------------------------------------------------------------------------------------------


def test_check_batch_and_make_mesh_errors():
    with pytest.raises(ValueError,
                       match=r"meta_batch_size=10 is not divisible by the data-axis size 8"):
        dist.check_batch(10, 8)
    dist.check_batch(16, 8)
    with pytest.raises(ValueError, match=r"data=2 x model=1 = 2 devices, but there are 1 devices"):
        dist.make_mesh(data=2)
    with pytest.raises(ValueError, match=r"model=2 does not divide the 1 devices"):
        dist.make_mesh(model=2)


def test_initialize_rejects_mismatched_setup(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"process_id must be an int in \[0, 2\).*got 2"):
        dist.initialize(num_processes=2, process_id=2, coordinator="127.0.0.1:1234")
    with pytest.raises(ValueError, match=r"coordinator must be 'host:port'"):
        dist.initialize(num_processes=2, process_id=0, coordinator="127.0.0.1")
    with pytest.raises(ValueError, match=r"num_processes must be a positive int"):
        dist.initialize(process_id=0, coordinator="127.0.0.1:1234")
    # The same mismatch given by launcher environment variables.
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    with pytest.raises(ValueError, match=r"JAX_PROCESS_ID\); got 2"):
        dist.initialize()
    assert not jax.distributed.is_initialized()


def test_initialize_single_process_is_a_no_op(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert dist.initialize() is False
    assert dist.initialize(num_processes=1) is False
    assert not jax.distributed.is_initialized()


def test_process_slice_single_process():
    assert dist.process_slice(8) == (0, 8)
    assert dist.process_slice(8, dist.make_mesh()) == (0, 8)


# ----------------------------------------------------------------------------------------------
# Two processes over loopback
# ----------------------------------------------------------------------------------------------


def _reference_params(global_batch: int = 8, k_shot: int = 5, steps: int = 3):
    """The single-process run the workers must reproduce (same learner, tasks and steps)."""
    learner, tx = maml(mlp(1, 1, hidden=(8, 8)), inner_lr=0.01, inner_steps=2), optax.adam(1e-2)
    init = init_state(learner, tx, jax.random.key(0))
    step = make_meta_step(learner, tx, donate=False)
    state = init
    for s in range(steps):
        state, _ = step(state, sinusoid_tasks(jax.random.key(100 + s), global_batch, k_shot))
    batch = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    step = make_meta_step(learner, tx, donate=False, sampler=sinusoid_sampler(global_batch, k_shot))
    state = init
    for _ in range(steps):
        state, _ = step(state)
    sampler = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    return batch, sampler


@pytest.mark.slow  # long; `make test-slow` runs it
def test_two_processes_match_one(tmp_path):
    """2 processes x 2 CPU devices (Gloo collectives over 127.0.0.1), 3 MAML steps on a global
    batch of 8 tasks (each process supplies 4), == one process with the same global batches."""
    if "jax_cpu_collectives_implementation" not in jax.config.values:
        pytest.skip("this jaxlib has no jax_cpu_collectives_implementation: no CPU "
                    "cross-process collectives")
    coordinator = f"127.0.0.1:{_free_port()}"
    procs, logs = [], []
    for i in range(2):
        log = open(tmp_path / f"log{i}.txt", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, str(TESTS / "_multiprocess_worker.py"), str(i), "2", coordinator,
             str(tmp_path)],
            env=_child_env(2), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        ))
    try:
        codes = [p.wait(timeout=TIMEOUT) for p in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = []
    for i, log in enumerate(logs):
        log.seek(0)
        text.append(f"--- process {i} ---\n{log.read()[-4000:]}")
        log.close()
    assert codes == [0, 0], (f"workers exited with {codes} (None: timed out after {TIMEOUT}s)\n"
                             + "\n".join(text))

    report, arrays = _load(tmp_path)
    assert report["started"] and report["process_index"] == 0
    assert report["process_count"] == 2 and report["device_count"] == 4
    assert report["local_device_count"] == 2
    assert report["process_slice"] == [0, 4]
    assert report["batch_shards_local"] == 2
    assert ("meta_batch_size=6 is not divisible by the data-axis size 4"
            in report["process_slice_error"])
    assert ("9 is not divisible by 2 process(es) x 2 local device(s) = 4"
            in report["process_slice_error_nomesh"])

    want_batch, want_sampler = _reference_params()
    _assert_same(_leaves(arrays, "batch"), want_batch, "2 processes vs 1 (given batch)")
    _assert_same(_leaves(arrays, "sampler"), want_sampler, "2 processes vs 1 (in-graph sampler)")


def test_param_sharding_splits_weights_over_the_model_axis():
    import subprocess as sp
    import sys as _sys

    code = (
        "import jax, jax.numpy as jnp\n"
        "from jmeta.distributed import make_mesh, param_sharding\n"
        "mesh = make_mesh(data=2, model=2)\n"
        "print(param_sharding(jnp.zeros((16, 8)), mesh).spec,"
        " param_sharding(jnp.zeros((8,)), mesh).spec,"
        " param_sharding(jnp.zeros((16, 3)), mesh).spec)\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
    out = sp.run([_sys.executable, "-c", code], env=env, capture_output=True, text=True,
                 timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["P(None,", "'model')", "P()", "P()"]
