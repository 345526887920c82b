"""The PyTorch side of ``jmeta bench tta``: train on a work folder's protocol for a budget of
training seconds, snapshot at its marks, then test every snapshot on its test episodes.

    python benchmarks/peers/tta_peer.py --library pytorch --work WORK [--threads 1]

The work folder (written by ``jmeta bench tta``) holds ``tta.json`` (the protocol: algorithm,
Conv-4 width and pooling, training episodes, Adam rate and schedule, inner loop; the marks, the
budget), ``train.npz`` (the training split: ``uint8`` images ``[N, H, W, 1]``, each class's
first image, count and quarter turns) and ``episodes.npz`` (the test episodes jmeta tests on,
``uint8`` levels). Writes ``peer.json``: per snapshot the training seconds, the step and every
test episode's query accuracy (%).

* ``pytorch``: plain PyTorch. ProtoNets (squared Euclidean distance to the class means of the
  embeddings); MAML and first-order MAML through ``torch.func.functional_call`` and
  ``torch.autograd.grad`` (``create_graph`` for second order).
* ``learn2learn``: ``l2l.algorithms.MAML(net, lr, first_order)``, ``clone()`` + ``adapt()`` per
  task (its datasets are not used: the episodes come from the work folder).

Episodes are drawn with NumPy on the host as jmeta draws them on the device (classes without
replacement, distinct drawings per class, the class's quarter turns, ``x / 255``); drawing them
counts as training time, as jmeta's in-graph sampler does. BatchNorm always uses the batch's
statistics (transductive), as the protocol requires. The network is Conv-4 of
``_models.py``, initialised after ``torch.manual_seed(seed)`` as the protocol's
``model.init`` says: ``"torch"`` keeps PyTorch's defaults; ``"lecun"`` (flax's default, jmeta's
Conv-4 default) redraws every conv and linear weight from a truncated normal of variance
1 / fan_in and zeroes the biases. A protocol without ``init`` (older work folders) keeps
PyTorch's.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import Conv4Body, Net  # noqa: E402


class Episodes:
    """Training episodes of the protocol from the training split, with NumPy."""

    def __init__(self, path: Path, ways: int, shots: int, queries: int, seed: int):
        z = np.load(path)
        self.data = z["data"][..., 0]  # [N, H, W]
        self.start, self.count = z["class_start"], z["class_count"]
        self.turns = z["class_rotation"]
        self.ways, self.shots, self.queries = ways, shots, queries
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.shots + self.queries
        classes = self.rng.choice(len(self.start), self.ways, replace=False)
        xs, xq = [], []
        for c in classes:
            pick = self.rng.choice(self.count[c], n, replace=False)
            x = np.rot90(self.data[self.start[c] + pick], int(self.turns[c]) % 4, axes=(1, 2))
            xs.append(x[: self.shots])
            xq.append(x[self.shots:])
        return (_images(np.concatenate(xs)), torch.arange(self.ways).repeat_interleave(self.shots),
                _images(np.concatenate(xq)),
                torch.arange(self.ways).repeat_interleave(self.queries))


def _images(levels: np.ndarray) -> torch.Tensor:
    """``uint8 [n, H, W]`` or ``[n, H, W, 1]`` -> ``float32 [n, 1, H, W]`` in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(levels)).float().div_(255.0)
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()


def proto_logits(es: torch.Tensor, ys: torch.Tensor, eq: torch.Tensor, ways: int) -> torch.Tensor:
    one_hot = nn.functional.one_hot(ys, ways).float()
    protos = (one_hot.T @ es) / one_hot.sum(0).clamp_min(1.0)[:, None]
    diff = eq[:, None, :] - protos[None, :, :]
    return -(diff * diff).sum(-1)


def init_like(model: nn.Module, init: str) -> None:
    """Re-initialise ``model``'s conv and linear layers as jmeta's Conv-4 ``init`` does."""
    if init == "torch":
        return
    if init != "lecun":
        raise SystemExit(f"tta_peer: unknown model.init {init!r}; expected 'lecun' or 'torch'.")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                # flax's variance_scaling(1, fan_in, truncated_normal): cut at 2 std, rescaled
                std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    m.bias.zero_()


