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
