"""Two implementations of the 2-D convolution, chosen per backend.

``"xla"`` is ``lax.conv_general_dilated``. ``"im2col"`` gathers the ``kh x kw`` shifted,
strided views of the padded input into one ``[N, H', W', kh*kw*C]`` array and multiplies it by
the kernel reshaped to ``[kh*kw*C, O]``: slices, a concatenation and one matmul, whose
derivatives of every order are pads, slices and matmuls again.

Why both: XLA's CPU backend runs the weight gradient of a convolution inside a loop body
(``lax.scan`` / ``lax.map`` over tasks or inner steps) with a non-canonical layout, about 12x
slower than the same gradient in straight-line code, and a ``vmap`` over per-task weights turns
every convolution into a grouped convolution, slower still. The matmul form has neither problem,
so meta-learning steps can loop over tasks instead of unrolling them (seconds of compile instead
of minutes) and still run faster than the unrolled convolutions. On GPUs and TPUs the native
convolution is the fast path. Measurements: ``docs/performance.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("xla", "im2col")

# Measured defaults (docs/performance.md): im2col on CPU, native convolutions elsewhere.
_DEFAULT_CONV_IMPL = {"cpu": "im2col"}


def default_conv_impl(backend: str | None = None) -> str:
    """The convolution implementation to use on a backend (``"im2col"`` on CPU, else ``"xla"``).

    Example:
      >>> default_conv_impl("cpu"), default_conv_impl("gpu")
      ('im2col', 'xla')
    """
    backend = backend or jax.default_backend()
    return _DEFAULT_CONV_IMPL.get(backend, "xla")


def resolve_conv_impl(impl: str) -> str:
    """``impl`` itself, or :func:`default_conv_impl` for ``"auto"``; a clear error otherwise.

    Example:
      >>> resolve_conv_impl("xla")
      'xla'
    """
    if impl == "auto":
        return default_conv_impl()
    if impl not in CONV_IMPLS:
        raise ValueError(f"Unknown conv_impl {impl!r}; choose one of {CONV_IMPLS} or 'auto'.")
    return impl


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return (tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
                and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
                and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def _all_ones(values) -> bool:
    return values is None or all(v == 1 for v in values)


def im2col_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    **kwargs,
) -> jax.Array:
    """A 2-D convolution of ``[N, H, W, C]`` inputs with an ``[kh, kw, C, O]`` kernel as one matmul.

    Same signature and values as ``lax.conv_general_dilated`` with NHWC/HWIO/NHWC dimension
    numbers (``padding`` a string or ``(low, high)`` pairs), so it can be given to
    ``nnx.Conv(conv_general_dilated=...)``. Dilations, feature groups and other layouts are
    passed on to ``lax.conv_general_dilated`` unchanged.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax import lax
      >>> x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
      >>> w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
      >>> dn = ("NHWC", "HWIO", "NHWC")
      >>> ref = lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn)
      >>> y = im2col_conv(x, w, (2, 2), "SAME", dimension_numbers=dn)
      >>> y.shape, bool(jnp.allclose(y, ref, atol=1e-5))
      ((2, 5, 5, 4), True)
    """
    if (lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1
            or not _all_ones(lhs_dilation) or not _all_ones(rhs_dilation)
            or not _is_nhwc(dimension_numbers)
            or kwargs.get("out_sharding") is not None or kwargs.get("batch_group_count", 1) != 1):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type, **kwargs)
    pads = (tuple(lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding))
            if isinstance(padding, str) else padding)
    return _im2col(lhs, rhs, tuple(window_strides), tuple(tuple(int(v) for v in p) for p in pads),
                   precision, preferred_element_type)


@partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _im2col(lhs, rhs, window_strides, pads, precision, preferred_element_type):
    # Jitted so that an eager call compiles one program instead of a dozen small ones (a
    # ResNet-12 forward took seconds op by op); inside a trace it is inlined.
    n, h, w, c = lhs.shape
    kh, kw, ci, o = rhs.shape
    if ci != c:
        raise ValueError(f"im2col_conv: the kernel expects {ci} input channels; the input has {c} "
                         f"(input shape {lhs.shape}, kernel shape {rhs.shape}).")
    sh, sw = window_strides
    (ph0, ph1), (pw0, pw1) = pads
    x = jnp.pad(lhs, ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0))) if (ph0, ph1, pw0, pw1) != (0,) * 4 else lhs
    hp, wp = h + ph0 + ph1, w + pw0 + pw1
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"im2col_conv: a {kh}x{kw} window does not fit the padded input "
                         f"{hp}x{wp}.")
    patches = jnp.concatenate([
        lax.slice(x, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ], axis=-1)
    return jnp.dot(patches, rhs.reshape(kh * kw * c, o), precision=precision,
                   preferred_element_type=preferred_element_type)


def conv_fn(impl: str):
    """The ``conv_general_dilated`` callable of an implementation name (``"auto"`` resolved).

    Example:
      >>> conv_fn("im2col") is im2col_conv
      True
    """
    return im2col_conv if resolve_conv_impl(impl) == "im2col" else lax.conv_general_dilated
