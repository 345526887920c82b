"""``jmeta bench [SUITE]``: compile time, throughput, FLOPs and memory of the meta-step.

The workloads are the entries of ``jmeta/bench_workloads.json`` (shared with the PyTorch peers in
``benchmarks/peers/``). Each workload runs in its own process (so its peak memory is its own) on
a fixed synthetic task batch of the workload's shapes: no dataset, no sampler, the same batch
passed to the jitted meta-step every iteration. Per workload we record:

* ``compile_s``: wall time of ``jit(step).lower(state, batch).compile()``;
* ``flops_per_step``: the matrix-multiply and convolution FLOPs of one step, counted on its
  jaxpr with every ``lax.scan`` / ``lax.map`` loop multiplied by its length
  (:func:`jaxpr_flops`); XLA's own cost analysis, which counts a loop's body once, is kept as
  ``xla_cost_flops``;
* steady-state meta-steps per second: after a warm-up call, ``reps`` repetitions, each running
  enough steps to last at least ``min_rep_s`` (waited on with ``block_until_ready``); the median
  and the min..max spread; tasks per second = steps per second x meta-batch;
* peak host RSS of the process and, where the backend reports it, peak device memory.

Suites: ``core`` (every workload), ``quick`` (two small workloads, fewer repetitions: smoke tests),
``scaling`` (curves over meta-batch, inner steps with and without remat, ways and shots, as
variants of the base workloads named ``base@key=value,...``).

Results: ``benchmarks/results/<hardware>/bench-<suite>.json`` and ``.md`` (and PNG curves for
``scaling``), or under ``--out DIR``.

Example (from the repository root; each run starts its own processes):
  >>> from jmeta.bench import workload_names
  >>> workload_names("quick")
  ['maml_sinusoid', 'protonets_omniglot_5w1s']
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from jmeta.train._config import Config, ConfigError

_ROOT = Path(__file__).resolve().parents[1]
WORKLOADS_FILE = Path(__file__).resolve().parent / "bench_workloads.json"

# Keys a workload entry (or a variant's override) may set.
SPEC_KEYS = frozenset({
    "algorithm", "model", "filters", "strided", "size", "channels", "hidden", "ways", "shots",
    "queries", "meta_batch", "inner_steps", "inner_lr", "inner_batch", "remat", "task_map",
    "conv_impl",
})
THREAD_VARS = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


@dataclasses.dataclass(frozen=True)
class Suite:
    """A named list of workloads and its default measurement budget."""

    doc: str
    reps: int
    min_rep_s: float


SUITES = {
    "core": Suite("every workload of jmeta/bench_workloads.json", reps=5, min_rep_s=1.0),
    "quick": Suite("maml_sinusoid and protonets_omniglot_5w1s, fewer repetitions (smoke tests)",
                   reps=3, min_rep_s=0.2),
    "scaling": Suite("curves over meta-batch, inner steps (with and without remat), ways, shots",
                     reps=3, min_rep_s=0.5),
}
QUICK = ("maml_sinusoid", "protonets_omniglot_5w1s")
DEFAULT_TIMEOUT_S = 1800.0


# --------------------------------------------------------------------------------------------
# Workloads, variants and configs (no JAX backend is touched here).


def load_workloads(path: str | Path | None = None) -> dict[str, dict]:
    """The ``workloads`` mapping of ``jmeta/bench_workloads.json`` (name -> entry).

    Example:
      >>> load_workloads()["maml_sinusoid"]["meta_batch"]
      25
    """
    path = Path(path) if path else WORKLOADS_FILE
    if not path.is_file():
        raise ConfigError(f"The workload definitions {path} do not exist: run `jmeta bench` "
                          "from a checkout of the repository (they live in benchmarks/).")
    return dict(json.loads(path.read_text())["workloads"])


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def parse_name(name: str) -> tuple[str, dict]:
    """Splits a workload name into its base and its overrides.

    Example:
      >>> parse_name("maml_sinusoid@inner_steps=10,remat=true")
      ('maml_sinusoid', {'inner_steps': 10, 'remat': True})
      >>> parse_name("maml_sinusoid")
      ('maml_sinusoid', {})
    """
    base, sep, rest = name.partition("@")
    overrides = {}
    for item in (rest.split(",") if sep else []):
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"Workload {name!r}: {item!r} is not key=value "
                              "(e.g. maml_sinusoid@meta_batch=64).")
        overrides[key.strip()] = _value(text)
    return base, overrides


def variant_spec(name: str, workloads: dict[str, dict] | None = None) -> dict:
    """The entry of a workload or variant (``base@key=value,...``): the base entry, overridden.

    Example:
      >>> variant_spec("maml_sinusoid@meta_batch=64")["meta_batch"]
      64
    """
    workloads = load_workloads() if workloads is None else workloads
    base, overrides = parse_name(name)
    if base not in workloads:
        raise ConfigError(f"Unknown workload {base!r}; valid workloads: {', '.join(workloads)}.")
    bad = sorted(set(overrides) - SPEC_KEYS)
    if bad:
        raise ConfigError(f"Workload {name!r}: unknown key {bad[0]!r}; valid keys: "
                          f"{', '.join(sorted(SPEC_KEYS))}.")
    return {**workloads[base], **overrides}


def _image_task(size: int, channels: int) -> str:
    from jmeta.train._build import IMAGE_FORMATS

    same = [t for t, f in IMAGE_FORMATS.items() if f[1] == channels]
    if not same:
        raise ConfigError(f"No image task has {channels} channels; choose 1 (Omniglot-shaped) "
                          "or 3 (miniImageNet-shaped).")
    exact = [t for t in same if IMAGE_FORMATS[t][0] == size]
    return (exact or same)[0]


def workload_config(spec: dict, *, task_map: str = "auto", remat: bool = False) -> Config:
    """The validated :class:`jmeta.train.Config` of a ``workloads.json`` entry.

    An entry with ``size`` and ``channels`` is an image classification task shaped like
    Omniglot (1 channel) or miniImageNet (3 channels); an ``mlp`` entry without them is sinusoid
    regression. ``shots``/``queries`` are per class, ``meta_batch`` is the number of tasks per
    meta-step. Reptile takes inner Adam (beta1 0) on minibatches of ``inner_batch`` drawn from
    ``shots`` train shots per class, and an outer SGD step of 1.0; everything else Adam 1e-3.
    ``spec`` may also set ``remat`` and ``task_map``, which take precedence over the arguments.

    Example:
      >>> cfg = workload_config(load_workloads()["maml_omniglot_5w1s"])
      >>> cfg.task, cfg.model, cfg.ways, cfg.k_shot, cfg.meta_batch_size, cfg.strided
      ('omniglot', 'conv4', 5, 1, 32, True)
    """
    bad = sorted(k for k in spec if k not in SPEC_KEYS and not k.startswith("_"))
    if bad:
        raise ConfigError(f"Workload entry has unknown key {bad[0]!r}; valid keys: "
                          f"{', '.join(sorted(SPEC_KEYS))}.")
    missing = [k for k in ("algorithm", "ways", "shots", "meta_batch") if k not in spec]
    if missing:
        raise ConfigError(f"Workload entry lacks {', '.join(missing)}: {spec}.")
    values: dict[str, Any] = {
        "name": "bench", "algorithm": spec["algorithm"], "model": spec.get("model", "mlp"),
        "ways": spec["ways"], "k_shot": spec["shots"], "k_query": query_size(spec),
        "meta_batch_size": spec["meta_batch"], "inner_steps": spec.get("inner_steps", 1),
        "inner_lr": spec.get("inner_lr", 0.01), "remat": spec.get("remat", remat),
        "task_map": spec.get("task_map", task_map), "baseline": False,
        "conv_impl": spec.get("conv_impl", "auto"),
    }
    if "size" in spec or "channels" in spec:
        size, channels = spec.get("size", 28), spec.get("channels", 1)
        values.update(task=_image_task(size, channels), image_size=size,
                      filters=spec.get("filters", 64), strided=spec.get("strided", False))
    else:
        values.update(task="sinusoid")
    if "hidden" in spec:
        values["hidden"] = tuple(spec["hidden"])
    if spec["algorithm"] == "reptile":
        values.update(inner_rule="adam", inner_beta1=0.0, meta_optimizer="sgd", meta_lr=1.0,
                      train_shots=spec["shots"], inner_batch=spec.get("inner_batch", 0))
    elif "inner_batch" in spec:
        raise ConfigError("inner_batch is a reptile option (inner-loop minibatches).")
    return Config().replace(**values)


def scaling_workloads(backend: str | None = "gpu") -> list[str]:
    """The variants of the ``scaling`` suite; convolutional curves are shorter on a CPU.

    Example:
      >>> names = scaling_workloads("cpu")
      >>> names[0], "maml_omniglot_5w1s@meta_batch=64" in names
      ('maml_sinusoid@meta_batch=1', False)
    """
    cpu = backend == "cpu"
    conv_batches = (1, 2, 4, 8, 16, 32) + (() if cpu else (64, 128))
    conv_steps = (1, 5, 10) + (() if cpu else (20, 50))
    names = [f"maml_sinusoid@meta_batch={b}" for b in (1, 2, 4, 8, 16, 32, 64, 128)]
    names += [f"maml_omniglot_5w1s@meta_batch={b}" for b in conv_batches]
    for base, steps in (("maml_sinusoid", (1, 5, 10, 20, 50)), ("maml_omniglot_5w1s", conv_steps)):
        for s in steps:
            names += [f"{base}@inner_steps={s}", f"{base}@inner_steps={s},remat=true"]
    names += [f"protonets_omniglot_5w1s@ways={w}" for w in (5, 10, 20)]
    names += [f"protonets_omniglot_5w1s@shots={k}" for k in (1, 5)]
    return names


def workload_names(suite: str, backend: str | None = None,
                   workloads: dict[str, dict] | None = None) -> list[str]:
    """The workloads of a suite (``backend=None``: the longest list any backend runs).

    Example:
      >>> len(workload_names("core")) == len(load_workloads())
      True
    """
    if suite not in SUITES:
        raise ConfigError(f"Unknown suite {suite!r}; valid suites: {', '.join(SUITES)}.")
    if suite == "quick":
        return list(QUICK)
    if suite == "scaling":
        return scaling_workloads(backend or "gpu")
    return list(load_workloads() if workloads is None else workloads)


def split_names(text: str) -> list[str]:
    """Splits a comma-separated list of workload names, keeping a variant's ``key=value``
    pairs (also comma-separated) with their variant.

    Example:
      >>> split_names("maml_sinusoid@inner_steps=5,remat=true,anil_sinusoid")
      ['maml_sinusoid@inner_steps=5,remat=true', 'anil_sinusoid']
    """
    names: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if names and "@" in names[-1] and "@" not in piece and "=" in piece:
            names[-1] += "," + piece
        elif piece:
            names.append(piece)
    return names


def select(suite: str, only: str | Sequence[str] | None = None) -> list[str]:
    """The suite's workloads, or those named in ``only`` (names, base names or variants).

    A base name selects all of its variants in the suite; a variant ``base@key=value`` that
    the suite lacks is run as given. Every selected workload's config is validated here, so
    a bad name or value fails before anything is compiled.

    Example:
      >>> select("scaling", "protonets_omniglot_5w1s")[:2]
      ['protonets_omniglot_5w1s@ways=5', 'protonets_omniglot_5w1s@ways=10']
    """
    workloads = load_workloads()
    names = workload_names(suite, workloads=workloads)
    if only:
        wanted = split_names(only) if isinstance(only, str) else [w.strip() for w in only]
        chosen = []
        for w in filter(None, wanted):
            hits = [n for n in names if n == w or parse_name(n)[0] == w]
            if not hits and "@" in w:
                hits = [w]
            if not hits:
                valid = sorted({parse_name(n)[0] for n in names}) if suite == "scaling" else names
                raise ConfigError(f"Unknown workload {w!r} for suite {suite!r}; valid "
                                  f"workloads: {', '.join(valid)}.")
            chosen += [h for h in hits if h not in chosen]
        names = chosen
    for n in names:
        workload_config(variant_spec(n, workloads))
    return names


# --------------------------------------------------------------------------------------------
# Measurement inside one process.


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


def cost_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled JAX function, from XLA's cost analysis; ``None`` when
    the backend does not report them. Accepts the dict of current JAX and the list of dicts
    (one per program) of older versions.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> a = jnp.ones((64, 32)); b = jnp.ones((32, 16))
      >>> cost_flops(jax.jit(jnp.matmul).lower(a, b).compile())
      65536.0
    """
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (backends without cost analysis raise various errors)
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost:
        return None
    flops = cost.get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


