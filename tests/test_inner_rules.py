"""Inner update rules: formulas, learnable pieces, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.inner import from_optax, lslr, meta_sgd, sgd

PARAMS = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}
GRADS = {"a": jnp.full((2, 3), 2.0), "b": jnp.arange(3.0)}


def test_sgd_is_minus_lr_times_grad():
    updates, _ = sgd(0.1).update(GRADS, (), PARAMS, ())
    np.testing.assert_allclose(updates["b"], -0.1 * np.arange(3.0))


def test_sgd_path_lr_sets_a_step_size_per_parameter_path():
    params = {"head": {"kernel": jnp.ones(2)}, "body": {"w": jnp.ones(2), "frozen": None}}
    grads = {"head": {"kernel": jnp.full(2, 2.0)}, "body": {"w": jnp.full(2, 3.0), "frozen": None}}
    seen = []

    def rate(path):
        seen.append(path)
        return None if path.startswith("head/") else 0.01

    updates, _ = sgd(0.5, path_lr=rate).update(grads, (), params, ())
    np.testing.assert_allclose(updates["head"]["kernel"], -1.0)  # None keeps lr
    np.testing.assert_allclose(updates["body"]["w"], -0.03)
    assert updates["body"]["frozen"] is None and sorted(seen) == ["body/w", "head/kernel"]


def test_sgd_path_lr_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="path_lr must be a function"):
        sgd(0.1, path_lr=0.01)
    with pytest.raises(ValueError, match="path_lr of 'a'.*positive"):
        sgd(0.1, path_lr=lambda p: -1.0).update(GRADS, (), PARAMS, ())


def test_meta_sgd_rates_have_param_shapes_and_range():
    rates = meta_sgd((0.005, 0.1)).init_meta(jax.random.key(0), PARAMS)
    assert jax.tree.map(jnp.shape, rates) == jax.tree.map(jnp.shape, PARAMS)
    flat = np.concatenate([np.ravel(r) for r in jax.tree.leaves(rates)])
    assert flat.min() >= 0.005 and flat.max() <= 0.1 and flat.std() > 0
    updates, _ = meta_sgd(0.1).update(GRADS, (), PARAMS, rates)
    np.testing.assert_allclose(updates["a"], -rates["a"] * 2.0)


def test_lslr_uses_one_rate_per_step_and_reuses_the_last():
    rule = lslr(0.1, inner_steps=2)
    rates = {"a": jnp.array([0.1, 0.2]), "b": jnp.array([0.3, 0.4])}
    state = rule.init(PARAMS)
    seen = []
    for _ in range(3):
        updates, state = rule.update(GRADS, state, PARAMS, rates)
        seen.append(float(updates["b"][1]))
    assert seen == pytest.approx([-0.3, -0.4, -0.4])


def test_from_optax_wraps_any_transformation():
    rule = from_optax(optax.adam(0.1))
    state = rule.init(PARAMS)
    updates, _ = rule.update(GRADS, state, PARAMS, ())
    want, _ = optax.adam(0.1).update(GRADS, optax.adam(0.1).init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["a"], want["a"])


@pytest.mark.parametrize("bad", [0.0, -1.0, (0.1, 0.01), "0.1", (1, 2, 3)])
def test_bad_rates_are_clear_errors(bad):
    with pytest.raises(ValueError, match="learning rate|range"):
        meta_sgd(bad)


def test_lslr_needs_steps():
    with pytest.raises(ValueError, match="inner_steps"):
        lslr(0.1, 0)
