"""Prototypical Networks: closed-form adaptation, reference gradients, task mapping, training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms._protonets import COSINE_SCALE, protonets
from jmeta.core import Batch, Episode, init_state, make_meta_step, map_tasks
from jmeta.core._losses import cross_entropy_loss
from jmeta.models import mlp
from jmeta.train._eval import adaptation_curves
from tests._helpers import blob_sampler, np_cross_entropy

DIM = 4


def _episode(key, ways, shots, queries, dim=DIM):
    """A random episode with shuffled support labels (every class present ``shots`` times)."""
    kx, kq, kp, kl = jax.random.split(key, 4)
    ys = jax.random.permutation(kp, jnp.repeat(jnp.arange(ways), shots))
    yq = jax.random.randint(kl, (ways * queries,), 0, ways)
    return Episode(
        Batch(jax.random.normal(kx, (ways * shots, dim)), ys),
        Batch(jax.random.normal(kq, (ways * queries, dim)), yq),
    )


@pytest.mark.parametrize("distance", ["sqeuclidean", "cosine"])
def test_prototypes_and_logits_match_numpy(distance):
    ways, shots = 5, 3
    model = mlp(DIM, 6, hidden=(8,))
    learner = protonets(model, ways=ways, distance=distance)
    meta = learner.init(jax.random.key(0))
    ep = _episode(jax.random.key(1), ways, shots, 4)

    task_params, trace = learner.adapt(meta, ep.support)
    logits = np.asarray(learner.predict(task_params, ep.query.x))

    emb_s = np.asarray(model.apply(meta["model"], ep.support.x), np.float64)
    emb_q = np.asarray(model.apply(meta["model"], ep.query.x), np.float64)
    ys = np.asarray(ep.support.y)
    protos = np.stack([emb_s[ys == c].mean(0) for c in range(ways)])
    if distance == "sqeuclidean":
        expected = -((emb_q[:, None, :] - protos[None]) ** 2).sum(-1)
        support_logits = -((emb_s[:, None, :] - protos[None]) ** 2).sum(-1)
    else:
        def unit(v):
            return v / np.linalg.norm(v, axis=-1, keepdims=True)

        expected = COSINE_SCALE * unit(emb_q) @ unit(protos).T
        support_logits = COSINE_SCALE * unit(emb_s) @ unit(protos).T

    np.testing.assert_allclose(np.asarray(task_params["prototypes"]), protos, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    assert logits.shape == (ways * 4, ways)
    assert trace["support_loss"].shape == (1,)
    np.testing.assert_allclose(
        float(trace["support_loss"][0]), np_cross_entropy(support_logits, ys), rtol=1e-4
    )
    assert "eval" not in trace


def test_unadapted_predict_is_uniform_and_eval_is_repeated():
    ways = 3
    learner = protonets(mlp(DIM, 5, hidden=(8,)), ways=ways)
    meta = learner.init(jax.random.key(0))
    ep = _episode(jax.random.key(1), ways, 2, 2)
    out = learner.predict(meta["model"], ep.query.x)
    np.testing.assert_array_equal(np.asarray(out), np.zeros((ways * 2, ways)))

    def q(p):
        return cross_entropy_loss(learner.predict(p, ep.query.x), ep.query.y)

    for steps, length in [(None, 1), (0, 1), (1, 1), (4, 4)]:
        task_params, trace = learner.adapt(meta, ep.support, inner_steps=steps, eval_fn=q)
        assert trace["eval"].shape == (length,)
        np.testing.assert_allclose(np.asarray(trace["eval"]), float(q(task_params)), rtol=1e-6)


@pytest.mark.parametrize("distance", ["sqeuclidean", "cosine"])
def test_task_grad_matches_reference(distance):
    ways = 4
    model = mlp(DIM, 6, hidden=(8,))
    learner = protonets(model, ways=ways, distance=distance)
    meta = learner.init(jax.random.key(3))
    ep = _episode(jax.random.key(4), ways, 3, 5)
    ys = np.asarray(ep.support.y)

    def reference(params):
        es = model.apply(params, ep.support.x)
        eq = model.apply(params, ep.query.x)
        protos = jnp.stack([es[ys == c].mean(0) for c in range(ways)])
        if distance == "sqeuclidean":
            logits = -jnp.sum((eq[:, None, :] - protos[None]) ** 2, -1)
        else:
            def unit(v):
                return v / jnp.linalg.norm(v, axis=-1, keepdims=True)

            logits = COSINE_SCALE * unit(eq) @ unit(protos).T
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(logp[jnp.arange(eq.shape[0]), ep.query.y])

    ref_loss, ref_grads = jax.value_and_grad(reference)(meta["model"])
    grads, metrics = learner.task_grad(meta, ep, jax.random.key(0))

    assert grads["rule"] == ()
    assert sorted(metrics) == ["accuracy", "loss", "support_loss_before"]
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_loss), rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
        grads["model"], ref_grads,
    )
    for path, g in jax.tree_util.tree_flatten_with_path(grads["model"])[0]:
        name = jax.tree_util.keystr(path)
        norm = float(jnp.linalg.norm(g))
        if distance == "sqeuclidean" and name == "['head']['bias']":
            # Squared distances are invariant to translating every embedding, so the last bias
            # has an exactly zero gradient (up to rounding); cosine similarity is not invariant.
            assert norm < 1e-5, name
        else:
            assert norm > 1e-6, name


@pytest.mark.slow  # long; `make test-slow` runs it
def test_vmap_and_map_strategies_agree():
    learner = protonets(mlp(8, 6, hidden=(16,)), ways=3)
    meta = learner.init(jax.random.key(0))
    batch = blob_sampler(4)(jax.random.key(1))
    keys = jax.random.split(jax.random.key(2), 4)
    g_v, m_v = map_tasks(learner.task_grad, meta, batch, keys, strategy="vmap")
    g_m, m_m = map_tasks(learner.task_grad, meta, batch, keys, strategy="map", chunk_size=2)
    assert jax.tree.structure(g_v) == jax.tree.structure(g_m)
    assert jax.tree.leaves(g_v)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_v, g_m)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), m_v, m_m)

    tx = optax.adam(1e-2)
    results = []
    for strategy in ("vmap", "map"):
        step = make_meta_step(learner, tx, task_map=strategy, chunk_size=2, donate=False)
        state, metrics = step(init_state(learner, tx, jax.random.key(5)), batch)
        results.append((state.params, metrics))
    (p_v, mv), (p_m, mm) = results
    np.testing.assert_allclose(float(mv["grad_norm"]), float(mm["grad_norm"]), rtol=1e-5)
    assert float(mv["grad_norm"]) > 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p_v, p_m)


def test_meta_training_raises_query_accuracy():
    ways = 3
    learner = protonets(mlp(8, 8, hidden=(32,)), ways=ways)
    tx = optax.adam(1e-2)
    state = init_state(learner, tx, jax.random.key(0))
    held_out = blob_sampler(64, ways=ways)(jax.random.key(123))
    keys = jax.random.split(jax.random.key(0), 64)
    evaluate = jax.jit(lambda m: map_tasks(learner.task_grad, m, held_out, keys)[1])

    before = evaluate(state.params)
    step = make_meta_step(learner, tx, task_map="vmap", sampler=blob_sampler(8, ways=ways))
    for _ in range(100):
        state, metrics = step(state)
    after = evaluate(state.params)

    assert float(before["accuracy"]) < 0.55, before
    assert float(after["accuracy"]) > 0.75, after
    assert float(after["loss"]) < float(before["loss"]) - 0.5, (before, after)
    assert np.isfinite(float(metrics["grad_norm"]))


def test_adaptation_curves_chance_then_prototypes():
    ways = 3
    learner = protonets(mlp(8, 6, hidden=(16,)), ways=ways)
    meta = learner.init(jax.random.key(0))
    tasks = blob_sampler(5, ways=ways)(jax.random.key(7))
    curves = adaptation_curves(learner, meta, tasks, 1, loss_fn=cross_entropy_loss)
    assert curves.shape == (5, 2)
    np.testing.assert_allclose(curves[:, 0], math.log(ways), rtol=1e-6)

    def query_loss(ep):
        task_params, _ = learner.adapt(meta, ep.support)
        return cross_entropy_loss(learner.predict(task_params, ep.query.x), ep.query.y)

    expected = [float(query_loss(jax.tree.map(lambda x: x[i], tasks))) for i in range(5)]
    np.testing.assert_allclose(curves[:, 1], expected, rtol=1e-5)
    assert not np.allclose(curves[:, 1], math.log(ways))

    longer = adaptation_curves(learner, meta, tasks, 3, loss_fn=cross_entropy_loss)
    assert longer.shape == (5, 4)
    np.testing.assert_allclose(longer[:, 1:], np.repeat(curves[:, 1:], 3, axis=1), rtol=1e-5)


@pytest.mark.parametrize("distance", ["euclidean", "l1", ""])
def test_bad_distance(distance):
    with pytest.raises(ValueError, match="distance"):
        protonets(mlp(DIM, 4), ways=3, distance=distance)


@pytest.mark.parametrize("ways", [1, 0, -2, 2.0, True, None])
def test_bad_ways(ways):
    with pytest.raises(ValueError, match="ways"):
        protonets(mlp(DIM, 4), ways=ways)


def test_ways_is_required():
    with pytest.raises(TypeError):
        protonets(mlp(DIM, 4))
