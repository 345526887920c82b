"""ResNet-12, the reshape max-pool and the BatchNorm modes (transductive, running)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jmeta.core import Batch
from jmeta.models import conv4, from_nnx, with_compute_dtype
from jmeta.models._batchnorm import batch_stat_mask, estimate_batch_stats, eval_apply_of
from jmeta.models._conv4 import Conv4
from jmeta.models._functional import max_pool_2x2
from jmeta.models._resnet12 import ResidualBlock, resnet12

EPS = 1e-5  # nnx.BatchNorm's default epsilon


def _conv(x, kernel, bias=None):
    out = jax.lax.conv_general_dilated(
        jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    out = np.asarray(out, np.float64)
    return out if bias is None else out + np.asarray(bias, np.float64)


def _batch_stats(h):
    mean = h.mean(axis=(0, 1, 2))
    return mean, ((h - mean) ** 2).mean(axis=(0, 1, 2))  # biased, as nnx.BatchNorm


def _bn(h, p):
    mean, var = _batch_stats(h)
    return (h - mean) / np.sqrt(var + EPS) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _leaky(h):
    return np.where(h > 0, h, 0.1 * h)


def _pool(h):
    h2, w2 = h.shape[1] // 2, h.shape[2] // 2
    corners = [h[:, i:2 * h2:2, j:2 * w2:2] for i in (0, 1) for j in (0, 1)]
    return np.maximum.reduce(corners)


# ---------------------------------------------------------------- ResNet-12


def test_residual_block_matches_direct_computation():
    block = from_nnx(lambda rngs: ResidualBlock(3, 4, rngs=rngs), "conv",
                     batch_stats="transductive")
    params = block.init(jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), 16))

    def randomise(path, v):  # non-trivial BatchNorm affine parameters
        name = path[-1].key
        if name == "scale":
            return v + 0.3 * jax.random.normal(next(keys), v.shape)
        return 0.3 * jax.random.normal(next(keys), v.shape) if name == "bias" else v

    params = jax.tree_util.tree_map_with_path(randomise, params)
    assert "bias" not in params["conv1"] and params["shortcut_conv"]["kernel"].shape == (1, 1, 3, 4)
    x = np.asarray(jax.random.normal(jax.random.key(2), (5, 9, 9, 3)), np.float64)
    p = params
    h = _leaky(_bn(_conv(x, p["conv1"]["kernel"]), p["bn1"]))
    h = _leaky(_bn(_conv(h, p["conv2"]["kernel"]), p["bn2"]))
    h = _bn(_conv(h, p["conv3"]["kernel"]), p["bn3"])
    want = _pool(_leaky(h + _bn(_conv(x, p["shortcut_conv"]["kernel"]), p["shortcut_bn"])))
    got = jax.jit(block.apply)(params, jnp.asarray(x, jnp.float32))
    assert got.shape == (5, 4, 4, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_resnet12_output_shapes_and_structure():
    widths = (2, 3, 4, 5)
    embed = resnet12(3, None, widths=widths, image_size=84)
    params = embed.init(jax.random.key(0))
    assert sorted(params) == [f"block_{i}" for i in range(4)]  # no head
    assert [params[f"block_{i}"]["conv3"]["kernel"].shape[-1] for i in range(4)] == list(widths)
    out = jax.jit(embed.apply)(params, jax.random.normal(jax.random.key(1), (2, 84, 84, 3)))
    assert out.shape == (2, 5 * 5 * 5) and np.all(np.isfinite(out))  # 84 -> 42 -> 21 -> 10 -> 5
    head = resnet12(3, 7, widths=widths, image_size=32, bn_mode="running")
    params = head.init(jax.random.key(0))
    assert params["head"]["kernel"].shape == (5 * 2 * 2, 7)  # 32 -> 16 -> 8 -> 4 -> 2
    assert sum(not m for m in jax.tree.leaves(batch_stat_mask(params))) == 2 * 16  # 16 BatchNorms
    assert jax.eval_shape(head.eval_apply, params, jnp.zeros((3, 32, 32, 3))).shape == (3, 7)
    assert embed.family == head.family == "conv"


# ---------------------------------------------------------------- pooling


def test_max_pool_equals_nnx_max_pool_values_and_gradients():
    for i, shape in enumerate([(2, 7, 9, 3), (3, 8, 6, 2), (1, 2, 3, 1)]):
        x = jax.random.normal(jax.random.key(i), shape)
        want = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        np.testing.assert_array_equal(max_pool_2x2(x), want)
        np.testing.assert_array_equal(max_pool_2x2(x), _pool(np.asarray(x)))
        w = jax.random.normal(jax.random.key(10 + i), want.shape)
        g_new = jax.grad(lambda x, w: jnp.sum(max_pool_2x2(x) * w))(x, w)
        g_old = jax.grad(lambda x, w: jnp.sum(nnx.max_pool(x, (2, 2), strides=(2, 2)) * w))(x, w)
        np.testing.assert_array_equal(g_new, g_old)
    with pytest.raises(ValueError, match="at least 2"):
        max_pool_2x2(jnp.zeros((1, 1, 4, 1)))


def test_conv4_output_unchanged_by_pool_form():
    graphdef, state = nnx.split(Conv4(1, 3, filters=4, image_size=28, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))  # 28 -> 14 -> 7 -> 3 -> 1

    @jax.jit
    def both(state, x):
        net = nnx.merge(graphdef, state)
        h = x
        for i in range(4):
            h = jax.nn.relu(getattr(net, f"bn_{i}")(getattr(net, f"conv_{i}")(h)))
            h = nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2))
        return nnx.merge(graphdef, state)(x), net.head(h.reshape(4, -1))

    got, want = both(state, x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- BatchNorm modes


@pytest.fixture(scope="module")
def running():
    model = conv4(1, None, filters=4, image_size=16, bn_mode="running")
    params = model.init(jax.random.key(0))
    xb = jax.random.normal(jax.random.key(1), (6, 16, 16, 1))
    xc = 2.0 * jax.random.normal(jax.random.key(2), (6, 16, 16, 1)) + 1.0
    # Compiled once for the module: the tests call these with one parameter structure and shape.
    model = model._replace(apply=jax.jit(model.apply), eval_apply=jax.jit(model.eval_apply))
    return model, params, xb, xc


def test_running_params_hold_initial_stats(running):
    _, params, _, _ = running
    for i in range(4):
        bn = params[f"bn_{i}"]
        assert sorted(bn) == ["bias", "mean", "scale", "var"]
        np.testing.assert_array_equal(bn["mean"], np.zeros(4))
        np.testing.assert_array_equal(bn["var"], np.ones(4))
    mask = batch_stat_mask(params)
    assert mask["bn_0"] == {"bias": True, "mean": False, "scale": True, "var": False}
    assert mask["conv_0"] == {"bias": True, "kernel": True}


def test_single_batch_stats_make_eval_apply_equal_apply(running):
    model, params, xb, xc = running
    est = estimate_batch_stats(model, params, [xb])
    for name in params:  # only the BatchNorm statistics change
        for leaf in params[name]:
            if leaf not in ("mean", "var"):
                assert est[name][leaf] is params[name][leaf]
    h = _conv(xb, params["conv_0"]["kernel"], params["conv_0"]["bias"])
    mean, var = _batch_stats(h)
    np.testing.assert_allclose(est["bn_0"]["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est["bn_0"]["var"], var, rtol=1e-4, atol=1e-6)
    assert est["bn_0"]["mean"].dtype == jnp.float32
    train = model.apply(params, xb)
    np.testing.assert_array_equal(model.apply(est, xb), train)  # apply ignores stored stats
    np.testing.assert_allclose(model.eval_apply(est, xb), train, rtol=1e-4, atol=1e-4)
    # Another batch: population statistics (from xb) differ from its own batch statistics.
    assert np.abs(model.eval_apply(est, xc) - model.apply(est, xc)).max() > 0.1
    # Batch objects are accepted and several batches average their statistics.
    est_c = estimate_batch_stats(model, params, [Batch(x=xc, y=jnp.zeros(6))])
    both = estimate_batch_stats(model, params, iter([xb, xc]))
    for i in range(4):
        for s in ("mean", "var"):
            want = (est[f"bn_{i}"][s] + est_c[f"bn_{i}"][s]) / 2
            np.testing.assert_allclose(both[f"bn_{i}"][s], want, rtol=1e-5, atol=1e-6)


def test_training_loss_gives_zero_gradient_to_stats_under_jit_and_vmap(running):
    model, params, xb, xc = running
    params = estimate_batch_stats(model, params, [xc])  # non-trivial stored stats

    def loss(p, x):
        return jnp.mean(model.apply(p, x) ** 2 + model.apply(p, x))

    xs = jnp.stack([xb, xc])
    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, xs)
    for i in range(4):
        for s in ("mean", "var"):
            np.testing.assert_array_equal(grads[f"bn_{i}"][s], np.zeros((2, 4)))
        assert np.all(np.isfinite(grads[f"conv_{i}"]["kernel"]))
        assert np.abs(grads[f"conv_{i}"]["kernel"]).max() > 0
    np.testing.assert_allclose(grads["bn_0"]["scale"][0],
                               jax.grad(loss)(params, xb)["bn_0"]["scale"],
                               rtol=1e-4, atol=1e-6)
    # The test-mode function does depend on the stored statistics.
    g_eval = jax.grad(lambda p: jnp.sum(model.eval_apply(p, xb)))(params)
    assert np.abs(g_eval["bn_3"]["mean"]).max() > 0


def test_transductive_mode_unchanged(running):
    model, run_params, xb, _ = running
    trans = conv4(1, None, filters=4, image_size=16)
    assert trans.eval_apply is None and trans.stats_apply is None
    assert eval_apply_of(trans) is trans.apply and eval_apply_of(model) is model.eval_apply
    params = trans.init(jax.random.key(0))
    assert sorted(params["bn_0"]) == ["bias", "scale"]
    same = {k: {n: v for n, v in d.items() if n not in ("mean", "var")}
            for k, d in run_params.items()}
    jax.tree.map(np.testing.assert_array_equal, params, same)
    np.testing.assert_allclose(jax.jit(trans.apply)(params, xb), model.apply(run_params, xb),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="bn_mode='running'"):
        estimate_batch_stats(trans, params, [xb])


def test_compute_dtype_keeps_eval_and_stats(running):
    model, params, xb, xc = running
    low = with_compute_dtype(model, jnp.bfloat16)
    est = estimate_batch_stats(model, params, [xb])
    est_low = estimate_batch_stats(low, params, [xb])
    for i in range(4):
        assert est_low[f"bn_{i}"]["var"].dtype == jnp.float32
        np.testing.assert_allclose(est_low[f"bn_{i}"]["mean"], est[f"bn_{i}"]["mean"],
                                   rtol=0.1, atol=0.05)
    out = jax.jit(low.eval_apply)(est, xc)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, model.eval_apply(est, xc), rtol=0.1, atol=0.1)
    assert not np.array_equal(out, model.eval_apply(est, xc))  # really bfloat16


def test_errors_are_clear(running):
    model, params, _, _ = running
    for make in (conv4, resnet12):
        with pytest.raises(ValueError, match=r"bn_mode='batch'.*'transductive', 'running'"):
            make(bn_mode="batch")
    with pytest.raises(ValueError, match="4 positive ints"):
        resnet12(widths=(8, 8, 8))
    with pytest.raises(ValueError, match="image_size >= 16"):
        resnet12(widths=(1, 1, 1, 1), image_size=8)
    with pytest.raises(ValueError, match="batch_stats"):
        from_nnx(lambda rngs: nnx.BatchNorm(3, rngs=rngs), batch_stats="population")
    with pytest.raises(ValueError, match="empty"):
        estimate_batch_stats(model, params, [])
