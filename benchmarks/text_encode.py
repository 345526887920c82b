"""Texts per second of the frozen all-MiniLM-L6-v2 encoder: jmeta against sentence-transformers
on the same BANKING77 texts, the same CPU, one after the other.

    .venv/bin/python benchmarks/text_encode.py [--texts 960] [--max-length 32] \\
        [--batches 80,256] [--reps 3] [--peer-python .venv-peers/bin/python] [--data-dir DIR]

(``.venv-peers`` needs ``pip install sentence-transformers``.) Paths timed, each over all texts
(warm-up, including every compile, excluded; median of ``--reps``):

* jmeta ``padded``: ``bert_lora(targets=())`` (the frozen encoder, mean pooling, unit norm)
  jitted on ``[B, max_length]`` ids in the texts' order: the shape an episode gives it in
  ``jmeta eval``;
* jmeta ``bucketed``: the texts sorted by length and each batch cut to its longest text,
  rounded up to a multiple of 8 tokens (at most ``max_length / 8`` shapes, so as many
  compiles); the embeddings are the same, because padding is masked;
* sentence-transformers ``encode`` (which sorts by length and pads each batch to its longest)
  and its BERT on the same ``padded`` batches (``benchmarks/peers/st_encode.py``).

and, with ``--episodes N`` (default 300), ``jmeta.train.evaluate`` of the frozen-encoder
ProtoNets (``configs/banking77_frozen.py:5w1s``, 80 texts an episode) on N test episodes, once
embedding every episode's texts (``embed_once=False``) and once each distinct text
(``jmeta.train.EmbeddingCache``, the default), compiles included, with the scores compared
episode by episode.

It also reports each jmeta program's FLOPs (XLA's cost analysis) and the rate achieved, the
share of padding in the padded batches, and the largest difference between jmeta's and
sentence-transformers' embeddings. Results: ``benchmarks/results/<hardware>/text_encode.{json,md}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, results_dir  # noqa: E402

from jmeta.data import default_bert_path, tokenize  # noqa: E402
from jmeta.models import bert_lora  # noqa: E402
from jmeta.train import environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_texts(data_dir: Path, n: int) -> list[str]:
    path = data_dir / "banking77" / "test.csv"
    if not path.is_file():
        raise SystemExit(f"text_encode: {path} not found; pass --data-dir (the folder holding "
                         f"banking77/).")
    with path.open(newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    rng = np.random.default_rng(0)
    return [texts[i] for i in rng.permutation(len(texts))[:n]]


def timed(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def meta_test(episodes: int, data_dir: str) -> dict:
    """``evaluate`` on ``episodes`` frozen-encoder ProtoNets episodes, per episode and once per
    distinct text."""
    from jmeta.train import evaluate, load_config, train

    cfg = load_config(str(ROOT / "configs" / "banking77_frozen.py:5w1s"),
                      [f"data.data_dir={Path(data_dir).absolute()}", "eval.tasks=2"])
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train(cfg, run, progress=False)
        rows, scores = [], {}
        for path, once in (("each episode's texts", False), ("each distinct text once", True)):
            t = time.perf_counter()
            res = evaluate(run, num_tasks=episodes, embed_once=once)
            s = time.perf_counter() - t
            r = res["results"]["protonets"]["1"]
            scores[once] = res["per_task"]["protonets"]["1"]
            texts = episodes * res["ways"] * (res["k_shot"] + res["query_points"])
            rows.append(dict(path=path, seconds=s, texts_per_s=texts / s, mean=r["mean"],
                             ci95=r["ci95"], eval_s=res["eval_s"]))
    return dict(episodes=episodes, texts=texts, rows=rows,
                same_scores=scores[False] == scores[True])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=960)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--batches", default="80,256")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--peer-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=None, help="folder (default benchmarks/results/<hardware>)")
    p.add_argument("--episodes", type=int, default=300,
                   help="meta-test episodes of configs/banking77_frozen.py:5w1s (0: skip)")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    texts = load_texts(Path(args.data_dir), args.texts)
    L = args.max_length
    ids = tokenize(texts, max_length=L)
    lengths = (ids != 0).sum(1)
    model = bert_lora(targets=(), max_length=L)
    params = model.init(jax.random.key(0))
    fn = jax.jit(model.apply)

    rows, flops = [], {}

    def compiled_flops(shape) -> float:
        if shape not in flops:
            c = fn.lower(params, jax.ShapeDtypeStruct(shape, jnp.int32)).compile()
            cost = c.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            flops[shape] = float(cost.get("flops", 0.0))
        return flops[shape]

    for batch in batches:
        chunks = [ids[i:i + batch] for i in range(0, len(ids), batch)]
        padded = lambda: [fn(params, c).block_until_ready() for c in chunks]
        s = timed(padded, args.reps)
        f = sum(compiled_flops(c.shape) for c in chunks)
        rows.append(dict(library="jmeta", path="padded", batch=batch, seconds=s,
                         texts_per_s=len(texts) / s, gflop=f / 1e9, gflops_per_s=f / s / 1e9,
                         tokens=int(sum(c.size for c in chunks))))
        order = np.argsort(lengths, kind="stable")
        buckets = []
        for i in range(0, len(order), batch):
            sel = order[i:i + batch]
            cut = min(L, int(-(-lengths[sel].max() // 8) * 8))
            buckets.append(ids[sel, :cut])
        bucketed = lambda: [fn(params, b).block_until_ready() for b in buckets]
        s = timed(bucketed, args.reps)
        f = sum(compiled_flops(b.shape) for b in buckets)
        rows.append(dict(library="jmeta", path="bucketed", batch=batch, seconds=s,
                         texts_per_s=len(texts) / s, gflop=f / 1e9, gflops_per_s=f / s / 1e9,
                         tokens=int(sum(b.size for b in buckets)),
                         shapes=sorted({b.shape[1] for b in buckets})))
        # same values: padding is masked
        emb_b = np.concatenate([np.asarray(fn(params, b)) for b in buckets])[np.argsort(order)]
        emb_p = np.concatenate([np.asarray(fn(params, c)) for c in chunks])
        rows[-1]["max_diff_to_padded"] = float(np.abs(emb_b - emb_p).max())

    peer = None
    if Path(args.peer_python).exists():
        with tempfile.TemporaryDirectory() as tmp:
            spec = Path(tmp) / "spec.json"
            spec.write_text(json.dumps(dict(model=str(default_bert_path()), texts=texts,
                                            max_length=L, batches=batches,
                                            threads=os.cpu_count(), reps=args.reps)))
            out = Path(tmp) / "st.npz"
            subprocess.run([args.peer_python, str(ROOT / "benchmarks/peers/st_encode.py"),
                            "--spec", str(spec), "--out", str(out)], check=True)
            peer = json.loads(out.with_suffix(".json").read_text())
            st_emb = np.load(out)["embeddings"]
        for r in peer["rows"]:
            rows.append(dict(library="sentence-transformers", **r))
        emb = np.asarray(fn(params, ids))
        peer["max_abs_diff"] = float(np.abs(emb - st_emb).max())
    else:
        print(f"text_encode: no peer at {args.peer_python}; jmeta only.", file=sys.stderr)

    metatest = meta_test(args.episodes, args.data_dir) if args.episodes else None

    real = int(lengths.sum())
    res = dict(texts=len(texts), max_length=L, real_tokens=real, mean_length=real / len(texts),
               padding_share=1 - real / ids.size, rows=rows, peer=peer, meta_test=metatest,
               commit=commit(), environment=environment(),
               date=time.strftime("%Y-%m-%dT%H:%M:%S"))
    out = Path(args.out) if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_encode.json").write_text(json.dumps(res, indent=1))
    lines = [f"# Frozen all-MiniLM-L6-v2: texts/s, jmeta and sentence-transformers", "",
             f"{len(texts)} BANKING77 test texts (mean {res['mean_length']:.1f} tokens with "
             f"[CLS]/[SEP]; {100 * res['padding_share']:.0f}% of a {L}-token batch is padding); "
             f"median of {args.reps} passes after a warm-up; one library at a time on all "
             f"{os.cpu_count()} cores; commit {res['commit']}, {res['date']}, "
             f"jax {jax.__version__}"
             + (f", torch {peer['torch']} ({peer['threads']} threads), sentence-transformers "
                f"{peer['sentence_transformers']}; largest |difference| of the embeddings "
                f"{peer['max_abs_diff']:.1e}" if peer else "") + ".", "",
             "| library | path | batch | texts/s | tokens computed | GFLOP/s (XLA's count) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['library']} | {r['path']} | {r['batch']} | {r['texts_per_s']:.0f} | "
                     f"{r.get('tokens', '-')} | "
                     + (f"{r['gflops_per_s']:.0f}" if "gflops_per_s" in r else "-") + " |")
    if metatest:
        m = metatest
        lines += ["", f"Meta-test: `jmeta.train.evaluate` of configs/banking77_frozen.py:5w1s on "
                  f"{m['episodes']} test episodes ({m['texts']} texts), "
                  f"compiles included; the same per-episode scores: {m['same_scores']}.", "",
                  "| path | seconds | texts/s | accuracy (mean +- 95% CI) |", "|---|---|---|---|"]
        for r in m["rows"]:
            lines.append(f"| {r['path']} | {r['seconds']:.1f} | {r['texts_per_s']:.0f} | "
                         f"{r['mean']:.2f} +- {r['ci95']:.2f} |")
    (out / "text_encode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
