"""Conv-4: the four-block convolutional backbone of few-shot learning (Vinyals et al. 2016)."""

from __future__ import annotations

import math

import jax
from flax import nnx

from jmeta.models._conv import conv_fn, resolve_conv_impl
from jmeta.models._functional import BN_MODES, Model, from_nnx, max_pool_2x2
from jmeta.models._registry import ModelSpec, register, square_images


INITS = ("lecun", "torch")


def _uniform(bound: float):
    def init(key, shape, dtype=jax.numpy.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def init_kwargs(init: str, fan_in: int) -> dict:
    """The ``kernel_init``/``bias_init`` of a conv or linear layer with ``fan_in`` inputs.

    ``"lecun"``: flax's default (truncated normal of variance 1 / fan_in, zero bias).
    ``"torch"``: PyTorch's default for ``nn.Conv2d``/``nn.Linear`` (``kaiming_uniform_`` with
    ``a=sqrt(5)``: weights and biases uniform in +-1/sqrt(fan_in), a variance of 1 / (3 fan_in)).

    Example:
      >>> sorted(init_kwargs("torch", 9))
      ['bias_init', 'kernel_init']
      >>> init_kwargs("lecun", 9)
      {}
    """
    if init not in INITS:
        raise ValueError(f"unknown init={init!r}; choose one of {INITS}.")
    if init == "lecun":
        return {}
    bound = 1.0 / math.sqrt(fan_in)
    return dict(kernel_init=_uniform(bound), bias_init=_uniform(bound))


def add_conv_blocks(module: nnx.Module, in_channels: int, filters: int, strided: bool,
                    conv_impl: str, rngs: nnx.Rngs, init: str = "lecun") -> None:
    """The four [3x3 conv, BatchNorm] blocks of Conv-4 as ``module.conv_i`` and ``module.bn_i``
    (the BatchNorm layers use the statistics of the batch they see)."""
    conv = conv_fn(conv_impl)
    for i in range(4):
        cin = in_channels if i == 0 else filters
        setattr(module, f"conv_{i}", nnx.Conv(
            cin, filters, kernel_size=(3, 3),
            strides=(2, 2) if strided else (1, 1), padding="SAME", conv_general_dilated=conv,
            rngs=rngs, **init_kwargs(init, 9 * cin)))
        setattr(module, f"bn_{i}", nnx.BatchNorm(filters, use_running_average=False,
                                                 momentum=0.9, rngs=rngs))


class Conv4(nnx.Module):
    """4 x [3x3 conv, BatchNorm, ReLU, 2x2 max-pool], then a linear head (or none: embeddings).

    ``strided=True`` replaces max-pooling by stride-2 convolutions (MAML's Omniglot network).
    The module's BatchNorm layers use the batch statistics of the examples they see; whether
    stored population statistics are used at test time is chosen by :func:`conv4`'s
    ``bn_mode``. ``conv_impl`` is ``"xla"``, ``"im2col"`` (:func:`jmeta.models.im2col_conv`) or
    ``"auto"`` (:func:`jmeta.models.default_conv_impl`); the values are the same. ``init``:
    ``"lecun"`` (flax's default) or ``"torch"`` (PyTorch's default; see :func:`init_kwargs`).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> net = Conv4(1, 5, filters=8, rngs=nnx.Rngs(0))
      >>> net(jnp.zeros((10, 28, 28, 1))).shape
      (10, 5)
    """

    def __init__(self, in_channels: int, out_features: int | None, *, filters: int = 64,
                 strided: bool = False, image_size: int = 28, conv_impl: str = "auto",
                 init: str = "lecun", rngs: nnx.Rngs):
        self.strided = strided
        add_conv_blocks(self, in_channels, filters, strided, conv_impl, rngs, init)
        size = image_size
        for _ in range(4):
            size = -(-size // 2) if strided else size // 2
        self.flat = filters * size * size
        self.head = (nnx.Linear(self.flat, out_features, rngs=rngs,
                                **init_kwargs(init, self.flat)) if out_features else None)

    def features(self, x: jax.Array) -> jax.Array:
        """The flattened output of the four blocks: the embedding, and the inputs of ``head``."""
        for i in range(4):
            x = jax.nn.relu(getattr(self, f"bn_{i}")(getattr(self, f"conv_{i}")(x)))
            if not self.strided:
                x = max_pool_2x2(x)
        return x.reshape(x.shape[0], -1)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        return self.head(x) if self.head is not None else x


def conv4(in_channels: int = 1, out_features: int | None = 5, *, filters: int = 64,
          strided: bool = False, image_size: int = 28, bn_mode: str = "transductive",
          conv_impl: str = "auto", init: str = "lecun") -> Model:
    """Conv-4 as a functional :class:`Model` (family ``"conv"``).

    ``out_features=None`` gives the embedding network (ProtoNets). ``filters=32`` is MAML's
    miniImageNet variant, ``strided=True`` its Omniglot variant.

    ``bn_mode="transductive"`` (MAML's choice): BatchNorm normalises with the statistics of
    whatever batch the network sees, in training and at test time (the support set while
    adapting, the query set when scoring); ``eval_apply`` is None. ``bn_mode="running"``:
    ``apply`` (training) uses batch statistics, ``eval_apply`` (test) uses the ``mean``/``var``
    leaves stored in the parameters, which :func:`jmeta.models.estimate_batch_stats` sets.

    ``conv_impl``: ``"auto"`` (default; :func:`jmeta.models.default_conv_impl`: the matmul form
    on CPU, native convolutions on accelerators), ``"xla"`` or ``"im2col"``. Same parameters,
    same values; only speed differs.

    ``init``: ``"lecun"`` (default; flax's: weights of variance 1 / fan_in, zero biases) or
    ``"torch"`` (PyTorch's ``nn.Conv2d``/``nn.Linear`` default: weights and biases uniform in
    +-1/sqrt(fan_in), a third of the variance). Behind BatchNorm a smaller weight scale is a
    larger effective step for the same rate, so the choice changes how fast MAML learns
    (docs/performance.md, "Time to accuracy").

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = conv4(1, 5, filters=8)
      >>> params = model.init(jax.random.key(0))
      >>> model.apply(params, jnp.ones((4, 28, 28, 1))).shape
      (4, 5)
      >>> running = conv4(1, 5, filters=8, bn_mode="running")
      >>> sorted(running.init(jax.random.key(0))["bn_0"])
      ['bias', 'mean', 'scale', 'var']
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"conv4: unknown bn_mode={bn_mode!r}; choose one of {BN_MODES}.")
    if init not in INITS:
        raise ValueError(f"conv4: unknown init={init!r}; choose one of {INITS}.")
    if filters < 1 or in_channels < 1 or image_size < 16:
        raise ValueError(
            f"conv4: filters and in_channels must be positive and image_size >= 16 (four 2x "
            f"downsamplings); got filters={filters}, in_channels={in_channels}, image_size={image_size}."
        )
    impl = resolve_conv_impl(conv_impl)
    return from_nnx(
        lambda rngs: Conv4(in_channels, out_features, filters=filters, strided=strided,
                           image_size=image_size, conv_impl=impl, init=init, rngs=rngs),
        family="conv",
        batch_stats=bn_mode,
    )


@register("conv4")
def _from_config(spec: ModelSpec, *, filters: int = 64, strided: bool = False,
                 bn_mode: str = "transductive", conv_impl: str = "auto",
                 init: str = "lecun") -> Model:
    """``model=dict(name="conv4", ...)`` on the dataset's square images."""
    size, channels = square_images(spec, "conv4")
    return conv4(channels, spec.outputs, filters=filters, strided=strided, image_size=size,
                 bn_mode=bn_mode, conv_impl=conv_impl, init=init)

