"""sentence-transformers' side of ``benchmarks/text_encode.py``: texts/s of ``encode`` and of
the underlying BERT on padded batches, on the texts and batch sizes the caller names.

    .venv-peers/bin/python benchmarks/peers/st_encode.py --spec SPEC.json --out OUT.npz

``SPEC.json``: ``{"model": folder, "texts": [...], "max_length": 32, "batches": [80, 256],
"threads": 2, "reps": 3}``. Per batch size it times

* ``encode``: ``SentenceTransformer(folder).encode(texts, batch_size=B)`` with
  ``max_seq_length = max_length``: the library's own path (it sorts the texts by length and pads
  each batch to its longest text);
* ``padded``: the same network on batches tokenized to exactly ``max_length`` tokens, in the
  texts' order (what a fixed-shape episode gives the encoder).

Each is warmed up once, then timed ``reps`` times over all texts; the median is kept. Writes
``OUT.npz`` (the ``encode`` embeddings) and ``OUT.json`` (timings, versions).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    torch.set_num_threads(int(spec["threads"]))
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(spec["model"], device="cpu")
    model.max_seq_length = int(spec["max_length"])
    texts, reps = spec["texts"], int(spec["reps"])
    bert, tok = model[0].auto_model, model[0].tokenizer

    def padded(batch: int) -> None:
        with torch.inference_mode():
            for i in range(0, len(texts), batch):
                enc = tok(texts[i:i + batch], padding="max_length", truncation=True,
                          max_length=int(spec["max_length"]), return_tensors="pt")
                out = bert(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
                e = (out * m).sum(1) / m.sum(1)
                torch.nn.functional.normalize(e, dim=-1)

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    rows = []
    for batch in spec["batches"]:
        s = timed(lambda: model.encode(texts, batch_size=batch, normalize_embeddings=True))
        rows.append(dict(path="encode", batch=batch, seconds=s, texts_per_s=len(texts) / s))
        s = timed(lambda: padded(batch))
        rows.append(dict(path="padded", batch=batch, seconds=s, texts_per_s=len(texts) / s))
    emb = model.encode(texts, batch_size=spec["batches"][0], normalize_embeddings=True)
    np.savez(args.out, embeddings=np.asarray(emb, np.float32))
    Path(args.out).with_suffix(".json").write_text(json.dumps(dict(
        rows=rows, torch=torch.__version__, sentence_transformers=sentence_transformers.__version__,
        threads=torch.get_num_threads()), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
