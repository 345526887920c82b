"""iMAML (Rajeswaran et al. 2019): meta-gradients by implicit differentiation of a proximal inner loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jmeta.algorithms._gradient import LossFn, MetricFn, query_metrics
from jmeta.algorithms._registry import register
from jmeta.core._checks import check_int, check_number
from jmeta.core._inner import InnerRule, inner_loop, mse_loss, resolve_unroll, rule_learns
from jmeta.core._meta import MetaLearner
from jmeta.core._types import Batch, Episode, Params, PRNGKey
from jmeta.inner._rules import sgd
from jmeta.models._functional import Model


def _sq_dist(a: Params, b: Params) -> jax.Array:
    return sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def implicit_meta_gradient(
    support_loss,
    adapted: Params,
    query_grad: Params,
    *,
    lam: float,
    cg_steps: int,
    cg_damping: float = 0.0,
) -> Params:
    """iMAML's meta-gradient ``(I + H / lam)^{-1} query_grad`` by conjugate gradient.

    ``H`` is the Hessian of ``support_loss`` (``params -> scalar``, without the proximal term) at
    ``adapted``; it is never formed: each of the ``cg_steps`` conjugate-gradient iterations uses
    one Hessian-vector product (forward-over-reverse, ``jax.jvp`` of ``jax.grad``). CG starts
    from zero with tolerance 0, so it stops early only on an exactly zero residual.
    ``cg_damping`` adds ``cg_damping * v`` to the operator, ``(1 + cg_damping) I + H / lam``, to
    keep it positive definite where the support loss is not convex.

    Example (a quadratic support loss, whose Hessian is ``A``: the solve is exact in 2 steps):
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[2.0, 0.5], [0.5, 1.0]])
      >>> loss = lambda p: 0.5 * p["w"] @ A @ p["w"]
      >>> g = implicit_meta_gradient(loss, {"w": jnp.zeros(2)}, {"w": jnp.ones(2)},
      ...                            lam=1.0, cg_steps=2)
      >>> bool(jnp.allclose(g["w"], jnp.linalg.solve(jnp.eye(2) + A, jnp.ones(2)), atol=1e-5))
      True
    """
    grad_fn = jax.grad(support_loss)

    def operator(v):
        hv = jax.jvp(grad_fn, (adapted,), (v,))[1]
        return jax.tree.map(lambda x, h: (1.0 + cg_damping) * x + h / lam, v, hv)

    return _conjugate_gradient(operator, query_grad, cg_steps)


def _vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _conjugate_gradient(operator, b, steps: int):
    """``steps`` iterations of CG for ``operator(x) = b`` from ``x = 0`` (a fixed-length loop:
    jit-, vmap- and grad-safe; an exactly zero residual stops the updates)."""
    x = jax.tree.map(jnp.zeros_like, b)

    def body(_, carry):
        x, r, p, rr = carry
        ap = operator(p)
        pap = _vdot(p, ap)
        alpha = jnp.where(pap > 0, rr / jnp.where(pap > 0, pap, 1.0), 0.0)
        x = jax.tree.map(lambda xi, pi: xi + alpha * pi, x, p)
        r = jax.tree.map(lambda ri, api: ri - alpha * api, r, ap)
        rr_new = _vdot(r, r)
        beta = jnp.where(rr > 0, rr_new / jnp.where(rr > 0, rr, 1.0), 0.0)
        p = jax.tree.map(lambda ri, pi: ri + beta * pi, r, p)
        return x, r, p, rr_new

    x, *_ = jax.lax.fori_loop(0, steps, body, (x, b, b, _vdot(b, b)))
    return x


def imaml(
    model: Model,
    *,
    inner_lr: float,
    inner_steps: int,
    lam: float = 1.0,
    cg_steps: int = 5,
    cg_damping: float = 0.0,
    loss_fn: LossFn = mse_loss,
    metric_fn: MetricFn | None = None,
    rule: InnerRule | None = None,
    unroll: bool | None = None,
) -> MetaLearner:
    """iMAML: a proximal inner loop and an implicit meta-gradient (no backprop through the loop).

    For one task the inner loop approximately solves
    ``phi* = argmin_phi support_loss(phi) + lam / 2 * ||phi - theta||^2`` by ``inner_steps`` steps
    of ``rule`` (SGD at ``inner_lr`` by default) from ``theta``. At the exact minimiser,
    ``d phi* / d theta = (I + H / lam)^{-1}`` with ``H`` the Hessian of the support loss at
    ``phi*``, so the meta-gradient of the query loss is
    ``(I + H / lam)^{-1} grad query_loss(phi*)``; it is computed by ``cg_steps`` conjugate-gradient
    iterations of Hessian-vector products (:func:`implicit_meta_gradient`) at the adapted
    parameters, which are ``stop_gradient``-ed: memory does not grow with ``inner_steps``.

    * meta-parameters: ``{"model": theta, "rule": ()}`` (``rule``'s learnable pieces, which the
      implicit gradient cannot train, are refused);
    * ``adapt(meta, support, *, inner_steps=..., key=None, eval_fn=None)`` returns the adapted
      model parameters and a trace whose ``support_loss[t]`` is the plain support loss (without
      the proximal term) before step ``t``, and ``eval[t]`` is ``eval_fn`` after step ``t``;
      differentiating through ``adapt`` gives the unrolled (not the implicit) gradient;
    * ``predict`` is ``model.apply`` (adapted or meta parameters alike);
    * ``task_grad`` reports ``loss`` (query loss after adaptation), ``support_loss_before`` and
      ``metric_fn``'s query metrics.

    Args:
      model: a functional :class:`jmeta.models.Model`.
      inner_lr: SGD step size of the inner loop (unused when ``rule`` is given).
      inner_steps: inner steps during meta-training (the implicit gradient assumes they reach the
        minimiser of the regularised objective).
      lam: strength of the proximal regulariser ``lam / 2 * ||phi - theta||^2`` (> 0).
      cg_steps: conjugate-gradient iterations of the implicit solve (>= 1).
      cg_damping: extra multiple of the identity added to ``I + H / lam`` (>= 0).
      loss_fn: ``(outputs, targets) -> scalar``.
      metric_fn: optional ``(outputs, targets) -> dict`` of extra query metrics.
      rule: an inner rule without learnable pieces (e.g. ``jmeta.inner.from_optax(...)``)
        replacing SGD.

    ``unroll``: unroll inner loops of up to ``jmeta.core.MAX_UNROLLED_STEPS`` steps; ``None`` =
    :func:`jmeta.core.default_inner_unroll` (conv models on CPU). Values are unchanged.

    Example:
      >>> import jax, optax
      >>> from jmeta.core import init_state, make_meta_step
      >>> from jmeta.data import sinusoid_sampler
      >>> from jmeta.models import mlp
      >>> learner = imaml(mlp(hidden=(8,)), inner_lr=0.01, inner_steps=3, lam=2.0, cg_steps=3)
      >>> tx = optax.adam(1e-3)
      >>> step = make_meta_step(learner, tx, sampler=sinusoid_sampler(num_tasks=4, k_shot=5))
      >>> state, metrics = step(init_state(learner, tx, jax.random.key(0)))
      >>> sorted(metrics)
      ['grad_norm', 'loss', 'support_loss_before']
    """
    unroll = resolve_unroll(unroll, model.family)
    check_int("imaml: inner_steps", inner_steps)
    if rule is None:
        rule = sgd(check_number("imaml: inner_lr", inner_lr))
    elif not isinstance(rule, InnerRule):
        raise ValueError(f"imaml: rule must be a jmeta.inner InnerRule or None; got {rule!r}.")
    lam = check_number("imaml: lam", lam)
    cg_damping = check_number("imaml: cg_damping", cg_damping, strict=False)
    check_int("imaml: cg_steps", cg_steps)
    if rule_learns(rule, model.init):
        raise ValueError(
            "imaml: the inner rule has learnable pieces (such as meta_sgd or lslr rates), but "
            "the implicit meta-gradient does not depend on the inner path and cannot train "
            "them; use jmeta.inner.sgd or from_optax, or MAML to learn the rule."
        )

    def init(key: PRNGKey) -> Params:
        model_key, rule_key = jax.random.split(key)
        params = model.init(model_key)
        return {"model": params, "rule": rule.init_meta(rule_key, params)}

    def batch_loss(params: Params, batch: Batch) -> jax.Array:
        return loss_fn(model.apply(params, batch.x), batch.y)

    def adapt(meta, support, *, inner_steps=inner_steps, key=None, eval_fn=None,
              first_order=False):
        del key, first_order
        theta = meta["model"]

        def regularised(params, batch):
            # Its value is the plain support loss (reported in the trace); its derivatives, of
            # every order, are those of support loss + lam / 2 ||params - theta||^2.
            prox = 0.5 * lam * _sq_dist(params, theta)
            return batch_loss(params, batch) + (prox - jax.lax.stop_gradient(prox))

        return inner_loop(
            regularised, rule, theta, meta["rule"], support, inner_steps, eval_fn=eval_fn,
            unroll=unroll,
        )

    def task_grad(meta, episode: Episode, key):
        meta = jax.lax.stop_gradient(meta)
        adapted, trace = adapt(meta, episode.support, key=key)
        adapted = jax.lax.stop_gradient(adapted)
        (_, metrics), query_grad = jax.value_and_grad(
            lambda p: query_metrics(model, loss_fn, metric_fn, p, episode.query), has_aux=True
        )(adapted)
        grad = implicit_meta_gradient(
            lambda p: batch_loss(p, episode.support),
            adapted,
            query_grad,
            lam=lam,
            cg_steps=cg_steps,
            cg_damping=cg_damping,
        )
        grads = {"model": grad, "rule": jax.tree.map(jnp.zeros_like, meta["rule"])}
        return grads, dict(metrics, support_loss_before=trace["support_loss"][0])

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=model.apply,
        task_grad=task_grad,
        family=model.family,
        inner_steps=inner_steps,
    )


register("imaml", imaml)