def _sub_jaxprs(value):
    """The jaxprs inside an equation's parameter (a jaxpr, a closed jaxpr, or tuples of them)."""
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value, "consts"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _jaxpr_flops(jaxpr) -> tuple[float, bool]:
    total, exact = 0.0, True
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        out = eqn.outvars[0].aval.shape if eqn.outvars else ()
        if name == "dot_general":
            (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contracting)
            continue
        if name == "conv_general_dilated":
            # Each output element sums over the kernel window and the kernel's input features.
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec
            rhs = eqn.invars[1].aval.shape
            total += 2.0 * math.prod(out) * math.prod(rhs[d] for d in rhs_spec[1:])
            continue
        if name == "while":  # trip count known only at run time: the body once
            total += _jaxpr_flops(eqn.params["body_jaxpr"].jaxpr)[0]
            exact = False
            continue
        counts = [_jaxpr_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v)]
        if not counts:
            continue
        exact &= all(c[1] for c in counts)
        if name == "cond":  # one branch runs: the costliest
            total += max(c[0] for c in counts)
        else:  # scan (length times), jit, remat, custom_jvp / custom_vjp calls (once)
            times = eqn.params["length"] if name == "scan" else 1
            total += times * sum(c[0] for c in counts)
    return total, exact


def jaxpr_flops(fn, *args, **kwargs) -> tuple[float, bool]:
    """Matrix-multiply and convolution FLOPs of one call ``fn(*args, **kwargs)``, counted on
    its jaxpr: ``(flops, exact)``.

    A ``dot_general`` costs 2 x (output size) x (contracted size); a convolution 2 x (output
    size) x (kernel window x kernel input features), padding included. A ``lax.scan`` (and so
    ``lax.map`` and rolled inner loops) counts its body ``length`` times, a ``cond`` its
    costliest branch; ``exact`` is False when a ``while_loop`` with a run-time trip count is
    present (its body is counted once). Work that ``jax.checkpoint`` (remat) recomputes in the
    backward pass counts again: the figure is the work done, not the model's FLOPs. Elementwise
    work is not counted: the figure is the one to hold against a matmul peak, on any backend.
    XLA's cost analysis (:func:`cost_flops`) counts a loop's body once instead, and XLA may drop
    work that is computed twice.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
      >>> jaxpr_flops(jnp.matmul, a, b)
      (65536.0, True)
      >>> jaxpr_flops(lambda a: jax.lax.map(lambda x: x @ b, a[None].repeat(3, 0)), a)
      (196608.0, True)
    """
    import jax

    return _jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def has_loops(compiled) -> bool:
    """Whether a compiled program keeps a loop (``while``): XLA's cost analysis counts a loop's
    body once, so :func:`cost_flops` is then a lower bound. The small loops of the threefry
    random-number generator (``jax.random.split`` on CPU) do not count.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = lambda x: jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c), x)
      >>> has_loops(jax.jit(f).lower(jnp.ones(3)).compile())
      True
    """
    try:
        return any(re.search(r"\bwhile\(", line) and "threefry" not in line
                   for line in compiled.as_text().splitlines())
    except Exception:  # noqa: BLE001
        return False


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


