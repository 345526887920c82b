"""Where the time of a MAML meta-step goes: its pieces timed one by one.

The workload is ``maml_omniglot_5w1s`` of ``jmeta/bench_workloads.json`` (Conv-4, strided,
5-way 1-shot, 15 queries, 32 tasks, one inner step, second order) on a fixed synthetic batch,
with jmeta's defaults for the backend (task map and convolution implementation; override with
``--task-map`` / ``--conv-impl``). Each piece is jitted on its own and timed after a warm-up
(median of ``--reps`` calls); XLA's cost analysis gives its FLOPs:

* ``forward``: the network on every task's support and query sets, shared weights;
* ``adapt``: the inner loop alone (support loss, its gradient, the SGD step), per task;
* ``adapt + query loss``: the adapted network on the query set, no meta-gradient;
* ``first-order meta-gradient``: FOMAML's task gradients (no backward through the inner step);
* ``second-order meta-gradient``: MAML's task gradients;
* ``meta-step``: the full jitted step (task gradients, their mean, Adam, metrics);
* ``Adam update``: the outer optimizer alone;
* ``host dispatch``: a jitted function that returns the state unchanged (the per-call cost of
  passing the state pytree in and out).

    python benchmarks/profile_maml.py   # writes benchmarks/results/<hw>/profile_maml.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import commit, hardware_name, results_dir  # noqa: E402
from jmeta.bench import cost_flops, load_workloads, synthetic_batch, workload_config  # noqa: E402
from jmeta.algorithms import ALGORITHMS  # noqa: E402
from jmeta.core import init_state, make_meta_step, map_tasks  # noqa: E402
from jmeta.train import build, build_optimizer, model_task  # noqa: E402


def _time(fn, *args, reps: int) -> tuple[float, float, float | None]:
    """(compile seconds, median seconds per call, FLOPs per call) of ``jax.jit(fn)(*args)``."""
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return compile_s, statistics.median(times), cost_flops(compiled)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="maml_omniglot_5w1s")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--task-map", default="auto")
    ap.add_argument("--conv-impl", default="auto")
    ap.add_argument("--out", help="results folder (default benchmarks/results/<hardware>)")
    args = ap.parse_args(argv)

    spec = load_workloads()[args.workload]
    cfg = workload_config(spec, task_map=args.task_map)
    if "conv_impl" in cfg.model:
        cfg = cfg.replace(model=dict(conv_impl=args.conv_impl))
    fomaml = ALGORITHMS["fomaml"].options
    fo_cfg = cfg.replace(learner=dict(
        {k: v for k, v in cfg.learner.items() if k in fomaml}, name="fomaml"))
    task = model_task(cfg)
    setup = build(cfg, task)
    learner, fo_learner = setup.learner, build(fo_cfg, task).learner
    strategy = setup.task_map
    tx = build_optimizer(cfg, setup.model)
    state = init_state(learner, tx, jax.random.key(0))
    batch = synthetic_batch(cfg, spec, jax.random.key(1))
    keys = jax.random.split(jax.random.key(2), cfg.train.meta_batch_size)
    meta = state.params
    model = setup.model

    def each(fn):
        return lambda m, b: map_tasks(fn, m, b, keys, strategy=strategy, reduce="mean")

    def forward(m, ep, k):
        return (jnp.sum(model.apply(m["model"], ep.support.x))
                + jnp.sum(model.apply(m["model"], ep.query.x)))

    def adapt(m, ep, k):
        p, _ = learner.adapt(m, ep.support)
        return p

    def adapt_query(m, ep, k):
        p, _ = learner.adapt(m, ep.support)
        return jnp.mean(learner.predict(p, ep.query.x))

    pieces = [
        ("forward (support + query, shared weights)", each(forward), (meta, batch)),
        ("adapt (inner loop only)", each(adapt), (meta, batch)),
        ("adapt + query forward", each(adapt_query), (meta, batch)),
        ("first-order meta-gradient", each(fo_learner.task_grad), (meta, batch)),
        ("second-order meta-gradient", each(learner.task_grad), (meta, batch)),
    ]
    step = make_meta_step(learner, tx, task_map=strategy, donate=False)
    rows = []
    for name, fn, fargs in pieces:
        c, t, f = _time(fn, *fargs, reps=args.reps)
        rows.append(dict(piece=name, compile_s=c, ms=1000 * t, gflops=f and f / 1e9))
        print(f"{name:45s} compile {c:6.1f} s  {1000 * t:8.1f} ms", flush=True)
    c, t, f = _time(step, state, batch, reps=args.reps)
    rows.append(dict(piece="meta-step (task gradients, mean, Adam, metrics)", compile_s=c,
                     ms=1000 * t, gflops=f and f / 1e9))
    print(f"{rows[-1]['piece']:45s} compile {c:6.1f} s  {rows[-1]['ms']:8.1f} ms", flush=True)
    grads0 = jax.tree.map(jnp.zeros_like, meta)
    c, t, f = _time(lambda g, o, p: tx.update(g, o, p), grads0, state.opt_state, meta,
                    reps=args.reps)
    rows.append(dict(piece="Adam update", compile_s=c, ms=1000 * t, gflops=f and f / 1e9))
    c, t, f = _time(lambda s: s, state, reps=max(args.reps, 50))
    rows.append(dict(piece="host dispatch (identity on the state)", compile_s=c, ms=1000 * t,
                     gflops=None))
    for r in rows[-2:]:
        print(f"{r['piece']:45s} compile {r['compile_s']:6.1f} s  {r['ms']:8.3f} ms", flush=True)

    meta_info = dict(workload=args.workload, spec=spec, task_map=strategy,
                     conv_impl=setup.conv_impl, hardware=hardware_name(), commit=commit(),
                     jax=jax.__version__, reps=args.reps,
                     date=time.strftime("%Y-%m-%d"))
    out = Path(args.out) if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_maml.json").write_text(json.dumps(dict(meta=meta_info, rows=rows), indent=2))
    lines = [f"# Where a MAML meta-step goes ({args.workload})", "",
             f"{meta_info['hardware']}, jax {jax.__version__}, commit {meta_info['commit']}, "
             f"{meta_info['date']}; task map `{strategy}`, convolutions "
             f"`{meta_info['conv_impl']}`; "
             f"median of {args.reps} calls after warm-up, each piece jitted alone. XLA's cost "
             "analysis counts a loop body once: with the `map` task map the GFLOP column is one "
             "task's, so multiply by the number of tasks for the step.", "",
             "| piece | compile (s) | ms per call | GFLOP per call | GFLOP/s |",
             "|---|---|---|---|---|"]
    for r in rows:
        g = r["gflops"]
        rate = f"{g / (r['ms'] / 1000):.1f}" if g else "-"
        lines.append(f"| {r['piece']} | {r['compile_s']:.1f} | {r['ms']:.3g} | "
                     f"{'-' if g is None else f'{g:.3g}'} | {rate} |")
    (out / "profile_maml.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'profile_maml.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
