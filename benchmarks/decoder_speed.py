"""Meta-steps per second, compile time and peak memory of MAML and MetaICL on a tiny Llama
(jmeta's side of ``benchmarks/peers/l2l_decoder_maml.py``; results in
``benchmarks/results/cpu-2core/decoder_maml_peer.md``).

    .venv/bin/python benchmarks/decoder_speed.py [--algorithms maml,maml_fo,metaicl] \\
        [--backbone DIR] [--xla-threads 1] [--reps 5] [--min-rep-s 3] [--json OUT]
    .venv/bin/python benchmarks/decoder_speed.py --sitting [--rounds 3] \\
        [--peer-python /work/peerenv/bin/python]       # both sides; writes the results files

``--sitting`` saves the peer's backbone, runs ``l2l_decoder_maml.py --probe`` (which learn2learn
variants run, and the errors of those that do not), then per round: *pinned*, each pair of
:data:`PAIRS` at the same time, jmeta on core 0 (``--xla-threads 1``) and PyTorch on core 1
(1 thread); *alternating*, the same runs one at a time on both cores (2 threads each). Each run
is its own process. It writes ``--out/--name`` ``.json`` (every run) and ``.md`` (the tables).

The shapes, token ids, labels and the initial LoRA adapters and head are
``benchmarks/peers/_decoder_workload.py``'s, shared with the PyTorch peer: a Llama with hidden
64, 2 layers, 4 heads (2 key/value heads), intermediate 128, vocab 128, 64 positions; LoRA rank 8,
alpha 16 on q and v; 5-way 1-shot, 5 queries per class, 16 tokens per example, 8 tasks per
meta-batch, Adam 1e-3 on the adapters (and the head); the backbone frozen.

* ``maml``: ``jmeta.models.decoder(cfg, output="classes", num_classes=5, lora_targets=("q",
  "v"), lora_rank=8)`` under ``jmeta.algorithms.maml`` (second order, 1 inner SGD step at 0.1 on
  the adapters and the head: the model's non-frozen parameters), cross-entropy; ``maml_fo``
  the same, first order.
* ``metaicl``: ``jmeta.algorithms.metaicl(decoder(cfg, output="logits", ...), ways=5,
  labels=(3, 4, 5, 6, 7), scoring="direct")``: the 5 support examples, each followed by its
  label's token, are the prompt before every query. That prompt is 5 * (16 + 1) + 16 = 101
  tokens, more than the 64 positions of the MAML model, so MetaICL runs the same weights with
  ``max_positions=128`` (RoPE has no position table: only the context check changes).

``--backbone DIR`` loads the frozen Llama that ``l2l_decoder_maml.py --save-backbone DIR``
wrote (the same weights as the peer); without it the backbone is random (same shapes).
``--xla-threads 1`` sets ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`` before JAX starts (for a run pinned to one core).

Method (as ``jmeta bench``): ``make_meta_step`` (jitted, donating), ``compile_s`` =
``step.trace(...).lower().compile()`` wall time, one warm-up call (plus two more whose losses
are kept, to compare with the peer's), then ``--reps`` windows of at least ``--min-rep-s``
seconds; meta-steps/s is the median over windows. Memory: ``ru_maxrss`` of the process (peak
resident set, imports, compile and the steps included) and its excess over ``VmRSS`` just
before compiling (the step's working set plus the compiler's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))

import _decoder_workload as W  # noqa: E402  (numpy only)

SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
VERBALIZERS = (3, 4, 5, 6, 7)
METAICL_POSITIONS = 128


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _backbone(args, cfg_dict):
    from jmeta.models import DecoderConfig, load_decoder

    if args.backbone:
        cfg, params = load_decoder(args.backbone)
        return cfg, params, f"loaded from {args.backbone}"
    return DecoderConfig.from_dict(cfg_dict), None, "random (init_backbone)"


def build(algorithm: str, args):
    """``(learner, optimizer, initial state, batch, notes)`` of one algorithm."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from jmeta.algorithms import maml
    from jmeta.core import Batch, Episode, cross_entropy_loss, init_state
    from jmeta.models import decoder
    from jmeta.train import Config, build_optimizer

    cfg, body, source = _backbone(args, W.LLAMA)
    lora = dict(lora_targets=W.LORA_TARGETS, lora_rank=W.LORA_RANK, lora_alpha=W.LORA_ALPHA)
    notes = {"backbone": source}
    if algorithm in ("maml", "maml_fo"):
        model = decoder(cfg, body, output="classes", num_classes=W.WAYS, **lora)
        first = algorithm == "maml_fo"
        learner = maml(model, inner_lr=W.INNER_LR, inner_steps=W.INNER_STEPS,
                       loss_fn=cross_entropy_loss, first_order=first,
                       adapt_filter=lambda path: not model.frozen(path))
        notes.update(second_order=not first, inner_steps=W.INNER_STEPS, inner_lr=W.INNER_LR,
                     adapted="lora + head (the non-frozen parameters)")
    elif algorithm == "metaicl":
        from jmeta.algorithms import metaicl

        cfg = dataclasses.replace(cfg, max_positions=METAICL_POSITIONS)
        model = decoder(cfg, body, output="logits", **lora)
        learner = metaicl(model, ways=W.WAYS, labels=VERBALIZERS, scoring="direct",
                          pad_token_id=None)
        prompt = W.WAYS * W.SHOTS * (W.SEQ_LEN + 1) + W.SEQ_LEN
        notes.update(scoring="direct", labels=list(VERBALIZERS), prompt_tokens=prompt,
                     max_positions=METAICL_POSITIONS)
    else:
        raise SystemExit(f"unknown algorithm {algorithm!r}; choose maml, maml_fo or metaicl")
    tx = build_optimizer(Config(optimizer=dict(name="adam", lr=W.OUTER_LR)), model)
    state = init_state(learner, tx, jax.random.key(0))
    start = W.initial_adapters()  # the peer's starting adapters and head
    params = dict(state.params["model"])
    params["lora"] = jax.tree.map(jnp.asarray, start["lora"])
    if "head" in params:
        params["head"] = jax.tree.map(jnp.asarray, start["head"])
    state = state._replace(params=dict(state.params, model=params))
    data = W.task_batch()
    batch = Episode(Batch(jnp.asarray(data["xs"], jnp.int32), jnp.asarray(data["ys"], jnp.int32)),
                    Batch(jnp.asarray(data["xq"], jnp.int32), jnp.asarray(data["yq"], jnp.int32)))
    return learner, tx, state, batch, notes


