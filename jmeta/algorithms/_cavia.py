"""CAVIA (Zintgraf et al. 2019): adapt only a small context vector, meta-learn the network."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jmeta.algorithms._gradient import LossFn, MetricFn, _check_steps
from jmeta.core._inner import inner_loop, mse_loss, resolve_unroll
from jmeta.core._meta import MetaLearner
from jmeta.core._types import Batch, Episode, Params, PRNGKey
from jmeta.inner._rules import sgd
from jmeta.models._conv import conv_fn, resolve_conv_impl
from jmeta.models._functional import FAMILIES
from jmeta.models._mlp import mlp

TASK_KEYS = ("context", "model")
"""The keys of CAVIA's adapted task parameters ``{"model": theta, "context": phi}``."""


class ContextModel(NamedTuple):
    """A model conditioned on a context vector, as pure functions.

    Attributes:
      init: ``key -> params``, a nested dict of arrays (the network parameters theta).
      apply: ``(params, x, context) -> outputs`` for one batch ``x`` and one context vector
        ``context`` of shape ``[num_context]`` shared by the whole batch.
      family: ``"dense"`` or ``"conv"``; chooses the default task-mapping strategy.
      num_context: the context size the model expects (checked by :func:`cavia`), or ``None``.

    Example:
      >>> import jax.numpy as jnp
      >>> m = ContextModel(lambda key: {"w": jnp.ones(2)},
      ...                  lambda p, x, c: x * p["w"] + c, "dense", num_context=2)
      >>> m.apply(m.init(None), jnp.ones((3, 2)), jnp.array([0.0, 1.0])).tolist()
      [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]
    """

    init: Callable[[PRNGKey], Params]
    apply: Callable[[Params, jax.Array, jax.Array], jax.Array]
    family: str
    num_context: int | None = None


def _check_positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")


def context_mlp(
    in_dim: int = 1,
    out_dim: int = 1,
    hidden: Sequence[int] = (40, 40),
    num_context: int = 4,
) -> ContextModel:
    """CAVIA's regression network: the context is concatenated to every input of an MLP.

    The parameters are those of :func:`jmeta.models.mlp` with ``in_dim + num_context`` inputs
    (``hidden_0``, ..., ``head``); the context is broadcast over the batch.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = context_mlp(1, 1, hidden=(8,), num_context=2)
      >>> params = model.init(jax.random.key(0))
      >>> params["hidden_0"]["kernel"].shape
      (3, 8)
      >>> model.apply(params, jnp.zeros((5, 1)), jnp.zeros(2)).shape
      (5, 1)
    """
    _check_positive_int("context_mlp: num_context", num_context)
    _check_positive_int("context_mlp: in_dim", in_dim)
    base = mlp(in_dim + num_context, out_dim, hidden)

    def apply(params: Params, x: jax.Array, context: jax.Array) -> jax.Array:
        ctx = jnp.broadcast_to(context, x.shape[:-1] + (num_context,))
        return base.apply(params, jnp.concatenate([x, ctx], axis=-1))

    return ContextModel(init=base.init, apply=apply, family="dense", num_context=num_context)


class ContextConv4(nnx.Module):
    """Conv-4 with a FiLM layer driven by the context (CAVIA's miniImageNet network).

    4 x [3x3 conv, BatchNorm, ReLU, 2x2 max-pool] (or stride-2 convolutions with
    ``strided=True``), then a linear ``head``. In block ``film_layer`` the normalised features
    ``h`` are modulated per channel, before the ReLU, as ``h * (1 + gamma) + beta`` with
    ``(gamma, beta) = film(context)``, a linear layer whose bias starts at zero, so that at
    initialisation the zero context of an unadapted task leaves the features unchanged.
    BatchNorm uses the statistics of each batch it sees (transductive).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> net = ContextConv4(3, 5, num_context=4, filters=4, rngs=nnx.Rngs(0))
      >>> net(jnp.zeros((2, 84, 84, 3)), jnp.zeros(4)).shape
      (2, 5)
    """

    def __init__(self, in_channels: int, out_features: int | None, *, num_context: int,
                 filters: int = 32, film_layer: int = 2, strided: bool = False,
                 image_size: int = 84, conv_impl: str = "auto", rngs: nnx.Rngs):
        self.strided = strided
        self.film_layer = film_layer
        conv = conv_fn(conv_impl)
        self.filters = filters
        self.image_size = image_size
        for i in range(4):
            setattr(self, f"conv_{i}", nnx.Conv(
                in_channels if i == 0 else filters, filters, kernel_size=(3, 3),
                strides=(2, 2) if strided else (1, 1), padding="SAME", conv_general_dilated=conv,
                rngs=rngs))
            setattr(self, f"bn_{i}", nnx.BatchNorm(filters, use_running_average=False, momentum=0.9,
                                                   rngs=rngs))
        self.film = nnx.Linear(num_context, 2 * filters, bias_init=nnx.initializers.zeros,
                               rngs=rngs)
        size = image_size
        for _ in range(4):
            size = -(-size // 2) if strided else size // 2
        self.flat = filters * size * size
        self.head = nnx.Linear(self.flat, out_features, rngs=rngs) if out_features else None

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"ContextConv4 expects images [B, {self.image_size}, {self.image_size}, C]; got "
                f"shape {x.shape}. Build the model with image_size={x.shape[1] if x.ndim == 4 else '?'}."
            )
        for i in range(4):
            x = getattr(self, f"bn_{i}")(getattr(self, f"conv_{i}")(x))
            if i == self.film_layer:
                gamma, beta = jnp.split(self.film(context), 2, axis=-1)
                x = x * (1.0 + gamma) + beta
            x = jax.nn.relu(x)
            if not self.strided:
                x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.head(x) if self.head is not None else x


