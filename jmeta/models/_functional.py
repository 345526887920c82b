"""Flax NNX modules used functionally: split once, apply as a pure function of the parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import canonicalize_dtype

from jmeta.core._types import Params, PRNGKey

FAMILIES = ("dense", "conv")
BN_MODES = ("transductive", "running")
"""BatchNorm modes: batch statistics everywhere, or batch statistics in training and stored
population statistics at test time."""


class Model(NamedTuple):
    """A model as pure functions.

    Attributes:
      init: ``key -> params``, a nested dict of arrays (plain pytree, checkpoint-friendly).
      apply: ``(params, x) -> outputs`` for one batch of inputs; pure, safe inside ``jit``,
        ``vmap``, ``grad`` and ``lax.scan``. This is the training-mode function: BatchNorm
        layers, if any, normalise with the statistics of the batch ``x``.
      family: ``"dense"`` or ``"conv"``; chooses the default task-mapping strategy.
      eval_apply: ``None``, or the test-mode function ``(params, x) -> outputs`` of a model whose
        BatchNorm layers normalise with the population statistics stored in ``params`` (the
        ``mean`` and ``var`` leaves beside each BatchNorm's ``scale`` and ``bias``). Use
        :func:`jmeta.models.eval_apply_of` to get it with ``apply`` as the fallback.
      stats_apply: ``None``, or ``(params, x) -> stats``: the per-BatchNorm batch statistics
        (biased variance, float32) of one training-mode forward pass, as a nested dict with
        the paths of the ``mean``/``var`` leaves of ``params``; used by
        :func:`jmeta.models.estimate_batch_stats`.
      features: ``None``, or ``(params, x) -> features`` for a model whose output is a linear
        ``head`` (``params["head"]`` with ``kernel`` and ``bias``) on features of its input,
        in the same mode as ``apply``: ``apply(params, x) == linear_head(params,
        features(params, x))``. ANIL (:func:`jmeta.algorithms.anil`) then computes the features
        once per set and adapts the head on them, instead of running the body at every inner
        step. A wrapper that changes ``apply`` must change ``features`` alike or set it to
        ``None`` (the library's wrappers do).
      frozen: ``None``, or ``path -> bool`` selecting the parameters that stay as initialised
        (the pretrained encoder under LoRA adapters, paths such as ``"backbone/layer_0/query/
        kernel"``): learners built from a config leave them out of the inner loop, the outer
        optimizer keeps no state for them and run checkpoints do not save them.
      per_example: ``True`` when each row of ``apply``'s output depends on that row's input
        alone (no batch statistics): the BERT encoder. Learners that only embed their inputs
        (ProtoNets) then let evaluation embed each distinct test input once
        (:class:`jmeta.core.Embedded`). ``False`` (the default) is always safe.
      pad_id: ``None``, or, for a model of token ids whose output does not change when
        padding at the end of the sequence is cut off (attention masks it), the padding id.
    """

    init: Callable[[PRNGKey], Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    family: str
    eval_apply: Callable[[Params, jax.Array], jax.Array] | None = None
    stats_apply: Callable[[Params, jax.Array], Params] | None = None
    features: Callable[[Params, jax.Array], jax.Array] | None = None
    frozen: Callable[[str], bool] | None = None
    per_example: bool = False
    pad_id: int | None = None


def linear_head(params: Params, features: jax.Array) -> jax.Array:
    """The linear head ``params["head"]`` of a :class:`Model` with ``features`` applied to them:
    ``features @ kernel + bias``, as ``nnx.Linear`` computes it.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.models import mlp
      >>> model = mlp(hidden=(8,))
      >>> params, x = model.init(jax.random.key(0)), jnp.ones((3, 1))
      >>> bool(jnp.all(linear_head(params, model.features(params, x)) == model.apply(params, x)))
      True
    """
    head = params["head"]
    return features @ head["kernel"] + head["bias"]


def _has_linear_head(module) -> bool:
    return callable(getattr(type(module), "features", None)) and isinstance(
        getattr(module, "head", None), nnx.Linear)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 of ``[..., H, W, C]`` inputs, dropping an odd last row/column.

    Equal to ``nnx.max_pool(x, (2, 2), strides=(2, 2))`` (``"VALID"`` padding). Written as a
    tournament of ``where`` selections between the four elements of each window, so that its
    gradient routes each output's cotangent to exactly one input chosen by those comparisons.
    Two other forms were rejected: ``reduce_window``, whose ``select_and_scatter`` backward is
    slow on CPU, and a reshape followed by ``max``, whose gradient compares the input with the
    broadcast maximum for equality; XLA:CPU may recompute the two sides in different fusions
    with different rounding, and under ``jit(vmap(grad))`` with matmul convolutions it then
    gave wrong gradients (``tests/test_backbones.py``).

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(25.0).reshape(1, 5, 5, 1)
      >>> max_pool_2x2(x)[0, :, :, 0].tolist()
      [[6.0, 8.0], [16.0, 18.0]]
    """
    *lead, h, w, c = x.shape
    if h < 2 or w < 2:
        raise ValueError(
            f"max_pool_2x2: height and width must be at least 2; got input shape {x.shape}.")
    h2, w2 = h // 2, w // 2
    x = x[..., : 2 * h2, : 2 * w2, :].reshape(*lead, h2, 2, w2, 2, c)
    a, b = x[..., 0, :, 0, :], x[..., 0, :, 1, :]
    d, e = x[..., 1, :, 0, :], x[..., 1, :, 1, :]
    top = jnp.where(a >= b, a, b)
    bottom = jnp.where(d >= e, d, e)
    return jnp.where(top >= bottom, top, bottom)


def _bn_promote(args, /, *, dtype=None, inexact=True):
    # nnx.BatchNorm promotes (x, mean, var, scale, bias) together: float32 statistics would turn
    # a bfloat16 computation into float32 from the first BatchNorm on. Follow x, scale and bias.
    x, _, _, scale, bias = args
    dtype = canonicalize_dtype(x, scale, bias, dtype=dtype, inexact=inexact)
    return tuple(None if a is None else jnp.asarray(a, dtype) for a in args)


def from_nnx(
    make_module: Callable[[nnx.Rngs], nnx.Module],
    family: str = "dense",
    *,
    batch_stats: str | None = None,
) -> Model:
    """Wraps an NNX module constructor as a functional :class:`Model`.

    The module is built once (abstractly, no compute) to obtain its graph definition; ``apply``
    merges that graph with the given parameters inside the traced function, so the module is
    never mutated and no state leaks out of a jitted inner loop.

    Modules with BatchNorm (built with ``use_running_average=False``) need ``batch_stats``:

    * ``"transductive"``: normalisation uses the statistics of each batch it sees, in training
      and at test time; running averages are neither used nor kept (``eval_apply`` is None).
    * ``"running"``: the parameters also hold each BatchNorm's ``mean`` and ``var`` (initialised
      0 and 1). ``apply`` normalises with batch statistics and ignores them (their gradient is
      zero); ``eval_apply`` normalises with them; ``stats_apply`` returns the batch statistics
      that :func:`jmeta.models.estimate_batch_stats` averages into them.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> model = from_nnx(lambda rngs: nnx.Linear(3, 2, rngs=rngs))
      >>> params = model.init(jax.random.key(0))
      >>> model.apply(params, jnp.ones((4, 3))).shape
      (4, 2)
      >>> bn = from_nnx(lambda rngs: nnx.BatchNorm(2, use_running_average=False, rngs=rngs),
      ...               batch_stats="running")
      >>> sorted(bn.init(jax.random.key(0)))
      ['bias', 'mean', 'scale', 'var']
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown model family {family!r}; choose one of {FAMILIES}.")
    if batch_stats is not None and batch_stats not in BN_MODES:
        raise ValueError(
            f"from_nnx: unknown batch_stats={batch_stats!r}; choose one of {BN_MODES} or None.")
    abstract = nnx.eval_shape(lambda: make_module(nnx.Rngs(0)))
    abstract = nnx.with_attributes(abstract, only=nnx.BatchNorm, promote_dtype=_bn_promote,
                                   raise_if_not_found=False)
    if batch_stats == "running":
        return _from_nnx_running(make_module, abstract, family)
    graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest) and batch_stats != "transductive":
        raise NotImplementedError(
            "from_nnx supports modules whose only state is nnx.Param for now; this module also "
            f"holds {jax.tree.map(lambda x: x.shape, rest)}; for BatchNorm pass "
            "batch_stats='transductive' or batch_stats='running'."
        )

    def init(key: PRNGKey) -> Params:
        _, params, _ = nnx.split(make_module(nnx.Rngs(key)), nnx.Param, ...)
        return nnx.to_pure_dict(params)

    if batch_stats == "transductive":
        _, _, rest = nnx.split(make_module(nnx.Rngs(0)), nnx.Param, ...)  # concrete constants

    def apply(params: Params, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, rest, copy=True)(x)

    def features(params: Params, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, rest, copy=True).features(x)

    return Model(init=init, apply=apply, family=family,
                 features=features if _has_linear_head(abstract) else None)


def _from_nnx_running(make_module, abstract, family: str) -> Model:
    kept = (nnx.Param, nnx.BatchStat)
    graphdef, _, rest = nnx.split(abstract, kept, ...)
    if jax.tree.leaves(rest):
        _, _, rest = nnx.split(make_module(nnx.Rngs(0)), kept, ...)  # concrete constants
    eval_def, _, _ = nnx.split(
        nnx.view(abstract, use_running_average=True, raise_if_not_found=False), kept, ...)
    # Momentum 0 makes the "running average" written by one forward pass the batch statistics.
    stats_def, _, _ = nnx.split(
        nnx.with_attributes(abstract, only=nnx.BatchNorm, momentum=0.0, raise_if_not_found=False),
        kept, ...)
    stat_paths = frozenset(
        path for path, _ in jax.tree_util.tree_flatten_with_path(
            nnx.to_pure_dict(nnx.state(abstract, nnx.BatchStat)))[0])

    def map_stats(fn, params):
        return jax.tree_util.tree_map_with_path(
            lambda path, v: fn(v) if path in stat_paths else v, params)

    def at_least_f32(v):  # the discarded running-average update is written in float32
        return v.astype(jnp.promote_types(v.dtype, jnp.float32))

    def init(key: PRNGKey) -> Params:
        _, params, _ = nnx.split(make_module(nnx.Rngs(key)), kept, ...)
        return nnx.to_pure_dict(params)

    def apply(params: Params, x: jax.Array) -> jax.Array:
        params = map_stats(lambda v: at_least_f32(jax.lax.stop_gradient(v)), params)
        return nnx.merge(graphdef, params, rest, copy=True)(x)

    def features(params: Params, x: jax.Array) -> jax.Array:
        params = map_stats(lambda v: at_least_f32(jax.lax.stop_gradient(v)), params)
        return nnx.merge(graphdef, params, rest, copy=True).features(x)

    def eval_apply(params: Params, x: jax.Array) -> jax.Array:
        return nnx.merge(eval_def, params, rest, copy=True)(x)

    def stats_apply(params: Params, x: jax.Array) -> Params:
        params = map_stats(lambda v: jnp.zeros(v.shape, jnp.promote_types(v.dtype, jnp.float32)),
                           jax.lax.stop_gradient(params))
        module = nnx.merge(stats_def, params, rest, copy=True)
        module(x)
        stats = nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))
        return jax.tree.map(lambda s: s.astype(jnp.float32), stats)

    return Model(init=init, apply=apply, family=family, eval_apply=eval_apply,
                 stats_apply=stats_apply,
                 features=features if _has_linear_head(abstract) else None)


def with_compute_dtype(model: Model, dtype) -> Model:
    """The same model computing in ``dtype`` (e.g. bfloat16) from float32 master parameters.

    Parameters and inputs are cast inside ``apply`` (and ``eval_apply``, ``stats_apply`` when
    present) and outputs cast back to float32, so the parameters, their gradients, inner-loop
    updates, optimizer state and BatchNorm statistics all stay float32. Integer inputs (the
    token ids of :func:`jmeta.models.bert_lora`) are passed through uncast.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.models import mlp
      >>> model = with_compute_dtype(mlp(), jnp.bfloat16)
      >>> params = model.init(jax.random.key(0))
      >>> params["head"]["kernel"].dtype, model.apply(params, jnp.ones((3, 1))).dtype
      (dtype('float32'), dtype('float32'))
    """
    dtype = jnp.dtype(dtype)

    def cast(fn):
        if fn is None:
            return None

        def wrapped(params, x):
            low = jax.tree.map(lambda p: p.astype(dtype), params)
            # Integer inputs (token ids of a text model) are indices, not values: never cast.
            x = x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
            return jax.tree.map(lambda y: y.astype(jnp.float32), fn(low, x))

        return wrapped

    # features are cast like apply; a learner then applies the float32 head to them, so the
    # head's matmul runs in float32 (apply runs it in ``dtype``).
    return model._replace(apply=cast(model.apply), eval_apply=cast(model.eval_apply),
                          stats_apply=cast(model.stats_apply), features=cast(model.features))


def flatten_inputs(model: Model) -> Model:
    """The same model on inputs flattened to vectors (an MLP on images).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.models import mlp
      >>> model = flatten_inputs(mlp(12, 3, hidden=(8,)))
      >>> model.apply(model.init(jax.random.key(0)), jnp.ones((5, 2, 2, 3))).shape
      (5, 3)
    """

    def apply(params, x):
        return model.apply(params, x.reshape(x.shape[0], -1))

    def features(params, x):
        return model.features(params, x.reshape(x.shape[0], -1))

    return model._replace(apply=apply, features=features if model.features else None)

