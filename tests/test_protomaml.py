"""Proto-MAML: the head each task starts from is ProtoNets' classifier of its support set.

Checked against ProtoNets itself (no inner step), against a hand-unrolled second- and
first-order meta-gradient in float64, and the head-only (Proto-ANIL) features path against the
whole model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.algorithms import gradient_learner, protomaml, protonets, prototype_head
from jmeta.core import Batch, Episode
from jmeta.core._losses import cross_entropy_loss
from jmeta.inner import sgd
from jmeta.models import Model, conv4, linear_head, mlp

WAYS, DIM = 3, 4


def _episode(shape=(DIM,), seed=1):
    x = jax.random.normal(jax.random.key(seed), (2 * WAYS,) + shape)
    y = jnp.arange(2 * WAYS) % WAYS
    q = jax.random.normal(jax.random.key(seed + 1), (3 * WAYS,) + shape)
    return Episode(Batch(x, y), Batch(q, jnp.arange(3 * WAYS) % WAYS))


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_prototype_head_gives_the_protonets_softmax(scale):
    f = jax.random.normal(jax.random.key(0), (6, 5))
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    q = jax.random.normal(jax.random.key(1), (7, 5))
    head = jax.jit(prototype_head, static_argnums=(2, 3))(f, labels, WAYS, scale)
    c = jnp.stack([f[labels == k].mean(0) for k in range(WAYS)])
    dist = -scale * jnp.sum((q[:, None] - c[None]) ** 2, -1)
    np.testing.assert_allclose(jax.nn.softmax(linear_head({"head": head}, q)),
                               jax.nn.softmax(dist), rtol=1e-5, atol=1e-6)


def test_without_inner_steps_it_is_protonets():
    """A zero step size leaves the prototype head as it starts: Proto-MAML's query loss and the
    body's meta-gradient are ProtoNets' (squared Euclidean distance); the head gets none."""
    model = mlp(DIM, WAYS, hidden=(8,))
    episode = _episode()
    learner = gradient_learner(model, sgd(1e-30), 1, loss_fn=cross_entropy_loss,
                               head_init=lambda f, y: prototype_head(f, y, WAYS))
    embedding = Model(init=model.init, apply=model.features, family="dense")
    reference = protonets(embedding, ways=WAYS)
    meta = learner.init(jax.random.key(0))
    grads, metrics = jax.jit(learner.task_grad)(meta, episode, jax.random.key(0))
    ref_grads, ref_metrics = jax.jit(reference.task_grad)(meta, episode, jax.random.key(0))
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    body = {k: v for k, v in grads["model"].items() if k != "head"}
    ref_body = {k: v for k, v in ref_grads["model"].items() if k != "head"}
    for a, b in zip(jax.tree.leaves(body), jax.tree.leaves(ref_body)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert all(not np.any(g) for g in jax.tree.leaves(grads["model"]["head"]))


def _hand_unrolled(model, meta, episode, lr, steps, scale, first_order):
    """Proto-MAML's query loss written out: prototype head, ``steps`` SGD steps on every
    parameter, query cross-entropy."""
    def loss(p, batch):
        return cross_entropy_loss(model.apply(p, batch.x), batch.y)

    def query_loss(body):
        p = dict(body, head=prototype_head(model.features(body, episode.support.x),
                                           episode.support.y, WAYS, scale))
        for _ in range(steps):
            g = jax.grad(loss)(p, episode.support)
            if first_order:
                g = jax.lax.stop_gradient(g)
            p = jax.tree.map(lambda a, b: a - lr * b, p, g)
        return loss(p, episode.query)

    return jax.grad(query_loss)(meta["model"])


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_a_hand_unrolled_computation(first_order):
    with jax.enable_x64(True):
        model = mlp(DIM, WAYS, hidden=(6,))
        episode = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a,
                               _episode())
        learner = protomaml(model, inner_lr=0.3, inner_steps=2, ways=WAYS, scale=2.0,
                            first_order=first_order)
        meta = jax.tree.map(lambda a: a.astype(jnp.float64), learner.init(jax.random.key(3)))
        grads, _ = jax.jit(learner.task_grad)(meta, episode, jax.random.key(0))
        expected = jax.jit(_hand_unrolled, static_argnums=(0, 3, 4, 5, 6))(
            model, meta, episode, 0.3, 2, 2.0, first_order)
        for path, a in jax.tree_util.tree_flatten_with_path(grads["model"])[0]:
            b = expected
            for k in path:
                b = b[k.key]
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=str(path))
        assert any(np.any(g) for g in jax.tree.leaves(
            {k: v for k, v in grads["model"].items() if k != "head"}))


def test_head_only_takes_the_features_path_with_the_same_values():
    model = mlp(DIM, WAYS, hidden=(8, 8))
    episode = _episode()

    def build(head_features):
        return protomaml(model, inner_lr=0.5, inner_steps=2, ways=WAYS,
                         adapt_filter=lambda p: p.startswith("head/"),
                         head_features=head_features)

    fast, slow = build(True), build(False)
    meta = fast.init(jax.random.key(0))
    g_fast, m_fast = jax.jit(fast.task_grad)(meta, episode, jax.random.key(1))
    g_slow, m_slow = jax.jit(slow.task_grad)(meta, episode, jax.random.key(1))
    np.testing.assert_allclose(m_fast["loss"], m_slow["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_slow)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    adapted, _ = fast.adapt(meta, episode.support, inner_steps=0)
    expected = prototype_head(model.features(meta["model"], episode.support.x),
                              episode.support.y, WAYS)
    np.testing.assert_allclose(adapted["head"]["kernel"], expected["kernel"], rtol=1e-5)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="head has 3 outputs but ways=5"):
        protomaml(mlp(DIM, WAYS), ways=5)
    with pytest.raises(ValueError, match="model has no features"):
        protomaml(conv4(1, None, filters=4), ways=WAYS)
    with pytest.raises(ValueError, match="scale must be a number > 0"):
        protomaml(mlp(DIM, WAYS), ways=WAYS, scale=0.0)
    with pytest.raises(ValueError, match="ways must be an int >= 2"):
        protomaml(mlp(DIM, 1), ways=1)
    with pytest.raises(ValueError, match="head_init needs a model with features"):
        gradient_learner(conv4(1, None, filters=4), sgd(0.1), 1, head_init=lambda f, y: {})