def measure(algorithm: str, args) -> dict:
    import jax

    from jmeta.bench import peak_host_rss_mb
    from jmeta.core import make_meta_step

    learner, tx, state, batch, notes = build(algorithm, args)
    step = make_meta_step(learner, tx, task_map=args.task_map)
    jax.block_until_ready((state, batch))
    rss_before = current_rss_mb()
    t = time.perf_counter()
    compiled = step.trace(state, batch).lower().compile()
    compile_s = time.perf_counter() - t
    rss_compiled = peak_host_rss_mb()
    holder = {"state": state}

    def call():
        holder["state"], holder["metrics"] = compiled(holder["state"], batch)
        return holder["state"]

    losses = []
    for _ in range(3):  # warm-up; the first three losses are the peer's to compare
        jax.block_until_ready(call())
        losses.append(float(holder["metrics"]["loss"]))
    t = time.perf_counter()
    jax.block_until_ready(call())
    one = time.perf_counter() - t
    per_rep = max(1, math.ceil(args.min_rep_s / max(one, 1e-9)))
    rates = []
    for _ in range(args.reps):
        t = time.perf_counter()
        for _ in range(per_rep):
            out = call()
        jax.block_until_ready(out)
        rates.append(per_rep / (time.perf_counter() - t))
    rates.sort()
    peak = peak_host_rss_mb()
    median = statistics.median(rates)
    n_train = sum(x.size for k, v in holder["state"].params["model"].items() if k != "backbone"
                  for x in jax.tree.leaves(v))
    return {
        "library": "jmeta", "algorithm": algorithm, **notes,
        "task_map": args.task_map, "compile_s": compile_s, "warmup": 4, "reps": args.reps,
        "steps_per_rep": per_rep, "steps_per_sec": median, "steps_per_sec_min": rates[0],
        "steps_per_sec_max": rates[-1], "tasks_per_sec": median * W.META_BATCH, "rates": rates,
        "peak_rss_mb": peak, "rss_before_compile_mb": rss_before,
        "peak_rss_after_compile_mb": rss_compiled, "peak_rss_delta_mb": peak - rss_before,
        "memory": "ru_maxrss (peak RSS of the process) and its excess over VmRSS before "
                  "compiling",
        "loss_first": losses[0], "losses_first3": losses, "loss_last": float(
            holder["metrics"]["loss"]),
        "trainable_parameters": int(n_train),
    }