def query_size(spec: dict) -> int:
    """Query examples per class (points, for sinusoid) of a workload's synthetic batch.

    A workload without queries (Reptile, ``queries: 0``) gets one per class: every algorithm
    scores the adapted model on a query set, and its forward pass on ``ways`` examples is a few
    percent of a Reptile step.

    Example:
      >>> query_size({"queries": 0}), query_size({"queries": 15})
      (1, 15)
    """
    return max(int(spec.get("queries", 0)), 1)


def synthetic_batch(cfg: Config, spec: dict, key):
    """A fixed random task batch of a workload's shapes: float32 normal images and labels
    ``0..ways-1`` (each repeated ``shots`` or ``queries`` times), or sinusoid tasks.

    Example:
      >>> import jax
      >>> spec = load_workloads()["reptile_omniglot_5w1s"]
      >>> b = synthetic_batch(workload_config(spec), spec, jax.random.key(0))
      >>> b.support.x.shape, b.support.y.shape, b.query.x.shape
      ((5, 50, 28, 28, 1), (5, 50), (5, 5, 28, 28, 1))
    """
    import jax
    import jax.numpy as jnp

    from jmeta.core._types import Batch, Episode
    from jmeta.data._sinusoid import sinusoid_tasks
    from jmeta.train._build import image_format
    from jmeta.train._config import train_shots

    tasks, shots, queries = cfg.meta_batch_size, train_shots(cfg), query_size(spec)
    if cfg.task == "sinusoid":
        return sinusoid_tasks(key, tasks, shots, queries)
    fmt = image_format(cfg)
    image = (fmt["size"], fmt["size"], fmt["channels"])

    def labelled(k, per_class):
        x = jax.random.normal(k, (tasks, cfg.ways * per_class) + image, jnp.float32)
        y = jnp.tile(jnp.repeat(jnp.arange(cfg.ways, dtype=jnp.int32), per_class), (tasks, 1))
        return Batch(x, y)

    ks, kq = jax.random.split(key)
    return Episode(labelled(ks, shots), labelled(kq, queries))


