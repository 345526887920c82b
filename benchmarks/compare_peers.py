"""jmeta against the PyTorch peers, side by side, in one sitting (``make bench-peers``).

For every round and every workload, jmeta's measurement (``python -m jmeta.bench _one NAME``,
in jmeta's environment) and each supported peer (``benchmarks/peers/run_peer.py`` in
``.venv-peers``) run one after the other, each in its own process with the same thread count,
so slow drifts of the machine hit all of them alike. Per (workload, library) the reported
meta-steps per second is the median over rounds of each run's own median; the ratio is jmeta's
over the fastest peer's. jmeta runs its defaults for the backend (on CPU: conv4 tasks mapped
by a loop over tasks with im2col convolutions); ``--conv-task-map unroll`` (or ``vmap``,
``map``) forces a task map for the conv4 workloads.

    python benchmarks/compare_peers.py                       # every workload, 2 rounds
    python benchmarks/compare_peers.py --workloads maml_omniglot_5w1s,maml_sinusoid --rounds 3

Writes benchmarks/results/<hardware>/peers.json and peers.md (or under --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))

from _workloads import LIBRARIES, load_workloads, support  # noqa: E402

from jmeta.bench import cpu_model, hardware_name  # noqa: E402


def _last_json(text: str) -> dict | None:
    """The JSON object a runner printed last: the whole output, or its last one-line object."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    start = text.rfind("\n{")
    if start >= 0:
        try:
            return json.loads(text[start + 1:])
        except json.JSONDecodeError:
            pass
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _run(cmd: list[str], env: dict, timeout: float) -> dict:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                             cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    row = _last_json(out.stdout)
    if out.returncode != 0 or row is None:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    # jmeta reports the median as steps_per_sec_median, the peers as steps_per_sec.
    if "steps_per_sec" not in row and "steps_per_sec_median" in row:
        row["steps_per_sec"] = row["steps_per_sec_median"]
    return row


def _env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", help="comma-separated names (default: all)")
    ap.add_argument("--libraries", default=",".join(LIBRARIES))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=900.0, help="per process, seconds")
    ap.add_argument("--conv-task-map", default="",
                    help="jmeta's task map for conv4 workloads ('' = the backend default)")
    ap.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    ap.add_argument("--out", help="results folder (default benchmarks/results/<hardware>)")
    args = ap.parse_args(argv)

    table = load_workloads()
    names = args.workloads.split(",") if args.workloads else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown workloads {unknown}; choose from {sorted(table)}")
    libraries = [lib for lib in args.libraries.split(",") if lib]
    if not Path(args.peers_python).exists():
        ap.error(f"{args.peers_python} not found: run `bash benchmarks/peers/setup.sh` first "
                 "(or `make bench-peers`, which does).")
    env = _env(args.threads)
    runs: dict[str, dict[str, list[dict]]] = {n: {} for n in names}
    for r in range(args.rounds):
        for name in names:
            variant = name
            if args.conv_task_map and table[name].get("model") == "conv4":
                variant = f"{name}@task_map={args.conv_task_map}"
            jobs = [("jmeta", [sys.executable, "-m", "jmeta.bench", "_one", variant,
                               "--reps", str(args.reps)])]
            for lib in libraries:
                if support(lib, name, table[name]) is None:
                    jobs.append((lib, [args.peers_python, "benchmarks/peers/run_peer.py",
                                       "--library", lib, "--workload", name,
                                       "--threads", str(args.threads),
                                       "--reps", str(args.reps)]))
            for lib, cmd in jobs:
                row = _run(cmd, env, args.timeout)
                runs[name].setdefault(lib, []).append(row)
                sps = row.get("steps_per_sec")
                print(f"round {r + 1}/{args.rounds} {name:28s} {lib:12s} "
                      + (f"{sps:10.3f} steps/s" if sps else f"error: {row.get('error')}"),
                      flush=True)

    summary = []
    for name in names:
        per_lib = {}
        for lib, rows in runs[name].items():
            ok = [x["steps_per_sec"] for x in rows if x.get("steps_per_sec")]
            per_lib[lib] = statistics.median(ok) if ok else None
        peers = {k: v for k, v in per_lib.items() if k != "jmeta" and v}
        best = max(peers, key=peers.get) if peers else None
        ratio = (per_lib.get("jmeta") / peers[best]) if best and per_lib.get("jmeta") else None
        compile_s = [x.get("compile_s") for x in runs[name].get("jmeta", []) if x.get("compile_s")]
        jm = next((x for x in runs[name].get("jmeta", []) if x.get("task_map")), {})
        how = jm.get("task_map", "") + (f", {jm['conv_impl']}" if jm.get("conv_impl") else "")
        summary.append({"workload": name, "steps_per_sec": per_lib, "fastest_peer": best,
                        "jmeta_task_map": how,
                        "ratio_vs_fastest_peer": ratio,
                        "jmeta_compile_s": statistics.median(compile_s) if compile_s else None,
                        "meta_batch": table[name]["meta_batch"]})

    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / hardware_name()
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip() or "unknown"
    meta = {"date": datetime.date.today().isoformat(), "commit": commit, "threads": args.threads,
            "rounds": args.rounds, "reps": args.reps, "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model()}
    (out / "peers.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs},
                                               indent=1))
    libs = ["jmeta"] + libraries
    lines = [f"jmeta and the PyTorch peers, meta-steps per second (median over {args.rounds} "
             f"alternating rounds, each the median of {args.reps} repetitions), "
             f"{args.threads} threads, {meta['cpu_model']}, commit {commit}, {meta['date']}.", "",
             "| workload | " + " | ".join(libs) + " | jmeta / fastest peer | jmeta compile (s) "
             "| jmeta task map, conv |",
             "|---|" + "---|" * (len(libs) + 3)]
    for s in summary:
        cells = [f"{s['steps_per_sec'].get(lib):.3g}" if s["steps_per_sec"].get(lib) else "-"
                 for lib in libs]
        ratio = f"{s['ratio_vs_fastest_peer']:.2f}x ({s['fastest_peer']})" \
            if s["ratio_vs_fastest_peer"] else "-"
        comp = f"{s['jmeta_compile_s']:.1f}" if s["jmeta_compile_s"] else "-"
        lines.append(f"| {s['workload']} | " + " | ".join(cells) + f" | {ratio} | {comp} "
                     f"| {s.get('jmeta_task_map') or '-'} |")
    (out / "peers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
