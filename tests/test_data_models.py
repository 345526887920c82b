"""The sinusoid task family and the MLP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jmeta.data import sinusoid_sampler, sinusoid_tasks
from jmeta.models import from_nnx, mlp


def test_sinusoid_ranges_shapes_and_determinism():
    t = sinusoid_tasks(jax.random.key(0), 200, 10, 7)
    assert t.support.x.shape == (200, 10, 1) and t.query.x.shape == (200, 7, 1)
    x = np.concatenate([t.support.x, t.query.x], 1)
    assert x.min() >= -5 and x.max() <= 5
    assert np.abs(np.concatenate([t.support.y, t.query.y], 1)).max() <= 5
    again = sinusoid_tasks(jax.random.key(0), 200, 10, 7)
    np.testing.assert_array_equal(t.query.y, again.query.y)
    assert not np.array_equal(t.query.y, sinusoid_tasks(jax.random.key(1), 200, 10, 7).query.y)


def test_support_and_query_come_from_one_sinusoid_with_paper_ranges():
    t = sinusoid_tasks(jax.random.key(0), 500, 20, 20)
    amps, phases = [], []
    for i in range(500):
        # y = A sin(x - p) = (A cos p) sin x - (A sin p) cos x: linear in (sin x, cos x).
        xs = np.asarray(t.support.x[i, :, 0], np.float64)
        ys = np.asarray(t.support.y[i, :, 0], np.float64)
        coef, *_ = np.linalg.lstsq(np.stack([np.sin(xs), np.cos(xs)], 1), ys, rcond=None)
        xq = np.asarray(t.query.x[i, :, 0], np.float64)
        pred = coef[0] * np.sin(xq) + coef[1] * np.cos(xq)
        np.testing.assert_allclose(pred, t.query.y[i, :, 0], atol=1e-4)
        amps.append(np.hypot(*coef))
        phases.append(np.arctan2(-coef[1], coef[0]))
    assert 0.1 - 1e-4 <= min(amps) and max(amps) <= 5 + 1e-4
    assert np.mean(amps) == pytest.approx(2.55, abs=0.2)
    assert -1e-4 <= min(phases) and max(phases) <= np.pi + 1e-4


def test_sampler_rejects_bad_sizes():
    with pytest.raises(ValueError, match="k_shot must be a positive int"):
        sinusoid_sampler(4, 0)


def test_mlp_matches_manual_forward_and_pytorch_style_init():
    model = mlp(1, 1, hidden=(40, 40))
    params = model.init(jax.random.key(0))
    bound = 1 / np.sqrt(40)
    assert np.abs(params["hidden_1"]["kernel"]).max() <= bound
    assert np.abs(params["head"]["bias"]).max() <= bound
    assert np.abs(params["hidden_0"]["kernel"]).max() > 0.5  # fan-in 1: U(-1, 1)
    x = jnp.linspace(-5, 5, 7)[:, None]
    h = x
    for name in ("hidden_0", "hidden_1"):
        h = np.maximum(h @ params[name]["kernel"] + params[name]["bias"], 0)
    want = h @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(model.apply(params, x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init,var_scale", [("lecun", 1.0), ("torch", 1 / 3)])
def test_conv4_initialisations_have_their_scales(init, var_scale):
    """"lecun": variance 1/fan_in, zero biases; "torch": PyTorch's uniform +-1/sqrt(fan_in)
    for weights and biases (variance 1/(3 fan_in))."""
    from jmeta.models import conv4

    params = conv4(1, 5, filters=32, strided=True, init=init).init(jax.random.key(0))
    for name, fan_in in [("conv_0", 9), ("conv_2", 9 * 32), ("head", 32 * 2 * 2)]:
        w, b = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
        np.testing.assert_allclose(w.var(), var_scale / fan_in, rtol=0.25)
        if init == "torch":
            assert np.abs(w).max() <= 1 / np.sqrt(fan_in) and 0 < np.abs(b).max() <= 1 / np.sqrt(fan_in)
        else:
            assert not b.any()
    with pytest.raises(ValueError, match="unknown init='he'.*'lecun', 'torch'"):
        conv4(1, 5, init="he")


def test_model_errors_are_clear():
    with pytest.raises(ValueError, match="positive int"):
        mlp(1, 1, hidden=(0,))
    with pytest.raises(ValueError, match="family"):
        from_nnx(lambda rngs: nnx.Linear(1, 1, rngs=rngs), family="rnn")
    with pytest.raises(NotImplementedError, match="nnx.Param"):
        from_nnx(lambda rngs: nnx.BatchNorm(3, rngs=rngs))


def test_bfloat16_compute_keeps_float32_masters_and_close_values():
    import optax

    from jmeta.algorithms import maml
    from jmeta.core import init_state, make_meta_step
    from jmeta.models import with_compute_dtype

    model = mlp(1, 1, hidden=(16, 16))
    low = with_compute_dtype(model, jnp.bfloat16)
    params = model.init(jax.random.key(0))
    x = jnp.linspace(-5, 5, 11)[:, None]
    np.testing.assert_allclose(low.apply(params, x), model.apply(params, x), rtol=5e-2, atol=5e-2)
    assert not np.array_equal(low.apply(params, x), model.apply(params, x))  # really bf16
    learner, tx = maml(low, 0.01, 2), optax.adam(1e-3)
    state = init_state(learner, tx, jax.random.key(0))
    state, m = make_meta_step(learner, tx, sampler=sinusoid_sampler(4, 5))(state)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.opt_state)
               if hasattr(p, "dtype") and p.ndim)
    assert np.isfinite(float(m["loss"]))
