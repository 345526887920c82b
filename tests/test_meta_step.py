"""The jitted meta-step: no retracing, determinism, donation, Reptile's formula, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms import maml, reptile
from jmeta.core import MetaState, init_state, make_meta_step
from jmeta.data import sinusoid_sampler, sinusoid_tasks
from jmeta.inner import sgd


def _run(learner, tx, seed, steps, sampler):
    step = make_meta_step(learner, tx, sampler=sampler)
    state = init_state(learner, tx, jax.random.key(seed))
    for _ in range(steps):
        state, _ = step(state)
    return state


def test_step_does_not_retrace_on_later_calls(small_model):
    learner = maml(small_model, 0.01, 2)
    tx = optax.adam(1e-3)
    step = make_meta_step(learner, tx)
    state = init_state(learner, tx, jax.random.key(0))
    for i in range(3):
        state, _ = step(state, sinusoid_tasks(jax.random.key(i), 4, 5))
    assert step._cache_size() == 1


def test_step_donates_its_input_state(small_model):
    learner = maml(small_model, 0.01, 1)
    tx = optax.adam(1e-3)
    step = make_meta_step(learner, tx, sampler=sinusoid_sampler(2, 5))
    state = init_state(learner, tx, jax.random.key(0))
    new, _ = step(state)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.params))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new.params))


def test_same_seed_same_parameters_other_seed_other_parameters(small_model):
    learner = maml(small_model, 0.01, 1)
    tx = optax.adam(1e-2)
    sampler = sinusoid_sampler(4, 5)
    a = _run(learner, tx, 7, 5, sampler)
    b = _run(learner, tx, 7, 5, sampler)
    c = _run(learner, tx, 8, 5, sampler)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    assert int(a.step) == 5
    assert any(not np.array_equal(x, y)
               for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


def test_sampler_step_equals_explicit_batch_step(small_model):
    learner = maml(small_model, 0.01, 1)
    tx = optax.sgd(0.1)
    sampler = sinusoid_sampler(4, 5)
    state = init_state(learner, tx, jax.random.key(0))
    # The sampled step draws its batch from fold_in(state.rng, 0x5A3): reproduce it by hand.
    batch = sampler(jax.random.fold_in(state.rng, 0x5A3))
    s1, m1 = make_meta_step(learner, tx, donate=False)(state, batch)
    s2, m2 = make_meta_step(learner, tx, sampler=sampler, donate=False)(state)
    # Same values up to float rounding (XLA fuses the in-graph sampler differently).
    for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(jax.random.key_data(s1.rng), jax.random.key_data(s2.rng))
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)


def test_reptile_update_equals_the_manual_formula(small_model, tasks):
    inner_lr, k, eps = 0.02, 3, 0.5
    learner = reptile(small_model, inner_lr, k)
    tx = optax.sgd(eps)
    state = init_state(learner, tx, jax.random.key(0))
    theta = state.params["model"]
    new, _ = make_meta_step(learner, tx, task_map="unroll", donate=False)(state, tasks)

    def loss(p, x, y):
        return jnp.mean((small_model.apply(p, x) - y) ** 2)

    adapted = []
    for i in range(4):
        phi = theta
        for _ in range(k):
            g = jax.grad(loss)(phi, tasks.support.x[i], tasks.support.y[i])
            phi = jax.tree.map(lambda a, b: a - inner_lr * b, phi, g)
        adapted.append(phi)
    mean_phi = jax.tree.map(lambda *xs: sum(xs) / 4, *adapted)
    want = jax.tree.map(lambda t, m: t + eps * (m - t), theta, mean_phi)
    for got, exp in zip(jax.tree.leaves(new.params["model"]), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6)


def test_maml_lowers_the_post_adaptation_loss(small_model):
    learner = maml(small_model, 0.01, 1)
    tx = optax.adam(1e-2)
    step = make_meta_step(learner, tx, sampler=sinusoid_sampler(10, 10))
    state = init_state(learner, tx, jax.random.key(0))
    # Scored on 500 fixed held-out tasks: the training losses of 10-task batches are too noisy
    # for a band (their ratio over 400 steps ranged 0.63-0.81 across seeds).
    held_out = sinusoid_tasks(jax.random.key(123), num_tasks=500, k_shot=10)
    score = jax.jit(lambda meta: jnp.mean(
        jax.vmap(lambda e: learner.task_grad(meta, e, None)[1]["loss"])(held_out)))
    before = float(score(state.params))
    for _ in range(400):
        state, _ = step(state)
    after = float(score(state.params))
    assert after < 0.7 * before, (before, after)


def test_metastate_is_a_pytree_with_four_fields(small_model):
    learner = maml(small_model, 0.01, 1)
    state = init_state(learner, optax.adam(1e-3), jax.random.key(0))
    assert isinstance(state, MetaState)
    assert state.step.dtype == jnp.int32
    assert jax.tree.structure(state.params) == jax.tree.structure(learner.init(jax.random.key(1)))


def test_inner_rule_learning_rates_must_be_positive():
    with pytest.raises(ValueError, match="learning rate"):
        sgd(-0.1)


def test_support_minibatches_cover_each_example_once_per_pass():
    from jmeta.core import Batch, support_minibatches

    support = Batch(jnp.arange(10.0)[:, None], jnp.arange(10))
    b = support_minibatches(jax.random.key(3), support, inner_steps=5, batch_size=4)
    assert b.x.shape == (5, 4, 1) and b.y.shape == (5, 4)
    flat = np.asarray(b.y).ravel()
    assert sorted(flat[:10]) == list(range(10))  # first pass: a permutation
    assert len(set(flat[10:20])) == 10  # second pass: another one
    np.testing.assert_array_equal(np.asarray(b.x)[..., 0], flat.reshape(5, 4))
    with pytest.raises(ValueError, match="batch_size must be 1..10"):
        support_minibatches(jax.random.key(0), support, 2, 11)


def test_reptile_minibatches_follow_the_drawn_batches(small_model, tasks):
    from jmeta.core import Episode, support_minibatches

    inner_lr, k, batch = 0.02, 3, 2
    learner = reptile(small_model, inner_lr, k, inner_batch=batch)
    meta = learner.init(jax.random.key(0))
    episode = jax.tree.map(lambda a: a[0], tasks)
    key = jax.random.key(7)
    grads, _ = learner.task_grad(meta, Episode(episode.support, episode.query), key)

    def loss(p, x, y):
        return jnp.mean((small_model.apply(p, x) - y) ** 2)

    mb = support_minibatches(key, episode.support, k, batch)
    phi = meta["model"]
    for t in range(k):  # explicit loop over the drawn minibatches
        g = jax.grad(loss)(phi, mb.x[t], mb.y[t])
        phi = jax.tree.map(lambda a, b: a - inner_lr * b, phi, g)
    want = jax.tree.map(lambda m, p: m - p, meta["model"], phi)
    for got, exp in zip(jax.tree.leaves(grads["model"]), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-7)

    # Minibatches of the whole support set are permutations of it: the same as full-batch steps.
    n = episode.support.x.shape[0]
    full = reptile(small_model, inner_lr, k).task_grad(meta, Episode(episode.support,
                                                                     episode.query), key)[0]
    perm = reptile(small_model, inner_lr, k, inner_batch=n).task_grad(
        meta, Episode(episode.support, episode.query), key)[0]
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(perm)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="larger than the support set"):
        reptile(small_model, inner_lr, k, inner_batch=n + 1).task_grad(
            meta, Episode(episode.support, episode.query), key)


@pytest.mark.parametrize("factory", ["maml", "reptile"])
def test_unrolled_inner_loop_gives_the_rolled_values(small_model, tasks, factory):
    from jmeta.algorithms import maml as maml_, reptile as reptile_
    from jmeta.core import default_inner_unroll

    build = {"maml": maml_, "reptile": reptile_}[factory]
    tx = optax.adam(1e-3)
    results = []
    for unroll in (False, True):
        learner = build(small_model, 0.02, 3, unroll=unroll)
        state = init_state(learner, tx, jax.random.key(0))
        new, metrics = make_meta_step(learner, tx, donate=False)(state, tasks)
        results.append((new.params, metrics["loss"]))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert default_inner_unroll("conv", "cpu") and not default_inner_unroll("dense", "cpu")
    with pytest.raises(ValueError, match="unroll must be True, False or None"):
        build(small_model, 0.02, 3, unroll=4)
