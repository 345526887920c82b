"""Inner update rules: plain SGD, Meta-SGD, per-step per-layer rates (LSLR), and any optax rule."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jmeta.core._checks import check_int, check_number, check_rate
from jmeta.core._inner import InnerRule
from jmeta.core._tree import path_name
from jmeta.inner._registry import register


def sgd(lr: float, *, path_lr: Callable[[str], float | None] | None = None) -> InnerRule:
    """Plain gradient descent with a fixed step size (MAML's inner rule); nothing is learned.

    Args:
      lr: the step size.
      path_lr: optional ``path -> step size or None``: a fixed step size per parameter, by its
        path (``"head/kernel"``, ``"lora/layer_0/query/a"``, as :func:`jmeta.core.mask_by_path`
        names them); ``None`` keeps ``lr``. E.g. LoRA adapters of a pretrained encoder take much
        smaller steps than a classifier head that starts at zero.

    Example:
      >>> import jax.numpy as jnp
      >>> rule = sgd(0.1)
      >>> updates, _ = rule.update({"w": jnp.ones(2)}, rule.init(None), None, ())
      >>> updates["w"]
      Array([-0.1, -0.1], dtype=float32)
      >>> rule = sgd(8.0, path_lr=lambda p: None if p.startswith("head/") else 0.5)
      >>> updates, _ = rule.update({"head": {"b": jnp.ones(1)}, "lora": {"a": jnp.ones(1)}},
      ...                          (), None, ())
      >>> float(updates["head"]["b"][0]), float(updates["lora"]["a"][0])
      (-8.0, -0.5)
    """
    check_rate("sgd", lr)
    if path_lr is not None and not callable(path_lr):
        raise ValueError(f"sgd: path_lr must be a function path -> step size or None; got "
                         f"{path_lr!r}.")

    def rate(path) -> float:
        value = path_lr(path_name(path))
        if value is None:
            return lr
        check_rate(f"sgd (path_lr of {path_name(path)!r})", value)
        return value

    def update(grads, state, params, meta):
        del params, meta
        if path_lr is None:
            return jax.tree.map(lambda g: -lr * g, grads), state
        return jax.tree_util.tree_map_with_path(lambda p, g: -rate(p) * g, grads), state

    return InnerRule(init_meta=lambda key, params: (), init=lambda params: (), update=update)


def meta_sgd(init_lr: float | tuple[float, float] = (0.005, 0.1)) -> InnerRule:
    """Meta-SGD (Li et al. 2017): a learned step size for every parameter coordinate.

    The rates are meta-parameters of the same shape as the adapted parameters and are trained by
    the outer optimizer together with the initialisation. ``init_lr`` is a constant or a
    ``(low, high)`` range sampled uniformly per coordinate (the paper's choice).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> rule = meta_sgd(0.1)
      >>> rates = rule.init_meta(jax.random.key(0), {"w": jnp.zeros(2)})
      >>> updates, _ = rule.update({"w": jnp.ones(2)}, (), None, rates)
      >>> updates["w"]
      Array([-0.1, -0.1], dtype=float32)
    """
    check_rate("meta_sgd", init_lr)

    def init_meta(key, params):
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(key, max(len(leaves), 1))
        if isinstance(init_lr, (tuple, list)):
            lo, hi = init_lr
            rates = [
                jax.random.uniform(k, p.shape, p.dtype, lo, hi) for k, p in zip(keys, leaves)
            ]
        else:
            rates = [jnp.full(p.shape, init_lr, p.dtype) for p in leaves]
        return jax.tree.unflatten(treedef, rates)

    def update(grads, state, params, rates):
        del params
        return jax.tree.map(lambda g, a: -a * g, grads, rates), state

    return InnerRule(init_meta=init_meta, init=lambda params: (), update=update)


def lslr(init_lr: float, inner_steps: int) -> InnerRule:
    """Per-step, per-layer learned rates (MAML++'s LSLR, Antoniou et al. 2019).

    Every parameter tensor ("layer") has one learned rate for each inner step. When adapting for
    more steps than ``inner_steps`` (e.g. at test time), the last step's rate is reused.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> rule = lslr(0.1, inner_steps=3)
      >>> rates = rule.init_meta(jax.random.key(0), {"w": jnp.zeros(2)})
      >>> rates["w"].shape
      (3,)
    """
    check_rate("lslr", init_lr)
    check_int("lslr: inner_steps", inner_steps)

    def init_meta(key, params):
        del key
        return jax.tree.map(lambda p: jnp.full((inner_steps,), init_lr, p.dtype), params)

    def update(grads, step, params, rates):
        del params
        t = jnp.minimum(step, inner_steps - 1)
        return jax.tree.map(lambda g, a: -a[t] * g, grads, rates), step + 1

    return InnerRule(
        init_meta=init_meta, init=lambda params: jnp.zeros((), jnp.int32), update=update
    )


def from_optax(tx: optax.GradientTransformation) -> InnerRule:
    """Any optax transformation as an inner rule with no learnable pieces (e.g. Adam for Reptile).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> rule = from_optax(optax.sgd(0.5))
      >>> p = {"w": jnp.ones(2)}
      >>> updates, _ = rule.update(p, rule.init(p), p, ())
      >>> updates["w"]
      Array([-0.5, -0.5], dtype=float32)
    """

    def update(grads, state, params, meta):
        del meta
        return tx.update(grads, state, params)

    return InnerRule(init_meta=lambda key, params: (), init=tx.init, update=update)


def momentum_sgd(lr: float, *, momentum: float = 0.9, dampening: float = 0.0,
                 weight_decay: float = 0.0) -> InnerRule:
    """SGD with momentum, dampening and weight decay with PyTorch's semantics (the fine-tuning of
    the transfer baselines): ``g += weight_decay * p``; the buffer is ``g`` at the first step,
    then ``momentum * buf + (1 - dampening) * g``; the update is ``-lr * buf`` (``-lr * g``
    with ``momentum=0``). Nothing is learned.

    Example:
      >>> import jax.numpy as jnp
      >>> rule = momentum_sgd(0.1, momentum=0.5)
      >>> p = {"w": jnp.zeros(1)}
      >>> u1, state = rule.update({"w": jnp.ones(1)}, rule.init(p), p, ())
      >>> u2, state = rule.update({"w": jnp.ones(1)}, state, p, ())
      >>> [round(float(u["w"][0]), 4) for u in (u1, u2)]  # buffers 1, then 0.5 + 1
      [-0.1, -0.15]
    """
    check_number("momentum_sgd: lr", lr)
    for key, value in (("momentum", momentum), ("dampening", dampening)):
        if check_number(f"momentum_sgd: {key}", value, strict=False) > 1:
            raise ValueError(f"momentum_sgd: {key} must lie in [0, 1]; got {value!r}.")
    momentum, dampening = float(momentum), float(dampening)
    decay = check_number("momentum_sgd: weight_decay", weight_decay, strict=False)
    lr = float(lr)

    def init(params):
        return (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

    def update(grads, state, params, meta):
        del meta
        buf, count = state
        grads = jax.tree.map(lambda g, p: g + decay * p, grads, params)
        if momentum > 0:
            buf = jax.tree.map(
                lambda b, g: jnp.where(count == 0, g, momentum * b + (1.0 - dampening) * g),
                buf, grads)
            direction = buf
        else:
            direction = grads
        return jax.tree.map(lambda d: -(lr * d), direction), (buf, count + 1)

    return InnerRule(init_meta=lambda key, params: (), init=init, update=update)


# Config registrations: ``rule=dict(name=..., ...)``; ``lr`` and ``inner_steps`` are the
# learner's.


@register("sgd")
def _sgd(lr, inner_steps, *, body_lr: float | None = None) -> InnerRule:
    """Plain SGD at the learner's ``inner_lr``; ``body_lr``: another step size for every adapted
    parameter outside the classifier head (LoRA adapters of a pretrained encoder)."""
    del inner_steps
    if body_lr is None:
        return sgd(lr)
    check_number("sgd: body_lr", body_lr)
    rule = sgd(lr, path_lr=lambda path: None if path.startswith("head/") else body_lr)

    def init_meta(key, params):
        paths = [path_name(p) for p, leaf in jax.tree_util.tree_leaves_with_path(params)
                 if leaf is not None]
        if all(p.startswith("head/") for p in paths):
            raise ValueError("sgd: body_lr sets the step size of the adapted parameters outside "
                             "the head, and this learner adapts only the head: leave out body_lr.")
        return rule.init_meta(key, params)

    return rule._replace(init_meta=init_meta)


@register("lslr")
def _lslr(lr, inner_steps) -> InnerRule:
    """Per-step, per-layer rates starting at the learner's ``inner_lr``."""
    return lslr(lr, inner_steps)


@register("adam")
def _adam(lr, inner_steps, *, b1: float = 0.9) -> InnerRule:
    """Adam at the learner's ``inner_lr`` (Reptile's inner optimizer uses ``b1=0``)."""
    del inner_steps
    check_number("adam: b1", b1, strict=False, high=1.0)
    return from_optax(optax.adam(lr, b1=b1))


@register("momentum_sgd")
def _momentum_sgd(lr, inner_steps, *, momentum: float = 0.9, dampening: float = 0.0,
                  weight_decay: float = 0.0) -> InnerRule:
    """:func:`momentum_sgd` at the learner's ``inner_lr``."""
    del inner_steps
    return momentum_sgd(lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)

