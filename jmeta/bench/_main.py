"""``jmeta bench`` and ``python -m jmeta.bench``: parse the options, run a suite (this module never imports the CLI)."""

from __future__ import annotations

import argparse
import json
import sys


def parser() -> argparse.ArgumentParser:
    """The options of ``jmeta bench``."""
    b = argparse.ArgumentParser(prog="jmeta bench", description=(
        "Compile time, meta-steps/s, FLOPs and memory of benchmark workloads (JSON + Markdown "
        "table), one process per workload."))
    b.add_argument("suite", nargs="?", default="core",
                   help="core (every workload of jmeta/bench_workloads.json), quick (two small "
                        "ones, fewer repetitions) or scaling (curves); default core. "
                        "'jmeta bench plan --help': memory, FLOPs and roofline of full-size "
                        "decoders compiled from shapes")
    b.add_argument("--workloads", help="comma-separated workload names (a base name selects its "
                                       "variants; base@key=value runs a variant)")
    b.add_argument("--reps", type=int, help="timed repetitions per workload (default: the suite's)")
    b.add_argument("--min-rep-s", type=float, help="seconds each repetition lasts at least")
    b.add_argument("--timeout", type=float, help="seconds per workload process (default 1800)")
    b.add_argument("--out", help="output folder (default: benchmarks/results/<hardware>)")
    b.add_argument("--peak-n", type=int,
                   help="matrix size of the matmul peak (default 2048 on CPU, 8192 on "
                        "accelerators; 0 skips it)")
    return b


def main(argv: list[str] | None = None) -> int:
    """``jmeta bench SUITE ...`` (also ``python -m jmeta.bench SUITE ...``); ``_one NAME`` and
    ``_info`` are the per-process measurements the suite runner starts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["_one"], ["_info"]):
        return _measure_here(argv)
    if argv[:1] == ["_tta_jmeta"]:  # the jmeta side of `jmeta bench tta`, in its own process
        from jmeta.train import train_and_test

        train_and_test(argv[1])
        return 0
    if argv[:1] == ["tta"]:  # time to accuracy against a PyTorch peer: jmeta bench tta --help
        return _tta(argv[1:])
    if argv[:1] == ["plan"]:  # compile full-size decoders from shapes: jmeta bench plan --help
        from jmeta.bench._plan import main as plan_main

        return plan_main(argv[1:])
    args = parser().parse_args(argv)
    from jmeta.bench._suite import run_suite
    from jmeta.core import ConfigError

    try:
        res = run_suite(args.suite, workloads=args.workloads, reps=args.reps,
                        min_rep_s=args.min_rep_s, timeout=args.timeout, out=args.out,
                        peak_n=args.peak_n)
    except (ConfigError, RuntimeError) as err:
        print(f"jmeta: error: {err}", file=sys.stderr)
        return 2
    return 0 if any("error" not in r for r in res["rows"]) else 1


def tta_parser() -> argparse.ArgumentParser:
    """The options of ``jmeta bench tta``."""
    p = argparse.ArgumentParser(prog="jmeta bench tta", description=(
        "Time to accuracy: train CONFIG (and a PyTorch peer on the same protocol, in the same "
        "sitting) for a budget of training seconds, snapshot the parameters at marks, test "
        "every snapshot afterwards on the same test episodes, and report accuracy against "
        "training seconds, the time to each target and the ratio (JSON, Markdown, PNG)."))
    p.add_argument("config", help="config file, e.g. configs/omniglot_protonets.py:5w1s")
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    p.add_argument("--target", type=float, action="append", required=True,
                   help="test accuracy (%%) to time; repeat for several")
    p.add_argument("--budget", type=float, default=600.0,
                   help="training seconds per library (default 600)")
    p.add_argument("--peer", choices=("pytorch", "learn2learn"),
                   help="the peer: plain PyTorch (protonets, maml, fomaml) or learn2learn "
                        "(maml, fomaml); default none")
    p.add_argument("--peer-python", help="Python with torch (default $PEERS_PYTHON, else "
                                         ".venv-peers/bin/python)")
    p.add_argument("--peer-device", default="cpu", help="the peer's torch device (cuda on a GPU "
                                                         "machine; default cpu)")
    p.add_argument("--peer-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for the peer's training only (its recipe); repeat")
    p.add_argument("--schedule", choices=("parallel", "alternate"), default="parallel",
                   help="parallel: both at once, each pinned to one core (default); "
                        "alternate: one after the other on every core")
    p.add_argument("--cores", help="with parallel: jmeta's core and the peer's, e.g. 0,1")
    p.add_argument("--marks", help="comma-separated training seconds to snapshot at "
                                   "(default 15, 30, 60, ... and every tenth of the budget)")
    p.add_argument("--tasks", type=int, default=600, help="test episodes (default 600)")
    p.add_argument("--data-dir", help="dataset folder")
    p.add_argument("--work", help="work folder (default: the cache, ~/.cache/jmeta/tta/NAME)")
    p.add_argument("--out", help="output folder (default benchmarks/results/<hardware>)")
    p.add_argument("--name", help="the result's name: tta_NAME.json/.md/.png (default: the "
                                  "config's name and the peer's)")
    return p


def _tta(argv: list[str]) -> int:
    args = tta_parser().parse_args(argv)
    from jmeta.bench._measure import hardware_name
    from jmeta.core import ConfigError
    from jmeta.train import time_to_accuracy

    try:
        cores = [int(c) for c in args.cores.split(",")] if args.cores else None
        marks = [float(m) for m in args.marks.split(",")] if args.marks else None
    except ValueError:
        print("jmeta: error: --cores and --marks are comma-separated numbers.", file=sys.stderr)
        return 2
    out = args.out or f"benchmarks/results/{hardware_name()}"
    try:
        res = time_to_accuracy(args.config, args.overrides, targets=args.target,
                               budget_s=args.budget, peer=args.peer, peer_python=args.peer_python,
                               peer_device=args.peer_device, peer_overrides=args.peer_set,
                               schedule=args.schedule, cores=cores, marks=marks,
                               tasks=args.tasks, out=out, work=args.work, name=args.name,
                               data_dir=args.data_dir)
    except (ConfigError, RuntimeError) as err:
        print(f"jmeta: error: {err}", file=sys.stderr)
        return 2
    from jmeta.train import tta_markdown

    print(tta_markdown(res))
    return 0


def _measure_here(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m jmeta.bench")
    p.add_argument("mode", choices=("_one", "_info"))
    p.add_argument("name", nargs="?")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--min-rep-s", type=float, default=0.2)
    p.add_argument("--peak-n", type=int, default=-1, help="-1: default size, 0: skip")
    p.add_argument("--json", action="store_true", help="(always JSON, on the last line)")
    args = p.parse_args(argv)
    from jmeta.bench._measure import machine_info, run_workload
    from jmeta.bench._workloads import variant_spec

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
