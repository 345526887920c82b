"""ResNet-12: the residual backbone of MetaOptNet (Lee et al. 2019) and later few-shot work."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
from flax import nnx

from jmeta.models._conv import conv_fn, resolve_conv_impl
from jmeta.models._functional import BN_MODES, Model, from_nnx, max_pool_2x2
from jmeta.models._registry import ModelSpec, register, square_images

NEGATIVE_SLOPE = 0.1
"""Slope of the LeakyReLU activations for negative inputs."""

_BN_EPSILON = 1e-5


def _leaky_relu(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, NEGATIVE_SLOPE)


class ResidualBlock(nnx.Module):
    """One ResNet-12 block: 3 x [3x3 conv, BN, LeakyReLU], a 1x1 conv + BN shortcut, 2x2 max-pool.

    The third BatchNorm's output is added to the shortcut before the activation:
    ``pool(leaky(bn3(conv3(h2)) + bn_s(conv_s(x))))`` with ``h1 = leaky(bn1(conv1(x)))`` and
    ``h2 = leaky(bn2(conv2(h1)))``. Convolutions have no bias; weights use He-normal
    initialisation over the fan-out (as MetaOptNet); BatchNorm starts at scale 1, bias 0.
    Odd spatial sizes are floored by the pooling.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> block = ResidualBlock(3, 8, rngs=nnx.Rngs(0))
      >>> block(jnp.ones((2, 21, 21, 3))).shape
      (2, 10, 10, 8)
    """

    def __init__(self, in_channels: int, out_channels: int, *, conv_impl: str = "auto",
                 rngs: nnx.Rngs):
        init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
        conv_impl_fn = conv_fn(conv_impl)

        def conv(a, k):
            return nnx.Conv(a, out_channels, kernel_size=(k, k), padding="SAME", use_bias=False,
                            kernel_init=init, conv_general_dilated=conv_impl_fn, rngs=rngs)

        def bn():
            return nnx.BatchNorm(out_channels, use_running_average=False, momentum=0.9,
                                 epsilon=_BN_EPSILON, rngs=rngs)

        self.conv1, self.bn1 = conv(in_channels, 3), bn()
        self.conv2, self.bn2 = conv(out_channels, 3), bn()
        self.conv3, self.bn3 = conv(out_channels, 3), bn()
        self.shortcut_conv, self.shortcut_bn = conv(in_channels, 1), bn()

    def __call__(self, x: jax.Array) -> jax.Array:
        h = _leaky_relu(self.bn1(self.conv1(x)))
        h = _leaky_relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        h = _leaky_relu(h + self.shortcut_bn(self.shortcut_conv(x)))
        return max_pool_2x2(h)


class ResNet12(nnx.Module):
    """Four :class:`ResidualBlock` s (``block_0`` .. ``block_3``), flattened, then an optional head.

    ``widths`` are the blocks' channel counts, ``(64, 160, 320, 640)`` in MetaOptNet. Each
    block halves the spatial size (floored), so 84x84 inputs give 5x5 maps and 32x32 inputs
    2x2 maps. MetaOptNet's optional DropBlock regularisation is not included.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> net = ResNet12(3, None, widths=(2, 3, 4, 5), image_size=32, rngs=nnx.Rngs(0))
      >>> net(jnp.ones((2, 32, 32, 3))).shape
      (2, 20)
    """

    def __init__(self, in_channels: int, out_features: int | None, *,
                 widths: Sequence[int] = (64, 160, 320, 640), image_size: int = 84,
                 conv_impl: str = "auto", rngs: nnx.Rngs):
        channels = (in_channels, *widths)
        for i in range(4):
            setattr(self, f"block_{i}", ResidualBlock(channels[i], channels[i + 1],
                                                      conv_impl=conv_impl, rngs=rngs))
        size = image_size
        for _ in range(4):
            size //= 2
        self.flat = widths[-1] * size * size
        self.head = nnx.Linear(self.flat, out_features, rngs=rngs) if out_features else None

    def features(self, x: jax.Array) -> jax.Array:
        """The flattened output of the four blocks: the embedding, and the inputs of ``head``."""
        for i in range(4):
            x = getattr(self, f"block_{i}")(x)
        return x.reshape(x.shape[0], -1)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        return self.head(x) if self.head is not None else x


def resnet12(in_channels: int = 3, out_features: int | None = None, *,
             widths: Sequence[int] = (64, 160, 320, 640), image_size: int = 84,
             bn_mode: str = "transductive", conv_impl: str = "auto") -> Model:
    """ResNet-12 (MetaOptNet) as a functional :class:`Model` (family ``"conv"``).

    ``out_features=None`` (default) gives the embedding network: ``[B, widths[-1] * s * s]``
    features with ``s = image_size // 16`` (16000 for 84x84 miniImageNet, 2560 for 32x32
    CIFAR-FS); otherwise a linear head gives ``[B, out_features]`` logits. ``bn_mode`` is as in
    :func:`jmeta.models.conv4`: ``"transductive"`` (batch statistics everywhere) or
    ``"running"`` (population statistics in ``eval_apply``, set by
    :func:`jmeta.models.estimate_batch_stats`). ``conv_impl`` as in :func:`jmeta.models.conv4`.
    DropBlock is not implemented.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = resnet12(3, 5, widths=(2, 3, 4, 5), image_size=32)
      >>> params = model.init(jax.random.key(0))
      >>> sorted(params["block_0"])[:3]
      ['bn1', 'bn2', 'bn3']
      >>> model.apply(params, jnp.ones((4, 32, 32, 3))).shape
      (4, 5)
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"resnet12: unknown bn_mode={bn_mode!r}; choose one of {BN_MODES}.")
    widths = tuple(widths)
    if len(widths) != 4 or not all(isinstance(w, numbers.Integral) and w >= 1 for w in widths):
        raise ValueError(
            f"resnet12: widths must be 4 positive ints (one per residual block), e.g. "
            f"(64, 160, 320, 640); got {widths}.")
    if in_channels < 1 or image_size < 16 or (out_features is not None and out_features < 1):
        raise ValueError(
            f"resnet12: in_channels must be positive, image_size >= 16 (four 2x downsamplings) and "
            f"out_features None or positive; got in_channels={in_channels}, "
            f"image_size={image_size}, out_features={out_features}.")
    widths = tuple(int(w) for w in widths)
    impl = resolve_conv_impl(conv_impl)
    return from_nnx(
        lambda rngs: ResNet12(in_channels, out_features, widths=widths, image_size=image_size,
                              conv_impl=impl, rngs=rngs),
        family="conv",
        batch_stats=bn_mode,
    )


@register("resnet12")
def _from_config(spec: ModelSpec, *, widths: Sequence[int] = (64, 160, 320, 640),
                 bn_mode: str = "transductive", conv_impl: str = "auto") -> Model:
    """``model=dict(name="resnet12", ...)`` on the dataset's square images."""
    size, channels = square_images(spec, "resnet12")
    return resnet12(channels, spec.outputs, widths=widths, image_size=size, bn_mode=bn_mode,
                    conv_impl=conv_impl)

