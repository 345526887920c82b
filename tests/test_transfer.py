"""Transfer baselines (Baseline, Baseline++) and the all-class sampler that pre-trains them."""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms._transfer import default_cosine_scale, transfer_baseline
from jmeta.core import Batch, Episode, init_state, make_meta_step
from jmeta.data import ClassDataset, device_sampler
from jmeta.data._class_batches import class_batch_sampler
from jmeta.models import flatten_inputs, mlp
from jmeta.models._functional import Model
from jmeta.train._eval import adaptation_curves
from tests._helpers import np_cross_entropy, np_softmax

DIM = 4
HEADS = ("linear", "cosine")


# ----------------------------------------------------------------------------- sampler


def _drawing(n):
    """Example ``n`` as a 4x4 image whose 16 pixels are all distinct: ``16 n + 0..15``."""
    return (16 * n + np.arange(16)).reshape(4, 4).astype(np.uint8)


def _decode(img):
    """(example index, quarter turns) of a sampled image in [0, 1]."""
    img = np.rint(np.asarray(img)[..., 0] * 255).astype(int)
    n = img.min() // 16
    turns = [k for k in range(4) if np.array_equal(np.rot90(_drawing(n), k), img)]
    assert len(turns) == 1, img
    return n, turns[0]


def _draw(sample, seeds):
    sample = jax.jit(sample)
    xs, ys = [], []
    for s in range(seeds):
        batch = sample(jax.random.key(s))
        assert batch.support.x.shape[:2] == (batch.query.x.shape[0], 0)
        assert batch.support.y.shape == (batch.query.x.shape[0], 0)
        assert batch.query.x.dtype == jnp.float32 and batch.query.y.dtype == jnp.int32
        xs.append(np.asarray(batch.query.x).reshape((-1,) + batch.query.x.shape[2:]))
        ys.append(np.asarray(batch.query.y).reshape(-1))
    return np.concatenate(xs), np.concatenate(ys)


def test_sampler_labels_are_global_classes_drawn_per_example():
    counts = [2, 5, 3, 4]
    data = np.stack([_drawing(n) for n in range(sum(counts))])[..., None]
    labels = np.repeat(np.arange(len(counts)), counts)
    perm = np.random.default_rng(0).permutation(len(labels))  # from_labels regroups by class
    ds = ClassDataset.from_labels(data[perm], labels[perm], ["a", "b", "c", "d"])
    x, y = _draw(class_batch_sampler(ds, 16, num_tasks=3), 40)
    assert x.shape == (40 * 48, 4, 4, 1) and 0 <= x.min() and x.max() <= 1
    decoded = np.array([_decode(img) for img in x])
    n, turns = decoded[:, 0], decoded[:, 1]
    np.testing.assert_array_equal(turns, 0)
    np.testing.assert_array_equal(labels[n], y)  # label = true class of the drawn example
    assert set(n) == set(range(sum(counts)))  # every example, hence every class, is drawn
    freq = np.bincount(y, minlength=len(counts))
    expected = len(y) * np.array(counts) / sum(counts)  # uniform over examples
    assert np.all(np.abs(freq - expected) < 5 * np.sqrt(expected)), (freq, expected)


@pytest.fixture(scope="module")
def rotated():
    """3 characters x 3 drawings; 12 classes = each character at quarter turns (0, 1, 2, 3),
    stored character-major with the rotated classes sharing the drawings."""
    data = np.stack([_drawing(n) for n in range(9)])[..., None]
    chars, turns = np.repeat(np.arange(3), 4), np.tile(np.arange(4), 3)
    return ClassDataset(
        data=data,
        class_start=3 * chars,
        class_count=np.full(12, 3),
        class_names=tuple(f"c{c}r{r}" for c, r in zip(chars, turns)),
        class_rotation=turns.astype(np.int8),
    )


