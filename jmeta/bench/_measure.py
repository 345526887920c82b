"""Measurement inside one process: a workload's step, the machine, its memory."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from types import SimpleNamespace

from jmeta.bench._flops import _jaxpr_flops, cost_flops, has_loops
from jmeta.bench._workloads import query_size, workload_config
from jmeta.train import Config, build, build_optimizer, model_task

THREAD_VARS = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def hardware_name() -> str:
    """``cpu-<cores>core`` on a CPU, else the accelerator's kind (e.g. ``nvidia-h200``).

    Example:
      >>> import jax
      >>> hardware_name().startswith("cpu-") == (jax.default_backend() == "cpu")
      True
    """
    import jax

    if jax.default_backend() == "cpu":
        return f"cpu-{os.cpu_count()}core"
    return jax.devices()[0].device_kind.lower().replace(" ", "-")


def cpu_model() -> str:
    """The host CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows:
    two machines with the same core count can differ by 2x in speed, so results record it.

    Example:
      >>> isinstance(cpu_model(), str) and len(cpu_model()) > 0
      True
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_host_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    Example:
      >>> peak_host_rss_mb() > 0
      True
    """
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def peak_device_bytes() -> int | None:
    """Peak bytes in use on the first device, where the backend reports it (GPU, TPU), else
    ``None`` (the CPU backend).

    Example:
      >>> peak = peak_device_bytes()
      >>> peak is None or peak > 0
      True
    """
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    peak = stats.get("peak_bytes_in_use") if stats else None
    return int(peak) if peak is not None else None


def matmul_peak_flops(n: int | None = None, reps: int = 5, min_rep_s: float = 0.1) -> float:
    """Measured FLOP/s of a jitted float32 ``n x n`` matmul (median of ``reps`` repetitions).

    ``n`` defaults to 2048 on a CPU and 8192 on an accelerator. The reference for "% of peak".

    Example:
      >>> matmul_peak_flops(n=128, reps=2, min_rep_s=0.01) > 0
      True
    """
    import jax
    import jax.numpy as jnp

    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    if n < 1 or reps < 1:
        raise ValueError(f"matmul_peak_flops needs n >= 1 and reps >= 1; got {n}, {reps}.")
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    rates = [_rate(lambda: f(a, b), min_rep_s) for _ in range(reps)]
    return 2.0 * n**3 * statistics.median(rates)


def _rate(call, min_rep_s: float, calls: int = 1) -> float:
    """Calls per second of ``call``, running batches of ``calls`` until ``min_rep_s`` passed."""
    import jax

    done, t = 0, time.perf_counter()
    while True:
        for _ in range(calls):
            out = call()
        jax.block_until_ready(out)
        done += calls
        elapsed = time.perf_counter() - t
        if elapsed >= min_rep_s:
            return done / elapsed


def synthetic_batch(cfg: Config, spec: dict, key):
    """A fixed random task batch of a workload's shapes: float32 normal images and labels
    ``0..ways-1`` (each repeated ``shots`` or ``queries`` times), or sinusoid tasks.

    Example:
      >>> import jax
      >>> from jmeta.bench import load_workloads
      >>> spec = load_workloads()["reptile_omniglot_5w1s"]
      >>> b = synthetic_batch(workload_config(spec), spec, jax.random.key(0))
      >>> b.support.x.shape, b.support.y.shape, b.query.x.shape
      ((5, 50, 28, 28, 1), (5, 50), (5, 5, 28, 28, 1))
    """
    import jax
    import jax.numpy as jnp

    from jmeta.core import Batch, Episode
    from jmeta.train._config import train_shots

    tasks, shots, queries = cfg.train.meta_batch_size, train_shots(cfg), query_size(spec)
    task = model_task(cfg)
    if not task.classification:
        return task.data.sample(key, tasks, shots, queries)
    image = task.example_shape
    ways = cfg.data.ways

    def labelled(k, per_class):
        x = jax.random.normal(k, (tasks, ways * per_class) + image, jnp.float32)
        y = jnp.tile(jnp.repeat(jnp.arange(ways, dtype=jnp.int32), per_class), (tasks, 1))
        return Batch(x, y)

    ks, kq = jax.random.split(key)
    return Episode(labelled(ks, shots), labelled(kq, queries))


def build_workload(spec: dict, *, task_map: str = "auto", remat: bool = False,
                   donate: bool = True) -> SimpleNamespace:
    """What a workload runs, built as ``jmeta bench`` measures it: ``cfg``, ``learner``, the
    resolved ``task_map``, the jitted meta-``step`` (``donate=False`` keeps ``state`` valid
    across calls), the initial ``state`` and a fixed synthetic ``batch`` on the device.

    Example:
      >>> from jmeta.bench import load_workloads
      >>> spec = dict(load_workloads()["maml_sinusoid"], meta_batch=2, inner_steps=1)
      >>> w = build_workload(spec)
      >>> w.task_map, w.batch.support.x.shape
      ('vmap', (2, 10, 1))
    """
    import jax

    from jmeta.core import init_state, make_meta_step

    cfg = workload_config(spec, task_map=task_map, remat=remat)
    setup = build(cfg, model_task(cfg))
    learner, strategy = setup.learner, setup.task_map
    tx = build_optimizer(cfg, setup.model)
    step = make_meta_step(learner, tx, task_map=strategy,
                          chunk_size=cfg.train.chunk_size or None, donate=donate)
    init_key, data_key = jax.random.split(jax.random.key(0))
    state = init_state(learner, tx, init_key)
    batch = jax.device_put(synthetic_batch(cfg, spec, data_key))
    return SimpleNamespace(cfg=cfg, learner=learner, task_map=strategy, step=step, state=state,
                           batch=batch, conv_impl=setup.conv_impl)


def run_workload(name: str, spec: dict, *, reps: int, min_rep_s: float, task_map: str = "auto",
                 remat: bool = False) -> dict:
    """Measures one workload in this process (see the module docstring for the method).

    Returns a flat dict: the workload's shape, the resolved task map, ``compile_s``,
    ``flops_per_step``, ``steps_per_sec_{median,min,max}``, ``tasks_per_sec``,
    ``achieved_flops_per_sec``, ``peak_host_rss_mb``, ``peak_device_bytes``, ``backend``,
    ``device_kind``, ``jax``, and the last step's ``loss``.

    Example:
      >>> from jmeta.bench import load_workloads
      >>> spec = dict(load_workloads()["maml_sinusoid"], meta_batch=2, inner_steps=1)
      >>> row = run_workload("tiny", spec, reps=1, min_rep_s=0.01)
      >>> row["steps_per_sec_median"] > 0 and row["compile_s"] > 0
      True
    """
    import jax

    if reps < 1 or not min_rep_s >= 0:
        raise ValueError(f"reps must be >= 1 and min_rep_s >= 0; got {reps}, {min_rep_s}.")
    w = build_workload(spec, task_map=task_map, remat=remat)
    cfg, learner, strategy, step, state, batch = (w.cfg, w.learner, w.task_map, w.step, w.state,
                                                  w.batch)
    jax.block_until_ready((state, batch))

    t = time.perf_counter()
    traced = step.trace(state, batch)  # one trace: compiled here, its FLOPs counted below
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - t
    flops, exact = _jaxpr_flops(traced.jaxpr.jaxpr)
    xla_flops = cost_flops(compiled)

    holder = {"state": state}

    def call():
        holder["state"], holder["metrics"] = compiled(holder["state"], batch)
        return holder["state"]

    jax.block_until_ready(call())  # warm-up
    t = time.perf_counter()
    jax.block_until_ready(call())  # calibration: steps per repetition
    per_rep = max(1, math.ceil(min_rep_s / max(time.perf_counter() - t, 1e-9)))
    rates = sorted(_rate(call, min_rep_s, per_rep) for _ in range(reps))
    median = statistics.median(rates)
    loss = holder["metrics"].get("loss")
    device = jax.devices()[0]
    return {
        "workload": name, "algorithm": cfg.learner.name, "model": cfg.model.name,
        "task": cfg.data.name, "ways": cfg.data.get("ways", 1), "shots": spec["shots"],
        "queries": query_size(spec), "meta_batch": cfg.train.meta_batch_size,
        "inner_steps": learner.inner_steps, "remat": bool(cfg.learner.get("remat", False)),
        "task_map": strategy, "family": learner.family, "compile_s": compile_s,
        "conv_impl": w.conv_impl,
        "flops_per_step": flops, "flops_lower_bound": not exact, "xla_cost_flops": xla_flops,
        "xla_cost_lower_bound": has_loops(compiled), "steps_per_sec_median": median,
        "steps_per_sec_min": rates[0], "steps_per_sec_max": rates[-1],
        "tasks_per_sec": median * cfg.train.meta_batch_size,
        "achieved_flops_per_sec": flops * median,
        "reps": reps, "steps_per_rep": per_rep, "min_rep_s": min_rep_s,
        "loss": float(loss) if loss is not None else None,
        "peak_host_rss_mb": peak_host_rss_mb(), "peak_device_bytes": peak_device_bytes(),
        "backend": jax.default_backend(), "device_kind": device.device_kind,
        "jax": jax.__version__,
    }


def machine_info(peak_n: int | None = None) -> dict:
    """What the measurements ran on: backend, device, hardware name, versions, threads, and
    the matmul peak (:func:`matmul_peak_flops`; ``peak_n=0`` skips it).

    Example:
      >>> info = machine_info(peak_n=0)
      >>> info["hardware"] == hardware_name(), info["matmul_peak_flops"]
      (True, None)
    """
    import jax
    import jaxlib

    info = {
        "hardware": hardware_name(), "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": thread_settings(), "matmul_n": None, "matmul_peak_flops": None,
    }
    if peak_n != 0:
        n = peak_n or (2048 if info["backend"] == "cpu" else 8192)
        info.update(matmul_n=n, matmul_peak_flops=matmul_peak_flops(n))
    return info


def thread_settings() -> dict:
    """Environment variables that set thread counts, and the CPUs this process may use.

    Example:
      >>> import os
      >>> thread_settings().get("usable_cpus", 1) <= os.cpu_count()
      True
    """
    out = {k: os.environ[k] for k in THREAD_VARS if k in os.environ}
    if hasattr(os, "sched_getaffinity"):
        out["usable_cpus"] = len(os.sched_getaffinity(0))
    return out


