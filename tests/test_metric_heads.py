"""Matching Networks and R2-D2: NumPy references, finite differences, support order, training."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms._matching import fce_query, matching_networks
from jmeta.algorithms._r2d2 import r2d2, ridge_head
from jmeta.core import Batch, Episode, init_state, make_meta_step
from jmeta.core._losses import cross_entropy_loss
from jmeta.models import mlp
from jmeta.train._eval import adaptation_curves
from tests._helpers import blob_batch, np_cross_entropy

DIM = 4
EMB = 6


MODEL = mlp(DIM, EMB, hidden=(8,))


@functools.cache
def _episode(seed, ways, shots, queries, dim=DIM):
    """A random float32 episode with shuffled int32 support labels (every class present ``shots``
    times), the same inside and outside the ``x64`` fixture (cached: one draw per signature)."""
    kx, kq, kp, kl = jax.random.split(jax.random.key(seed), 4)
    ys = jax.random.permutation(kp, jnp.repeat(jnp.arange(ways, dtype=jnp.int32), shots))
    yq = jax.random.randint(kl, (ways * queries,), 0, ways, dtype=jnp.int32)
    return Episode(
        Batch(jax.random.normal(kx, (ways * shots, dim), jnp.float32), ys),
        Batch(jax.random.normal(kq, (ways * queries, dim), jnp.float32), yq),
    )


def _f64(tree):
    """Floating leaves as float64 (integer labels unchanged); use inside the ``x64`` fixture."""
    return jax.tree.map(
        lambda a: (
            jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a
        ),
        tree,
    )


def _np(a):
    return np.asarray(a, np.float64)


# ----------------------------------------------------------------------------------------------
# NumPy references
# ----------------------------------------------------------------------------------------------


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _np_lstm(p, x, h, c):
    z = np.concatenate([x, h], -1) @ _np(p["kernel"]) + _np(p["bias"])
    i, f, g, o = np.split(z, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


def _np_fce_support(rule, emb):
    s, d = emb.shape
    fwd, bwd = np.zeros((s, d)), np.zeros((s, d))
    h, c = np.zeros(d), np.zeros(d)
    for i in range(s):
        h, c = _np_lstm(rule["fwd"], emb[i], h, c)
        fwd[i] = h
    h, c = np.zeros(d), np.zeros(d)
    for i in reversed(range(s)):
        h, c = _np_lstm(rule["bwd"], emb[i], h, c)
        bwd[i] = h
    return fwd + bwd + emb


def _np_fce_query(rule, emb, memory, steps):
    out = np.zeros_like(emb)
    for q in range(emb.shape[0]):
        x = emb[q]
        h, c = x.copy(), np.zeros_like(x)
        for _ in range(steps):
            scores = memory @ h
            a = np.exp(scores - scores.max())
            r = (a / a.sum()) @ memory
            h_hat, c = _np_lstm(rule["att"], x, np.concatenate([h, r]), c)
            h = h_hat + x
        out[q] = h
    return out


def _np_matching_log_probs(query, memory, ys, ways, scale=1.0):
    def unit(v):
        return v / np.sqrt((v * v).sum(-1, keepdims=True) + 1e-8)

    sims = scale * unit(query) @ unit(memory).T
    att = np.exp(sims - sims.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    probs = np.stack([att[:, ys == c].sum(-1) for c in range(ways)], axis=-1)
    return np.log(probs)


def _scaled_rule(meta, factor):
    """Meta-parameters with the FCE LSTM weights scaled up, so FCE changes the embeddings a lot."""
    return dict(meta, rule=jax.tree.map(lambda w: factor * w, meta["rule"]))


# ----------------------------------------------------------------------------------------------
# Matching Networks
# ----------------------------------------------------------------------------------------------

MATCHING_CASES = [(False, None), (True, None), (True, 2)]


@pytest.mark.parametrize("fce,steps", MATCHING_CASES)
def test_matching_log_probs_match_numpy(fce, steps):
    ways, shots, queries = 3, 2, 3
    model = MODEL
    learner = matching_networks(
        model, ways=ways, fce=fce, fce_steps=steps, embed_dim=EMB, scale=3.0
    )
    meta = learner.init(jax.random.key(0))
    if fce:
        meta = _scaled_rule(meta, 4.0)
    ep = _episode(1, ways, shots, queries)

    task_params, trace = learner.adapt(meta, ep.support)
    log_probs = _np(learner.predict(task_params, ep.query.x))

    emb_s = _np(model.apply(meta["model"], ep.support.x))
    emb_q = _np(model.apply(meta["model"], ep.query.x))
    ys = np.asarray(ep.support.y)
    if fce:
        memory = _np_fce_support(meta["rule"], emb_s)
        k = steps if steps is not None else ways * shots
        f_q = _np_fce_query(meta["rule"], emb_q, memory, k)
        f_s = _np_fce_query(meta["rule"], emb_s, memory, k)
    else:
        memory, f_q, f_s = emb_s, emb_q, emb_s
    expected = _np_matching_log_probs(f_q, memory, ys, ways, scale=3.0)
    expected_support = _np_matching_log_probs(f_s, memory, ys, ways, scale=3.0)

    assert log_probs.shape == (ways * queries, ways)
    np.testing.assert_allclose(_np(task_params["memory"]), memory, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(log_probs, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)
    support_nll = -np.mean(expected_support[np.arange(len(ys)), ys])
    np.testing.assert_allclose(float(trace["support_loss"][0]), support_nll, rtol=1e-4)
    assert trace["support_loss"].shape == (1,)
    assert "eval" not in trace
    if fce:
        # The scaled LSTMs move the embeddings well away from the plain ones.
        plain = _np_matching_log_probs(emb_q, emb_s, ys, ways, scale=3.0)
        assert np.max(np.abs(plain - expected)) > 1e-2
        assert np.max(np.abs(memory - emb_s)) > 1e-1


def test_matching_fce_starts_close_to_plain_embeddings():
    ways = 3
    model = MODEL
    plain = matching_networks(model, ways=ways)
    full = matching_networks(model, ways=ways, fce=True, embed_dim=EMB)
    meta = full.init(jax.random.key(0))
    ep = _episode(1, ways, 2, 3)
    lp_plain = plain.predict(plain.adapt(dict(meta, rule=()), ep.support)[0], ep.query.x)
    lp_full = full.predict(full.adapt(meta, ep.support)[0], ep.query.x)
    diff = np.max(np.abs(_np(lp_full) - _np(lp_plain)))
    assert 0 < diff < 0.05, diff


def test_matching_support_order():
    ways, shots = 3, 2
    model = MODEL
    ep = _episode(1, ways, shots, 3)
    perm = np.array([3, 0, 5, 1, 4, 2])
    permuted = Batch(ep.support.x[perm], ep.support.y[perm])

    plain = matching_networks(model, ways=ways)
    meta = plain.init(jax.random.key(0))
    a = plain.predict(plain.adapt(meta, ep.support)[0], ep.query.x)
    b = plain.predict(plain.adapt(meta, permuted)[0], ep.query.x)
    np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-6)

    # With FCE the bidirectional LSTM reads the support as a sequence: order matters for g ...
    full = matching_networks(model, ways=ways, fce=True, embed_dim=EMB)
    meta = _scaled_rule(full.init(jax.random.key(0)), 4.0)
    a = full.predict(full.adapt(meta, ep.support)[0], ep.query.x)
    b = full.predict(full.adapt(meta, permuted)[0], ep.query.x)
    assert np.max(np.abs(_np(a) - _np(b))) > 1e-3

    # ... but the attention LSTM over a fixed memory does not depend on the memory's order, and
    # each query is refined independently of the other queries.
    emb = model.apply(meta["model"], ep.query.x)
    memory = jax.random.normal(jax.random.key(5), (ways * shots, EMB))
    f = fce_query(meta["rule"], emb, memory, 3)
    np.testing.assert_allclose(
        _np(f), _np(fce_query(meta["rule"], emb, memory[perm], 3)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        _np(f[2:5]), _np(fce_query(meta["rule"], emb[2:5], memory, 3)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("fce", [False, True])
def test_matching_gradients_match_finite_differences(fce, x64):
    ways = 3
    model = MODEL
    learner = matching_networks(model, ways=ways, fce=fce, embed_dim=EMB, scale=2.0)
    meta = _f64(learner.init(jax.random.key(0)))
    if fce:
        meta = _scaled_rule(meta, 3.0)
    ep = _f64(_episode(1, ways, 2, 3))

    grad_fn = jax.jit(learner.task_grad)
    grads, metrics = grad_fn(meta, ep, jax.random.key(0))
    assert sorted(metrics) == ["accuracy", "loss", "support_loss_before"]
    leaves, treedef = jax.tree.flatten(meta)
    keys = jax.random.split(jax.random.key(9), len(leaves))
    direction = treedef.unflatten(
        [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)]
    )

    def loss_at(t):
        moved = jax.tree.map(lambda p, v: p + t * v, meta, direction)
        return float(grad_fn(moved, ep, jax.random.key(0))[1]["loss"])

    # A small step: the ReLU embedding is only piecewise smooth.
    eps = 1e-7
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = sum(
        float(jnp.vdot(g, v)) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(direction))
    )
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-9)
    assert abs(analytic) > 1e-4
    if fce:
        for path, g in jax.tree_util.tree_flatten_with_path(grads["rule"])[0]:
            assert float(jnp.linalg.norm(g)) > 1e-8, jax.tree_util.keystr(path)


def test_matching_absent_class_is_impossible_and_gradients_stay_finite():
    ways = 3
    learner = matching_networks(MODEL, ways=ways, fce=True, embed_dim=EMB)
    meta = learner.init(jax.random.key(0))
    ep = _episode(1, ways, 2, 3)
    support = Batch(ep.support.x, jnp.array([0, 0, 1, 1, 0, 1]))  # class 2 absent
    query = Batch(ep.query.x, ep.query.y % 2)
    log_probs = _np(jax.jit(lambda m: learner.predict(learner.adapt(m, support)[0], query.x))(meta))
    assert np.all(log_probs[:, 2] == -np.inf)
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)
    grads, metrics = jax.jit(learner.task_grad)(meta, Episode(support, query), jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


# ----------------------------------------------------------------------------------------------
# R2-D2
# ----------------------------------------------------------------------------------------------


def test_ridge_head_equals_primal_solution(x64):
    rng = np.random.default_rng(0)
    for s, d in [(5, 9), (9, 5)]:
        x = rng.normal(size=(s, d))
        y = np.eye(3)[rng.integers(0, 3, size=s)]
        lam = 0.37
        primal = np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ y)
        np.testing.assert_allclose(
            _np(ridge_head(jnp.asarray(x), jnp.asarray(y), lam)), primal, rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("bias_column", [True, False])
def test_r2d2_logits_match_numpy(bias_column, x64):
    ways, shots, queries = 3, 2, 3
    model = MODEL
    learner = r2d2(model, ways=ways, lam_init=0.5, scale_init=1.5, bias_column=bias_column)
    meta = _f64(learner.init(jax.random.key(0)))
    meta["rule"] = {
        "log_lam": jnp.log(jnp.float64(0.5)),
        "scale": jnp.float64(1.5),
        "bias": jnp.float64(0.25),
    }
    ep = _f64(_episode(1, ways, shots, queries))

    task_params, trace = learner.adapt(meta, ep.support)
    logits = _np(learner.predict(task_params, ep.query.x))

    def feats(x):
        e = _np(model.apply(meta["model"], x))
        return np.concatenate([e, np.ones((len(e), 1))], 1) if bias_column else e

    xs, xq = feats(ep.support.x), feats(ep.query.x)
    ys = np.asarray(ep.support.y)
    y = np.eye(ways)[ys]
    w = np.linalg.solve(xs.T @ xs + 0.5 * np.eye(xs.shape[1]), xs.T @ y)
    expected = 1.5 * xq @ w + 0.25

    assert task_params["weights"].shape == (EMB + bias_column, ways)
    np.testing.assert_allclose(_np(task_params["weights"]), w, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(logits, expected, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(
        float(trace["support_loss"][0]), np_cross_entropy(1.5 * xs @ w + 0.25, ys), rtol=1e-9
    )
    _, metrics = learner.task_grad(meta, ep, jax.random.key(0))
    np.testing.assert_allclose(
        float(metrics["loss"]), np_cross_entropy(expected, np.asarray(ep.query.y)), rtol=1e-9
    )


def test_r2d2_gradients_match_finite_differences(x64):
    ways = 3
    model = MODEL
    lam, scale = 0.7, 1.3
    learner = r2d2(model, ways=ways)
    meta = _f64(learner.init(jax.random.key(0)))
    meta["rule"] = {
        "log_lam": jnp.log(jnp.float64(lam)),
        "scale": jnp.float64(scale),
        "bias": jnp.float64(0.0),
    }
    ep = _f64(_episode(1, ways, 2, 3))
    grad_fn = jax.jit(learner.task_grad)
    grads, _ = grad_fn(meta, ep, jax.random.key(0))

    def loss_with(**rule):
        moved = dict(meta, rule=dict(meta["rule"], **{k: jnp.asarray(v) for k, v in rule.items()}))
        return float(grad_fn(moved, ep, jax.random.key(0))[1]["loss"])

    eps = 1e-6
    d_lam = (loss_with(log_lam=math.log(lam + eps)) - loss_with(log_lam=math.log(lam - eps))) / (
        2 * eps
    )
    # The parameter is log(lam): d loss / d lam = d loss / d log_lam / lam.
    np.testing.assert_allclose(float(grads["rule"]["log_lam"]) / lam, d_lam, rtol=1e-6)
    assert abs(d_lam) > 1e-4
    d_scale = (loss_with(scale=scale + eps) - loss_with(scale=scale - eps)) / (2 * eps)
    np.testing.assert_allclose(float(grads["rule"]["scale"]), d_scale, rtol=1e-6)
    # A scalar bias shifts every logit equally: the softmax cross-entropy ignores it.
    assert abs(float(grads["rule"]["bias"])) < 1e-12

    kernel = meta["model"]["hidden_0"]["kernel"]
    v = jax.random.normal(jax.random.key(3), kernel.shape, kernel.dtype)

    def loss_kernel(t):
        moved = dict(
            meta,
            model=dict(
                meta["model"], hidden_0=dict(meta["model"]["hidden_0"], kernel=kernel + t * v)
            ),
        )
        return float(grad_fn(moved, ep, jax.random.key(0))[1]["loss"])

    numeric = (loss_kernel(eps) - loss_kernel(-eps)) / (2 * eps)
    analytic = float(jnp.vdot(grads["model"]["hidden_0"]["kernel"], v))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Shared behaviour
# ----------------------------------------------------------------------------------------------

LEARNERS = {
    "matching": lambda m: matching_networks(m, ways=3),
    "matching_fce": lambda m: matching_networks(m, ways=3, fce=True, embed_dim=EMB),
    "r2d2": lambda m: r2d2(m, ways=3),
}


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_unadapted_is_uniform_and_eval_is_repeated(name):
    ways = 3
    learner = LEARNERS[name](MODEL)
    meta = learner.init(jax.random.key(0))
    ep = _episode(1, ways, 2, 3)
    out = _np(learner.predict(meta["model"], ep.query.x))
    assert out.shape == (ways * 3, ways)
    np.testing.assert_allclose(out - out[:, :1], 0.0)

    def q(p):
        return cross_entropy_loss(learner.predict(p, ep.query.x), ep.query.y)

    for steps, length in [(None, 1), (0, 1), (3, 3)]:
        task_params, trace = learner.adapt(meta, ep.support, inner_steps=steps, eval_fn=q)
        assert trace["eval"].shape == (length,)
        assert trace["support_loss"].shape == (1,)
        np.testing.assert_allclose(_np(trace["eval"]), float(q(task_params)), rtol=1e-6)

    tasks = jax.tree.map(lambda a: jnp.stack([a, a]), ep)
    curves = adaptation_curves(learner, meta, tasks, 2, loss_fn=cross_entropy_loss)
    assert curves.shape == (2, 3)
    np.testing.assert_allclose(curves[:, 0], math.log(ways), rtol=1e-6)
    np.testing.assert_allclose(curves[:, 1:], float(q(task_params)), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_meta_steps_lower_query_loss(name):
    learner = LEARNERS[name](MODEL)
    tx = optax.adam(1e-2)
    batch = blob_batch(jax.random.key(3), 4, ways=3, shots=2, queries=3, dim=DIM, signal=2,
                       noise=2.0)
    state = init_state(learner, tx, jax.random.key(0))
    step = make_meta_step(learner, tx, task_map="vmap")
    losses = []
    for _ in range(16):
        state, metrics = step(state, batch)  # metrics of the parameters before the update
        losses.append(float(metrics["loss"]))
        assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("ways", [1, 0, -2, 2.0, True, None])
def test_bad_ways(ways):
    with pytest.raises(ValueError, match="ways"):
        matching_networks(MODEL, ways=ways)
    with pytest.raises(ValueError, match="ways"):
        r2d2(MODEL, ways=ways)


def test_bad_arguments():
    model = MODEL
    with pytest.raises(ValueError, match="embed_dim"):
        matching_networks(model, ways=3, fce=True)
    for steps in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="fce_steps"):
            matching_networks(model, ways=3, fce=True, fce_steps=steps, embed_dim=4)
    for scale in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="scale"):
            matching_networks(model, ways=3, scale=scale)
    for lam in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="lam_init"):
            r2d2(model, ways=3, lam_init=lam)
    with pytest.raises(ValueError, match="scale_init"):
        r2d2(model, ways=3, scale_init=float("inf"))
    with pytest.raises(TypeError):
        r2d2(model)

    learner = matching_networks(model, ways=3, fce=True, embed_dim=5)
    meta = jax.eval_shape(learner.init, jax.random.key(0))
    support = Batch(
        jax.ShapeDtypeStruct((3, DIM), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.int32)
    )
    with pytest.raises(ValueError, match=f"embed_dim={EMB}"):
        jax.eval_shape(learner.adapt, meta, support)
