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
    python benchmarks/compare_peers.py --device cuda --peers-python python3   # on a GPU

``--device cpu`` (the default) keeps jmeta on JAX's CPU backend (``JAX_PLATFORMS=cpu``) and the
peers on PyTorch's CPU; ``--device cuda`` runs jmeta on JAX's default accelerator and the peers
with ``run_peer.py --device cuda``.

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

from jmeta.bench import cpu_model  # noqa: E402
from jmeta.train import git_commit  # noqa: E402


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


def _env(threads: int, device: str = "cpu") -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    if device == "cpu":  # on an accelerator machine too: both sides on the CPU
        env["JAX_PLATFORMS"] = "cpu"
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", help="comma-separated names (default: all)")
    ap.add_argument("--libraries", default=",".join(LIBRARIES))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu: JAX's CPU backend and PyTorch CPU; cuda: both on the GPU")
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
    env = _env(args.threads, args.device)
    # The hardware's name comes from a child process, as every measurement does: JAX in this
    # process would hold GPU memory for the whole sitting.
    info = _run([sys.executable, "-m", "jmeta.bench", "_info", "--peak-n", "0"], env, args.timeout)
    if "hardware" not in info:
        raise SystemExit(f"compare_peers.py: could not start JAX ({info.get('error')}).")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / info["hardware"]
    out.mkdir(parents=True, exist_ok=True)
    # The commit of the code being measured, read once before the first run.
    commit = git_commit()
    meta = {"date": datetime.date.today().isoformat(), "commit": commit, "threads": args.threads,
            "rounds": args.rounds, "reps": args.reps, "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(), "device": args.device}
    runs: dict[str, dict[str, list[dict]]] = {n: {} for n in names}
    text = ""
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
                                       "--device", args.device,
                                       "--reps", str(args.reps)]))
            for lib, cmd in jobs:
                row = _run(cmd, env, args.timeout)
                runs[name].setdefault(lib, []).append(row)
                sps = row.get("steps_per_sec")
                print(f"round {r + 1}/{args.rounds} {name:28s} {lib:12s} "
                      + (f"{sps:10.3f} steps/s" if sps else f"error: {row.get('error')}"),
                      flush=True)
                # Rewritten after every run: a sitting stopped midway keeps what it measured.
                text = write(out, meta, summarize(runs, table), runs, libraries, rounds=r + 1)
    print(text)
    return 0


def summarize(runs: dict[str, dict[str, list[dict]]], table: dict[str, dict]) -> list[dict]:
    """Per workload: each library's median meta-steps/s over its runs, and jmeta's ratio to
    the fastest peer (``None`` until both sides have a measurement)."""
    summary = []
    for name, per_run in runs.items():
        if not per_run:
            continue
        per_lib = {}
        for lib, rows in per_run.items():
            ok = [x["steps_per_sec"] for x in rows if x.get("steps_per_sec")]
            per_lib[lib] = statistics.median(ok) if ok else None
        peers = {k: v for k, v in per_lib.items() if k != "jmeta" and v}
        best = max(peers, key=peers.get) if peers else None
        ratio = (per_lib.get("jmeta") / peers[best]) if best and per_lib.get("jmeta") else None
        compile_s = [x.get("compile_s") for x in per_run.get("jmeta", []) if x.get("compile_s")]
        jm = next((x for x in per_run.get("jmeta", []) if x.get("task_map")), {})
        how = jm.get("task_map", "") + (f", {jm['conv_impl']}" if jm.get("conv_impl") else "")
        summary.append({"workload": name, "steps_per_sec": per_lib, "fastest_peer": best,
                        "jmeta_task_map": how,
                        "ratio_vs_fastest_peer": ratio,
                        "jmeta_compile_s": statistics.median(compile_s) if compile_s else None,
                        "meta_batch": table[name]["meta_batch"]})
    return summary


def write(out: Path, meta: dict, summary: list[dict], runs: dict, libraries: list[str], *,
          rounds: int) -> str:
    """Writes ``peers.json`` and ``peers.md`` into ``out``; returns the Markdown."""
    meta = dict(meta, rounds_done=rounds)
    if meta["device"] == "cuda":
        names_seen = {row.get("device") for lib_rows in runs.values() for rows in lib_rows.values()
                      for row in rows if row.get("device") and row.get("device") != "cpu"}
        meta["gpu"] = ", ".join(sorted(names_seen)) or "unknown"
    (out / "peers.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs},
                                               indent=1))
    libs = ["jmeta"] + libraries
    lines = [f"jmeta and the PyTorch peers, meta-steps per second (median over {rounds} "
             f"alternating rounds, each the median of {meta['reps']} repetitions), "
             + (f"on {meta['gpu']} (PyTorch with --device cuda, JAX's default backend), "
                if meta["device"] == "cuda" else "")
             + f"{meta['threads']} threads, {meta['cpu_model']}, commit {meta['commit']}, "
             f"{meta['date']}.", "",
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
    text = "\n".join(lines) + "\n"
    (out / "peers.md").write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
