"""Inner update rules: plain SGD, Meta-SGD, per-step per-layer rates (LSLR), and any optax rule."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jmeta.core._inner import InnerRule
from jmeta.core._tree import path_name


def _check_lr(name: str, lr) -> None:
    values = lr if isinstance(lr, (tuple, list)) else (lr,)
    if len(values) not in (1, 2) or not all(isinstance(v, (int, float)) and v > 0 for v in values):
        raise ValueError(
            f"{name}: the learning rate must be a positive number or a (low, high) range of "
            f"positive numbers; got {lr!r}."
        )
    if len(values) == 2 and values[0] > values[1]:
        raise ValueError(f"{name}: the range (low, high) needs low <= high; got {lr!r}.")


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
    _check_lr("sgd", lr)
    if path_lr is not None and not callable(path_lr):
        raise ValueError(f"sgd: path_lr must be a function path -> step size or None; got "
                         f"{path_lr!r}.")

    def rate(path) -> float:
        value = path_lr(path_name(path))
        if value is None:
            return lr
        _check_lr(f"sgd (path_lr of {path_name(path)!r})", value)
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
    _check_lr("meta_sgd", init_lr)

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


def lslr(init_lr: float, num_steps: int) -> InnerRule:
    """Per-step, per-layer learned rates (MAML++'s LSLR, Antoniou et al. 2019).

    Every parameter tensor ("layer") has one learned rate for each inner step. When adapting for
    more steps than ``num_steps`` (e.g. at test time), the last step's rate is reused.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> rule = lslr(0.1, num_steps=3)
      >>> rates = rule.init_meta(jax.random.key(0), {"w": jnp.zeros(2)})
      >>> rates["w"].shape
      (3,)
    """
    _check_lr("lslr", init_lr)
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"lslr: num_steps must be a positive int; got {num_steps!r}.")

    def init_meta(key, params):
        del key
        return jax.tree.map(lambda p: jnp.full((num_steps,), init_lr, p.dtype), params)

    def update(grads, step, params, rates):
        del params
        t = jnp.minimum(step, num_steps - 1)
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