# ---------------------------------------------------------------------------------------------
# One sitting: both sides, pinned side by side, then alternating on both cores.

PEER = ROOT / "benchmarks" / "peers" / "l2l_decoder_maml.py"
# (jmeta algorithm, peer variant) pairs; in the pinned rounds each pair runs at the same time.
PAIRS = [("maml", ("--attn", "eager")),                       # second order, both sides
         ("metaicl", ("--attn", "sdpa-math")),                # learn2learn has no MetaICL
         ("maml_fo", ("--attn", "sdpa", "--first-order"))]


def _peer_name(flags) -> str:
    attn = flags[flags.index("--attn") + 1]
    return f"l2l {'fomaml' if '--first-order' in flags else 'maml'} attn={attn}"


def _last_json(text: str):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _launch(cmd, env):
    import subprocess

    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _collect(proc, timeout: float, extra: dict) -> dict:
    import subprocess

    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return dict(extra, error=f"timed out after {timeout:.0f} s")
    row = _last_json(out)
    if proc.returncode != 0 or row is None:
        return dict(extra, error=(err.strip().splitlines() or ["no output"])[-1][:400])
    if "rows" in row:  # decoder_speed.py's own summary line
        row = row["rows"][0]
    return dict(row, **extra, loadavg_after=os.getloadavg()[0])


def _jobs(pair, mode: str, args, backbone: str):
    """The two commands of one pair: ``(label, argv, env)`` for jmeta and the peer."""
    algorithm, flags = pair
    threads = 1 if mode == "pinned" else 2
    base = dict(os.environ, JAX_PLATFORMS="cpu")
    base.pop("XLA_FLAGS", None)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        base[var] = str(threads)
    j_cpus, p_cpus = ("0", "1") if mode == "pinned" else ("0,1", "0,1")
    jm = ["taskset", "-c", j_cpus, sys.executable, str(Path(__file__).resolve()),
          "--algorithms", algorithm, "--backbone", backbone, "--xla-threads",
          "1" if mode == "pinned" else "0", "--reps", str(args.reps),
          "--min-rep-s", str(args.min_rep_s)]
    peer = ["taskset", "-c", p_cpus, args.peer_python, str(PEER), "--threads", str(threads),
            *flags, "--reps", str(args.reps), "--min-rep-s", str(args.min_rep_s)]
    return [(f"jmeta {algorithm}", jm, base), (_peer_name(flags), peer, base)]


def sitting(args) -> int:
    import datetime
    import subprocess
    import tempfile

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = tempfile.mkdtemp(prefix="decoder_maml_peer_")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([args.peer_python, str(PEER), "--save-backbone", backbone], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    probe = subprocess.run(["taskset", "-c", "1", args.peer_python, str(PEER), "--probe",
                            "--threads", "1", "--json", f"{backbone}/probe.json"], cwd=ROOT,
                           env=env, capture_output=True, text=True)
    probe_rows = (json.loads(Path(f"{backbone}/probe.json").read_text())["probe"]
                  if probe.returncode == 0 else [{"error": probe.stderr[-400:]}])
    versions = subprocess.run(
        [args.peer_python, "-c", "import torch, transformers, importlib.metadata as m; "
         "print(torch.__version__, transformers.__version__, m.version('learn2learn'))"],
        capture_output=True, text=True).stdout.split()
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=ROOT, capture_output=True, text=True).stdout.strip())
    meta = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "commit": git,
            "tracked_files_modified": dirty, "rounds": args.rounds, "reps": args.reps,
            "min_rep_s": args.min_rep_s, "cpu_count": os.cpu_count(),
            "torch": versions[0] if versions else None,
            "transformers": versions[1] if len(versions) > 1 else None,
            "learn2learn": versions[2] if len(versions) > 2 else None,
            "peer_python": args.peer_python, "jmeta_python": sys.executable,
            "shapes": W.shapes(),
            "command": " ".join([Path(sys.executable).name, "benchmarks/decoder_speed.py",
                                 *sys.argv[1:]])}
    runs = []

    def save():
        data = {"meta": meta, "probe": probe_rows, "summary": summarize(runs), "runs": runs}
        (out / f"{args.name}.json").write_text(json.dumps(data, indent=1))
        md = out / f"{args.name}.md"
        notes = md.read_text().split(NOTES, 1) if md.exists() else []
        md.write_text(markdown(data) + (f"\n{NOTES}{notes[1]}" if len(notes) == 2 else ""))

    for r in range(args.rounds):
        for mode in args.modes.split(","):
            for pair in PAIRS:
                jobs = _jobs(pair, mode, args, backbone)
                if mode == "pinned":  # both at once, each on its own core
                    procs = [(label, _launch(cmd, env), cmd, os.getloadavg()[0])
                             for label, cmd, env in jobs]
                    for label, proc, cmd, load in procs:
                        runs.append(_collect(proc, args.timeout, dict(
                            mode=mode, round=r + 1, label=label, cmd=" ".join(cmd[3:]),
                            taskset=cmd[2], loadavg_before=load)))
                        print(_line(runs[-1]), flush=True)
                else:  # one after the other, each on both cores
                    for label, cmd, env in jobs:
                        load = os.getloadavg()[0]
                        runs.append(_collect(_launch(cmd, env), args.timeout, dict(
                            mode=mode, round=r + 1, label=label, cmd=" ".join(cmd[3:]),
                            taskset=cmd[2], loadavg_before=load)))
                        print(_line(runs[-1]), flush=True)
                save()
    save()
    print(f"wrote {out / args.name}.json")
    return 0


