"""The cost of experiment tracking to the training loop: the sinusoid demo (MAML, MLP 40-40,
meta-batch 25, a metric row every 500 steps) trained with and without
``--track tensorboard,mlflow``.

    python benchmarks/tracking_overhead.py [--steps 4000] [--pairs 15] [--repeats 3]

1. Steps/s, paired, in one process: ``--pairs`` pairs of runs of ``train.meta_steps=STEPS
   train.save_every=STEPS`` (one validation, at the end, so that every log window times
   training alone), one untracked and one tracked (SQLite store, created by a warm-up run),
   their order alternating. Each run's rate is the loop's median over its ``train.log_every``
   windows (``results.json``). The overhead is one minus the median over the pairs of
   tracked / untracked: on a machine shared with other work the rates of runs minutes apart
   differ by far more than the overhead sought, and the two runs of a pair, seconds apart, share
   the machine's state.
2. Load-independent: the tracked runs' trackers are wrapped to count the CPU time their threads
   spend on each call (``time.thread_time``); the time spent on metric rows, against the loops'
   wall time, is all the interpreter the trackers take from the steps (the loop itself only puts
   each row on a queue).
3. Start-up, per command: ``--repeats`` runs of the ``jmeta train`` command each untracked,
   tracked into an existing store and tracked into a new store (the first run of a folder, which
   creates MLflow's SQLite tables): the whole process's wall time.

Writes benchmarks/results/<hardware>/tracking_overhead.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import commit as git_commit
from _common import hardware_name, results_dir

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "sinusoid_demo.py"
TRACK = "tensorboard,mlflow"
VARIANTS = {"untracked": None, "tracked": "shared", "tracked, new store": "new"}


def overrides(steps: int) -> list[str]:
    # One validation, at the end: the log windows then all time training alone (with a save
    # every 1000 steps every other window would hold a validation, and their median would fall
    # between the two kinds).
    return [f"train.meta_steps={steps}", f"train.save_every={steps}"]


def run_once(workdir: Path, steps: int, store: str | None, index: int, env: dict) -> dict:
    parent = workdir / {None: "plain", "shared": "shared", "new": f"new{index}"}[store]
    run = parent / f"run{index}"
    cmd = [sys.executable, "-m", "jmeta.cli", "train", str(CONFIG), *overrides(steps),
           "--no-eval", "--no-progress", "--run-dir", str(run)]
    if store is not None:
        cmd += ["--track", TRACK]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    res = json.loads((run / "results.json").read_text())
    warnings = [line for line in proc.stderr.splitlines() if "jmeta: warning" in line]
    if warnings:
        raise SystemExit(f"tracking warned: {warnings}")
    return {"steps_per_sec": res["steps_per_sec"], "train_s": res["train_s"],
            "compile_s": res["compile_s"], "process_s": wall}


class _Timed:
    """A tracker whose calls count the CPU time of the thread that makes them (the tracker's)."""

    def __init__(self, inner):
        self.inner = inner
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def _timed(self, method, *args, **kwargs):
        t = time.thread_time()
        try:
            fn = getattr(self.inner, method, None)
            if fn is None and method == "log_metrics_many":
                for step, metrics in args[0]:
                    self.inner.log_metrics(step, metrics)
            elif fn is not None:
                fn(*args, **kwargs)
        finally:
            self.cpu[method] = self.cpu.get(method, 0.0) + time.thread_time() - t
            self.calls[method] = self.calls.get(method, 0) + 1

    def prepare(self):
        self._timed("prepare")

    def start(self, run_dir, *, name, resume_step):
        self._timed("start", run_dir, name=name, resume_step=resume_step)

    def log_params(self, params):
        self._timed("log_params", params)

    def set_tags(self, tags):
        self._timed("set_tags", tags)

    def log_metrics(self, step, metrics):
        self._timed("log_metrics_many", [(step, metrics)])

    def log_metrics_many(self, rows):
        self._timed("log_metrics_many", rows)

    def log_artifacts(self, run_dir):
        self._timed("log_artifacts", run_dir)

    def close(self, status="FINISHED"):
        self._timed("close", status)


def _tracked(workdir: Path) -> tuple:
    from jmeta.train import TRACKERS, Tracking

    timed = [(n, _Timed(TRACKERS[n].builder(uri=None))) for n in TRACK.split(",")]
    return Tracking(timed), timed


def paired(workdir: Path, steps: int, pairs: int) -> dict:
    """Pairs of in-process runs, untracked and tracked; the trackers' thread CPU."""
    from jmeta.train import load_config, train

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = load_config(str(CONFIG), overrides(steps))
    root = workdir / "paired"
    cpu_rows = {n: 0.0 for n in TRACK.split(",")}
    cpu_setup = {n: 0.0 for n in TRACK.split(",")}
    tracked_loop_s, sends = 0.0, 0

    def one(i: int, track: bool) -> dict:
        nonlocal tracked_loop_s, sends
        run = root / f"{'tracked' if track else 'plain'}{i}"
        if not track:
            return train(cfg, run, progress=False)
        tracking, timed = _tracked(workdir)
        with tracking:
            res = train(cfg, run, progress=False, tracker=tracking)
            tracking.log_artifacts(run)
        if i >= 0:
            tracked_loop_s += res["train_s"]
            for n, t in timed:
                cpu_rows[n] += t.cpu.get("log_metrics_many", 0.0)
                cpu_setup[n] += sum(v for k, v in t.cpu.items() if k != "log_metrics_many")
                sends += t.calls.get("log_metrics_many", 0)
        return res

    one(-1, False), one(-1, True)  # warm-up: compiles, imports, the store's tables
    rates: dict[str, list[float]] = {"untracked": [], "tracked": []}
    ratios = []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        got = {track: one(i, track)["steps_per_sec"] for track in order}
        rates["untracked"].append(got[False])
        rates["tracked"].append(got[True])
        ratios.append(got[True] / got[False])
        print(f"pair {i + 1}: untracked {got[False]:.0f}, tracked {got[True]:.0f} steps/s "
              f"({100 * (got[True] / got[False] - 1):+.1f}%)", flush=True)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    rows = len((root / "plain0" / "metrics.jsonl").read_text().splitlines())
    return {
        "steps": steps, "pairs": pairs, "rates": rates, "ratios": ratios,
        "untracked_steps_per_sec": statistics.median(rates["untracked"]),
        "tracked_steps_per_sec": statistics.median(rates["tracked"]),
        "overhead_pct": 100 * (1 - statistics.median(ratios)),
        "overhead_iqr_pct": [100 * (1 - q[2]), 100 * (1 - q[0])],
        "rows_per_run": rows, "sends": sends,
        "thread_cpu_rows_s": cpu_rows, "thread_cpu_setup_s": cpu_setup,
        "tracked_loop_s": tracked_loop_s,
        "thread_cpu_pct_of_loop": 100 * sum(cpu_rows.values()) / tracked_loop_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4000, help="meta-steps per run")
    p.add_argument("--pairs", type=int, default=15, help="pairs of in-process runs")
    p.add_argument("--repeats", type=int, default=3, help="commands of each start-up variant")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cache = str(workdir / "xla")
        os.environ["JMETA_COMPILE_CACHE"] = cache
        env = dict(os.environ, JMETA_COMPILE_CACHE=cache,
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("MLFLOW_TRACKING_URI", None)
        pair = paired(workdir, args.steps, args.pairs)
        run_once(workdir, 1000, "shared", 0, env)  # warm-up: the shared store, the cache
        runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        order = list(VARIANTS)
        for i in range(args.repeats):
            for name in order if i % 2 == 0 else order[::-1]:
                r = run_once(workdir, args.steps, VARIANTS[name], i + 1, env)
                runs[name].append(r)
                print(f"{name:>20} #{i + 1}: process {r['process_s']:.1f} s, "
                      f"{r['steps_per_sec']:.0f} steps/s", flush=True)

    startup = {name: {"process_s": statistics.median(r["process_s"] for r in runs[name]),
                      "process_s_runs": [r["process_s"] for r in runs[name]]}
               for name in VARIANTS}
    record = {"hardware": hardware_name(), "commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
              "track": TRACK, "paired": pair, "startup": startup}
    out = results_dir()
    (out / "tracking_overhead.json").write_text(json.dumps(record, indent=2) + "\n")
    lo, hi = pair["overhead_iqr_pct"]
    per_row = ", ".join(f"{n} {1000 * v / max(args.pairs, 1):.1f} ms"
                        for n, v in pair["thread_cpu_rows_s"].items())
    setup = ", ".join(f"{n} {v / max(args.pairs, 1):.2f} s"
                      for n, v in pair["thread_cpu_setup_s"].items())
    base = startup["untracked"]["process_s"]
    lines = [
        f"# Tracking overhead ({record['hardware']}, commit {record['commit']}, {record['date']})",
        "",
        f"The sinusoid demo (`configs/sinusoid_demo.py`: MAML, MLP 40-40, meta-batch 25, a "
        f"metric row every 500 steps) with `train.meta_steps={args.steps} "
        f"train.save_every={args.steps}`, without and with `--track {TRACK}` (SQLite store). "
        "Written by `benchmarks/tracking_overhead.py`.",
        "",
        f"## Steps/s: {args.pairs} pairs of runs in one process, order alternating",
        "",
        "| | untracked | tracked | overhead |",
        "|---|---|---|---|",
        f"| median steps/s | {pair['untracked_steps_per_sec']:.0f} | "
        f"{pair['tracked_steps_per_sec']:.0f} | |",
        f"| median over pairs of tracked / untracked | | | {pair['overhead_pct']:+.1f}% "
        f"(quartiles {lo:+.1f}% .. {hi:+.1f}%) |",
        "",
        "Each pair (steps/s untracked, tracked): " + ", ".join(
            f"{a:.0f}/{b:.0f}" for a, b in zip(pair["rates"]["untracked"],
                                                 pair["rates"]["tracked"])) + ".",
        "",
        "## What the trackers take from the loop, independent of the machine's load",
        "",
        f"Per tracked run ({pair['rows_per_run']} metric rows): the tracker threads spent "
        f"{per_row} of CPU on the rows ({pair['sends'] / max(args.pairs, 1):.1f} sends per run "
        f"over both trackers), {pair['thread_cpu_pct_of_loop']:.2f}% of the loops' wall time; "
        f"opening the run, params, tags, artifacts and closing took {setup} of CPU, while the "
        "step compiled (waited for before the first step) and after the last step.",
        "",
        f"## Start-up: the whole `jmeta train ... --no-eval` command, median of {args.repeats}",
        "",
        "| variant | process s | vs untracked | each |",
        "|---|---|---|---|",
    ]
    for name, s in startup.items():
        each = ", ".join(f"{v:.1f}" for v in s["process_s_runs"])
        diff = "-" if name == "untracked" else f"{s['process_s'] - base:+.1f} s"
        lines.append(f"| {name} | {s['process_s']:.1f} | {diff} | {each} |")
    lines += ["", "Tracked start-up adds MLflow's import (about 2.5 s of CPU, in the tracker's "
              "thread while JAX loads and the step compiles) and opening the store; a new store "
              "also creates MLflow's SQLite tables (about 8 s on this machine)."]
    (out / "tracking_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