@pytest.mark.parametrize("augment", [False, True])
def test_sampler_rotations_are_separate_classes(rotated, augment):
    x, y = _draw(class_batch_sampler(rotated, 32, num_tasks=2, augment_rotations=augment), 30)
    decoded = np.array([_decode(img) for img in x])
    n, turns = decoded[:, 0], decoded[:, 1]
    c, extra = y % 12, y // 12
    assert set(y) == set(range(48 if augment else 12))
    if not augment:
        np.testing.assert_array_equal(extra, 0)
    np.testing.assert_array_equal(n // 3, rotated.class_start[c] // 3)  # drawing of that character
    np.testing.assert_array_equal(turns, (rotated.class_rotation[c] + extra) % 4)


def test_sampler_bad_input(rotated):
    ds = ClassDataset.from_labels(np.zeros((4, 2, 3, 1), np.uint8), np.arange(4) % 2, ["a", "b"])
    for kwargs in ({"batch_size": 0}, {"batch_size": 2.0}, {"batch_size": 2, "num_tasks": 0}):
        with pytest.raises(ValueError, match="batch_size|num_tasks"):
            class_batch_sampler(ds, **kwargs)
    with pytest.raises(ValueError, match="square"):
        class_batch_sampler(ds, 2, augment_rotations=True)
    class_batch_sampler(ds, 2)  # non-square images are fine without rotations


# ----------------------------------------------------------------------------- numpy references


def _np_unit(v, axis):
    return v / np.sqrt(np.sum(v * v, axis=axis, keepdims=True) + 1e-8)


def _np_logits(head, params, x, scale):
    if head == "linear":
        return x @ params["kernel"] + params["bias"]
    return scale * _np_unit(x, -1) @ _np_unit(params["kernel"], 0)


def _np_head_grad(head, params, x, y, weights, scale, ways):
    """Gradient of sum_i weights_i * CE_i with respect to the head, by hand."""
    g = (np_softmax(_np_logits(head, params, x, scale)) - np.eye(ways)[y]) * weights[:, None]
    if head == "linear":
        return {"kernel": x.T @ g, "bias": g.sum(0)}
    w = params["kernel"]
    norm = np.sqrt(np.sum(w * w, axis=0, keepdims=True) + 1e-8)
    d_unit = scale * _np_unit(x, -1).T @ g  # [D, ways]: gradient w.r.t. the normalised columns
    return {"kernel": d_unit / norm - w * np.sum(w * d_unit, 0, keepdims=True) / norm**3}


# ----------------------------------------------------------------------------- learner


def _identity():
    """An embedding that returns its input: fine-tuning then runs on fixed features."""
    return Model(init=lambda key: {}, apply=lambda params, x: x, family="dense")


@pytest.mark.parametrize("head", HEADS)
def test_task_grad_is_the_pretraining_cross_entropy_gradient(x64, head):
    num_classes = 7
    model = mlp(DIM, 5, hidden=(8,))
    learner = transfer_baseline(model, num_classes=num_classes, ways=3, head=head, embed_dim=5)
    meta = jax.tree.map(lambda a: a.astype(jnp.float64), learner.init(jax.random.key(0)))
    kx, ky, ks = jax.random.split(jax.random.key(1), 3)
    query = Batch(
        jax.random.normal(kx, (12, DIM), jnp.float64), jax.random.randint(ky, (12,), 0, num_classes)
    )
    empty = Batch(query.x[:0], query.y[:0])
    scale = default_cosine_scale(num_classes)
    assert scale == 2.0

    def reference(m):
        e = model.apply(m["model"], query.x)
        if head == "linear":
            logits = e @ m["head"]["kernel"] + m["head"]["bias"]
        else:

            def unit(v, axis):
                return v / jnp.sqrt(jnp.sum(v * v, axis=axis, keepdims=True) + 1e-8)

            logits = scale * unit(e, -1) @ unit(m["head"]["kernel"], 0)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(12), query.y])

    ref_grads = jax.jit(jax.grad(reference))(meta)
    task_grad = jax.jit(learner.task_grad)
    grads, metrics = task_grad(meta, Episode(empty, query), jax.random.key(2))
    assert sorted(metrics) == ["accuracy", "loss"]
    assert jax.tree.structure(grads) == jax.tree.structure(meta)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12), grads, ref_grads
    )
    assert all(float(jnp.linalg.norm(g)) > 1e-6 for g in jax.tree.leaves(grads))

    e = np.asarray(model.apply(meta["model"], query.x))
    logits = _np_logits(head, jax.tree.map(np.asarray, meta["head"]), e, scale)
    y = np.asarray(query.y)
    np.testing.assert_allclose(float(metrics["loss"]), np_cross_entropy(logits, y), rtol=1e-10)
    np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(logits.argmax(-1) == y))

    # The support set is ignored: a non-empty one changes nothing.
    other = Batch(jax.random.normal(ks, (6, DIM), jnp.float64), jnp.zeros(6, jnp.int32))
    grads2, _ = task_grad(meta, Episode(other, query), jax.random.key(2))
    jax.tree.map(np.testing.assert_array_equal, grads, grads2)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("batch", [4, None])
