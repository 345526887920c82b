"""The three passes of each Conv-4 convolution, timed alone: forward, input gradient, weight
gradient, for XLA's native convolution and jmeta's matmul form (``im2col_conv``).

Shapes are those of the ProtoNets Omniglot workloads (``protonets_omniglot_5w1s``: 80 images of
28x28x1, 64 filters, 3x3, max-pooling between the layers, so the four layers see 28, 14, 7 and 3
pixels square). Each pass is jitted alone and timed after a warm-up (best of ``--reps`` rounds
of 10 calls); the achieved GFLOP/s counts ``2 * N * H * W * 9 * C_in * C_out`` per pass.

    python benchmarks/profile_conv.py --images 80
    # writes benchmarks/results/<hw>/profile_conv.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import commit, hardware_name, results_dir  # noqa: E402
from jmeta.models import im2col_conv  # noqa: E402

LAYERS = ((28, 1), (14, 64), (7, 64), (3, 64))  # (spatial size, input channels)
DIMS = ("NHWC", "HWIO", "NHWC")


def _best_ms(fn, *args, reps: int) -> float:
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(10):
            out = compiled(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / 10)
    return 1000 * best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=80, help="batch size (80: ProtoNets 5w1s)")
    ap.add_argument("--filters", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", help="results folder (default benchmarks/results/<hardware>)")
    args = ap.parse_args(argv)

    rows = []
    for impl, conv in (("xla", lax.conv_general_dilated), ("im2col", im2col_conv)):
        for size, cin in LAYERS:
            cin = cin if cin == 1 else args.filters
            x = jax.random.normal(jax.random.key(0), (args.images, size, size, cin))
            w = jax.random.normal(jax.random.key(1), (3, 3, cin, args.filters))

            def f(x, w, conv=conv):
                return conv(x, w, (1, 1), "SAME", dimension_numbers=DIMS)

            ct = f(x, w)
            gflop = 2 * args.images * size * size * 9 * cin * args.filters / 1e9
            passes = {
                "forward": _best_ms(f, x, w, reps=args.reps),
                "input gradient": _best_ms(
                    lambda x, w, ct: jax.vjp(lambda x: f(x, w), x)[1](ct)[0], x, w, ct,
                    reps=args.reps),
                "weight gradient": _best_ms(
                    lambda x, w, ct: jax.vjp(lambda w: f(x, w), w)[1](ct)[0], x, w, ct,
                    reps=args.reps),
            }
            for name, ms in passes.items():
                rows.append(dict(impl=impl, size=size, in_channels=cin, out_channels=args.filters,
                                 images=args.images, pass_=name, ms=ms, gflop=gflop,
                                 gflops_per_s=gflop / (ms / 1000)))
            print(f"{impl:7s} {size:3d}x{size} x{cin:3d}: " + "  ".join(
                f"{k} {v:7.2f} ms" for k, v in passes.items()), flush=True)

    meta = dict(hardware=hardware_name(), commit=commit(), jax=jax.__version__, reps=args.reps,
                images=args.images, date=time.strftime("%Y-%m-%d"))
    out = Path(args.out) if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_conv.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    lines = [f"# Conv-4's convolutions, pass by pass ({args.images} images, "
             + f"{args.filters} filters)", "",
             f"{meta['hardware']}, jax {jax.__version__}, commit {meta['commit']}, "
             f"{meta['date']}; each pass jitted alone, best of {args.reps} rounds of 10 calls.", "",
             "| convolution | layer (pixels x channels in) | pass | ms | GFLOP/s |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['size']}x{r['size']} x {r['in_channels']} | "
                     f"{r['pass_']} | {r['ms']:.2f} | {r['gflops_per_s']:.1f} |")
    (out / "profile_conv.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'profile_conv.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