def build_workload(spec: dict, *, task_map: str = "auto", remat: bool = False,
                   donate: bool = True) -> SimpleNamespace:
    """What a workload runs, built as ``jmeta bench`` measures it: ``cfg``, ``learner``, the
    resolved ``task_map``, the jitted meta-``step`` (``donate=False`` keeps ``state`` valid
    across calls), the initial ``state`` and a fixed synthetic ``batch`` on the device.

    Example:
      >>> spec = dict(load_workloads()["maml_sinusoid"], meta_batch=2, inner_steps=1)
      >>> w = build_workload(spec)
      >>> w.task_map, w.batch.support.x.shape
      ('vmap', (2, 10, 1))
    """
    import jax

    from jmeta.core._meta import init_state, make_meta_step
    from jmeta.train._build import (build_learner, build_optimizer, build_task, config_task_map,
                                    model_task)

    cfg = workload_config(spec, task_map=task_map, remat=remat)
    task = build_task(cfg) if cfg.task == "sinusoid" else model_task(cfg)
    learner = build_learner(cfg, task)
    tx = build_optimizer(cfg)
    strategy = config_task_map(cfg, learner.family)
    step = make_meta_step(learner, tx, task_map=strategy, chunk_size=cfg.chunk_size or None,
                          donate=donate)
    init_key, data_key = jax.random.split(jax.random.key(0))
    state = init_state(learner, tx, init_key)
    batch = jax.device_put(synthetic_batch(cfg, spec, data_key))
    return SimpleNamespace(cfg=cfg, learner=learner, task_map=strategy, step=step, state=state,
                           batch=batch)


