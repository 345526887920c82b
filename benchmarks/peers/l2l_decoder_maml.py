#!/usr/bin/env python3
"""learn2learn's MAML over a tiny Hugging Face Llama with LoRA on q and v (the PyTorch peer of
``benchmarks/decoder_speed.py``). Runs in a torch environment, never in jmeta's ``.venv``::

    PY=/work/peerenv/bin/python                        # torch 2.13 CPU, transformers, learn2learn
    $PY benchmarks/peers/l2l_decoder_maml.py --probe    # which variants run at all, and the errors
    $PY benchmarks/peers/l2l_decoder_maml.py --threads 1 [--attn eager] [--first-order] \\
        [--warmup 2] [--reps 5] [--min-rep-s 3] [--json OUT]
    $PY benchmarks/peers/l2l_decoder_maml.py --save-backbone DIR   # the weights, for jmeta

The model: transformers' ``LlamaForCausalLM`` from the config of ``_decoder_workload.LLAMA``
(hidden 64, 2 layers, 4 heads, 2 key/value heads, intermediate 128, vocab 128, 64 positions;
``torch.manual_seed(0)``), of which the ``LlamaModel`` body runs, frozen
(``requires_grad=False``); ``q_proj`` and ``v_proj`` of every layer are wrapped in a hand-written
:class:`LoRALinear` (rank 8, alpha 16: ``base(x) + alpha/rank * B(A x)``; PEFT is not used: it
would pull accelerate and psutil into the environment); a ``Linear(64, 5)`` head reads the last
token's final hidden state. The adapters and head start from ``_decoder_workload``'s numpy
draws, the token ids and labels are ``_decoder_workload.task_batch()``, so jmeta's side runs the
same numbers (``--save-backbone DIR`` writes the backbone as a Hugging Face folder that
``decoder_speed.py --backbone DIR`` loads). ``benchmarks/decoder_speed.py --sitting`` runs this
script beside jmeta's measurements and writes the results.

One meta-step is learn2learn's pattern: ``maml = l2l.algorithms.MAML(model, lr=0.1,
first_order=False, allow_nograd=...)``; per task ``learner = maml.clone()``,
``learner.adapt(support_loss)`` (1 step), ``(query_loss / 8).backward()``; then Adam(1e-3) on
the adapters and head. ``--probe`` runs one meta-step of each variant (SDPA or eager attention,
SDPA restricted to its math kernel, second or first order, ``allow_nograd`` off or on) and prints
each one's outcome or exact error.

Speed: ``--warmup`` meta-steps, then ``--reps`` windows of at least ``--min-rep-s`` seconds
each; meta-steps/s is the median over the windows (min and max too). Memory: the process's
``ru_maxrss`` (peak resident set, imports included) after the timed steps, and its excess over
the resident set just before the first meta-step (``VmRSS``): tracemalloc does not see torch's
C++ allocations, so RSS is what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _decoder_workload as W  # noqa: E402  (numpy only)


def set_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def build(attn: str, torch, nn):
    """The classifier (frozen Llama body + LoRA on q, v + head), on the CPU, float32."""
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    keys = {k: v for k, v in W.LLAMA.items() if k != "model_type"}
    impl = "sdpa" if attn == "sdpa-math" else attn
    config = LlamaConfig(**keys, use_cache=False, attn_implementation=impl)
    torch.manual_seed(W.BACKBONE_SEED)
    lm = LlamaForCausalLM(config).eval()  # no dropout in Llama; eval() for clarity
    for p in lm.parameters():
        p.requires_grad_(False)
    init = W.initial_adapters()
    scale = W.LORA_ALPHA / W.LORA_RANK

    class LoRALinear(nn.Module):
        """``base(x) + scale * x A^T B^T``; ``base`` frozen, ``A [rank, in]``, ``B [out, rank]``."""

        def __init__(self, base, a, b):
            super().__init__()
            self.base = base
            self.lora_a = nn.Parameter(torch.tensor(a.T.copy()))
            self.lora_b = nn.Parameter(torch.tensor(b.T.copy()))

        def forward(self, x):
            return self.base(x) + scale * F.linear(F.linear(x, self.lora_a), self.lora_b)

    names = {"q": "q_proj", "v": "v_proj", "k": "k_proj", "o": "o_proj"}
    for i, layer in enumerate(lm.model.layers):
        for t in W.LORA_TARGETS:
            ab = init["lora"][t]
            setattr(layer.self_attn, names[t],
                    LoRALinear(getattr(layer.self_attn, names[t]), ab["a"][i], ab["b"][i]))

    class Classifier(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body
            self.head = nn.Linear(W.LLAMA["hidden_size"], W.WAYS)
            with torch.no_grad():
                self.head.weight.copy_(torch.tensor(init["head"]["kernel"].T.copy()))
                self.head.bias.copy_(torch.tensor(init["head"]["bias"]))

        def forward(self, ids):
            hidden = self.body(input_ids=ids).last_hidden_state  # after the final norm
            return self.head(hidden[:, -1])

    return lm, Classifier(lm.model)


def make_step(model, maml, opt, batch, torch):
    import torch.nn.functional as F

    xs, ys, xq, yq = (torch.as_tensor(batch[k]) for k in ("xs", "ys", "xq", "yq"))
    tasks = xs.shape[0]

    def step() -> float:
        opt.zero_grad()
        total = 0.0
        for t in range(tasks):
            learner = maml.clone()
            for _ in range(W.INNER_STEPS):
                learner.adapt(F.cross_entropy(learner(xs[t]), ys[t]))
            loss = F.cross_entropy(learner(xq[t]), yq[t])
            (loss / tasks).backward()
            total += loss.item()
        opt.step()
        return total / tasks

    return step


def setup(attn: str, first_order: bool, allow_nograd: bool):
    import torch
    from torch import nn

    import learn2learn as l2l

    lm, model = build(attn, torch, nn)
    maml = l2l.algorithms.MAML(model, lr=W.INNER_LR, first_order=first_order,
                               allow_nograd=allow_nograd)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=W.OUTER_LR)
    step = make_step(model, maml, opt, W.task_batch(), torch)
    if attn == "sdpa-math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        inner = step

        def step():
            with sdpa_kernel(SDPBackend.MATH):
                return inner()

    return lm, model, step, sum(p.numel() for p in trainable)


def import_l2l():
    """learn2learn, after transformers (which must not see the torchvision stand-in)."""
    import transformers  # noqa: F401  imported first: it probes for torchvision itself

    from run_peer import stub_torchvision

    stub_torchvision()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import learn2learn
    return learn2learn


VARIANTS = [  # (attn, first_order, allow_nograd)
    ("sdpa", False, False),   # learn2learn's documented call on transformers' default attention
    ("sdpa", False, True),
    ("sdpa-math", False, True),
    ("eager", False, True),
    ("sdpa", True, True),
    ("eager", True, True),
    ("eager", False, False),
]


def _variant_name(attn, first_order, allow_nograd) -> str:
    return (f"attn={attn} {'first' if first_order else 'second'}-order "
            f"allow_nograd={allow_nograd}")


def probe() -> list[dict]:
    out = []
    for attn, fo, ng in VARIANTS:
        row = {"variant": _variant_name(attn, fo, ng), "attn": attn, "first_order": fo,
               "allow_nograd": ng}
        printed = io.StringIO()  # learn2learn prints (and swallows) its first error
        try:
            _, _, step, _ = setup(attn, fo, ng)
            with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
                row["loss_first"] = step()
            row["ok"] = True
        except Exception as e:  # noqa: BLE001  recorded, not hidden
            tb = traceback.extract_tb(e.__traceback__)
            row.update(ok=False, error=f"{type(e).__name__}: {str(e).strip()}",
                       raised_at=f"{Path(tb[-1].filename).name}:{tb[-1].lineno} "
                                 f"({tb[-1].name})" if tb else "")
            cause = e.__cause__ or e.__context__
            if cause is not None:
                row["while_handling"] = f"{type(cause).__name__}: {str(cause).strip()}"
        lines = [x for x in printed.getvalue().splitlines() if x.strip()]
        if lines:  # the last line of a printed traceback, and learn2learn's hint after it
            errors = [x for x in lines if not x.startswith((" ", "Traceback"))]
            row["printed"] = errors[-3:]
        sys.stderr.write(printed.getvalue())
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def measure(args) -> dict:
    import torch

    l2l = import_l2l()
    import transformers

    lm, model, step, n_train = setup(args.attn, args.first_order, args.allow_nograd)
    rss_before = current_rss_mb()
    t = time.perf_counter()
    losses = [step()]
    first_step_s = time.perf_counter() - t
    for _ in range(max(2, args.warmup - 1)):  # at least 3 losses: they check the meta-gradient
        losses.append(step())
    t = time.perf_counter()
    loss = step()
    one = time.perf_counter() - t
    per_rep = args.steps_per_rep or max(1, math.ceil(args.min_rep_s / max(one, 1e-9)))
    rates = []
    for _ in range(args.reps):
        t = time.perf_counter()
        for _ in range(per_rep):
            loss = step()
        rates.append(per_rep / (time.perf_counter() - t))
    rates.sort()
    peak = peak_rss_mb()
    return {
        "library": "learn2learn", "library_version": l2l.__version__,
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "python": platform.python_version(), "algorithm": "fomaml" if args.first_order else "maml",
        "attn": args.attn, "attn_implementation": lm.config._attn_implementation,
        "allow_nograd": args.allow_nograd, "lora": "hand-written LoRALinear (no peft)",
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "affinity": sorted(os.sched_getaffinity(0)), "trainable_parameters": n_train,
        "warmup": args.warmup, "reps": args.reps, "steps_per_rep": per_rep,
        "first_step_s": first_step_s,
        "steps_per_sec": statistics.median(rates), "steps_per_sec_min": rates[0],
        "steps_per_sec_max": rates[-1], "tasks_per_sec": statistics.median(rates) * W.META_BATCH,
        "rates": rates, "peak_rss_mb": peak, "rss_before_steps_mb": rss_before,
        "peak_rss_delta_mb": peak - rss_before,
        "memory": "ru_maxrss (peak RSS of the process) and its excess over VmRSS before the "
                  "first meta-step",
        "loss_first": losses[0], "losses_first3": losses[:3], "loss_last": loss,
        "shapes": W.shapes(),
    }


def save_backbone(folder: str) -> None:
    """Writes the seeded ``LlamaForCausalLM`` (without adapters) as a Hugging Face folder, after
    checking that its weights are the ones the measured model wraps."""
    import torch
    from torch import nn
    from transformers import LlamaConfig, LlamaForCausalLM

    keys = {k: v for k, v in W.LLAMA.items() if k != "model_type"}
    torch.manual_seed(W.BACKBONE_SEED)
    plain = LlamaForCausalLM(LlamaConfig(**keys, use_cache=False))
    wrapped = build("eager", torch, nn)[0].state_dict()
    for name, value in plain.state_dict().items():
        for t in ("q_proj", "v_proj"):
            name = name.replace(f"{t}.weight", f"{t}.base.weight")
        if not torch.equal(value, wrapped[name]):
            raise SystemExit(f"save_backbone: {name} differs from the measured model's")
    plain.save_pretrained(folder)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probe", action="store_true",
                    help="one meta-step of each variant; print which run and the errors")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--attn", choices=("sdpa", "eager", "sdpa-math"), default="eager")
    ap.add_argument("--first-order", action="store_true")
    ap.add_argument("--no-allow-nograd", dest="allow_nograd", action="store_false",
                    help="learn2learn's default allow_nograd=False (fails on a frozen backbone)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--min-rep-s", type=float, default=3.0)
    ap.add_argument("--steps-per-rep", type=int, default=0)
    ap.add_argument("--save-backbone", metavar="DIR",
                    help="only write the frozen LlamaForCausalLM to DIR (a Hugging Face folder, "
                         "for decoder_speed.py --backbone DIR) and exit")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)

    set_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    if args.save_backbone:
        save_backbone(args.save_backbone)
        return 0
    if args.probe:
        import_l2l()
        result = {"probe": probe(), "torch_version": torch.__version__,
                  "threads": torch.get_num_threads()}
    else:
        result = measure(args)
        print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