def context_from_nnx(
    make_module: Callable[[nnx.Rngs], nnx.Module],
    family: str,
    num_context: int | None = None,
) -> ContextModel:
    """Wraps an NNX module called as ``module(x, context)`` as a functional :class:`ContextModel`.

    As :func:`jmeta.models.from_nnx` with ``batch_stats="transductive"``: BatchNorm uses batch
    statistics and ``apply`` merges the parameters into a fresh copy of the module each call.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.lin = nnx.Linear(2, 1, rngs=rngs)
      ...     def __call__(self, x, c):
      ...         return self.lin(x + c)
      >>> model = context_from_nnx(Net, "dense", num_context=2)
      >>> model.apply(model.init(jax.random.key(0)), jnp.ones((3, 2)), jnp.zeros(2)).shape
      (3, 1)
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown model family {family!r}; choose one of {FAMILIES}.")
    abstract = nnx.eval_shape(lambda: make_module(nnx.Rngs(0)))
    graphdef, _, _ = nnx.split(abstract, nnx.Param, ...)
    _, _, rest = nnx.split(make_module(nnx.Rngs(0)), nnx.Param, ...)  # concrete constants

    def init(key: PRNGKey) -> Params:
        _, params, _ = nnx.split(make_module(nnx.Rngs(key)), nnx.Param, ...)
        return nnx.to_pure_dict(params)

    def apply(params: Params, x: jax.Array, context: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, rest, copy=True)(x, context)

    return ContextModel(init=init, apply=apply, family=family, num_context=num_context)


def context_conv4(
    in_channels: int = 3,
    out_features: int | None = 5,
    *,
    num_context: int,
    filters: int = 32,
    film_layer: int = 2,
    strided: bool = False,
    image_size: int = 84,
    conv_impl: str = "auto",
) -> ContextModel:
    """CAVIA's convolutional network (:class:`ContextConv4`) as a :class:`ContextModel`.

    ``film_layer`` (0-based; the default 2 is the third block) is the block whose
    BatchNorm output the context modulates. ``strided=True`` replaces max-pooling by stride-2
    convolutions (any ``image_size``); with pooling ``image_size`` must be at least 16.
    ``conv_impl`` as in :func:`jmeta.models.conv4`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = context_conv4(1, 3, num_context=4, filters=4, strided=True, image_size=8)
      >>> params = model.init(jax.random.key(0))
      >>> params["film"]["kernel"].shape
      (4, 8)
      >>> model.apply(params, jnp.ones((3, 8, 8, 1)), jnp.zeros(4)).shape
      (3, 3)
    """
    _check_positive_int("context_conv4: num_context", num_context)
    _check_positive_int("context_conv4: in_channels", in_channels)
    _check_positive_int("context_conv4: filters", filters)
    if out_features is not None:
        _check_positive_int("context_conv4: out_features (or None for embeddings)", out_features)
    if isinstance(film_layer, bool) or film_layer not in (0, 1, 2, 3):
        raise ValueError(f"context_conv4: film_layer must be a block index 0..3; got {film_layer!r}.")
    _check_positive_int(
        "context_conv4: image_size (16 or more with max-pooling; use strided=True for smaller)",
        image_size, 1 if strided else 16,
    )
    impl = resolve_conv_impl(conv_impl)
    return context_from_nnx(
        lambda rngs: ContextConv4(in_channels, out_features, num_context=num_context,
                                  filters=filters, film_layer=film_layer, strided=strided,
                                  image_size=image_size, conv_impl=impl, rngs=rngs),
        family="conv",
        num_context=num_context,
    )


def cavia(
    model: ContextModel,
    *,
    num_context: int,
    inner_lr: float,
    num_steps: int,
    loss_fn: LossFn = mse_loss,
    first_order: bool = False,
    metric_fn: MetricFn | None = None,
    unroll: bool | None = None,
) -> MetaLearner:
    """CAVIA: the inner loop adapts only a context vector; the network is meta-learned.

    For every task the context ``phi`` starts at zero (it is not meta-learned) and takes
    ``num_steps`` SGD steps of size ``inner_lr`` on the support loss of
    ``model.apply(theta, x, phi)``; the network parameters ``theta`` stay fixed within the task.
    The meta-gradient of one task is the gradient of its query loss with the adapted context
    with respect to ``theta``, through the inner loop (second order) or, with
    ``first_order=True``, treating the adapted context as a constant.

    * meta-parameters: ``{"model": theta, "rule": ()}``;
    * ``adapt(meta, support, *, num_steps=..., key=None, eval_fn=None)`` returns
      ``({"model": theta, "context": phi}, trace)`` with ``trace["support_loss"][t]`` before step
      ``t`` and ``trace["eval"][t]`` (``eval_fn`` of the task parameters) after step ``t``;
    * ``predict(task_params, x)`` uses the adapted context, or a zero context when given bare
      network parameters (such as ``meta["model"]``, the unadapted step 0 of an evaluation);
    * ``task_grad`` reports ``loss``, ``support_loss_before`` and ``metric_fn``'s query metrics.

    Args:
      model: a :class:`ContextModel` (:func:`context_mlp`, :func:`context_conv4`).
      num_context: size of the context vector (must match ``model.num_context`` when set).
      inner_lr: step size of the context's inner SGD (the paper uses 1.0 for regression).
      num_steps: inner steps during meta-training.
      loss_fn: ``(outputs, targets) -> scalar``.
      first_order: ignore the dependence of the adapted context on ``theta``.
      metric_fn: optional ``(outputs, targets) -> dict`` of extra query metrics.
      unroll: unroll inner loops of up to ``jmeta.core.MAX_UNROLLED_STEPS`` steps; ``None`` =
        :func:`jmeta.core.default_inner_unroll` (conv models on CPU). Values are unchanged.

    Example:
      >>> import jax, optax
      >>> from jmeta.core import init_state, make_meta_step
      >>> from jmeta.data import sinusoid_sampler
      >>> learner = cavia(context_mlp(hidden=(8,), num_context=2), num_context=2,
      ...                 inner_lr=1.0, num_steps=2)
      >>> tx = optax.adam(1e-3)
      >>> step = make_meta_step(learner, tx, sampler=sinusoid_sampler(num_tasks=4, k_shot=5))
      >>> state, metrics = step(init_state(learner, tx, jax.random.key(0)))
      >>> sorted(metrics)
      ['grad_norm', 'loss', 'support_loss_before']
    """
    if not isinstance(model, ContextModel):
        raise ValueError(  # noqa: TRY004
            "cavia: model must be a ContextModel, whose apply takes (params, x, context); build "
            f"one with context_mlp, context_conv4 or context_from_nnx; got {type(model).__name__}."
        )
    _check_positive_int("cavia: num_context", num_context)
    unroll = resolve_unroll(unroll, model.family)
    if model.num_context is not None and model.num_context != num_context:
        raise ValueError(
            f"cavia: num_context={num_context} but the model was built for "
            f"{model.num_context} context parameters; pass the same value to both."
        )
    _check_steps("cavia", num_steps)
    if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float)) or inner_lr <= 0:
        raise ValueError(f"cavia: inner_lr must be a positive number; got {inner_lr!r}.")
    rule = sgd(float(inner_lr))

    def zero_context(params: Params) -> jax.Array:
        dtype = jnp.result_type(*jax.tree.leaves(params)) if jax.tree.leaves(params) else None
        return jnp.zeros((num_context,), dtype)

    def is_task_params(params) -> bool:
        return isinstance(params, dict) and set(params) == set(TASK_KEYS)

    def init(key: PRNGKey) -> Params:
        return {"model": model.init(key), "rule": ()}

    def predict(task_params: Params, x: jax.Array) -> jax.Array:
        if is_task_params(task_params):
            return model.apply(task_params["model"], x, task_params["context"])
        return model.apply(task_params, x, zero_context(task_params))

    def batch_loss(task_params: Params, batch: Batch) -> jax.Array:
        return loss_fn(predict(task_params, batch.x), batch.y)

    def adapt(meta, support, *, num_steps=num_steps, key=None, eval_fn=None, first_order=False):
        del key
        theta = meta["model"]
        params = {"model": theta, "context": zero_context(theta)}
        mask = {"model": jax.tree.map(lambda _: False, theta), "context": True}
        return inner_loop(
            batch_loss, rule, params, (), support, num_steps,
            first_order=first_order, mask=mask, eval_fn=eval_fn, unroll=unroll,
        )

    def task_loss(meta, episode: Episode, key):
        task_params, trace = adapt(meta, episode.support, key=key, first_order=first_order)
        pred = predict(task_params, episode.query.x)
        loss = loss_fn(pred, episode.query.y)
        extra = metric_fn(pred, episode.query.y) if metric_fn is not None else {}
        return loss, dict(extra, loss=loss, support_loss_before=trace["support_loss"][0])

    def task_grad(meta, episode: Episode, key):
        (_, metrics), grads = jax.value_and_grad(task_loss, has_aux=True)(meta, episode, key)
        return grads, metrics

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        task_grad=task_grad,
        family=model.family,
        num_steps=num_steps,
    )