def run_workload(name: str, spec: dict, *, reps: int, min_rep_s: float, task_map: str = "auto",
                 remat: bool = False) -> dict:
    """Measures one workload in this process (see the module docstring for the method).

    Returns a flat dict: the workload's shape, the resolved task map, ``compile_s``,
    ``flops_per_step``, ``steps_per_sec_{median,min,max}``, ``tasks_per_sec``,
    ``achieved_flops_per_sec``, ``peak_host_rss_mb``, ``peak_device_bytes``, ``backend``,
    ``device_kind``, ``jax``, and the last step's ``loss``.

    Example:
      >>> spec = dict(load_workloads()["maml_sinusoid"], meta_batch=2, inner_steps=1)
      >>> row = run_workload("tiny", spec, reps=1, min_rep_s=0.01)
      >>> row["steps_per_sec_median"] > 0 and row["compile_s"] > 0
      True
    """
    import jax

    from jmeta.train._build import model_conv_impl

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
        "workload": name, "algorithm": cfg.algorithm, "model": cfg.model, "task": cfg.task,
        "ways": cfg.ways, "shots": spec["shots"], "queries": query_size(spec),
        "meta_batch": cfg.meta_batch_size, "inner_steps": cfg.inner_steps, "remat": cfg.remat,
        "task_map": strategy, "family": learner.family, "compile_s": compile_s,
        "conv_impl": model_conv_impl(cfg) if cfg.model != "mlp" else None,
        "flops_per_step": flops, "flops_lower_bound": not exact, "xla_cost_flops": xla_flops,
        "xla_cost_lower_bound": has_loops(compiled), "steps_per_sec_median": median,
        "steps_per_sec_min": rates[0], "steps_per_sec_max": rates[-1],
        "tasks_per_sec": median * cfg.meta_batch_size,
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


