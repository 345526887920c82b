"""Every few-shot classification algorithm through one suite, built exactly as `jmeta train`
builds it (config -> model -> learner -> jitted meta-step): finite outputs and shapes, one
compile for many steps, determinism, adaptation at any step count, and on a real Omniglot
episode stream 50 meta-steps that lower the held-out query loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms import ALGORITHMS as REGISTRY
from jmeta.core import Batch, init_state, make_meta_step
from jmeta.core._losses import cross_entropy_loss
from jmeta.data import ClassDataset, class_batch_sampler, device_sampler
from jmeta.train import Config, adaptation_curves
from jmeta.train._build import build_learner, model_task
from jmeta.train._config import train_shots, validate

# Image algorithms; "finetune" is never meta-trained (the text baseline of
# tests/test_text_fewshot.py), and "metaicl" reads a language model's next-token logits
# (tests/test_decoder_fewshot.py).
TEXT_ONLY = ("finetune", "metaicl")
ALGORITHMS = tuple(a for a in REGISTRY.names() if a not in TEXT_ONLY)

WAYS, SHOTS, QUERIES, TASKS, CLASSES = 5, 1, 3, 2, 12

SETTINGS = {
    "maml": {}, "fomaml": {}, "metasgd": {}, "anil": {}, "boil": {},
    "mamlpp": dict(learner=dict(inner_steps=2, msl_anneal_steps=20, first_order_until=2)),
    # CAVIA classifies through FiLM on a convolutional body, as in its paper (an input-concatenated
    # context on an MLP learns far more slowly); iMAML needs its inner problem near its optimum.
    "cavia": dict(model=dict(name="context_conv4", filters=8, num_context=16),
                  learner=dict(inner_lr=1.0)),
    "imaml": dict(learner=dict(inner_lr=0.1, inner_steps=5, cg_steps=3, lam=0.5)),
    # Reptile as in its paper: minibatch inner steps on more training shots than test shots.
    "reptile": dict(learner=dict(inner_steps=3, inner_batch=5),
                    optimizer=dict(name="sgd", lr=0.5), data=dict(train_shots=2)),
    "protonets": {}, "matching": {}, "matching_fce": {}, "r2d2": {}, "protomaml": {},
    "baseline": dict(learner=dict(finetune_steps=10)),
    "baseline++": dict(learner=dict(finetune_steps=10)),
}
# Learner options of every algorithm that takes them.
LEARNER = dict(inner_lr=0.4, inner_steps=1, pretrain_batch=8)


def config(algorithm: str, **changes) -> Config:
    """The suite's config of ``algorithm``: ``changes`` are sections merged into it (a changed
    component ``name`` starts its section afresh)."""
    entry = REGISTRY[algorithm]
    takes = {*entry.options, *entry.required}
    sections = dict(
        data=dict(name="omniglot", ways=WAYS, shots=SHOTS, queries=QUERIES,
                  base_classes=CLASSES),
        model=dict(name="mlp", hidden=(32, 16)),
        learner=dict(name=algorithm, **{k: v for k, v in LEARNER.items() if k in takes}),
        train=dict(meta_batch_size=TASKS))
    for more in (SETTINGS[algorithm], changes):
        for key, value in more.items():
            old = sections.get(key, {})
            if "name" in value and value["name"] != old.get("name"):
                old = {}
            sections[key] = {**old, **value}
    return validate(Config(**sections))


def test_the_suite_covers_every_algorithm():
    assert set(SETTINGS) == set(ALGORITHMS)
    assert set(TEXT_ONLY) <= set(REGISTRY.names())


def synthetic(seed: int = 0) -> ClassDataset:
    """12 classes of 28x28 images: a class-specific pattern plus noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(CLASSES, 28, 28, 1))
    labels = np.repeat(np.arange(CLASSES), 6)
    noise = rng.integers(-40, 40, size=(len(labels), 28, 28, 1))
    data = np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8)
    return ClassDataset.from_labels(data, labels, [str(i) for i in range(CLASSES)])


