"""Episode samplers on Omniglot: episodes per second beside the meta-step they feed, and load
times.

    python benchmarks/samplers.py [--data-dir ../shared/data]

For 5-way 1-shot and 20-way 5-shot (15 queries per class, meta-batch 32): the device-resident
sampler (jitted, alone), the host-side sampler (NumPy, one thread) and the host sampler through its
prefetching iterator (including the transfer to the device); and the MAML meta-step on the same
episodes (Omniglot MLP, 1 inner step, second order, sampler inside the step). Warm-up excluded,
median of several timed repetitions. Also the first-load conversion time of the archives and the
cached load time. Writes benchmarks/results/<hardware>/samplers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import commit as git_commit
from _common import hardware_name

import jax
import optax

from jmeta.core import init_state, make_meta_step
from jmeta.data import HostSampler, device_sampler, load_omniglot, load_omniglot_characters
from jmeta.train import Config, build, model_task

TASKS = 32
SETTINGS = [(5, 1, 15), (20, 5, 15)]


def rate(fn, n, reps=5):
    fn()  # warm-up
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            r = fn()
        jax.block_until_ready(r)
        out.append(n / (time.perf_counter() - t))
    return statistics.median(out), min(out), max(out)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir",
                   default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = p.parse_args()
    root = Path(args.data_dir) / "omniglot"
    cache = Path(tempfile.mkdtemp(prefix="jmeta-bench-cache-"))

    t = time.perf_counter()
    load_omniglot_characters(root, cache=cache)
    convert_s = time.perf_counter() - t
    loads = []
    for _ in range(5):
        t = time.perf_counter()
        load_omniglot("train", root=root, cache=cache)
        loads.append(time.perf_counter() - t)
    cached_s = statistics.median(loads)
    ds = load_omniglot("train", root=root, cache=cache)

    rows = []
    for ways, shots, queries in SETTINGS:
        sample = jax.jit(device_sampler(ds, ways, shots, queries, TASKS))
        keys = iter(jax.random.split(jax.random.key(0), 10_000))
        dev = rate(lambda: sample(next(keys)), 50)
        host = HostSampler(ds, ways, shots, queries, TASKS, seed=0)
        steps = iter(range(10_000))
        hst = rate(lambda: host.sample(next(steps)), 10)
        with host.iterate() as it:
            pre = rate(lambda: next(it), 10)
        cfg = Config(data=dict(name="omniglot", ways=ways, shots=shots, queries=queries,
                               data_dir=str(Path(args.data_dir).absolute()), cache_dir=str(cache)),
                     model=dict(name="mlp", hidden=(256, 128, 64, 64)),
                     learner=dict(name="maml", inner_lr=0.4),
                     train=dict(meta_batch_size=TASKS)).replace()
        learner = build(cfg, model_task(cfg)).learner
        tx = optax.adam(1e-3)
        step = make_meta_step(learner, tx, sampler=device_sampler(ds, ways, shots, queries, TASKS))
        box = [init_state(learner, tx, jax.random.key(0))]

        def one():
            box[0], m = step(box[0])
            return m

        meta = rate(one, 5, reps=3)
        row = {"episode": f"{ways}-way {shots}-shot {queries}-query", "meta_batch": TASKS}
        for name, r in (("device_sampler", dev), ("host_sampler", hst), ("host_prefetch", pre),
                        ("maml_mlp_step", meta)):
            row[name] = {"batches_per_sec": r[0], "episodes_per_sec": r[0] * TASKS,
                         "min": r[1] * TASKS, "max": r[2] * TASKS}
        row["slowest_sampler_over_step"] = min(dev[0], hst[0], pre[0]) / meta[0]
        rows.append(row)
        print(json.dumps(row), flush=True)

    hw = hardware_name()
    out = Path(__file__).parent / "results" / hw
    out.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    meta = {"hardware": hw, "jax": jax.__version__, "commit": commit,
            "date": time.strftime("%Y-%m-%d"), "omniglot_first_load_s": convert_s,
            "omniglot_cached_load_s": cached_s}
    (out / "samplers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"Omniglot samplers on {hw} (jax {jax.__version__}, commit {commit}, {meta['date']}); "
        f"episodes per second, median (min..max), meta-batch {TASKS}.", "",
        f"First load (convert 32,460 PNGs to a 28x28 uint8 cache): {convert_s:.1f} s; "
        f"cached load of the train split: {cached_s * 1000:.0f} ms.", "",
        ("| episode | device sampler | host sampler | host + prefetch | MAML MLP meta-step "
         "| slowest sampler / step |"),
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[k]['episodes_per_sec']:.0f} ({r[k]['min']:.0f}..{r[k]['max']:.0f})"
                 for k in ("device_sampler", "host_sampler", "host_prefetch", "maml_mlp_step")]
        lines.append(f"| {r['episode']} | " + " | ".join(cells)
                     + f" | {r['slowest_sampler_over_step']:.0f}x |")
    (out / "samplers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