def test_finetuning_matches_numpy_sgd(x64, head, batch):
    ways, shots, steps = 3, 3, 7  # 9 support examples: epochs of batches 4, 4, 1
    lr, momentum, dampening, decay = 0.3, 0.9, 0.5, 0.01
    learner = transfer_baseline(
        _identity(),
        num_classes=10,
        ways=ways,
        head=head,
        embed_dim=DIM,
        finetune_steps=steps,
        finetune_lr=lr,
        finetune_batch=batch,
        finetune_momentum=momentum,
        finetune_dampening=dampening,
        finetune_weight_decay=decay,
    )
    meta = learner.init(jax.random.key(0))
    kx, kq, kp = jax.random.split(jax.random.key(3), 3)
    ys = jax.random.permutation(kp, jnp.repeat(jnp.arange(ways), shots))
    support = Batch(jax.random.normal(kx, (ways * shots, DIM), jnp.float64), ys)
    query = Batch(jax.random.normal(kq, (8, DIM), jnp.float64), jnp.arange(8) % ways)
    key = jax.random.key(11)

    def query_ce(p):
        return jnp.mean(
            optax.softmax_cross_entropy_with_integer_labels(learner.predict(p, query.x), query.y)
        )

    task_params, trace = jax.jit(lambda m, s, k: learner.adapt(m, s, key=k, eval_fn=query_ce))(
        meta, support, key
    )

    x, y = np.asarray(support.x), np.asarray(ys)
    xq, yq = np.asarray(query.x), np.asarray(query.y)
    s, scale = len(y), 2.0
    if head == "linear":
        params = {"kernel": np.zeros((DIM, ways)), "bias": np.zeros(ways)}
    else:
        means = np.stack([x[y == c].mean(0) for c in range(ways)])
        params = {"kernel": _np_unit(means, -1).T}
    buf, losses, evals = None, [], []
    for t in range(steps):
        if batch is None:
            weights = np.full(s, 1.0 / s)
        else:
            epoch, j = divmod(t, 3)
            order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), s))
            chosen = order[j * batch : (j + 1) * batch]
            weights = np.zeros(s)
            weights[chosen] = 1.0 / len(chosen)
        losses.append(np_cross_entropy(_np_logits(head, params, x, scale), y))
        grads = _np_head_grad(head, params, x, y, weights, scale, ways)
        grads = {k: g + decay * params[k] for k, g in grads.items()}
        buf = (
            grads
            if buf is None
            else {k: momentum * buf[k] + (1 - dampening) * grads[k] for k in grads}
        )
        params = {k: params[k] - lr * buf[k] for k in params}
        evals.append(np_cross_entropy(_np_logits(head, params, xq, scale), yq))

    assert sorted(task_params["task_head"]) == sorted(params)
    for k in params:
        np.testing.assert_allclose(
            np.asarray(task_params["task_head"][k]), params[k], rtol=1e-9, atol=1e-12
        )
    np.testing.assert_allclose(np.asarray(trace["support_loss"]), losses, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(trace["eval"]), evals, rtol=1e-10)
    assert evals[-1] != evals[0] and losses[-1] < losses[0]