# --------------------------------------------------------------------------------------------
# The suite runner: one subprocess per workload, JSON + Markdown + plots.


def _child(args: list[str], timeout: float) -> tuple[dict | None, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "jmeta.bench", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1]), ""
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
    return None, f"exit code {proc.returncode}: " + " | ".join(tail)[-500:]


def _git_commit() -> str:
    """The short commit hash of the checkout, or ``"unknown"``."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=_ROOT, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_suite(suite: str = "core", *, workloads: str | Sequence[str] | None = None,
              reps: int | None = None, min_rep_s: float | None = None,
              timeout: float | None = None, out: str | Path | None = None,
              peak_n: int | None = None, log=print) -> dict:
    """Runs a suite, one subprocess per workload, and writes ``bench-<suite>.json`` and ``.md``
    (and, for ``scaling``, PNG curves) into ``out`` (default
    ``benchmarks/results/<hardware>``). A failed or timed-out workload is recorded with its
    error and the suite goes on. Returns ``{"meta": ..., "rows": [...], "out": folder}``.

    Example (a smoke run: one workload, tiny repetitions, no matmul peak):
      >>> import tempfile
      >>> res = run_suite("quick", workloads="maml_sinusoid", reps=1, min_rep_s=0.01,
      ...                 peak_n=0, out=tempfile.mkdtemp())  # doctest: +SKIP
      >>> res["rows"][0]["steps_per_sec_median"] > 0  # doctest: +SKIP
      True
    """
    names = select(suite, workloads)
    cfg = SUITES[suite]
    reps = cfg.reps if reps is None else reps
    min_rep_s = cfg.min_rep_s if min_rep_s is None else min_rep_s
    timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
    if reps < 1 or min_rep_s < 0 or timeout <= 0:
        raise ConfigError(f"--reps must be >= 1, --min-rep-s >= 0 and --timeout > 0; got "
                          f"{reps}, {min_rep_s}, {timeout}.")
    info, err = _child(["_info", "--peak-n", str(-1 if peak_n is None else peak_n)],
                       max(timeout, 600.0))
    if info is None:
        raise RuntimeError(f"jmeta bench: could not start JAX in a subprocess ({err}).")
    if not workloads and suite == "scaling":
        names = scaling_workloads(info["backend"])
    peak = info["matmul_peak_flops"]
    log(f"jmeta bench {suite}: {len(names)} workloads on {info['hardware']} "
        f"({info['device_kind']}, jax {info['jax']})"
        + (f"; matmul peak {peak / 1e9:.0f} GFLOP/s" if peak else ""))
    meta = dict(info, suite=suite, commit=_git_commit(), reps=reps, min_rep_s=min_rep_s,
                timeout_s=timeout, date=datetime.datetime.now().isoformat(timespec="seconds"))
    folder = Path(out) if out else _default_out(info["hardware"])
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"bench-{suite}.json", folder / f"bench-{suite}.md"
    rows: list[dict] = []
    for name in names:
        row, err = _child(["_one", name, "--reps", str(reps), "--min-rep-s", str(min_rep_s)],
                          timeout)
        if row is None:
            row = {"workload": name, "error": err}
            log(f"  {name:48s} FAILED: {err}")
        else:
            achieved = row.get("achieved_flops_per_sec")
            row["pct_matmul_peak"] = 100 * achieved / peak if achieved and peak else None
            log(f"  {name:48s} compile {row['compile_s']:6.2f} s  "
                f"{_num(row['steps_per_sec_median']):>8s} steps/s  "
                f"{_num(row['tasks_per_sec']):>8s} tasks/s  RSS {row['peak_host_rss_mb']:.0f} MB")
        rows.append(row)
        # Rewritten after every workload, so a suite stopped midway leaves what it measured.
        json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        md_path.write_text(markdown_table(meta, rows))
        if suite == "scaling":  # the curves so far, also kept if the suite is stopped
            plot_scaling(rows, folder, log=_quiet)
    log(f"wrote {json_path} and {md_path.name}")
    if suite == "scaling":
        plots = plot_scaling(rows, folder, log=log)
        log(f"wrote {len(plots)} plots: " + ", ".join(p.name for p in plots))
    return {"meta": meta, "rows": rows, "out": str(folder)}


def _quiet(*args) -> None:
    del args


def _default_out(hardware: str) -> Path:
    base = _ROOT / "benchmarks" if (_ROOT / "benchmarks").is_dir() else Path("benchmarks")
    return base / "results" / hardware


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if x >= 0.1 else f"{x:.3g}"


def markdown_table(meta: dict, rows: list[dict]) -> str:
    """The Markdown page of a suite's results: provenance, then one row per workload.

    Example:
      >>> meta = dict(suite="core", hardware="cpu-2core", device_kind="cpu", cpu_count=2,
      ...             threads={}, jax="0.10.2", commit="abc1234", date="2026-01-01", reps=5,
      ...             min_rep_s=1.0, matmul_peak_flops=None)
      >>> markdown_table(meta, [{"workload": "w", "error": "timed out"}]).splitlines()[-1]
      '| w | failed: timed out |  |  |  |  |  |  |  |'
    """
    peak = meta.get("matmul_peak_flops")
    threads = ", ".join(f"{k}={v}" for k, v in meta.get("threads", {}).items()) or "defaults"
    lines = [
        f"# jmeta bench {meta['suite']}", "",
        (f"{meta['hardware']} ({meta['device_kind']}, {meta['cpu_count']} CPUs, threads: "
         f"{threads}), jax {meta['jax']}, commit {meta['commit']}, {meta['date']}."),
        f"Synthetic task batches; one process per workload; compile = lower + compile; "
        f"steps/s = median (min..max) of {meta['reps']} repetitions of >= {meta['min_rep_s']} s "
        "after warm-up." + (f" Matmul peak ({meta['matmul_n']}^2 float32): "
                            f"{peak / 1e9:,.0f} GFLOP/s." if peak else ""),
        ("GFLOP/step: matrix multiplies and convolutions of the step's jaxpr, each loop "
         "counted with its trip count (`jmeta.bench.jaxpr_flops`); `>=`: a while loop whose "
         "trip count is known only at run time, counted once."), "",
        ("| workload | task map, conv | compile (s) | steps/s (min..max) | tasks/s | GFLOP/step "
         "| % of matmul peak | peak RSS (MB) | peak device (MB) |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | failed: {r['error'][:120]} |  |  |  |  |  |  |  |")
            continue
        tm = r["task_map"] + (f", {r['conv_impl']}" if r.get("conv_impl") else "") + (
            " + remat" if r.get("remat") else "")
        flops = r.get("flops_per_step")
        pct = r.get("pct_matmul_peak")
        ge = ">=" if r.get("flops_lower_bound") else ""
        dev = r.get("peak_device_bytes")
        lines.append(
            f"| {r['workload']} | {tm} | {r['compile_s']:.2f} | "
            f"{_num(r['steps_per_sec_median'])} ({_num(r['steps_per_sec_min'])}.."
            f"{_num(r['steps_per_sec_max'])}) | {_num(r['tasks_per_sec'])} | "
            f"{'-' if flops is None else f'{ge}{flops / 1e9:.3g}'} | "
            f"{'-' if pct is None else f'{ge}{pct:.2g}'} | {r['peak_host_rss_mb']:.0f} | "
            f"{'-' if dev is None else f'{dev / 2**20:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


def plot_scaling(rows: list[dict], folder: str | Path, log=print) -> list[Path]:
    """PNG curves of the ``scaling`` suite, one per (base workload, varied key): throughput and
    peak memory (device, else host RSS), with and without remat. Needs matplotlib (the
    ``plots`` extra); without it, logs a message and returns ``[]``. Returns the PNG paths.

    Example:
      >>> import tempfile
      >>> plot_scaling([], tempfile.mkdtemp(), log=lambda *a: None)
      []
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plots (pip install 'jmeta[plots]').")
        return []
    curves: dict[tuple[str, str], dict[bool, list]] = {}
    for r in rows:
        if "error" in r:
            continue
        base, over = parse_name(r["workload"])
        keys = [k for k in over if k != "remat"]
        if len(keys) != 1:
            continue
        key = keys[0]
        curves.setdefault((base, key), {}).setdefault(bool(over.get("remat")), []).append(
            (over[key], r))
    paths = []
    for (base, key), lines in curves.items():
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
        per_task = key == "meta_batch"
        for remat, points in sorted(lines.items()):
            points.sort(key=lambda p: p[0])
            xs = [p[0] for p in points]
            label = "remat" if remat else "no remat"
            ax_t.plot(xs, [p[1]["tasks_per_sec" if per_task else "steps_per_sec_median"]
                           for p in points], "o-", label=label)
            dev = [p[1].get("peak_device_bytes") for p in points]
            mem = ([d / 2**20 for d in dev] if all(d is not None for d in dev)
                   else [p[1]["peak_host_rss_mb"] for p in points])
            ax_m.plot(xs, mem, "o-", label=label)
            ax_m.set_ylabel("peak device memory (MB)" if all(d is not None for d in dev)
                            else "peak host RSS (MB)")
        ax_t.set_ylabel("tasks / s" if per_task else "meta-steps / s")
        for ax in (ax_t, ax_m):
            ax.set_xlabel(key)
            if key in ("meta_batch", "inner_steps"):
                ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"{base}: {key}")
        fig.tight_layout()
        path = Path(folder) / f"scaling-{base}-{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m jmeta.bench SUITE ...`` is ``jmeta bench SUITE ...``; ``_one NAME`` and
    ``_info`` are the per-process measurements the suite runner starts."""
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("_one", "_info"):
        from jmeta.cli import main as cli_main

        return cli_main(["bench", *argv])
    p = argparse.ArgumentParser(prog="python -m jmeta.bench")
    p.add_argument("mode", choices=("_one", "_info"))
    p.add_argument("name", nargs="?")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--min-rep-s", type=float, default=0.2)
    p.add_argument("--peak-n", type=int, default=-1, help="-1: default size, 0: skip")
    p.add_argument("--json", action="store_true", help="(always JSON, on the last line)")
    args = p.parse_args(argv)
    if args.mode == "_info":
        print(json.dumps(machine_info(None if args.peak_n < 0 else args.peak_n)))
        return 0
    import jax

    # Compile times are measured cold: never read from (or written to) a compile cache.
    jax.config.update("jax_enable_compilation_cache", False)
    row = run_workload(args.name, variant_spec(args.name), reps=args.reps,
                       min_rep_s=args.min_rep_s)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
