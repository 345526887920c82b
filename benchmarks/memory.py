"""Memory of second-order MAML against inner steps (with and without remat), and checkpoint cost.

    python benchmarks/memory.py            # MLP rows and checkpoint cost
    python benchmarks/memory.py --conv4    # Conv-4 rows (compiled memory; step time at 1 and 5)

1. Peak temporary memory of the compiled meta-step (XLA's memory analysis of the executable:
   deterministic, unlike process RSS) and its median step time, for 1, 5, 10, 20, 50 inner steps,
   with and without `remat`. Workload: Omniglot-shaped 20-way 1-shot, 15 queries per class,
   meta-batch 16, second-order MAML with the MLP 784-256-128-64-64 on random 28x28 images.
2. Checkpoint cost: the blocking part of an asynchronous Orbax save of the MetaState, the time to
   finish writing, and the step rate with a save every 20 steps against none.
Writes benchmarks/results/<hardware>/memory.{json,md}.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import commit as git_commit
from _common import hardware_name

import jax
import jax.numpy as jnp
import optax

from jmeta.algorithms import maml
from jmeta.core import Batch, Episode, cross_entropy_loss, init_state, make_meta_step
from jmeta.models import flatten_inputs, mlp
from jmeta.train._checkpoint import RunCheckpoints

WAYS, SHOTS, QUERIES, TASKS = 20, 1, 15, 16


def batch(key):
    k1, k2 = jax.random.split(key)
    sx = jax.random.uniform(k1, (TASKS, WAYS * SHOTS, 28, 28, 1))
    qx = jax.random.uniform(k2, (TASKS, WAYS * QUERIES, 28, 28, 1))
    sy = jnp.tile(jnp.repeat(jnp.arange(WAYS), SHOTS), (TASKS, 1))
    qy = jnp.tile(jnp.repeat(jnp.arange(WAYS), QUERIES), (TASKS, 1))
    return Episode(Batch(sx, sy), Batch(qx, qy))


def timed(step, state, reps=5, n=3):
    state, _ = step(state)
    jax.block_until_ready(state)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            state, _ = step(state)
        jax.block_until_ready(state)
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times), state


STEPS = (1, 5, 10, 20, 50)


def remat_rows(model, *, timed_steps=STEPS, reps=5, n=3):
    """Compiled temporary memory of the second-order MAML step for each inner-step count, with
    and without remat, and its median step time for the counts in ``timed_steps``."""
    tx = optax.adam(1e-3)
    rows = []
    for steps in STEPS:
        for remat in (False, True):
            learner = maml(model, 0.1, steps, loss_fn=cross_entropy_loss, remat=remat)
            step = make_meta_step(learner, tx, sampler=batch)
            state = init_state(learner, tx, jax.random.key(0))
            t = time.perf_counter()
            compiled = step.lower(state).compile()
            compile_s = time.perf_counter() - t
            mem = compiled.memory_analysis()
            row = {"inner_steps": steps, "remat": remat, "temp_mb": mem.temp_size_in_bytes / 2**20,
                   "argument_mb": mem.argument_size_in_bytes / 2**20, "compile_s": compile_s,
                   "meta_batch": TASKS}
            if steps in timed_steps:
                row["step_ms"] = 1000 * timed(compiled, state, reps=reps, n=n)[0]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def remat_table(rows, title: str) -> list[str]:
    lines = [title, "",
             "| inner steps | temp memory (MB) | with remat (MB) | step (ms) | with remat (ms) |",
             "|---|---|---|---|---|"]
    for steps in STEPS:
        a, b = (next(r for r in rows if r["inner_steps"] == steps and r["remat"] == m)
                for m in (False, True))
        ta, tb = (f"{r['step_ms']:.0f}" if "step_ms" in r else "-" for r in (a, b))
        lines.append(f"| {steps} | {a['temp_mb']:.0f} | {b['temp_mb']:.0f} | {ta} | {tb} |")
    return lines


def checkpoint_cost(model):
    """Blocking and total time of an asynchronous save, and the step rate with and without saves."""
    tx = optax.adam(1e-3)
    learner = maml(model, 0.1, 1, loss_fn=cross_entropy_loss)
    step = make_meta_step(learner, tx, sampler=batch)
    state = init_state(learner, tx, jax.random.key(0))
    compiled = step.lower(state).compile()
    directory = Path(tempfile.mkdtemp(prefix="jmeta-ckpt-bench-")) / "steps"
    ckpts = RunCheckpoints(directory, keep=2)
    blocking, total = [], []
    for i in range(5):
        t = time.perf_counter()
        ckpts.save(i + 1, state, val_score=0.0)
        blocking.append(time.perf_counter() - t)
        ckpts.wait()
        total.append(time.perf_counter() - t)

    def run(n, save_every):
        s = init_state(learner, tx, jax.random.key(0))
        s, _ = compiled(s)
        jax.block_until_ready(s)
        t = time.perf_counter()
        for i in range(1, n + 1):
            s, _ = compiled(s)
            if save_every and i % save_every == 0:
                ckpts.save(100 + i, s, val_score=0.0)
        jax.block_until_ready(s)
        ckpts.wait()
        return n / (time.perf_counter() - t)

    plain = statistics.median(run(60, 0) for _ in range(3))
    saving = statistics.median(run(60, 20) for _ in range(3))
    ckpts.close()
    size_mb = (sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**20
               / len(ckpts.steps()))
    ck = {"save_blocking_ms": 1000 * statistics.median(blocking),
          "save_total_ms": 1000 * statistics.median(total),
          "checkpoint_mb": size_mb, "steps_per_sec_no_saves": plain,
          "steps_per_sec_save_every_20": saving,
          "overhead_pct": 100 * (plain - saving) / plain}
    print(json.dumps(ck))
    return ck


def main():
    import sys

    hw, commit = hardware_name(), git_commit()
    out = Path(__file__).parent / "results" / hw
    out.mkdir(parents=True, exist_ok=True)
    meta = {"hardware": hw, "jax": jax.__version__, "commit": commit,
            "date": time.strftime("%Y-%m-%d")}
    if "--conv4" in sys.argv:
        from jmeta.models import conv4

        global TASKS
        TASKS = 4
        rows = remat_rows(conv4(1, WAYS, filters=64), timed_steps=(1,), reps=2, n=1)
        (out / "memory_conv4.json").write_text(
            json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        lines = remat_table(rows, f"Second-order MAML, Conv-4 (64 filters), Omniglot-shaped 20-way "
                                  f"1-shot 15-query, meta-batch {TASKS} ({hw}, jax "
                                  f"{jax.__version__}, commit {commit}).")
        (out / "memory_conv4.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    model = flatten_inputs(mlp(784, WAYS, hidden=(256, 128, 64, 64)))
    rows = remat_rows(model)
    ck = checkpoint_cost(model)
    (out / "memory.json").write_text(
        json.dumps({"meta": meta, "remat": rows, "checkpoint": ck}, indent=2) + "\n")
    lines = remat_table(rows, f"Second-order MAML, MLP 784-256-128-64-64, 20-way 1-shot 15-query, "
                              f"meta-batch {TASKS} ({hw}, jax {jax.__version__}, commit {commit}, "
                              f"{meta['date']}).")
    lines += ["", f"Checkpoint of the MetaState ({ck['checkpoint_mb']:.1f} MB): asynchronous save "
              f"blocks the loop for {ck['save_blocking_ms']:.0f} ms, finishes writing in "
              f"{ck['save_total_ms']:.0f} ms; "
              f"step rate {ck['steps_per_sec_no_saves']:.1f}/s without saves, "
              f"{ck['steps_per_sec_save_every_20']:.1f}/s saving every 20 steps "
              f"({ck['overhead_pct']:.1f}% overhead)."]
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