def pieces(cfg: Config, ds: ClassDataset):
    learner = build_learner(cfg, model_task(cfg))
    if learner.class_batches is not None:
        sampler = class_batch_sampler(ds, learner.class_batches,
                                      num_tasks=cfg.train.meta_batch_size)
    else:
        sampler = device_sampler(ds, cfg.data.ways, train_shots(cfg), cfg.data.queries,
                                 cfg.train.meta_batch_size)
    return learner, sampler


def eval_steps(algorithm: str, learner) -> int:
    if learner.class_batches is not None:
        return learner.inner_steps
    return 1 if REGISTRY[algorithm].attributes["network"] == "embedding" else 2


@pytest.fixture(scope="module")
def dataset():
    return synthetic()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_meta_step_is_finite_deterministic_and_compiled_once(algorithm, dataset):
    cfg = config(algorithm)
    learner, sampler = pieces(cfg, dataset)
    tx = optax.adam(1e-3) if cfg.optimizer.name == "adam" else optax.sgd(cfg.optimizer.lr)
    step = make_meta_step(learner, tx, sampler=sampler)

    def run(n):
        state = init_state(learner, tx, jax.random.key(0))
        shapes = jax.tree.map(jnp.shape, state.params)
        for _ in range(n):
            state, metrics = step(state)
        return state, metrics, shapes

    state, metrics, shapes = run(3)
    assert step._cache_size() == 1, "the meta-step retraced"
    assert jax.tree.map(jnp.shape, state.params) == shapes
    assert all(np.isfinite(v) for v in jax.tree.leaves(metrics)), metrics
    assert {"loss", "grad_norm"} <= set(metrics)
    again, _, _ = run(3)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(a, b)
    moved = [not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(state.params),
        jax.tree.leaves(init_state(learner, tx, jax.random.key(0)).params))]
    assert any(moved), "three meta-steps changed no meta-parameter"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_adapt_and_predict_shapes(algorithm, dataset):
    cfg = config(algorithm)
    learner, _ = pieces(cfg, dataset)
    meta = learner.init(jax.random.key(1))
    episode = jax.tree.map(lambda a: a[0], device_sampler(dataset, WAYS, SHOTS, QUERIES, 1)(
        jax.random.key(2)))
    for n in (0, eval_steps(algorithm, learner)):
        params, trace = learner.adapt(meta, episode.support, inner_steps=n)
        logits = learner.predict(params, episode.query.x)
        assert logits.shape == (WAYS * QUERIES, WAYS)
        assert np.isfinite(np.asarray(trace["support_loss"])).all()
        # Matching Networks: log-probabilities of absent classes are -inf.
        if algorithm not in ("matching", "matching_fce"):
            assert np.isfinite(np.asarray(logits)).all()
    # Unadapted parameters (step 0 of the meta-test) predict without a support set.
    assert learner.predict(meta["model"], episode.query.x).shape == (WAYS * QUERIES, WAYS)


@pytest.fixture(scope="module")
def omniglot_stream(omniglot_train, data_cache):
    """Training episodes from the real Omniglot background set and fixed held-out episodes from
    classes the training stream never draws (the last 200 classes of the split)."""
    ds = omniglot_train
    held = 200

    def subset(lo, hi):
        return dataclasses.replace(
            ds, class_start=ds.class_start[lo:hi], class_count=ds.class_count[lo:hi],
            class_names=ds.class_names[lo:hi],
            class_rotation=None if ds.class_rotation is None else ds.class_rotation[lo:hi])

    n = ds.num_classes
    return subset(0, n - held), subset(n - held, n)


# One learner per family runs in `make test`; all of them in `make test-slow` (CI time budget).
QUICK = ("maml", "reptile", "protonets", "baseline")


@pytest.mark.parametrize("algorithm", [
    a if a in QUICK else pytest.param(a, marks=pytest.mark.slow) for a in ALGORITHMS])
