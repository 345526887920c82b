"""The meta-steps of the PyTorch peers: one builder per (library, algorithm family).

``make_step(library, spec, tasks, model)`` returns ``step() -> float``: one meta-step (all
``meta_batch`` tasks, then the outer update) returning the mean task loss of that step, computed
before the update: the query loss after adaptation (MAML, FOMAML, ANIL, ProtoNets) or, for
Reptile (no query set), the loss of the first inner minibatch before adaptation.

Loop structure:

* learn2learn / higher: a Python loop over tasks; each task's query loss is back-propagated
  (divided by ``meta_batch``) as soon as it is computed, as in both libraries' examples, so one
  task's graph is alive at a time. Outer Adam(lr 1e-3) step after the loop.
* torchfunc: ``torch.func.vmap`` over the task axis of a function that runs the inner loop with
  ``torch.func.grad`` on ``functional_call``; the outer gradient is ``torch.func.grad`` of the
  mean query loss (second order), or the mean of the per-task query gradients at the adapted
  parameters (first order: the inner loop is not differentiated at all). Second-order MAML on
  Conv-4 runs with ``_models.CompositeBatchNorm2d`` (see :func:`needs_composite_bn`).
* torch (ProtoNets): plain autograd, Python loop over the tasks (``meta_batch`` is 1).

Reptile (all libraries): per task a fresh inner Adam(lr=inner_lr, betas=(0, 0.999), eps=1e-8)
takes ``inner_steps`` steps on minibatches of ``inner_batch`` support examples, drawn without
replacement and reshuffled when the support set is used up (jmeta's ``support_minibatches``);
then ``theta <- theta + 1.0 * mean_tasks(phi - theta)`` (SGD, lr 1.0, on ``theta - mean(phi)``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

META_LR = 1e-3
REPTILE_OUTER_LR = 1.0
REPTILE_BETAS = (0.0, 0.999)
ADAM_EPS = 1e-8


def needs_composite_bn(library: str, spec: dict) -> bool:
    """Whether the model must use ``_models.CompositeBatchNorm2d`` instead of native BatchNorm.

    torchfunc's second-order MAML differentiates BatchNorm's backward under ``vmap``, where
    ``torch.func``'s batching rule for it gives wrong gradients (pytorch/functorch#534). FOMAML,
    ANIL (second order only through the head) and Reptile differentiate BatchNorm once: native.
    """
    return library == "torchfunc" and spec["algorithm"] == "maml" and spec["model"] == "conv4"


def make_step(library: str, spec: dict, tasks, model: nn.Module) -> Callable[[], float]:
    algorithm = spec["algorithm"]
    if library == "torch":
        if algorithm != "protonets":
            raise ValueError("library 'torch' runs only protonets")
        return _torch_protonets(spec, tasks, model)
    builders = {
        ("learn2learn", "reptile"): _l2l_reptile,
        ("higher", "reptile"): _higher_reptile,
        ("torchfunc", "reptile"): _torchfunc_reptile,
        ("learn2learn", "gradient"): _l2l_gradient,
        ("higher", "gradient"): _higher_gradient,
        ("torchfunc", "gradient"): _torchfunc_gradient,
    }
    family = "reptile" if algorithm == "reptile" else "gradient"
    if algorithm not in ("maml", "fomaml", "anil", "reptile") or (library, family) not in builders:
        raise ValueError(f"{library} does not run {algorithm}")
    return builders[(library, family)](spec, tasks, model)


# --------------------------------------------------------------------------------------------
# helpers


def reptile_indices(g: torch.Generator, tasks: int, n: int, steps: int, batch: int) -> torch.Tensor:
    """``[tasks, steps, batch]`` support indices: without replacement, reshuffled per epoch."""
    epochs = -(-steps * batch // n)
    rows = []
    for _ in range(tasks):
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(epochs)])
        rows.append(order[: steps * batch].view(steps, batch))
    return torch.stack(rows)


def _reptile_outer(model: nn.Module, opt: torch.optim.Optimizer, sum_delta: list[torch.Tensor],
                   num_tasks: int) -> None:
    # SGD(lr=1.0) on grad = theta - mean(phi), i.e. theta += 1.0 * mean(phi - theta).
    for p, d in zip(model.parameters(), sum_delta):
        p.grad = -d / num_tasks
    opt.step()


# --------------------------------------------------------------------------------------------
# learn2learn


def _l2l_gradient(spec, tasks, model):
    import learn2learn as l2l

    algorithm, lr, steps = spec["algorithm"], spec["inner_lr"], spec["inner_steps"]
    loss_fn, T = tasks.loss, tasks.num_tasks
    anil = algorithm == "anil"
    if anil:
        body = model.body
        learner_of = l2l.algorithms.MAML(model.head, lr=lr, first_order=False)
        params = list(body.parameters()) + list(learner_of.parameters())
    else:
        learner_of = l2l.algorithms.MAML(model, lr=lr, first_order=algorithm == "fomaml")
        params = list(learner_of.parameters())
    opt = torch.optim.Adam(params, lr=META_LR)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=tasks.device)
        for t in range(T):
            xs, ys, xq, yq = tasks.xs[t], tasks.ys[t], tasks.xq[t], tasks.yq[t]
            if anil:  # body features once per task, inner loop on the head only
                xs, xq = body(xs), body(xq)
            learner = learner_of.clone()
            for _ in range(steps):
                learner.adapt(loss_fn(learner(xs), ys))
            q = loss_fn(learner(xq), yq)
            (q / T).backward()
            total += q.detach()
        opt.step()
        return float(total) / T

    return step


def _l2l_reptile(spec, tasks, model):
    # learn2learn has no Reptile class: this is its examples/vision/reptile_miniimagenet.py
    # pattern (deepcopy the model, adapt the copy with torch.optim.Adam(betas=(0, 0.999))).
    lr, steps, batch = spec["inner_lr"], spec["inner_steps"], spec["inner_batch"]
    loss_fn, T = tasks.loss, tasks.num_tasks
    opt = torch.optim.SGD(model.parameters(), lr=REPTILE_OUTER_LR)
    g = torch.Generator().manual_seed(2)

    def step() -> float:
        idx = reptile_indices(g, T, tasks.xs.shape[1], steps, batch).to(tasks.device)
        sum_delta = [torch.zeros_like(p) for p in model.parameters()]
        total = 0.0
        for t in range(T):
            learner = copy.deepcopy(model)
            inner = torch.optim.Adam(learner.parameters(), lr=lr, betas=REPTILE_BETAS, eps=ADAM_EPS)
            for s in range(steps):
                i = idx[t, s]
                inner.zero_grad(set_to_none=True)
                err = loss_fn(learner(tasks.xs[t, i]), tasks.ys[t, i])
                err.backward()
                inner.step()
                if s == 0:
                    total += err.item()
            with torch.no_grad():
                for d, p, phi in zip(sum_delta, model.parameters(), learner.parameters()):
                    d += phi - p
        _reptile_outer(model, opt, sum_delta, T)
        return total / T

    return step


# --------------------------------------------------------------------------------------------
# higher


def _higher_gradient(spec, tasks, model):
    import higher

    algorithm, lr, steps = spec["algorithm"], spec["inner_lr"], spec["inner_steps"]
    loss_fn, T = tasks.loss, tasks.num_tasks
    anil, first_order = algorithm == "anil", algorithm == "fomaml"
    adapted = model.head if anil else model
    inner_opt = torch.optim.SGD(adapted.parameters(), lr=lr)
    opt = torch.optim.Adam(model.parameters(), lr=META_LR)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=tasks.device)
        for t in range(T):
            xs, ys, xq, yq = tasks.xs[t], tasks.ys[t], tasks.xq[t], tasks.yq[t]
            if anil:
                xs, xq = model.body(xs), model.body(xq)
            with higher.innerloop_ctx(adapted, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=not first_order) as (fnet, diffopt):
                for _ in range(steps):
                    diffopt.step(loss_fn(fnet(xs), ys))
                q = loss_fn(fnet(xq), yq)
                if first_order:
                    # Without tracked higher grads the fast weights are detached leaves: the
                    # first-order meta-gradient is the query gradient at the adapted weights.
                    grads = torch.autograd.grad(q, list(fnet.parameters()))
                    for p, gq in zip(adapted.parameters(), grads):
                        p.grad = gq / T if p.grad is None else p.grad + gq / T
                else:
                    (q / T).backward()
            total += q.detach()
        opt.step()
        return float(total) / T

    return step


def _higher_reptile(spec, tasks, model):
    import higher

    lr, steps, batch = spec["inner_lr"], spec["inner_steps"], spec["inner_batch"]
    loss_fn, T = tasks.loss, tasks.num_tasks
    inner_opt = torch.optim.Adam(model.parameters(), lr=lr, betas=REPTILE_BETAS, eps=ADAM_EPS)
    opt = torch.optim.SGD(model.parameters(), lr=REPTILE_OUTER_LR)
    g = torch.Generator().manual_seed(2)

    def step() -> float:
        idx = reptile_indices(g, T, tasks.xs.shape[1], steps, batch).to(tasks.device)
        sum_delta = [torch.zeros_like(p) for p in model.parameters()]
        total = 0.0
        for t in range(T):
            # A new differentiable optimizer per task: fresh Adam state (inner_opt never steps).
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=False) as (fnet, diffopt):
                for s in range(steps):
                    i = idx[t, s]
                    err = loss_fn(fnet(tasks.xs[t, i]), tasks.ys[t, i])
                    if s == 0:
                        total += err.item()
                    diffopt.step(err)
                with torch.no_grad():
                    for d, p, phi in zip(sum_delta, model.parameters(), fnet.parameters()):
                        d += phi - p
        _reptile_outer(model, opt, sum_delta, T)
        return total / T

    return step


# --------------------------------------------------------------------------------------------
# torch.func


def _sub(params: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def _torchfunc_gradient(spec, tasks, model):
    from torch.func import functional_call, grad, grad_and_value, vmap

    algorithm, lr, steps = spec["algorithm"], spec["inner_lr"], spec["inner_steps"]
    loss_fn = tasks.loss
    anil, first_order = algorithm == "anil", algorithm == "fomaml"
    names = [k for k, _ in model.named_parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=META_LR)

    def inner(fast: dict, x, y) -> dict:
        # fast: the adapted parameters (the head's for ANIL), x: inputs (features for ANIL).
        adapted_module = model.head if anil else model

        def support_loss(p):
            return loss_fn(functional_call(adapted_module, p, (x,)), y)

        for _ in range(steps):
            g = grad(support_loss)(fast)
            fast = {k: fast[k] - lr * g[k] for k in fast}
        return fast

    def query_loss(fast: dict, x, y):
        return loss_fn(functional_call(model.head if anil else model, fast, (x,)), y)

    def task_loss(params, xs, ys, xq, yq):
        if anil:  # body features once per task; inner loop on the head only
            body = _sub(params, "body.")
            fs = functional_call(model.body, body, (xs,))
            fq = functional_call(model.body, body, (xq,))
            return query_loss(inner(_sub(params, "head."), fs, ys), fq, yq)
        return query_loss(inner(params, xs, ys), xq, yq)

    def meta_loss(params):
        return vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(
            params, tasks.xs, tasks.ys, tasks.xq, tasks.yq).mean()

    def fo_task(params, xs, ys, xq, yq):
        # Not under an outer grad transform: the inner loop is not differentiated (first order).
        return grad_and_value(query_loss)(inner(params, xs, ys), xq, yq)

    def step() -> float:
        params = {k: p.detach() for k, p in model.named_parameters()}
        if first_order:
            gs, losses = vmap(fo_task, in_dims=(None, 0, 0, 0, 0))(
                params, tasks.xs, tasks.ys, tasks.xq, tasks.yq)
            grads, loss = {k: v.mean(0) for k, v in gs.items()}, losses.mean()
        else:
            grads, loss = grad_and_value(meta_loss)(params)
        for (k, p) in zip(names, model.parameters()):
            p.grad = grads[k]
        opt.step()
        return float(loss)

    return step


def _torchfunc_reptile(spec, tasks, model):
    from torch.func import functional_call, grad_and_value, vmap

    lr, steps, batch = spec["inner_lr"], spec["inner_steps"], spec["inner_batch"]
    loss_fn, T = tasks.loss, tasks.num_tasks
    b1, b2 = REPTILE_BETAS
    names = [k for k, _ in model.named_parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=REPTILE_OUTER_LR)
    g = torch.Generator().manual_seed(2)

    def batch_loss(p, x, y):
        return loss_fn(functional_call(model, p, (x,)), y)

    def adapt(params, xb, yb):  # xb: [steps, batch, ...] minibatches of one task
        fast = params
        m = {k: torch.zeros_like(v) for k, v in params.items()}
        v2 = {k: torch.zeros_like(v) for k, v in params.items()}
        first = None
        for s in range(steps):
            gr, l = grad_and_value(batch_loss)(fast, xb[s], yb[s])
            first = l if first is None else first
            c1, c2 = 1.0 - b1 ** (s + 1), 1.0 - b2 ** (s + 1)
            m = {k: b1 * m[k] + (1.0 - b1) * gr[k] for k in fast}
            v2 = {k: b2 * v2[k] + (1.0 - b2) * gr[k] * gr[k] for k in fast}
            fast = {k: fast[k] - lr * (m[k] / c1) / ((v2[k] / c2).sqrt() + ADAM_EPS) for k in fast}
        return {k: fast[k] - params[k] for k in fast}, first

    def step() -> float:
        idx = reptile_indices(g, T, tasks.xs.shape[1], steps, batch).to(tasks.device)
        rows = torch.arange(T, device=tasks.device)[:, None, None]
        xb, yb = tasks.xs[rows, idx], tasks.ys[rows, idx]  # [T, steps, batch, ...]
        params = {k: p.detach() for k, p in model.named_parameters()}
        deltas, first = vmap(adapt, in_dims=(None, 0, 0))(params, xb, yb)
        _reptile_outer(model, opt, [deltas[k].sum(0) for k in names], T)
        return float(first.mean())

    return step


# --------------------------------------------------------------------------------------------
# plain torch: ProtoNets


def _torch_protonets(spec, tasks, model):
    ways, T = spec["ways"], tasks.num_tasks
    opt = torch.optim.Adam(model.parameters(), lr=META_LR)
    eye = torch.eye(ways, device=tasks.device)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=tasks.device)
        for t in range(T):
            es, eq = model(tasks.xs[t]), model(tasks.xq[t])
            one_hot = eye[tasks.ys[t]]  # [S, ways]
            protos = (one_hot.T @ es) / one_hot.sum(0).clamp_min(1.0)[:, None]
            diff = eq[:, None, :] - protos[None, :, :]
            q = nn.functional.cross_entropy(-(diff * diff).sum(-1), tasks.yq[t])
            (q / T).backward()
            total += q.detach()
        opt.step()
        return float(total) / T

    return step