def make_trainer(library: str, proto: dict, model: Net):
    """``step(episodes) -> loss`` (one meta-step) and ``test(xs, ys, xq, yq) -> accuracy``."""
    algo, inner = proto["algorithm"], proto["inner"]
    opt_cfg = proto["optimizer"]
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=opt_cfg["lr"])
    if opt_cfg["schedule"] == "step" and opt_cfg["decay_every"]:
        sched = torch.optim.lr_scheduler.StepLR(opt, opt_cfg["decay_every"], opt_cfg["decay_rate"])
    else:
        sched = None
    ways = proto["train"]["ways"]
    ce = nn.functional.cross_entropy
    test_steps = proto["test"]["inner_steps"]

    if algo == "protonets":
        def task_loss(xs, ys, xq, yq):
            return ce(proto_logits(model(xs), ys, model(xq), ways), yq)

        @torch.no_grad()
        def test(xs, ys, xq, yq):
            logits = proto_logits(model(xs), ys, model(xq), int(ys.max()) + 1)
            return float((logits.argmax(-1) == yq).float().mean()) * 100
    elif library == "learn2learn":
        import learn2learn as l2l

        maml = l2l.algorithms.MAML(model, lr=inner["lr"], first_order=inner["first_order"])
        params = list(maml.parameters())
        opt = torch.optim.Adam(params, lr=opt_cfg["lr"])
        if sched is not None:
            sched = torch.optim.lr_scheduler.StepLR(opt, opt_cfg["decay_every"],
                                                    opt_cfg["decay_rate"])

        def task_loss(xs, ys, xq, yq):
            learner = maml.clone()
            for _ in range(inner["steps"]):
                learner.adapt(ce(learner(xs), ys))
            return ce(learner(xq), yq)

        def test(xs, ys, xq, yq):
            learner = maml.clone(first_order=True)
            for _ in range(test_steps):
                learner.adapt(ce(learner(xs), ys))
            with torch.no_grad():
                return float((learner(xq).argmax(-1) == yq).float().mean()) * 100
    else:
        from torch.func import functional_call

        names = [n for n, _ in model.named_parameters()]

        def adapt(xs, ys, steps, create_graph):
            fast = dict(model.named_parameters())
            for _ in range(steps):
                loss = ce(functional_call(model, fast, (xs,)), ys)
                grads = torch.autograd.grad(loss, [fast[n] for n in names],
                                            create_graph=create_graph)
                fast = {n: fast[n] - inner["lr"] * g for n, g in zip(names, grads)}
            return fast

        def task_loss(xs, ys, xq, yq):
            fast = adapt(xs, ys, inner["steps"], not inner["first_order"])
            return ce(functional_call(model, fast, (xq,)), yq)

        def test(xs, ys, xq, yq):
            fast = {n: p.detach() for n, p in adapt(xs, ys, test_steps, False).items()}
            with torch.no_grad():
                logits = functional_call(model, fast, (xq,))
            return float((logits.argmax(-1) == yq).float().mean()) * 100

    def step(batch) -> float:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for xs, ys, xq, yq in batch:
            q = task_loss(xs, ys, xq, yq)
            (q / len(batch)).backward()
            total += float(q.detach())
        opt.step()
        if sched is not None:
            sched.step()
        return total / len(batch)

    return step, test


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--library", choices=("pytorch", "learn2learn"), required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    spec = json.loads((work / "tta.json").read_text())
    proto = spec["protocol"]
    if args.library == "learn2learn":
        from run_peer import stub_torchvision

        stub_torchvision()
        import learn2learn  # noqa: F401
    tr, te = proto["train"], proto["test"]
    torch.manual_seed(proto["seed"])
    body = Conv4Body(1, proto["model"]["filters"], not proto["model"]["pool"], 28)
    model = Net(body, None if proto["algorithm"] == "protonets" else tr["ways"])
    init_like(model, proto["model"].get("init", "torch"))
    model = model.to(args.device)
    dev = torch.device(args.device)
    episodes = Episodes(work / "train.npz", tr["ways"], tr["shots"], tr["queries"], proto["seed"])
    step, test = make_trainer(args.library, proto, model)
    marks, budget = spec["marks"], float(spec["budget_s"])

    def batch():
        return [tuple(t.to(dev) for t in episodes.sample()) for _ in range(tr["meta_batch"])]

    t = time.perf_counter()
    step(batch())  # the first step (allocation, warm caches) is not counted, as jmeta's
    first_s = time.perf_counter() - t
    snaps, elapsed, n, i, losses = [], 0.0, 0, 0, []
    while elapsed < budget:
        t = time.perf_counter()
        losses.append(step(batch()))
        elapsed += time.perf_counter() - t
        n += 1
        while i < len(marks) and elapsed >= marks[i]:
            snaps.append(dict(mark_s=marks[i], train_s=elapsed, step=n,
                              loss=float(np.mean(losses[-20:])),
                              state=copy.deepcopy(model.state_dict())))
            print(f"{args.library}: {elapsed:.1f} s, step {n}", flush=True)
            i += 1
    ep = np.load(work / "episodes.npz")
    t_eval = time.perf_counter()
    rows = []
    for s in snaps:
        model.load_state_dict(s.pop("state"))
        acc = []
        for k in range(len(ep["ys"])):
            acc.append(round(test(_images(ep["xs"][k]).to(dev),
                                  torch.from_numpy(ep["ys"][k]).long().to(dev),
                                  _images(ep["xq"][k]).to(dev),
                                  torch.from_numpy(ep["yq"][k]).long().to(dev)), 4))
        rows.append(dict(s, accuracy=acc))
    versions = {"torch": torch.__version__}
    if args.library == "learn2learn":
        import learn2learn as l2l

        versions["learn2learn"] = l2l.__version__
    out = dict(library=args.library, steps=n, train_s=elapsed, first_step_s=first_s,
               compile_s=0.0, eval_s=time.perf_counter() - t_eval, threads=args.threads,
               device=str(dev),
               test_inner_steps=te["inner_steps"], snapshots=rows, versions=versions,
               pid=os.getpid())
    (work / "peer.json").write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
