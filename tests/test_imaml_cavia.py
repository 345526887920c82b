"""iMAML (implicit meta-gradients) and CAVIA (context adaptation): closed forms, explicitly
unrolled references, task mapping and short training runs."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms._cavia import cavia
from jmeta.algorithms._imaml import imaml
from jmeta.core import Batch, Episode, init_state, make_meta_step, map_tasks, mse_loss
from jmeta.core._losses import accuracy, cross_entropy_loss
from jmeta.data import sinusoid_sampler, sinusoid_tasks
from jmeta.inner import meta_sgd
from jmeta.models import ContextModel, Model, context_conv4, context_mlp, mlp
from jmeta.train._eval import adaptation_curves
from tests._helpers import sinusoid_episode64, to64


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


# ----------------------------------------------------------------------------------------- iMAML

DIM = 4
LAM = 1.0


def _half_sq(pred, y):
    return 0.5 * jnp.sum((pred - y) ** 2)


@pytest.fixture(scope="module")
def quadratic():
    """Support loss 1/2 (w-a)^T A (w-a) and query loss 1/2 (w-b)^T B (w-b) with A = Xs^T Xs,
    B = Xq^T Xq, written as a linear model ``x @ w`` with a half squared-error loss."""
    rng = np.random.default_rng(0)
    xs, xq = rng.standard_normal((6, DIM)), rng.standard_normal((5, DIM))
    a, b, theta = rng.standard_normal(DIM), rng.standard_normal(DIM), rng.standard_normal(DIM)
    A, B = xs.T @ xs, xq.T @ xq
    eig = np.linalg.eigvalsh(A + LAM * np.eye(DIM))
    lr = 2.0 / (eig[0] + eig[-1])  # the optimal fixed step for the regularised objective
    model = Model(init=lambda key: {"w": jnp.zeros(DIM)}, apply=lambda p, x: x @ p["w"],
                  family="dense")
    episode = Episode(Batch(xs, xs @ a), Batch(xq, xq @ b))
    return {"model": model, "episode": episode, "A": A, "B": B, "a": a, "b": b, "theta": theta,
            "lr": float(lr)}


def test_imaml_matches_closed_form_implicit_gradient_on_quadratic(quadratic, x64):
    q = quadratic
    A, B, a, b, theta = q["A"], q["B"], q["a"], q["b"], q["theta"]
    episode = to64(q["episode"])

    def exact_query_loss(t):
        phi = jnp.linalg.solve(A + LAM * jnp.eye(DIM), A @ a + LAM * t)
        return 0.5 * (phi - b) @ B @ (phi - b)

    expected = np.asarray(jax.grad(exact_query_loss)(jnp.asarray(theta)))
    # The same in NumPy, from the formula lam (A + lam I)^{-1} B (phi* - b).
    phi_star = np.linalg.solve(A + LAM * np.eye(DIM), A @ a + LAM * theta)
    np.testing.assert_allclose(
        expected, LAM * np.linalg.solve(A + LAM * np.eye(DIM), B @ (phi_star - b)), rtol=1e-10
    )

    M = np.eye(DIM) + A / LAM  # CG minimises the error in the M-norm, monotonically
    errors = []
    for cg_steps in (1, 2, 3, DIM):
        learner = imaml(q["model"], inner_lr=q["lr"], inner_steps=200, lam=LAM, cg_steps=cg_steps,
                        loss_fn=_half_sq)
        meta = {"model": {"w": jnp.asarray(theta)}, "rule": ()}
        grads, metrics = jax.jit(learner.task_grad)(meta, episode, jax.random.key(0))
        err = np.asarray(grads["model"]["w"]) - expected
        errors.append(float(np.sqrt(err @ M @ err)))
        assert grads["rule"] == ()
        np.testing.assert_allclose(float(metrics["loss"]), float(exact_query_loss(theta)),
                                   rtol=1e-10)
        np.testing.assert_allclose(
            float(metrics["support_loss_before"]), 0.5 * (theta - a) @ A @ (theta - a), rtol=1e-12
        )
    np.testing.assert_allclose(np.asarray(grads["model"]["w"]), expected, rtol=1e-9, atol=1e-12)
    # Few CG steps: close but not exact, and better with every step.
    scale = float(np.sqrt(expected @ M @ expected))
    assert errors[0] > 1e-4 * scale, errors
    assert all(e1 < e0 for e0, e1 in itertools.pairwise(errors[:3])), errors
    assert errors[0] < scale, errors
    assert errors[-1] < 1e-9 * scale, errors


def test_imaml_implicit_gradient_approaches_unrolled_converged_loop(x64):
    model = mlp(1, 1, hidden=(8,))
    lam, lr, steps = 2.0, 0.05, 400
    learner = imaml(model, inner_lr=lr, inner_steps=steps, lam=lam, cg_steps=40)
    # The comparison needs a well-posed problem (the regularised inner loop converges and
    # I + H/lam is positive definite); it is at this initialisation, drawn with JAX's default
    # Threefry whatever the suite's setting (conftest.py).
    with jax.threefry_partitionable(True):
        meta = to64(learner.init(jax.random.key(0)))
    ep = sinusoid_episode64(3, 5)

    def support_loss(p):
        return mse_loss(model.apply(p, ep.support.x), ep.support.y)

    def unrolled_query_loss(theta):
        def step(phi, _):
            g = jax.grad(lambda p: support_loss(p) + 0.5 * lam * sum(
                jnp.sum((x - t) ** 2) for x, t in zip(jax.tree.leaves(p), jax.tree.leaves(theta))
            ))(phi)
            return jax.tree.map(lambda x, d: x - lr * d, phi, g), None

        phi, _ = jax.lax.scan(step, theta, None, length=steps)
        return mse_loss(model.apply(phi, ep.query.x), ep.query.y), phi

    (_, phi), unrolled = jax.jit(jax.value_and_grad(unrolled_query_loss, has_aux=True))(
        meta["model"]
    )
    grads, _ = jax.jit(learner.task_grad)(meta, ep, jax.random.key(0))
    adapted, trace = jax.jit(learner.adapt)(meta, ep.support)
    first_order = jax.grad(lambda p: mse_loss(model.apply(p, ep.query.x), ep.query.y))(adapted)

    # The loop has converged: one more regularised gradient step would barely move it.
    np.testing.assert_allclose(_flat(adapted), _flat(phi), rtol=1e-9, atol=1e-12)
    implicit, reference, fo = _flat(grads["model"]), _flat(unrolled), _flat(first_order)
    gap = np.linalg.norm(implicit - reference)
    assert gap < 1e-4 * np.linalg.norm(reference), gap
    assert np.linalg.norm(fo - reference) > 100 * gap  # the Hessian term matters here
    # The trace reports the plain support loss (no proximal term) before each step.
    np.testing.assert_allclose(float(trace["support_loss"][0]), float(support_loss(meta["model"])),
                               rtol=1e-12)
    assert trace["support_loss"].shape == (steps,)
    assert float(trace["support_loss"][-1]) < float(trace["support_loss"][0])


def test_imaml_adapt_zero_steps_eval_and_input_checks(small_model, tasks):
    learner = imaml(small_model, inner_lr=0.01, inner_steps=2, lam=1.0)
    meta = learner.init(jax.random.key(0))
    ep = jax.tree.map(lambda x: x[0], tasks)

    def q(p):
        return mse_loss(learner.predict(p, ep.query.x), ep.query.y)

    params, trace = learner.adapt(meta, ep.support, inner_steps=0, eval_fn=q)
    jax.tree.map(np.testing.assert_array_equal, params, meta["model"])
    assert trace["support_loss"].shape == (0,) and trace["eval"].shape == (0,)
    params, trace = learner.adapt(meta, ep.support, inner_steps=3, eval_fn=q)
    assert trace["eval"].shape == (3,)
    np.testing.assert_allclose(float(trace["eval"][-1]), float(q(params)), rtol=1e-6)

    for kwargs, word in [
        ({"lam": 0.0}, "lam"),
        ({"cg_steps": 0}, "cg_steps"),
        ({"cg_damping": -1.0}, "cg_damping"),
        ({"inner_lr": -0.1}, "inner_lr"),
        ({"inner_steps": 0}, "inner_steps"),
    ]:
        args = {"inner_lr": 0.01, "inner_steps": 2, **kwargs}
        with pytest.raises(ValueError, match=word):
            imaml(small_model, **args)
    with pytest.raises(ValueError, match="learnable"):
        imaml(small_model, inner_lr=0.01, inner_steps=1,
              rule=meta_sgd(0.01)).init(jax.random.key(0))


@pytest.mark.parametrize("algo", ["imaml", "cavia"])
def test_vmap_meta_step_matches_per_task_mean_and_curves(algo, tasks):
    if algo == "imaml":
        learner = imaml(mlp(1, 1, hidden=(8,)), inner_lr=0.02, inner_steps=3, lam=1.0, cg_steps=4,
                        cg_damping=0.1)
    else:
        learner = cavia(context_mlp(1, 1, hidden=(8,), num_context=2), num_context=2,
                        inner_lr=0.5, inner_steps=2)
    tx = optax.sgd(1.0)  # the step is minus the mean meta-gradient, so it can be read back
    state = init_state(learner, tx, jax.random.key(0))
    meta = state.params
    step = make_meta_step(learner, tx, task_map="vmap", donate=False)
    new_state, metrics = step(state, tasks)
    assert int(new_state.step) == 1 and np.isfinite(float(metrics["grad_norm"]))
    grads = jax.tree.map(lambda a, b: a - b, meta, new_state.params)

    # make_meta_step splits its key as below; the learners ignore the key anyway.
    keys = jax.random.split(jax.random.split(state.rng)[1], 4)
    one_task = jax.jit(learner.task_grad)
    episodes = [jax.tree.map(lambda x, i=i: x[i], tasks) for i in range(4)]
    per_task = [one_task(meta, ep, k) for ep, k in zip(episodes, keys)]
    mean = jax.tree.map(lambda *xs: sum(xs) / 4, *[g for g, _ in per_task])
    np.testing.assert_allclose(_flat(grads), _flat(mean), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]),
                               np.mean([float(m["loss"]) for _, m in per_task]), rtol=1e-5)
    assert np.linalg.norm(_flat(grads)) > 0

    curves = adaptation_curves(learner, meta, tasks, 2)
    assert curves.shape == (4, 3) and np.all(np.isfinite(curves))
    unadapted = [float(mse_loss(learner.predict(meta["model"], tasks.query.x[i]), tasks.query.y[i]))
                 for i in range(4)]
    np.testing.assert_allclose(curves[:, 0], unadapted, rtol=1e-5)


# ----------------------------------------------------------------------------------------- CAVIA

CTX = 3
CAVIA_LR = 0.5


@pytest.fixture(scope="module")
def cavia_setup():
    model = context_mlp(1, 1, hidden=(8, 8), num_context=CTX)
    return model, cavia(model, num_context=CTX, inner_lr=CAVIA_LR, inner_steps=2)


def test_cavia_context_starts_at_zero_and_theta_is_unchanged(cavia_setup, tasks):
    model, learner = cavia_setup
    meta = learner.init(jax.random.key(0))
    adapt1 = jax.jit(jax.vmap(lambda s: learner.adapt(meta, s, inner_steps=1)))
    task_params, trace = adapt1(tasks.support)

    for i in range(4):
        xs, ys = tasks.support.x[i], tasks.support.y[i]

        def loss(c, xs=xs, ys=ys):
            return mse_loss(model.apply(meta["model"], xs, c), ys)

        zero = jnp.zeros(CTX)
        # One SGD step from the zero context, for every task independently.
        np.testing.assert_allclose(np.asarray(task_params["context"][i]),
                                   -CAVIA_LR * np.asarray(jax.grad(loss)(zero)),
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(trace["support_loss"][i, 0]), float(loss(zero)), rtol=1e-6)
        for t, m in zip(jax.tree.leaves(task_params["model"]), jax.tree.leaves(meta["model"])):
            np.testing.assert_array_equal(t[i], m)
    assert float(jnp.linalg.norm(task_params["context"])) > 0

    support0 = jax.tree.map(lambda x: x[0], tasks.support)
    params0, trace0 = learner.adapt(meta, support0, inner_steps=0)
    np.testing.assert_array_equal(np.asarray(params0["context"]), np.zeros(CTX))
    assert trace0["support_loss"].shape == (0,)
    # Bare network parameters predict with the zero context.
    x = tasks.query.x[0]
    np.testing.assert_array_equal(np.asarray(learner.predict(meta["model"], x)),
                                  np.asarray(learner.predict(params0, x)))


@pytest.mark.parametrize("first_order", [False, True])
def test_cavia_meta_gradient_matches_explicit_unrolled_two_steps(first_order, x64):
    model = context_mlp(1, 1, hidden=(8, 8), num_context=CTX)
    learner = cavia(model, num_context=CTX, inner_lr=CAVIA_LR, inner_steps=2,
                    first_order=first_order)
    meta = to64(learner.init(jax.random.key(0)))
    ep = sinusoid_episode64(3, 5)

    def loss(theta, c, batch):
        return mse_loss(model.apply(theta, batch.x, c), batch.y)

    def unrolled(theta):
        c = jnp.zeros(CTX)
        for _ in range(2):  # written out: no scan, no inner-rule machinery
            g = jax.grad(loss, argnums=1)(theta, c, ep.support)
            if first_order:
                g = jax.lax.stop_gradient(g)
            c = c - CAVIA_LR * g
        return loss(theta, c, ep.query)

    expected_loss, expected = jax.value_and_grad(unrolled)(meta["model"])
    grads, metrics = learner.task_grad(meta, ep, jax.random.key(0))
    assert grads["rule"] == ()
    np.testing.assert_allclose(_flat(grads["model"]), _flat(expected), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(float(metrics["loss"]), float(expected_loss), rtol=1e-12)
    np.testing.assert_allclose(float(metrics["support_loss_before"]),
                               float(loss(meta["model"], jnp.zeros(CTX), ep.support)), rtol=1e-12)
    if not first_order:
        fo, _ = cavia(model, num_context=CTX, inner_lr=CAVIA_LR, inner_steps=2,
                      first_order=True).task_grad(meta, ep, jax.random.key(0))
        diff = np.linalg.norm(_flat(fo["model"]) - _flat(grads["model"]))
        assert diff > 1e-3 * np.linalg.norm(_flat(grads["model"]))


def test_cavia_meta_training_lowers_query_loss():
    learner = cavia(context_mlp(1, 1, hidden=(32, 32), num_context=4), num_context=4,
                    inner_lr=1.0, inner_steps=2)
    tx = optax.adam(3e-3)
    state = init_state(learner, tx, jax.random.key(0))
    held_out = sinusoid_tasks(jax.random.key(99), 64, 10)
    keys = jax.random.split(jax.random.key(1), 64)
    evaluate = jax.jit(lambda m: map_tasks(learner.task_grad, m, held_out, keys)[1]["loss"])
    before = float(evaluate(state.params))
    step = make_meta_step(learner, tx, task_map="vmap", sampler=sinusoid_sampler(8, 10))
    for _ in range(200):
        state, metrics = step(state)
    after = float(evaluate(state.params))
    assert np.isfinite(float(metrics["grad_norm"]))
    assert after < 0.6 * before, (before, after)


def test_cavia_conv_runs_on_tiny_episodes_with_finite_gradients():
    ways, num_context = 3, 4
    model = context_conv4(1, ways, num_context=num_context, filters=4, strided=True, image_size=8)
    learner = cavia(model, num_context=num_context, inner_lr=0.5, inner_steps=1,
                    loss_fn=cross_entropy_loss, metric_fn=accuracy)
    assert learner.family == "conv"

    def episode(key):
        ks, kq = jax.random.split(key)
        labels = jnp.arange(ways)
        return Episode(Batch(jax.random.normal(ks, (ways, 8, 8, 1)), labels),
                       Batch(jax.random.normal(kq, (ways, 8, 8, 1)), labels))

    batch = jax.vmap(episode)(jax.random.split(jax.random.key(0), 2))
    tx = optax.sgd(1e-3)
    state0 = init_state(learner, tx, jax.random.key(1))
    before = state0.params
    step = make_meta_step(learner, tx, task_map="vmap", donate=False)
    state, metrics = step(state0, batch)
    assert int(state.step) == 1
    assert sorted(metrics) == ["accuracy", "grad_norm", "loss", "support_loss_before"]
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["grad_norm"]) > 0
    # With SGD the step is -lr * grad, so every gradient is finite and recoverable.
    grads = jax.tree.map(lambda a, b: (a - b) / 1e-3, before["model"], state.params["model"])
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    # The FiLM kernel multiplies the context, which is zero before adaptation: its gradient
    # comes only through the adapted context, i.e. through the inner loop.
    assert float(jnp.linalg.norm(grads["film"]["kernel"])) > 0
    logits = learner.predict(state.params["model"], batch.query.x[0])
    assert logits.shape == (ways, ways)


def test_cavia_and_context_model_input_checks(small_model):
    with pytest.raises(ValueError, match="ContextModel"):
        cavia(small_model, num_context=2, inner_lr=1.0, inner_steps=1)
    model = context_mlp(1, 1, hidden=(4,), num_context=2)
    with pytest.raises(ValueError, match="num_context"):
        cavia(model, num_context=3, inner_lr=1.0, inner_steps=1)
    with pytest.raises(ValueError, match="inner_lr"):
        cavia(model, num_context=2, inner_lr=0.0, inner_steps=1)
    with pytest.raises(ValueError, match="inner_steps"):
        cavia(model, num_context=2, inner_lr=1.0, inner_steps=0)
    with pytest.raises(ValueError, match="film_layer"):
        context_conv4(1, 3, num_context=2, film_layer=4)
    with pytest.raises(ValueError, match="image_size"):
        context_conv4(1, 3, num_context=2, image_size=8)
    conv = context_conv4(1, 3, num_context=2, filters=2, strided=True, image_size=8)
    assert isinstance(conv, ContextModel)
    with pytest.raises(ValueError, match="image_size=12"):
        conv.apply(conv.init(jax.random.key(0)), jnp.zeros((2, 12, 12, 1)), jnp.zeros(2))