def test_cosine_logits_and_class_mean_initialisation():
    ways = 4
    model = mlp(DIM, 6, hidden=(8,))
    kx, kq = jax.random.split(jax.random.key(4))
    ys = jnp.repeat(jnp.arange(ways), 2)
    support = Batch(jax.random.normal(kx, (ways * 2, DIM)), ys)
    xq = jax.random.normal(kq, (10, DIM))
    for scale, expected_scale in ((None, 2.0), (7.5, 7.5)):
        learner = transfer_baseline(
            model, num_classes=300, ways=ways, head="cosine", embed_dim=6, cosine_scale=scale
        )
        meta = learner.init(jax.random.key(0))

        def run(m, learner=learner):
            task_params, trace = learner.adapt(m, support, inner_steps=0)
            embed = model.apply(m["model"], jnp.concatenate([support.x, xq]))
            return task_params, trace, learner.predict(task_params, xq), embed

        task_params, trace, logits, embed = jax.jit(run)(meta)
        es, eq = np.split(np.asarray(embed, np.float64), [len(ys)])
        protos = np.stack([es[np.asarray(ys) == c].mean(0) for c in range(ways)])
        kernel = _np_unit(protos, -1).T
        np.testing.assert_allclose(
            np.asarray(task_params["task_head"]["kernel"]), kernel, rtol=1e-5, atol=1e-6
        )
        logits = np.asarray(logits)
        expected = expected_scale * _np_unit(eq, -1) @ _np_unit(protos, -1).T
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            float(trace["support_loss"][0]),
            np_cross_entropy(expected_scale * _np_unit(es, -1) @ _np_unit(protos, -1).T,
                             np.asarray(ys)),
            rtol=1e-5,
        )
    assert default_cosine_scale(300) == 10.0  # the pre-training head of 300 classes


@pytest.mark.parametrize("head", HEADS)
def test_step_zero_is_chance_and_trace_lengths(head):
    ways, steps = 3, 5
    learner = transfer_baseline(
        mlp(DIM, 5, hidden=(8,)),
        num_classes=6,
        ways=ways,
        head=head,
        embed_dim=5,
        finetune_steps=steps,
    )
    assert learner.inner_steps == steps
    meta = learner.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, DIM))
    support = Batch(x, jnp.array([0, 1, 2, 0, 1, 2]))
    for bare in (meta["model"], meta):
        np.testing.assert_array_equal(np.asarray(learner.predict(bare, x)), np.zeros((6, ways)))

    def q(p):
        return jnp.sum(learner.predict(p, x))

    for n, length in [(None, steps), (0, 1), (2, 2)]:
        task_params, trace = jax.jit(
            lambda m, n=n: learner.adapt(m, support, inner_steps=n, eval_fn=q)
        )(meta)
        assert trace["support_loss"].shape == (length,)
        assert trace["eval"].shape == (length,)
        np.testing.assert_allclose(float(trace["eval"][-1]), float(q(task_params)), rtol=1e-5)
    _, trace = learner.adapt(meta, support, inner_steps=0)
    assert "eval" not in trace
    with pytest.raises(ValueError, match="inner_steps"):
        learner.adapt(meta, support, inner_steps=-1)


class _TwoModes(NamedTuple):
    """A model with a test-mode function, as BatchNorm with population statistics has."""

    init: Callable
    apply: Callable
    family: str
    eval_apply: Callable


def test_pretraining_uses_apply_and_finetuning_uses_eval_apply():
    ways, shift = 3, 1.5
    model = _TwoModes(lambda key: {}, lambda p, x: x, "dense", lambda p, x: x + shift)
    learner = transfer_baseline(model, num_classes=5, ways=ways, head="cosine", embed_dim=DIM)
    meta = learner.init(jax.random.key(0))
    kx, kq = jax.random.split(jax.random.key(1))
    ys = jnp.repeat(jnp.arange(ways), 2)
    support = Batch(jax.random.normal(kx, (ways * 2, DIM)), ys)
    query = Batch(jax.random.normal(kq, (5, DIM)), jnp.arange(5))

    def run(m):
        task_params, _ = learner.adapt(m, support, inner_steps=0)
        _, metrics = learner.task_grad(m, Episode(support, query), None)
        return task_params, learner.predict(task_params, query.x), metrics["loss"]

    task_params, logits, loss = jax.jit(run)(meta)
    es, xq = np.asarray(support.x) + shift, np.asarray(query.x)
    protos = np.stack([es[np.asarray(ys) == c].mean(0) for c in range(ways)])
    np.testing.assert_allclose(
        np.asarray(task_params["task_head"]["kernel"]), _np_unit(protos, -1).T, rtol=1e-5
    )
    expected = 2.0 * _np_unit(xq + shift, -1) @ _np_unit(protos, -1).T
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-6)
    pre = _np_logits("cosine", {"kernel": np.asarray(meta["head"]["kernel"])}, xq, 2.0)
    np.testing.assert_allclose(float(loss), np_cross_entropy(pre, np.arange(5)), rtol=1e-5)


