"""The meta-test protocol: confidence intervals, adaptation curves, the pretrained baseline."""

import jax
import numpy as np
import optax
import pytest

from jmeta.algorithms import maml, metasgd
from jmeta.data import sinusoid_sampler, sinusoid_tasks
from jmeta.train import adaptation_curves, mean_ci95, train_pretrained


def test_mean_ci95_matches_the_textbook_formula():
    v = np.random.default_rng(0).normal(3.0, 2.0, size=1000)
    r = mean_ci95(v)
    assert r["mean"] == pytest.approx(v.mean())
    assert r["ci95"] == pytest.approx(1.959964 * v.std(ddof=1) / np.sqrt(1000), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci95([1.0])


@pytest.mark.parametrize("task_map", ["vmap", "map"])
def test_adaptation_curves_equal_a_per_task_loop(small_model, task_map):
    learner = metasgd(small_model, init_lr=0.02, inner_steps=1)
    meta = learner.init(jax.random.key(0))
    tasks = sinusoid_tasks(jax.random.key(5), 6, 5, 9)
    curves = adaptation_curves(learner, meta, tasks, 4, task_map=task_map)
    assert curves.shape == (6, 5)
    for i in range(6):
        ep = jax.tree.map(lambda x: x[i], tasks)
        for s in (0, 2, 4):
            params, _ = learner.adapt(meta, ep.support, inner_steps=s)
            want = np.mean((small_model.apply(params, ep.query.x) - ep.query.y) ** 2)
            np.testing.assert_allclose(curves[i, s], want, rtol=1e-5)


def test_pretrained_baseline_fits_the_task_distribution(small_model):
    sampler = sinusoid_sampler(10, 10)
    params = train_pretrained(small_model, optax.adam(1e-2), sampler, 600, jax.random.key(0),
                              steps_per_call=250)
    learner = maml(small_model, 0.01, 1)
    tasks = sinusoid_tasks(jax.random.key(9), 200, 10, 50)
    init = adaptation_curves(learner, learner.init(jax.random.key(0)), tasks, 0)[:, 0]
    trained = adaptation_curves(learner, {"model": params, "rule": ()}, tasks, 0)[:, 0]
    # The best single function is E[A sin(x - p)] = E[A] (2/pi) cos x ~ 1.62 cos x, whose MSE is
    # E[A^2]/2 - E[(1.62 cos x)^2] ~ 4.25 - 1.31 = 2.94 (x uniform on [-5, 5]).
    assert trained.mean() < init.mean()
    assert trained.mean() == pytest.approx(2.94, abs=0.5)


def test_divergence_is_reported_not_averaged_away():
    r = mean_ci95([1.0, float("nan"), 2.0, float("inf")])
    assert r["nonfinite"] == 2 and np.isnan(r["mean"])