def test_50_meta_steps_on_real_omniglot_lower_the_query_loss(algorithm, omniglot_stream):
    train, held = omniglot_stream
    cfg = config(algorithm, train=dict(meta_batch_size=4),
                 data=dict(base_classes=train.num_classes))
    learner, sampler = pieces(cfg, train)
    tx = optax.adam(1e-3) if cfg.optimizer.name == "adam" else optax.sgd(cfg.optimizer.lr)
    step = make_meta_step(learner, tx, sampler=sampler)
    tasks = jax.jit(device_sampler(held, WAYS, SHOTS, 5, 40))(jax.random.key(7))
    steps = eval_steps(algorithm, learner)

    def held_out_loss(params):
        curves = adaptation_curves(learner, params, tasks, steps, loss_fn=cross_entropy_loss)
        return float(np.mean(np.asarray(curves)[:, steps]))

    state = init_state(learner, tx, jax.random.key(0))
    before = held_out_loss(state.params)
    for _ in range(50):
        state, _ = step(state)
    after = held_out_loss(state.params)
    assert np.isfinite(after) and after < before, (before, after)


def test_support_labels_are_all_that_metric_heads_see(dataset):
    """Metric heads classify by the support set: permuting the class labels of the support set
    permutes the predicted columns the same way."""
    cfg = config("protonets")
    learner, _ = pieces(cfg, dataset)
    meta = learner.init(jax.random.key(3))
    ep = jax.tree.map(lambda a: a[0], device_sampler(dataset, WAYS, SHOTS, QUERIES, 1)(
        jax.random.key(4)))
    perm = jnp.array([2, 0, 1, 4, 3])
    a = learner.predict(learner.adapt(meta, ep.support)[0], ep.query.x)
    b = learner.predict(learner.adapt(meta, Batch(ep.support.x, perm[ep.support.y]))[0], ep.query.x)
    np.testing.assert_allclose(b[:, perm], a, rtol=1e-5, atol=1e-5)


# The inner rules of MAML (docs/inner_rules.md), each on the same real-Omniglot stream; Meta-SGD
# learns its rates as its own algorithm.
# The learned rules run in `make test` with small LSTMs; the rest (and the paper-size LSTMs
# below) in `make test-slow`.
RULES = {"sgd": dict(rule=dict(name="sgd")), "lslr": dict(rule=dict(name="lslr")),
         "metasgd": dict(algorithm="metasgd"),
         "meta_lstm": dict(rule=dict(name="meta_lstm", hidden=20)),
         "lstm_optimizer": dict(rule=dict(name="lstm_optimizer", hidden=20))}
QUICK_RULES = {"meta_lstm-small": dict(rule=dict(name="meta_lstm", hidden=8),
                                       model=dict(hidden=(8, 8))),
               "lstm_optimizer-small": dict(rule=dict(name="lstm_optimizer", hidden=8),
                                            model=dict(hidden=(8, 8)))}


@pytest.mark.parametrize("rule", list(QUICK_RULES) + [
    pytest.param(r, marks=pytest.mark.slow) for r in RULES])
def test_50_meta_steps_with_each_inner_rule_on_real_omniglot_lower_the_query_loss(
        rule, omniglot_stream):
    """Held-out query loss after 2 inner steps on 40 fixed tasks of unseen classes falls by more
    than 3 standard errors of the per-task drop."""
    train, held = omniglot_stream
    changes = dict(QUICK_RULES.get(rule) or RULES[rule])
    cfg = config(changes.pop("algorithm", "maml"), train=dict(meta_batch_size=4),
                 learner=dict(inner_steps=2), **changes)
    learner, sampler = pieces(cfg, train)
    tx = optax.adam(3e-3)
    step = make_meta_step(learner, tx, sampler=sampler)
    tasks = jax.jit(device_sampler(held, WAYS, SHOTS, 5, 40))(jax.random.key(7))

    def held_out_losses(params):
        curves = adaptation_curves(learner, params, tasks, 2, loss_fn=cross_entropy_loss)
        return np.asarray(curves)[:, 2]

    state = init_state(learner, tx, jax.random.key(0))
    before = held_out_losses(state.params)
    for _ in range(50):
        state, _ = step(state)
    drop = before - held_out_losses(state.params)
    stderr = drop.std(ddof=1) / np.sqrt(drop.size)
    assert np.all(np.isfinite(drop)) and drop.mean() > 3 * stderr, (
        rule, before.mean(), drop.mean(), stderr)