def _blobs(rng, num_classes, per_class, signal=8):
    """8x8 images: a class mean on 8 "signal" pixels (noise 12) and 56 uniformly random pixels,
    so that a random embedding is dominated by nuisance and pre-training must find the signal."""
    means = rng.uniform(30, 225, (num_classes, signal))
    x = rng.integers(0, 256, (num_classes, per_class, 64)).astype(np.float64)
    x[:, :, :signal] = means[:, None, :] + rng.normal(0, 12, (num_classes, per_class, signal))
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 8, 8, 1)
    labels = np.repeat(np.arange(num_classes), per_class)
    return ClassDataset.from_labels(x, labels, [str(i) for i in range(num_classes)])


@pytest.fixture(scope="module")
def base_and_novel():
    rng = np.random.default_rng(0)
    return _blobs(rng, 20, 20), _blobs(rng, 10, 20)


@pytest.mark.parametrize("head", HEADS)
def test_pretraining_transfers_to_new_classes(base_and_novel, head):
    base, novel = base_and_novel
    ways = 5
    learner = transfer_baseline(
        flatten_inputs(mlp(64, 16, hidden=(32,))),
        num_classes=20,
        ways=ways,
        head=head,
        input_shape=(8, 8, 1),
    )
    tasks = jax.jit(device_sampler(novel, ways, 5, 10, 20))(jax.random.key(1))

    def acc(logits, y):
        return jnp.mean(jnp.argmax(logits, -1) == y)

    tx = optax.adam(1e-2)
    state = init_state(learner, tx, jax.random.key(0))
    before = adaptation_curves(learner, state.params, tasks, 100, loss_fn=acc)
    step = make_meta_step(learner, tx, task_map="vmap", sampler=class_batch_sampler(base, 32))
    first, accuracies = None, []
    for _ in range(200):
        state, metrics = step(state)
        first = first or {k: float(v) for k, v in metrics.items()}
        accuracies.append(float(metrics["accuracy"]))
    after = adaptation_curves(learner, state.params, tasks, 100, loss_fn=acc)

    assert before.shape == after.shape == (20, 101)
    np.testing.assert_allclose(after[:, 0], 1.0 / ways, rtol=1e-6)  # step 0: uniform logits
    assert float(metrics["loss"]) < first["loss"] - 1.0, (first, metrics)
    # Pre-training accuracy over the last 10 batches of 32 (one batch alone is too noisy a band).
    assert np.mean(accuracies[-10:]) > 0.7, accuracies[-10:]
    assert after[:, -1].mean() > 0.7, after.mean(0)[[1, 10, 100]]
    assert after[:, -1].mean() > before[:, -1].mean() + 0.3, (before.mean(0)[-1], after.mean(0)[-1])


def test_bad_arguments():
    model = mlp(DIM, 5)
    good = {"num_classes": 6, "ways": 3, "embed_dim": 5}
    for head in ("softmax", "dist", ""):
        with pytest.raises(ValueError, match="head"):
            transfer_baseline(model, head=head, **good)
    bad = [
        ({"ways": 1}, "ways"),
        ({"ways": 3.0}, "ways"),
        ({"num_classes": True}, "num_classes"),
        ({"finetune_steps": -1}, "finetune_steps"),
        ({"finetune_batch": 0}, "finetune_batch"),
        ({"finetune_lr": 0.0}, "finetune_lr"),
        ({"finetune_momentum": 1.5}, "finetune_momentum"),
        ({"finetune_weight_decay": -1.0}, "weight_decay"),
        ({"cosine_scale": 0}, "cosine_scale"),
        ({"embed_dim": None}, "embed_dim"),
        ({"embed_dim": 4, "input_shape": (DIM,)}, "embed_dim"),
    ]
    for override, match in bad:
        with pytest.raises(ValueError, match=match):
            transfer_baseline(model, **dict(good, **override))
    assert transfer_baseline(model, num_classes=6, ways=3, input_shape=(DIM,)).inner_steps == 100
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        transfer_baseline(mlp(1, 1), num_classes=6, ways=3, input_shape=(2, 3, 1))
