"""BatchNorm population statistics: estimating them ("precise BatchNorm") and using them."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

from jmeta.core._types import Params
from jmeta.models._functional import BN_MODES, Model

__all__ = ["BN_MODES", "batch_stat_mask", "estimate_batch_stats", "eval_apply_of"]

_STAT_KEYS = ("mean", "var")
_ACCUMULATORS: weakref.WeakKeyDictionary[Callable, Callable] = weakref.WeakKeyDictionary()


def eval_apply_of(model: Model) -> Callable[[Params, jax.Array], jax.Array]:
    """The test-mode function of ``model``: ``model.eval_apply`` if set, else ``model.apply``.

    Example:
      >>> from jmeta.models import conv4, mlp
      >>> model = mlp()
      >>> eval_apply_of(model) is model.apply
      True
      >>> running = conv4(1, 5, filters=4, bn_mode="running")
      >>> eval_apply_of(running) is running.eval_apply
      True
    """
    return model.eval_apply if model.eval_apply is not None else model.apply


def batch_stat_mask(params: Params) -> Params:
    """A pytree of bools like ``params``: False for BatchNorm ``mean``/``var`` leaves, else True.

    Those leaves get zero gradient from ``apply``; the mask keeps any optimizer transform that
    acts on parameters regardless of gradients (weight decay) off them, e.g.
    ``optax.masked(optax.add_decayed_weights(1e-4), batch_stat_mask(params))``.

    Example:
      >>> import jax
      >>> from jmeta.models import conv4
      >>> params = conv4(1, 5, filters=4, bn_mode="running").init(jax.random.key(0))
      >>> batch_stat_mask(params)["bn_0"]
      {'bias': True, 'mean': False, 'scale': True, 'var': False}
    """

    def trainable(path, _):
        last = path[-1] if path else None
        return not (isinstance(last, jax.tree_util.DictKey) and last.key in _STAT_KEYS)

    return jax.tree_util.tree_map_with_path(trainable, params)


def _accumulator(stats_apply: Callable) -> Callable:
    step = _ACCUMULATORS.get(stats_apply)
    if step is None:
        def add(total, params, x):
            return jax.tree.map(jnp.add, total, stats_apply(params, x))

        step = _ACCUMULATORS[stats_apply] = jax.jit(add)
    return step


def _replace_stats(params, stats):
    if isinstance(stats, dict):
        if not isinstance(params, dict) or not set(stats) <= set(params):
            raise ValueError(
                "estimate_batch_stats: params do not match the model (missing BatchNorm entries "
                f"{sorted(map(str, stats))}); pass the model's own parameters (model.init(key) or "
                "the trained ones).")
        return {k: (_replace_stats(v, stats[k]) if k in stats else v) for k, v in params.items()}
    return stats.astype(jnp.result_type(params))


def estimate_batch_stats(model: Model, params: Params, batches: Iterable) -> Params:
    """Sets every BatchNorm's stored ``mean``/``var`` to population statistics ("precise BN").

    Runs the training-mode network once per batch and averages, over the batches, each
    BatchNorm's per-batch mean and (biased) variance, accumulated in float32. The returned
    parameters equal ``params`` except for those leaves; pass them to ``model.eval_apply``.
    The statistics of one forward pass per batch are averaged (the layers are not re-estimated
    one after the other). The per-batch function is jit-compiled once per model and batch shape.

    Args:
      model: a model with ``stats_apply``, e.g. ``conv4(..., bn_mode="running")``.
      params: its parameters (with ``mean``/``var`` leaves).
      batches: a non-empty iterable of input arrays ``[B, ...]`` (or of objects with an ``x``
        attribute, such as :class:`jmeta.core.Batch`), e.g. a few hundred training images.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.models import conv4
      >>> model = conv4(1, None, filters=4, image_size=16, bn_mode="running")
      >>> params = model.init(jax.random.key(0))
      >>> x = jax.random.normal(jax.random.key(1), (8, 16, 16, 1))
      >>> stats = estimate_batch_stats(model, params, [x])
      >>> bool(jnp.allclose(model.eval_apply(stats, x), model.apply(params, x), atol=1e-4))
      True
    """
    if getattr(model, "stats_apply", None) is None:
        raise ValueError(
            "estimate_batch_stats: this model keeps no BatchNorm statistics (stats_apply is None); "
            "build it with bn_mode='running' (e.g. conv4(..., bn_mode='running')).")
    step = _accumulator(model.stats_apply)
    total, count = None, 0
    for batch in batches:
        x = jnp.asarray(getattr(batch, "x", batch))
        if total is None:
            shapes = jax.eval_shape(model.stats_apply, params, x)
            total = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
        total = step(total, params, x)
        count += 1
    if count == 0:
        raise ValueError("estimate_batch_stats: `batches` is empty; pass at least one input batch.")
    return _replace_stats(params, jax.tree.map(lambda t: t / count, total))
