"""Meta-gradients against finite differences, an explicit unrolled computation and the
Hessian-vector term that separates second-order from first-order MAML."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.algorithms import anil, fomaml, maml, metasgd
from jmeta.core import Batch, Episode, mse_loss
from jmeta.data import sinusoid_tasks
from jmeta.inner import lslr
from jmeta.models import mlp
from tests._helpers import sinusoid_episode64, to64, trees_close

LR = 0.05


def _setup(learner):
    return to64(learner.init(jax.random.key(0))), sinusoid_episode64(3, 6)


def _loss(model, params, batch):
    return mse_loss(model.apply(params, batch.x), batch.y)


def _query_loss(learner, meta, ep):
    params, _ = learner.adapt(meta, ep.support)
    return _loss(mlp(1, 1, (8, 8)), params, ep.query)


def _assert_matches_finite_differences(learner, meta, ep, directions=3):
    """The meta-gradient along random directions equals central finite differences."""
    grads, _ = learner.task_grad(meta, ep, jax.random.key(0))
    rng = np.random.default_rng(0)
    for _ in range(directions):
        direction = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), meta)
        eps = 1e-6
        plus = jax.tree.map(lambda m, d: m + eps * d, meta, direction)
        minus = jax.tree.map(lambda m, d: m - eps * d, meta, direction)
        fd = (_query_loss(learner, plus, ep) - _query_loss(learner, minus, ep)) / (2 * eps)
        analytic = sum(jnp.vdot(g, d)
                       for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
        np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6, atol=1e-9)


def test_second_order_matches_finite_differences(x64):
    model = mlp(1, 1, (8, 8))
    learner = maml(model, LR, inner_steps=2)
    meta, ep = _setup(learner)
    _assert_matches_finite_differences(learner, meta, ep)


def test_second_order_matches_explicit_unrolled_two_steps(x64):
    model = mlp(1, 1, (8, 8))
    learner = maml(model, LR, inner_steps=2)
    meta, ep = _setup(learner)

    def unrolled(theta):
        p = theta
        for _ in range(2):  # written out: no scan, no inner-rule machinery
            g = jax.grad(lambda q: _loss(model, q, ep.support))(p)
            p = jax.tree.map(lambda a, b: a - LR * b, p, g)
        return _loss(model, p, ep.query)

    expected = jax.grad(unrolled)(meta["model"])
    grads, metrics = learner.task_grad(meta, ep, jax.random.key(0))
    trees_close(grads["model"], expected, rtol=1e-10)
    np.testing.assert_allclose(float(metrics["loss"]), float(unrolled(meta["model"])), rtol=1e-12)


def test_first_order_differs_exactly_by_the_hessian_term(x64):
    model = mlp(1, 1, (8, 8))
    meta, ep = _setup(maml(model, LR, inner_steps=1))
    second, _ = maml(model, LR, inner_steps=1).task_grad(meta, ep, jax.random.key(0))
    first, _ = fomaml(model, LR, inner_steps=1).task_grad(meta, ep, jax.random.key(0))
    theta = meta["model"]
    # First order: gradient of the query loss at the adapted parameters.
    g_s = jax.grad(lambda p: _loss(model, p, ep.support))(theta)
    adapted = jax.tree.map(lambda a, b: a - LR * b, theta, g_s)
    g_q = jax.grad(lambda p: _loss(model, p, ep.query))(adapted)
    trees_close(first["model"], g_q, rtol=1e-10)
    # Second order adds -lr * H_support(theta) @ g_q.
    _, hvp = jax.jvp(jax.grad(lambda p: _loss(model, p, ep.support)), (theta,), (g_q,))
    diff = jax.tree.map(lambda a, b: a - b, second["model"], first["model"])
    trees_close(diff, jax.tree.map(lambda h: -LR * h, hvp), rtol=1e-8, atol=1e-12)
    assert max(float(jnp.abs(h).max()) for h in jax.tree.leaves(hvp)) > 1e-4  # the term is real


def test_metasgd_rates_get_the_exact_nonzero_meta_gradient(x64):
    model = mlp(1, 1, (8, 8))
    learner = metasgd(model, init_lr=(0.01, 0.05), inner_steps=1)
    meta, ep = _setup(learner)
    grads, _ = learner.task_grad(meta, ep, jax.random.key(0))
    theta, rates = meta["model"], meta["rule"]
    g_s = jax.grad(lambda p: _loss(model, p, ep.support))(theta)
    adapted = jax.tree.map(lambda a, r, g: a - r * g, theta, rates, g_s)
    g_q = jax.grad(lambda p: _loss(model, p, ep.query))(adapted)
    # d L_q(theta - a * g_s) / d a = -g_s * g_q, coordinate by coordinate.
    trees_close(grads["rule"], jax.tree.map(lambda a, b: -a * b, g_s, g_q), rtol=1e-10, atol=1e-14)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads["rule"]))


def test_lslr_rates_get_nonzero_meta_gradients_per_step(x64):
    model = mlp(1, 1, (8, 8))
    learner = maml(model, inner_steps=3, rule=lslr(0.02, inner_steps=3))
    meta, ep = _setup(learner)
    grads, _ = learner.task_grad(meta, ep, jax.random.key(0))
    for g in jax.tree.leaves(grads["rule"]):
        assert g.shape == (3,)
        assert np.all(np.abs(np.asarray(g)) > 0), g
    # One step: d/d a_leaf = -<g_s, g_q> over that leaf.
    one = maml(model, inner_steps=1, rule=lslr(0.02, inner_steps=1))
    meta1, _ = _setup(one)
    grads1, _ = one.task_grad(meta1, ep, jax.random.key(0))
    theta = meta1["model"]
    g_s = jax.grad(lambda p: _loss(model, p, ep.support))(theta)
    adapted = jax.tree.map(lambda a, r, g: a - r[0] * g, theta, meta1["rule"], g_s)
    g_q = jax.grad(lambda p: _loss(model, p, ep.query))(adapted)
    expected = jax.tree.map(lambda a, b: -jnp.vdot(a, b)[None], g_s, g_q)
    trees_close(grads1["rule"], expected, rtol=1e-10)


def test_anil_adapts_only_the_head_but_meta_learns_the_body(x64):
    model = mlp(1, 1, (8, 8))
    learner = anil(model, LR, inner_steps=2)
    meta, ep = _setup(learner)
    adapted, _ = learner.adapt(meta, ep.support)
    for name in ("hidden_0", "hidden_1"):
        trees_close(adapted[name], meta["model"][name], rtol=0)
    assert not np.allclose(adapted["head"]["kernel"], meta["model"]["head"]["kernel"])
    grads, _ = learner.task_grad(meta, ep, jax.random.key(0))
    assert float(jnp.abs(grads["model"]["hidden_0"]["kernel"]).sum()) > 0
    # Equals MAML restricted to the head, written out by hand.
    def unrolled(theta):
        p = theta
        for _ in range(2):
            g = jax.grad(lambda h: _loss(model, dict(p, head=h), ep.support))(p["head"])
            p = dict(p, head=jax.tree.map(lambda a, b: a - LR * b, p["head"], g))
        return _loss(model, p, ep.query)

    trees_close(grads["model"], jax.grad(unrolled)(meta["model"]), rtol=1e-10)


@pytest.mark.parametrize("first_order", [False, True])
def test_remat_changes_nothing_in_values(first_order):
    model = mlp(1, 1, (8, 8))
    plain = maml(model, LR, inner_steps=4, first_order=first_order)
    remat = maml(model, LR, inner_steps=4, first_order=first_order, remat=True)
    meta = plain.init(jax.random.key(0))
    ep = jax.tree.map(lambda x: x[0], sinusoid_tasks(jax.random.key(1), 1, 5))
    g1, m1 = jax.jit(plain.task_grad)(meta, ep, jax.random.key(0))
    g2, m2 = jax.jit(remat.task_grad)(meta, ep, jax.random.key(0))
    trees_close(g1, g2, rtol=1e-5, atol=1e-7)


def test_inner_loop_rejects_a_traced_step_count(small_model):
    from jmeta.core import inner_loop
    from jmeta.inner import sgd

    params = small_model.init(jax.random.key(0))
    b = Batch(jnp.zeros((3, 1)), jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="inner_steps"):
        inner_loop(lambda p, b: 0.0, sgd(0.1), params, (), b, inner_steps=-1)
    assert Episode(b, b).support is b


def test_body_inner_lr_steps_the_head_at_inner_lr_and_the_rest_at_its_own_rate(x64):
    """The config's body_inner_lr: one inner step equals the hand-written per-group SGD step,
    and its second-order meta-gradient matches finite differences."""
    from jmeta.train import Config
    from jmeta.train._build import build_learner, model_task

    model = mlp(1, 1, (8, 8))
    cfg = Config(model=dict(name="mlp", hidden=(8, 8)),
                 learner=dict(name="maml", inner_lr=LR, inner_steps=1),
                 rule=dict(name="sgd", body_lr=0.2))
    learner = build_learner(cfg, model_task(cfg))
    meta, ep = _setup(learner)
    adapted, _ = learner.adapt(meta, ep.support)
    g = jax.grad(lambda p: _loss(model, p, ep.support))(meta["model"])
    for name in meta["model"]:
        rate = LR if name == "head" else 0.2
        want = jax.tree.map(lambda p, d, r=rate: p - r * d, meta["model"][name], g[name])
        jax.tree.map(np.testing.assert_allclose, adapted[name], want)
    _assert_matches_finite_differences(learner, meta, ep)
