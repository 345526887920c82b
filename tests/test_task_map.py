"""The one place that maps a task function over the task axis: every strategy, same values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.algorithms import maml, metasgd
from jmeta.core import default_task_map, map_tasks

STRATEGIES = [("vmap", None), ("map", None), ("map", 2), ("unroll", None)]


@pytest.fixture(scope="module")
def learner(small_model):
    return metasgd(small_model, init_lr=(0.01, 0.05), inner_steps=2)


@pytest.fixture(scope="module")
def meta(learner):
    return learner.init(jax.random.key(0))


def _loop_reference(learner, meta, tasks, keys):
    outs = [
        learner.task_grad(meta, jax.tree.map(lambda x: x[i], tasks), keys[i])
        for i in range(keys.shape[0])
    ]
    return jax.tree.map(lambda *xs: np.stack(xs), *outs)


@pytest.mark.parametrize("strategy,chunk", STRATEGIES)
def test_strategies_equal_a_python_loop_over_tasks(learner, meta, tasks, strategy, chunk):
    keys = jax.random.split(jax.random.key(1), 4)
    ref = _loop_reference(learner, meta, tasks, keys)
    mean = jax.jit(
        lambda m, t, k: map_tasks(learner.task_grad, m, t, k, strategy=strategy, chunk_size=chunk)
    )(meta, tasks, keys)
    per_task = jax.jit(
        lambda m, t, k: map_tasks(
            learner.task_grad, m, t, k, strategy=strategy, chunk_size=chunk, reduce=None
        )
    )(meta, tasks, keys)
    for got, want in zip(jax.tree.leaves(per_task), jax.tree.leaves(ref)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(mean), jax.tree.leaves(ref)):
        np.testing.assert_allclose(got, want.mean(0), rtol=2e-5, atol=1e-6)


def test_mean_of_task_grads_is_grad_of_mean_loss(small_model, tasks):
    learner = maml(small_model, 0.05, inner_steps=1)
    meta = learner.init(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 4)
    grads, _ = map_tasks(learner.task_grad, meta, tasks, keys)


    # The gradient of the mean query loss after adaptation, taken in one piece.
    want = jax.grad(lambda m: jnp.mean(jnp.stack([
        _query_loss(learner, small_model, m, jax.tree.map(lambda x: x[i], tasks)) for i in range(4)
    ])))(meta)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def _query_loss(learner, model, meta, ep):
    p, _ = learner.adapt(meta, ep.support)
    return jnp.mean((model.apply(p, ep.query.x) - ep.query.y) ** 2)


def test_bad_strategy_and_chunk_are_clear_errors(learner, meta, tasks):
    keys = jax.random.split(jax.random.key(1), 4)
    with pytest.raises(ValueError, match="Unknown task_map 'pmap'"):
        map_tasks(learner.task_grad, meta, tasks, keys, strategy="pmap")
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        map_tasks(learner.task_grad, meta, tasks, keys, strategy="map", chunk_size=3)
    with pytest.raises(ValueError, match="one key per task"):
        map_tasks(learner.task_grad, meta, tasks, keys[:3])


def test_default_task_map_per_backend_and_family():
    assert default_task_map("dense", "cpu") == "vmap"
    assert default_task_map("conv", "cpu") == "map"  # measured: docs/performance.md
    assert default_task_map("conv", "gpu") == "vmap"
    assert default_task_map("conv", "tpu") == "vmap"


def test_a_single_task_is_called_directly_by_every_strategy(learner, meta, tasks):
    one = jax.tree.map(lambda x: x[:1], tasks)
    keys = jax.random.split(jax.random.key(1), 1)
    want = learner.task_grad(meta, jax.tree.map(lambda x: x[0], one), keys[0])
    direct = str(jax.make_jaxpr(lambda m: learner.task_grad(m, jax.tree.map(lambda x: x[0], one),
                                                            keys[0]))(meta))
    for strategy in ("vmap", "map", "unroll"):
        jaxpr = str(jax.make_jaxpr(lambda m: map_tasks(learner.task_grad, m, one, keys,
                                                       strategy=strategy))(meta))
        # No loop over tasks and no batching: the same loops as the single-task program.
        assert jaxpr.count("scan[") == direct.count("scan[")
        got = map_tasks(learner.task_grad, meta, one, keys, strategy=strategy)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
        stacked = map_tasks(learner.task_grad, meta, one, keys, strategy=strategy, reduce=None)
        for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(want)):
            np.testing.assert_allclose(a[0], b, rtol=2e-5, atol=1e-6)
