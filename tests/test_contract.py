"""The contract of every public algorithm factory, one list of ``(factory, kwargs)`` in optax's
style: shapes of ``init``/``adapt``/``predict``/``task_grad``; a meta-step that compiles once;
the meta-gradient of a batch under ``vmap`` equal to a loop over its tasks; the second-order
meta-gradient against finite differences and the first-order one against the gradient at the
adapted parameters; meta-parameters through a checkpoint and back, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta import algorithms as A
from jmeta.core import Episode, cross_entropy_loss, init_state, make_meta_step
from jmeta.models import context_mlp, mlp
from jmeta.train._checkpoint import restore_tree, save_tree
from tests._helpers import (blob_batch, directional_fd, random_direction, to64, trees_close,
                            trees_equal)

DIM, WAYS, SHOTS, QUERIES, TASKS, CLASSES = 4, 3, 2, 2, 3, 6


def _classifier():
    return mlp(DIM, WAYS, hidden=(8,))


def _embedding():
    return mlp(DIM, 5, hidden=(8,))


def _language_model():
    from jmeta.models import DecoderConfig, decoder

    return decoder(DecoderConfig("llama", 16, 8, 1, 2, 16, num_kv_heads=1),
                   lora_targets=("q", "v"), lora_rank=2)


CE = dict(loss_fn=cross_entropy_loss)
# name -> (factory, model, kwargs). The model is built per test (cheap); the factory is public.
FACTORIES = {
    "maml": (A.maml, _classifier, dict(inner_lr=0.3, inner_steps=2, **CE)),
    "maml_first_order": (A.maml, _classifier,
                         dict(inner_lr=0.3, inner_steps=2, first_order=True, **CE)),
    "fomaml": (A.fomaml, _classifier, dict(inner_lr=0.3, inner_steps=2, **CE)),
    "metasgd": (A.metasgd, _classifier, dict(inner_steps=2, **CE)),
    "anil": (A.anil, _classifier, dict(inner_lr=0.3, inner_steps=2, **CE)),
    "boil": (A.boil, _classifier, dict(inner_lr=0.3, inner_steps=2, **CE)),
    "protomaml": (A.protomaml, _classifier, dict(ways=WAYS, inner_lr=0.3, inner_steps=2, **CE)),
    "mamlpp": (A.mamlpp, _classifier, dict(inner_steps=2, inner_lr=0.3, multi_step_loss=False,
                                           loss_fn=cross_entropy_loss)),
    "cavia": (A.cavia, lambda: context_mlp(DIM, WAYS, hidden=(8,), num_context=2),
              dict(inner_lr=0.5, inner_steps=2, loss_fn=cross_entropy_loss)),
    "imaml": (A.imaml, _classifier, dict(inner_lr=0.1, inner_steps=3, cg_steps=3,
                                         loss_fn=cross_entropy_loss)),
    "reptile": (A.reptile, _classifier, dict(inner_lr=0.1, inner_steps=3, **CE)),
    "protonets": (A.protonets, _embedding, dict(ways=WAYS)),
    "matching": (A.matching_networks, _embedding, dict(ways=WAYS)),
    "matching_fce": (A.matching_networks, _embedding, dict(ways=WAYS, fce=True, embed_dim=5)),
    "r2d2": (A.r2d2, _embedding, dict(ways=WAYS)),
    "baseline": (A.transfer_baseline, _embedding,
                 dict(num_classes=CLASSES, ways=WAYS, embed_dim=5, finetune_steps=3)),
    "baseline++": (A.transfer_baseline, _embedding,
                   dict(num_classes=CLASSES, ways=WAYS, embed_dim=5, finetune_steps=3,
                        head="cosine")),
    "metaicl": (A.metaicl, _language_model, dict(ways=WAYS, labels=(1, 2, 3))),
}
# Learners over token ids: their episodes are the blob episodes quantised to tokens 4..15.
TOKENS = ("metaicl",)
# Meta-gradient = gradient of the query loss of predict(adapt(meta)): exact second order.
SECOND_ORDER = ("maml", "metasgd", "anil", "boil", "protomaml", "mamlpp", "cavia", "protonets",
                "matching", "matching_fce", "r2d2")
# Meta-gradient of the model = gradient of the query loss at the adapted parameters.
FIRST_ORDER = ("maml_first_order", "fomaml")

_LEARNERS = {}


def learner_of(name):
    if name not in _LEARNERS:
        factory, model, kwargs = FACTORIES[name]
        _LEARNERS[name] = factory(model(), **kwargs)
    return _LEARNERS[name]


def _episodes(learner, n, key):
    """``n`` episodes for the learner: blob classification episodes, or for a transfer baseline
    batches of examples of all base classes (their global labels in ``query``)."""
    batch = blob_batch(key, n, ways=WAYS, shots=SHOTS, queries=QUERIES, dim=DIM)
    if any(learner is _LEARNERS.get(name) for name in TOKENS):
        def tokens(x):
            return jnp.clip(jnp.floor(2 * x + 10), 4, 15).astype(jnp.int32)
        return Episode(batch.support._replace(x=tokens(batch.support.x)),
                       batch.query._replace(x=tokens(batch.query.x)))
    if learner.class_batches is None:
        return batch
    labels = jax.random.randint(key, batch.query.y.shape, 0, CLASSES)
    return Episode(batch.support, batch.query._replace(y=labels))


# Registered names whose factory the contract holds under another entry: "finetune" is MAML's
# inner loop, never meta-trained.
SAME_FACTORY = {"finetune": "maml"}


def test_every_registered_algorithm_is_in_the_contract():
    missing = [n for n in A.ALGORITHMS.names() if SAME_FACTORY.get(n, n) not in FACTORIES]
    assert not missing, f"registered but not in the contract suite: {missing}"


@pytest.mark.parametrize("name", FACTORIES)
def test_shapes_of_init_adapt_predict_and_task_grad(name):
    learner = learner_of(name)
    meta = learner.init(jax.random.key(0))
    ep = jax.tree.map(lambda x: x[0], _episodes(learner, 1, jax.random.key(1)))
    params, trace = learner.adapt(meta, ep.support)
    out = learner.predict(params, ep.query.x)
    assert out.shape[0] == ep.query.x.shape[0]
    if learner.class_batches is None:
        assert out.shape == (WAYS * QUERIES, WAYS)
    assert isinstance(trace, dict)
    grads, metrics = jax.jit(_task_grad(learner))(meta, ep, jax.random.key(2))
    assert jax.tree.structure(grads) == jax.tree.structure(meta)
    for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(meta)):
        assert g.shape == m.shape and g.dtype == m.dtype
        assert np.isfinite(np.asarray(g)).all()
    assert "loss" in metrics and np.isfinite(float(metrics["loss"]))
    assert learner.inner_steps >= 0 and learner.family in ("dense", "conv")


@pytest.mark.parametrize("name", FACTORIES)
def test_the_meta_step_compiles_once_and_the_vmapped_gradient_equals_a_task_loop(name):
    learner = learner_of(name)
    tx = optax.adam(1e-2)
    batch = _episodes(learner, TASKS, jax.random.key(3))
    step = make_meta_step(learner, tx, task_map="vmap")
    state = init_state(learner, tx, jax.random.key(0))
    for i in range(3):
        state, _ = step(state, _episodes(learner, TASKS, jax.random.key(10 + i)))
    assert step._cache_size() == 1, "the meta-step retraced"

    meta = state.params
    keys = jax.random.split(jax.random.key(4), TASKS)
    fn = _task_grad(learner)
    vmapped, _ = jax.jit(jax.vmap(fn, in_axes=(None, 0, 0)))(meta, batch, keys)
    one = jax.jit(fn)
    loop = [one(meta, jax.tree.map(lambda x: x[i], batch), keys[i])[0] for i in range(TASKS)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *loop)
    trees_close(vmapped, stacked, rtol=2e-5, atol=2e-6)


def _float64(learner):
    """Float64 meta-parameters and one episode (integer labels stay integers)."""
    ep = jax.tree.map(lambda x: x[0], _episodes(learner, 1, jax.random.key(5)))
    ep = Episode(ep.support._replace(x=to64(ep.support.x)), ep.query._replace(x=to64(ep.query.x)))
    return to64(learner.init(jax.random.key(0))), ep


def _query_loss(learner, meta, ep):
    params, _ = learner.adapt(meta, ep.support)
    return cross_entropy_loss(learner.predict(params, ep.query.x), ep.query.y)


def _task_grad(learner):
    if learner.uses_step:
        return lambda m, ep, k: learner.task_grad(m, ep, k, jnp.int32(10**6))
    return learner.task_grad


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_the_meta_gradient_matches_finite_differences(name, x64):
    learner = learner_of(name)
    meta, ep = _float64(learner)
    grads, metrics = _task_grad(learner)(meta, ep, jax.random.key(6))
    loss = jax.jit(lambda m: _query_loss(learner, m, ep))
    np.testing.assert_allclose(float(metrics["loss"]), float(loss(meta)), rtol=1e-9)
    for seed in range(2):
        direction = random_direction(meta, seed)
        analytic = sum(float(jnp.vdot(g, d)) for g, d in
                       zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
        fd = directional_fd(loss, meta, direction)
        np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_the_first_order_gradient_is_the_gradient_at_the_adapted_parameters(name, x64):
    learner = learner_of(name)
    meta, ep = _float64(learner)
    grads, _ = learner.task_grad(meta, ep, jax.random.key(6))
    adapted, _ = learner.adapt(meta, ep.support)
    want = jax.grad(lambda p: cross_entropy_loss(learner.predict(p, ep.query.x), ep.query.y))(
        adapted)
    trees_close(grads["model"], want, rtol=1e-9, atol=1e-12)
    second = learner_of("maml").task_grad(meta, ep, jax.random.key(6))[0]["model"]
    assert not np.allclose(jax.tree.leaves(second)[0], jax.tree.leaves(want)[0], rtol=1e-3)


@pytest.mark.parametrize("name", FACTORIES)
def test_meta_parameters_survive_a_checkpoint_round_trip(name, tmp_path):
    learner = learner_of(name)
    meta = jax.tree.map(lambda x: x + 0.01, learner.init(jax.random.key(7)))  # not the init
    save_tree(tmp_path / "meta", meta)
    back = restore_tree(tmp_path / "meta", jax.eval_shape(learner.init, jax.random.key(0)))
    trees_equal(back, meta)
    ep = jax.tree.map(lambda x: x[0], _episodes(learner, 1, jax.random.key(8)))
    a = learner.predict(learner.adapt(meta, ep.support)[0], ep.query.x)
    b = learner.predict(learner.adapt(back, ep.support)[0], ep.query.x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
