"""The im2col convolution equals XLA's: values, first and second derivatives, and whole networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jmeta.core import default_task_map
from jmeta.models import (
    context_conv4,
    conv4,
    default_conv_impl,
    im2col_conv,
    resnet12,
    resolve_conv_impl,
)
from jmeta.train import Config, ConfigError
from jmeta.train._build import build, check_config, model_task

DN = ("NHWC", "HWIO", "NHWC")
CASES = [
    # (input shape, kernel shape, strides, padding, check second order)
    ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), "SAME", True),
    ((2, 9, 9, 3), (3, 3, 3, 4), (2, 2), "SAME", True),
    ((2, 8, 7, 2), (3, 3, 2, 5), (2, 1), "VALID", False),
    ((1, 6, 6, 4), (1, 1, 4, 3), (1, 1), "SAME", False),
    ((1, 7, 7, 2), (1, 1, 2, 3), (2, 2), "SAME", False),
    ((2, 5, 6, 2), (3, 2, 2, 3), (1, 2), ((1, 0), (2, 1)), True),
]


def _pair(shape_x, shape_w):
    x = jax.random.normal(jax.random.key(0), shape_x)
    w = jax.random.normal(jax.random.key(1), shape_w)
    return x, w


@pytest.mark.parametrize("shape_x,shape_w,strides,padding,second_order", CASES)
def test_values_and_gradients_equal_lax_conv(shape_x, shape_w, strides, padding, second_order):
    x, w = _pair(shape_x, shape_w)

    def loss(conv, w, x):
        y = conv(x, w, strides, padding, dimension_numbers=DN)
        return jnp.sum(jnp.tanh(y) * jnp.cos(y))

    ref = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)
    got = im2col_conv(x, w, strides, padding, dimension_numbers=DN)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    g_ref = jax.grad(lambda w, x: loss(lax.conv_general_dilated, w, x), argnums=(0, 1))(w, x)
    g_got = jax.grad(lambda w, x: loss(im2col_conv, w, x), argnums=(0, 1))(w, x)
    for a, b in zip(g_got, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

    if not second_order:
        return
    # Second order (what MAML differentiates): a Hessian-vector product in the weights, by
    # reverse-over-reverse and by forward-over-reverse.
    v = jax.random.normal(jax.random.key(2), w.shape)
    def grad_w(conv):
        return jax.grad(lambda u: loss(conv, u, x))

    hvp_ref = jax.grad(lambda u: jnp.vdot(grad_w(lax.conv_general_dilated)(u), v))(w)
    hvp_rr = jax.grad(lambda u: jnp.vdot(grad_w(im2col_conv)(u), v))(w)
    hvp_fr = jax.jvp(grad_w(im2col_conv), (w,), (v,))[1]
    np.testing.assert_allclose(hvp_rr, hvp_ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(hvp_fr, hvp_ref, rtol=1e-3, atol=1e-3)


def test_unsupported_configurations_fall_back_to_lax():
    x, w = _pair((1, 8, 8, 4), (3, 3, 2, 6))
    grouped = im2col_conv(x, w, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=2)
    ref = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                   feature_group_count=2)
    np.testing.assert_allclose(grouped, ref, rtol=1e-5, atol=1e-5)
    x, w = _pair((1, 8, 8, 2), (3, 3, 2, 3))
    dilated = im2col_conv(x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=DN)
    ref = lax.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=DN)
    np.testing.assert_allclose(dilated, ref, rtol=1e-5, atol=1e-5)


def test_channel_mismatch_is_a_clear_error():
    x, w = _pair((1, 8, 8, 2), (3, 3, 3, 4))
    with pytest.raises(ValueError, match="expects 3 input channels; the input has 2"):
        im2col_conv(x, w, (1, 1), "SAME", dimension_numbers=DN)


@pytest.mark.parametrize("build,channels,grads", [
    (lambda impl: conv4(1, 5, filters=4, strided=True, image_size=16, conv_impl=impl), 1, True),
    (lambda impl: conv4(3, None, filters=4, image_size=16, conv_impl=impl), 3, True),
    # ResNet-12's gradients go through the same convolutions; its forward checks the wiring
    # (3x3 and 1x1 kernels) at a fraction of the compile time.
    (lambda impl: resnet12(3, 4, widths=(2, 3, 4, 5), image_size=16, conv_impl=impl), 3, False),
], ids=["conv4-strided", "conv4-pool", "resnet12"])
def test_networks_are_the_same_function_with_either_implementation(build, channels, grads):
    a, b = build("xla"), build("im2col")
    params = a.init(jax.random.key(0))
    # Same parameter tree and initial values: a run may switch implementations when it resumes.
    for u, v in zip(jax.tree.leaves(params), jax.tree.leaves(b.init(jax.random.key(0)))):
        np.testing.assert_array_equal(u, v)
    x = jax.random.normal(jax.random.key(3), (4, 16, 16, channels))

    @jax.jit
    def outputs_and_grads(p):
        fa, fb = (lambda q: jnp.sum(a.apply(q, x) ** 2)), (lambda q: jnp.sum(b.apply(q, x) ** 2))
        if not grads:
            return a.apply(p, x), b.apply(p, x), (), ()
        return a.apply(p, x), b.apply(p, x), jax.grad(fa)(p), jax.grad(fb)(p)

    ya, yb, ga, gb = outputs_and_grads(params)
    np.testing.assert_allclose(ya, yb, rtol=1e-4, atol=1e-4)
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-4)


def test_context_conv4_takes_the_implementation():
    a = context_conv4(1, 3, num_context=2, filters=4, strided=True, image_size=8, conv_impl="xla")
    b = context_conv4(1, 3, num_context=2, filters=4, strided=True, image_size=8,
                      conv_impl="im2col")
    params = a.init(jax.random.key(0))
    x, ctx = jax.random.normal(jax.random.key(1), (4, 8, 8, 1)), jnp.full(2, 0.3)
    both = jax.jit(lambda p: (a.apply(p, x, ctx), b.apply(p, x, ctx)))(params)
    np.testing.assert_allclose(*both, rtol=1e-4, atol=1e-4)


def test_defaults_and_errors():
    assert default_conv_impl("cpu") == "im2col"
    assert default_conv_impl("gpu") == default_conv_impl("tpu") == "xla"
    assert resolve_conv_impl("auto") == default_conv_impl()
    with pytest.raises(ValueError, match="Unknown conv_impl 'cudnn'"):
        conv4(1, 5, conv_impl="cudnn")
    with pytest.raises(ConfigError, match="conv_impl 'cudnn'"):
        check_config(_conv_config("maml", conv_impl="cudnn"))
    # auto: native convolutions for one-network-per-step algorithms, the backend default for
    # algorithms that adapt per-task weights.
    assert _setup("protonets").conv_impl == "xla"
    assert _setup("maml").conv_impl == default_conv_impl()
    assert _setup("protonets", conv_impl="im2col").conv_impl == "im2col"
    # ... and their tasks are vmapped (shared weights fold into the batch), not looped over.
    assert _setup("protonets").task_map == "vmap"
    assert _setup("baseline++").task_map == "vmap"
    assert _setup("protonets", conv_impl="im2col").task_map == default_task_map("conv")
    assert _setup("maml").task_map == default_task_map("conv")


def _conv_config(algorithm, **model):
    data = dict(name="omniglot", base_classes=5)  # base_classes: no dataset is read
    return Config(data=data, model=dict(name="conv4", **model), learner=dict(name=algorithm))


def _setup(algorithm, **model):
    cfg = _conv_config(algorithm, **model)
    return build(cfg, model_task(cfg))


@pytest.mark.parametrize("impl", ["im2col"])
def test_batched_compiled_gradients_equal_per_example_ones(impl):
    # Four pooled blocks with batch-statistics BatchNorm under jit(vmap(grad)): the combination
    # in which an equality-based max-pool gradient went wrong with matmul convolutions.
    model = conv4(1, None, filters=4, image_size=16, conv_impl=impl)
    params = model.init(jax.random.key(0))
    xs = jnp.stack([jax.random.normal(jax.random.key(1), (6, 16, 16, 1)),
                    2.0 * jax.random.normal(jax.random.key(2), (6, 16, 16, 1)) + 1.0])

    def loss(p, x):
        y = model.apply(p, x)
        return jnp.mean(y ** 2 + y)

    batched = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, xs)
    single_grad = jax.jit(jax.grad(loss))
    for i in range(2):
        single = single_grad(params, xs[i])
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-5)
