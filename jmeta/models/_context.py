"""Models conditioned on a context vector (CAVIA, Zintgraf et al. 2019): the inner loop adapts
the context, the network is meta-learned."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jmeta.core._checks import check_int
from jmeta.core._types import Params, PRNGKey
from jmeta.models._conv import resolve_conv_impl
from jmeta.models._conv4 import add_conv_blocks
from jmeta.models._functional import FAMILIES
from jmeta.models._mlp import mlp
from jmeta.models._registry import ModelSpec, real_inputs, register, square_images


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
    check_int("context_mlp: num_context", num_context)
    check_int("context_mlp: in_dim", in_dim)
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
        self.filters = filters
        self.image_size = image_size
        add_conv_blocks(self, in_channels, filters, strided, conv_impl, rngs)
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
    check_int("context_conv4: num_context", num_context)
    check_int("context_conv4: in_channels", in_channels)
    check_int("context_conv4: filters", filters)
    if out_features is not None:
        check_int("context_conv4: out_features (or None for embeddings)", out_features)
    if isinstance(film_layer, bool) or film_layer not in (0, 1, 2, 3):
        raise ValueError(f"context_conv4: film_layer must be a block index 0..3; got {film_layer!r}.")
    check_int(
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


def flatten_context_inputs(model: ContextModel) -> ContextModel:
    """The same context model on inputs flattened to vectors (an MLP on images).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = flatten_context_inputs(context_mlp(4, 2, hidden=(8,), num_context=3))
      >>> model.apply(model.init(jax.random.key(0)), jnp.ones((5, 2, 2, 1)), jnp.zeros(3)).shape
      (5, 2)
    """
    return model._replace(apply=lambda p, x, c: model.apply(p, x.reshape(x.shape[0], -1), c))


@register("context_mlp")
def _context_mlp_from_config(spec: ModelSpec, *, hidden: Sequence[int] = (40, 40),
                             num_context: int = 4) -> ContextModel:
    """``model=dict(name="context_mlp", ...)``: the context concatenated to the flattened input."""
    real_inputs(spec, "context_mlp")
    model = context_mlp(math.prod(spec.input_shape), spec.outputs or 1, hidden=tuple(hidden),
                        num_context=num_context)
    return model if len(spec.input_shape) == 1 else flatten_context_inputs(model)


@register("context_conv4")
def _context_conv4_from_config(spec: ModelSpec, *, num_context: int = 100, filters: int = 32,
                               film_layer: int = 2, strided: bool = False,
                               conv_impl: str = "auto") -> ContextModel:
    """``model=dict(name="context_conv4", ...)`` on the dataset's square images."""
    size, channels = square_images(spec, "context_conv4")
    return context_conv4(channels, spec.outputs, num_context=num_context, filters=filters,
                         film_layer=film_layer, strided=strided, image_size=size,
                         conv_impl=conv_impl)