def _line(row: dict) -> str:
    sps = row.get("steps_per_sec")
    return (f"{row['mode']:9s} round {row['round']} {row['label']:26s} "
            + (f"{sps:8.3f} steps/s  peak {row.get('peak_rss_mb', 0):7.0f} MB"
               + (f"  compile {row['compile_s']:.1f} s" if row.get("compile_s") else "")
               if sps else f"error: {row.get('error')}"))


def summarize(runs: list[dict]) -> list[dict]:
    """Per (mode, label): median and range over rounds of each run's median steps/s, compile
    time and peak RSS."""
    groups: dict = {}
    for row in runs:
        groups.setdefault((row["mode"], row["label"]), []).append(row)
    out = []
    for (mode, label), rows in groups.items():
        ok = [x for x in rows if x.get("steps_per_sec")]

        def stat(key, ok=ok):
            vals = [x[key] for x in ok if x.get(key) is not None]
            return ({"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                     "n": len(vals)} if vals else None)

        out.append({"mode": mode, "label": label, "runs": len(rows), "ok": len(ok),
                    "errors": [x["error"] for x in rows if "error" in x],
                    "steps_per_sec": stat("steps_per_sec"), "compile_s": stat("compile_s"),
                    "first_step_s": stat("first_step_s"), "peak_rss_mb": stat("peak_rss_mb"),
                    "peak_rss_delta_mb": stat("peak_rss_delta_mb"),
                    "loadavg_before": stat("loadavg_before")})
    return out


def _rng(st, fmt="{:.3g}") -> str:
    if not st:
        return "-"
    mid = fmt.format(st["median"])
    return mid if st["n"] == 1 else f"{mid} ({fmt.format(st['min'])}-{fmt.format(st['max'])})"


MODE_TEXT = {"pinned": "pinned, at the same time: jmeta `taskset -c 0` (XLA on one thread), "
                       "PyTorch `taskset -c 1` (1 thread)",
             "alternating": "alternating, one process at a time on both cores (2 threads each)"}


NOTES = "## Notes"  # a hand-written section of the .md that a new sitting keeps


def markdown(data: dict) -> str:
    """The tables of a sitting: speed, compile time and memory per mode, the ratios, and what
    each learn2learn variant did."""
    meta, summary = data["meta"], data["summary"]
    lines = ["# MAML and MetaICL on a tiny Llama: jmeta beside learn2learn (2-core CPU)", "",
             f"Generated by `{meta['command']}` on {meta['date']}, commit {meta['commit']}"
             + (" (tracked files modified in the working tree)"
                if meta.get("tracked_files_modified") else "")
             + f"; jax {next((r['jax'] for r in data['runs'] if r.get('jax')), '?')}"
             + f", torch {meta['torch']}, transformers {meta['transformers']}, learn2learn "
             f"{meta['learn2learn']}. {meta['rounds']} rounds, each run the median of "
             f"{meta['reps']} windows of at least {meta['min_rep_s']} s; cells are the median "
             "over rounds (min-max in brackets).", ""]
    for mode in dict.fromkeys(s["mode"] for s in summary):
        lines += [f"**{MODE_TEXT.get(mode, mode)}**", "",
                  "| run | meta-steps/s | tasks/s | compile (s) | first step (s) | peak RSS (MB) "
                  "| RSS growth (MB) | load avg before | ok/runs |",
                  "|---|---|---|---|---|---|---|---|---|"]
        rows = {s["label"]: s for s in summary if s["mode"] == mode}
        for label, s in rows.items():
            sps = s["steps_per_sec"]
            tps = f"{sps['median'] * W.META_BATCH:.3g}" if sps else "-"
            lines.append(f"| {label} | {_rng(sps)} | {tps} | {_rng(s['compile_s'], '{:.1f}')} | "
                         f"{_rng(s['first_step_s'], '{:.2f}')} | "
                         f"{_rng(s['peak_rss_mb'], '{:.0f}')} | "
                         f"{_rng(s['peak_rss_delta_mb'], '{:.0f}')} | "
                         f"{_rng(s['loadavg_before'], '{:.1f}')} | {s['ok']}/{s['runs']} |")
        for mine, peer in (("jmeta maml", "l2l maml attn=eager"),
                           ("jmeta maml", "l2l maml attn=sdpa-math"),
                           ("jmeta maml_fo", "l2l fomaml attn=sdpa")):
            a, b = rows.get(mine, {}).get("steps_per_sec"), rows.get(peer, {}).get("steps_per_sec")
            if a and b:
                lines.append(f"\n{mine} / {peer}: **{a['median'] / b['median']:.2f}x**")
        lines.append("")
    lines += ["**learn2learn variants, one meta-step each** (`l2l_decoder_maml.py --probe`, "
              "1 thread)", "", "| variant | outcome |", "|---|---|"]
    for p in data["probe"]:
        if p.get("ok"):
            what = f"runs (first-step query loss {p['loss_first']:.7f})"
        else:
            what = f"`{p.get('error')}` at {p.get('raised_at', '?')}"
            if p.get("printed"):
                what += "; printed before it: " + "; ".join(f"`{x}`" for x in p["printed"])
        lines.append(f"| {p.get('variant', '?')} | {what} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algorithms", default="maml,metaicl",
                    help="comma-separated: maml, maml_fo, metaicl (one process each)")
    ap.add_argument("--backbone", help="a Hugging Face Llama folder (l2l_decoder_maml.py "
                                       "--save-backbone); default: random weights")
    ap.add_argument("--xla-threads", type=int, choices=(0, 1), default=0,
                    help="1: XLA's CPU runtime on one thread (set before JAX starts)")
    ap.add_argument("--task-map", default="auto")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--min-rep-s", type=float, default=3.0)
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--sitting", action="store_true",
                    help="run jmeta and the learn2learn peer side by side; write --out/--name")
    ap.add_argument("--peer-python", default="/work/peerenv/bin/python")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="pinned,alternating")
    ap.add_argument("--timeout", type=float, default=900.0, help="per process, seconds")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu-2core"))
    ap.add_argument("--name", default="decoder_maml_peer")
    args = ap.parse_args(argv)
    if args.sitting:
        return sitting(args)
    algorithms = [a for a in args.algorithms.split(",") if a]
    if len(algorithms) > 1:  # one process per algorithm: each peak RSS is its own
        import subprocess

        rows = []
        for algorithm in algorithms:
            argv2 = [a for a in (argv if argv is not None else sys.argv[1:])]
            i = argv2.index("--algorithms") if "--algorithms" in argv2 else None
            if i is not None:
                del argv2[i:i + 2]
            if "--json" in argv2:
                j = argv2.index("--json")
                del argv2[j:j + 2]
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()),
                                   "--algorithms", algorithm, *argv2], capture_output=True,
                                  text=True)
            row = _last_json(done.stdout)
            row = row["rows"][0] if row and "rows" in row else {
                "algorithm": algorithm, "error": done.stderr.strip()[-400:]}
            rows.append(row)
        result = {"rows": rows}
        print(json.dumps(result), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return 0
    if args.xla_threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                                   + SINGLE_THREAD_FLAGS).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jaxlib

    from jmeta.bench import cpu_model, thread_settings

    try:
        row = measure(algorithms[0], args)
    except Exception as e:  # noqa: BLE001  recorded in the results, not hidden
        row = {"library": "jmeta", "algorithm": algorithms[0],
               "error": f"{type(e).__name__}: {str(e).strip()[:500]}"}
    row.update(jax=jax.__version__, jaxlib=jaxlib.__version__,
               python=platform.python_version(), cpu_model=cpu_model(),
               threads=thread_settings(), affinity=sorted(os.sched_getaffinity(0)))
    result = {"rows": [row], "shapes": W.shapes()}
    print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
