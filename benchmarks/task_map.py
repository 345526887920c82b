"""Speed of the sinusoid meta-step: compile time, steady-state meta-steps/s, peak memory.

Each workload runs in its own subprocess (so peak RSS is its own): compile is timed separately
(``lower().compile()``), then after one warm-up call the step is timed over ``--reps`` repetitions
of ``--steps`` meta-steps; we report the median and the spread (min..max) of steps per second.

    python benchmarks/task_map.py                 # all workloads, JSON + Markdown table
    python benchmarks/task_map.py --quick         # fewer repetitions

Writes benchmarks/results/<hardware>/sinusoid.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _common import commit as git_commit
from _common import hardware_name

# (name, algorithm, inner steps, task_map, chunk size, meta-batch, K)
WORKLOADS = [
    ("maml-1step-vmap", "maml", 1, "vmap", 0, 25, 10),
    ("maml-1step-map1", "maml", 1, "map", 1, 25, 10),
    ("maml-1step-map5", "maml", 1, "map", 5, 25, 10),
    ("maml-1step-unroll", "maml", 1, "unroll", 0, 25, 10),
    ("maml-5step-vmap", "maml", 5, "vmap", 0, 25, 10),
    ("maml-5step-map5", "maml", 5, "map", 5, 25, 10),
    ("maml-5step-unroll", "maml", 5, "unroll", 0, 25, 10),
    ("maml-5step-vmap-remat", "maml", 5, "vmap", 0, 25, 10),
    ("fomaml-5step-vmap", "fomaml", 5, "vmap", 0, 25, 10),
    ("metasgd-1step-vmap", "metasgd", 1, "vmap", 0, 25, 10),
    ("anil-5step-vmap", "anil", 5, "vmap", 0, 25, 10),
    ("reptile-5step-vmap", "reptile", 5, "vmap", 0, 25, 10),
    ("maml-1step-vmap-K20", "maml", 1, "vmap", 0, 25, 20),
    ("maml-1step-vmap-T128", "maml", 1, "vmap", 0, 128, 10),
]


def run_one(spec: list, steps: int, reps: int) -> dict:
    import resource

    import jax
    import optax

    from jmeta.core import init_state, make_meta_step
    from jmeta.data import sinusoid_sampler
    from jmeta.algorithms import ALGORITHMS
    from jmeta.train import Config, build, build_task, validate

    name, alg, inner, task_map, chunk, batch, k = spec
    learner_cfg = dict(name=alg, inner_steps=inner)
    if "remat" in ALGORITHMS[alg].options:
        learner_cfg["remat"] = name.endswith("remat")
    cfg = validate(Config(data=dict(name="sinusoid", shots=k), learner=learner_cfg,
                          optimizer=dict(name="adam"), train=dict(meta_batch_size=batch)))
    learner = build(cfg, build_task(cfg)).learner
    tx = optax.adam(1e-3)
    step = make_meta_step(learner, tx, task_map=task_map, chunk_size=chunk or None,
                          sampler=sinusoid_sampler(batch, k))
    state = init_state(learner, tx, jax.random.key(0))
    t = time.perf_counter()
    compiled = step.lower(state).compile()
    compile_s = time.perf_counter() - t
    state, _ = compiled(state)  # warm-up
    jax.block_until_ready(state)
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(steps):
            state, _ = compiled(state)
        jax.block_until_ready(state)
        rates.append(steps / (time.perf_counter() - t))
    rates.sort()
    return {
        "workload": name, "algorithm": alg, "inner_steps": inner, "task_map": task_map,
        "chunk_size": chunk or None, "meta_batch": batch, "k_shot": k,
        "remat": cfg.learner.get("remat", False),
        "compile_s": compile_s, "steps_per_sec_median": rates[len(rates) // 2],
        "steps_per_sec_min": rates[0], "steps_per_sec_max": rates[-1],
        "tasks_per_sec_median": batch * rates[len(rates) // 2],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "reps": reps, "steps_per_rep": steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 repetitions of 200 steps")
    p.add_argument("--only", help="comma-separated workload names")
    p.add_argument("--out", help="output directory (default benchmarks/results/<hardware>)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    steps, reps = (200, 3) if args.quick else (1000, 7)
    if args.child:
        print(json.dumps(run_one(json.loads(args.child), steps, reps)))
        return

    chosen = [w for w in WORKLOADS if not args.only or w[0] in args.only.split(",")]
    rows = []
    for w in chosen:
        cmd = [sys.executable, __file__, "--child", json.dumps(w)]
        cmd += ["--quick"] if args.quick else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['workload']:24s} compile {row['compile_s']:5.2f} s  "
              f"{row['steps_per_sec_median']:7.0f} steps/s  peak RSS {row['peak_rss_mb']:.0f} MB",
              flush=True)

    import jax

    hw = hardware_name()
    out_dir = Path(args.out or Path(__file__).parent / "results" / hw)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"hardware": hw, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
            "commit": git_commit()}
    (out_dir / "sinusoid.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"Sinusoid meta-step on {hw} ({meta['cpu']}, jax {meta['jax']}, commit {meta['commit']}, "
        f"{meta['date']}); median of {reps} x {steps} steps after warm-up.", "",
        "| workload | task map | compile (s) | meta-steps/s (min..max) | tasks/s | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        tm = r["task_map"] + (f" (chunk {r['chunk_size']})" if r["chunk_size"] else "")
        lines.append(
            f"| {r['workload']} | {tm} | {r['compile_s']:.2f} | {r['steps_per_sec_median']:.0f} "
            f"({r['steps_per_sec_min']:.0f}..{r['steps_per_sec_max']:.0f}) | "
            f"{r['tasks_per_sec_median']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    (out_dir / "sinusoid.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
