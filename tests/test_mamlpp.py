"""MAML++: loss-weight schedule, meta-gradients against explicitly unrolled computations,
derivative-order annealing against (FO)MAML, per-step BatchNorm slices, evaluation beyond the
trained step count, and the jitted meta-step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms import maml
from jmeta.algorithms._mamlpp import mamlpp, msl_weights
from jmeta.core import Batch, Episode, init_state, make_meta_step, mse_loss
from jmeta.data import sinusoid_tasks
from jmeta.inner import lslr
from jmeta.models import Model, mlp
from jmeta.train._eval import adaptation_curves
from tests._helpers import sinusoid_episode64, to64, trees_close

LR = 0.05
HIDDEN = 6


def _bn_model(loss_counter=None):
    """Linear -> batch-normalise (per-channel scale and bias named "bn_0") -> tanh -> linear."""

    def init(key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        return {
            "dense": {"kernel": jax.random.normal(k1, (1, HIDDEN)),
                      "bias": 0.1 * jax.random.normal(k2, (HIDDEN,))},
            "bn_0": {"scale": jnp.ones((HIDDEN,)), "bias": jnp.zeros((HIDDEN,))},
            "head": {"kernel": jax.random.normal(k3, (HIDDEN, 1)) / HIDDEN ** 0.5,
                     "bias": 0.1 * jax.random.normal(k4, (1,))},
        }

    def apply(p, x):
        h = x @ p["dense"]["kernel"] + p["dense"]["bias"]
        h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
        h = jnp.tanh(h * p["bn_0"]["scale"] + p["bn_0"]["bias"])
        return h @ p["head"]["kernel"] + p["head"]["bias"]

    return Model(init=init, apply=apply, family="dense")


BN_MODEL = _bn_model()
MLP = mlp(1, 1, (8, 8))
BN_LEARNER = mamlpp(BN_MODEL, inner_steps=2, inner_lr=LR, msl_anneal_steps=10)
MLP_LEARNER = mamlpp(MLP, inner_steps=2, inner_lr=LR, per_step_bn=False, msl_anneal_steps=10)
BN_GRAD = jax.jit(BN_LEARNER.task_grad)
MLP_GRAD = jax.jit(MLP_LEARNER.task_grad)


def _loss(model, params, batch):
    return mse_loss(model.apply(params, batch.x), batch.y)


def _distinct_meta(learner):
    """Float64 meta-parameters whose rates differ per step and BN slices differ per step."""
    meta = to64(learner.init(jax.random.key(0)))
    rule = jax.tree.map(lambda r: r * (1.0 + 0.3 * jnp.arange(r.shape[0])), meta["rule"])
    model = dict(meta["model"])
    if "bn_0" in model:
        n = model["bn_0"]["scale"].shape[0]
        model["bn_0"] = {
            "scale": model["bn_0"]["scale"] * (1.0 + 0.2 * jnp.arange(n))[:, None],
            "bias": model["bn_0"]["bias"] + 0.1 * jnp.arange(n)[:, None],
        }
    return {"model": model, "rule": rule}


def _with_slice(theta, bn, k):
    if bn is None:
        return theta
    return dict(theta, bn_0=jax.tree.map(lambda s: s[k], bn))


def _unrolled(model, meta, ep, weights, steps=None, trained=2):
    """Written out: the weighted query losses after each step, the final params, the traces."""
    params, rates = meta["model"], meta["rule"]
    bn = params.get("bn_0")
    theta = {k: v for k, v in params.items() if k != "bn_0"}
    steps = len(weights) if steps is None else steps
    total, query, support = 0.0, [], []
    for k in range(steps):
        r = min(k, trained - 1)
        s_loss, g = jax.value_and_grad(
            lambda t, k=k: _loss(model, _with_slice(t, bn, min(k, trained)), ep.support))(theta)
        theta = {name: jax.tree.map(lambda p, gi, a, r=r: p - a[r] * gi,
                                    theta[name], g[name], rates[name])
                 for name in theta}
        q = _loss(model, _with_slice(theta, bn, min(k + 1, trained)), ep.query)
        support.append(s_loss)
        query.append(q)
        if k < len(weights):
            total = total + weights[k] * q
    return total, _with_slice(theta, bn, min(steps, trained)), jnp.stack(query), jnp.stack(support)


def _paper_weights(epoch, n, msl_epochs):
    """The loss-importance vector of the MAML++ reference code (NumPy, per 'epoch')."""
    if epoch >= msl_epochs:
        w = np.zeros(n)
        w[-1] = 1.0
        return w
    w = np.ones(n) / n
    decay = 1.0 / n / msl_epochs
    floor = 0.03 / n
    for i in range(n - 1):
        w[i] = max(w[i] - epoch * decay, floor)
    w[-1] = min(w[-1] + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
    return w


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("step", [0, 7, 50, 98, 99, 100, 400])
def test_msl_weights_follow_the_reference_schedule_and_sum_to_one(n, step):
    w = np.asarray(msl_weights(step, n, 100))
    np.testing.assert_allclose(w, _paper_weights(step, n, 100), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    if n > 1 and step == 0:
        np.testing.assert_allclose(w, np.full(n, 1.0 / n), rtol=1e-6)
    if n > 1 and step == 98:
        np.testing.assert_allclose(w[:-1], 0.03 / n, rtol=1e-6)  # the floor is reached
    if step >= 100:
        assert w[-1] == 1.0 and not w[:-1].any()


def test_msl_weights_traced_step_and_no_annealing():
    traced = jax.jit(lambda s: msl_weights(s, 3, 10))
    for s in (0, 4, 10):
        np.testing.assert_allclose(np.asarray(traced(s)), _paper_weights(s, 3, 10), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(msl_weights(0, 3, 0)), [0.0, 0.0, 1.0])


@pytest.mark.parametrize("step", [0, 4, 10])
def test_mlp_meta_gradient_matches_unrolled_multi_step_loss(x64, step):
    meta, ep = _distinct_meta(MLP_LEARNER), sinusoid_episode64(3, 6)
    weights = msl_weights(step, 2, 10)
    grads, metrics = MLP_GRAD(meta, ep, jax.random.key(0), step)

    def objective(m):
        return _unrolled(MLP, m, ep, weights)[0]

    trees_close(grads, jax.grad(objective)(meta), rtol=1e-9, atol=1e-13)
    _, _, query, support = _unrolled(MLP, meta, ep, weights)
    np.testing.assert_allclose(float(metrics["objective"]), float(objective(meta)), rtol=1e-12)
    np.testing.assert_allclose(float(metrics["loss"]), float(query[-1]), rtol=1e-12)
    np.testing.assert_allclose(float(metrics["support_loss_before"]), float(support[0]), rtol=1e-12)
    assert all(float(jnp.abs(g).min()) > 0 for g in jax.tree.leaves(grads["rule"]))


@pytest.mark.parametrize("step", [0, 4, 10])
def test_per_step_bn_meta_gradient_matches_unrolled(x64, step):
    meta, ep = _distinct_meta(BN_LEARNER), sinusoid_episode64(3, 6)
    assert meta["model"]["bn_0"]["scale"].shape == (3, HIDDEN)
    assert meta["rule"]["bn_0"] == {"bias": None, "scale": None}  # not adapted: no rates
    weights = msl_weights(step, 2, 10)
    grads, metrics = BN_GRAD(meta, ep, jax.random.key(0), step)

    def objective(m):
        return _unrolled(BN_MODEL, m, ep, weights)[0]

    trees_close(grads, jax.grad(objective)(meta), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(float(metrics["objective"]), float(objective(meta)), rtol=1e-12)
    # Every slice gets its own, non-zero meta-gradient (slice 0 through the second-order path).
    for g in jax.tree.leaves(grads["model"]["bn_0"]):
        assert g.shape == (3, HIDDEN)
        assert np.all(np.abs(np.asarray(g)).sum(axis=1) > 0), g


def test_adapt_leaves_bn_slices_alone_and_extends_past_the_trained_steps(x64):
    meta, ep = _distinct_meta(BN_LEARNER), sinusoid_episode64(3, 6)

    def query_loss(p):
        return mse_loss(BN_LEARNER.predict(p, ep.query.x), ep.query.y)

    for steps in (0, 1, 2, 4):
        params, trace = BN_LEARNER.adapt(meta, ep.support, inner_steps=steps, eval_fn=query_loss)
        _, expected, query, support = _unrolled(BN_MODEL, meta, ep, [], steps=max(steps, 1))
        if steps == 0:
            expected = _with_slice({k: v for k, v in meta["model"].items() if k != "bn_0"},
                                   meta["model"]["bn_0"], 0)
            query, support = query[:0], support[:0]
        trees_close(params, expected, rtol=1e-10, atol=1e-14)
        for name in ("scale", "bias"):  # exactly the stored slice: not adapted
            np.testing.assert_array_equal(params["bn_0"][name],
                                          meta["model"]["bn_0"][name][min(steps, 2)])
        assert trace["support_loss"].shape == trace["eval"].shape == (steps,)
        np.testing.assert_allclose(trace["eval"], query, rtol=1e-10)
        np.testing.assert_allclose(trace["support_loss"], support, rtol=1e-10)

    # Step 0 of the evaluation curves is predict(meta["model"], x): BN slice 0.
    tasks = to64(sinusoid_tasks(jax.random.key(5), 3, 6))
    curves = adaptation_curves(BN_LEARNER, meta, tasks, 4)
    assert curves.shape == (3, 5)
    for i in range(3):
        ep_i = jax.tree.map(lambda x, i=i: x[i], tasks)
        _, _, query, _ = _unrolled(BN_MODEL, meta, ep_i, [], steps=4)
        theta0 = {k: v for k, v in meta["model"].items() if k != "bn_0"}
        q0 = _loss(BN_MODEL, _with_slice(theta0, meta["model"]["bn_0"], 0), ep_i.query)
        np.testing.assert_allclose(curves[i], np.concatenate([[q0], query]), rtol=1e-9)


def test_derivative_order_annealing_switches_between_fomaml_and_maml(x64):
    learner = mamlpp(MLP, inner_steps=2, inner_lr=LR, multi_step_loss=False, per_step_bn=False,
                     first_order_until=3)
    refs = {fo: maml(MLP, inner_steps=2, rule=lslr(LR, 2), first_order=fo) for fo in (True, False)}
    meta = to64(learner.init(jax.random.key(0)))
    trees_close(meta, refs[True].init(jax.random.key(0)), rtol=1e-6)  # same initial rates (= LR)
    tasks = to64(sinusoid_tasks(jax.random.key(7), 3, 6))
    key = jax.random.key(0)

    def batched(m, t, s):
        return jax.vmap(lambda e: learner.task_grad(m, e, key, s))(t)

    run = jax.jit(batched)
    expected = {fo: jax.vmap(lambda e, fo=fo: refs[fo].task_grad(meta, e, key))(tasks)[0]
                for fo in (True, False)}
    for step, fo in ((0, True), (2, True), (3, False), (50, False)):
        grads, _ = run(meta, tasks, step)
        trees_close(grads, expected[fo], rtol=1e-9, atol=1e-13)
    gap = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), expected[True], expected[False])
    assert max(jax.tree.leaves(gap)) > 1e-4  # the two orders really differ here

    # The step is shared by all tasks, so under vmap the order switch stays one real cond.
    jaxpr = jax.make_jaxpr(batched)(meta, tasks, 0)
    assert "cond" in [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]


def test_first_order_phase_gives_no_gradient_to_the_first_bn_slice(x64):
    learner = mamlpp(BN_MODEL, inner_steps=2, inner_lr=LR, msl_anneal_steps=10, first_order_until=5)
    meta, ep = _distinct_meta(learner), sinusoid_episode64(3, 6)
    grads, _ = learner.task_grad(meta, ep, jax.random.key(0), 1)
    for g in jax.tree.leaves(grads["model"]["bn_0"]):
        np.testing.assert_array_equal(g[0], 0.0)  # slice 0 acts only through inner gradients
        assert np.all(np.abs(np.asarray(g[1:])).sum(axis=1) > 0)


def test_meta_step_vmap_trains_without_retracing(tasks):
    traces = []

    def counting_loss(pred, y):
        traces.append(1)
        return mse_loss(pred, y)

    learner = mamlpp(_bn_model(), inner_steps=2, inner_lr=LR, msl_anneal_steps=2,
                     first_order_until=1, loss_fn=counting_loss)
    tx = optax.adam(1e-2)
    step = make_meta_step(learner, tx, task_map="vmap")
    state = init_state(learner, tx, jax.random.key(0))
    start = np.array(state.params["model"]["bn_0"]["bias"])  # the step donates its input
    state, _ = step(state, tasks)
    count = len(traces)
    losses = []
    for _ in range(4):  # crosses first_order_until and the end of the MSL annealing
        state, metrics = step(state, tasks)
        losses.append(float(metrics["loss"]))
    assert len(traces) == count > 0
    assert int(state.step) == 5
    assert np.all(np.isfinite(losses))
    moved = np.abs(np.asarray(state.params["model"]["bn_0"]["bias"]) - start).sum(axis=1)
    assert np.all(moved > 0)  # every slice is meta-learned


def test_remat_changes_nothing():
    ep = jax.tree.map(lambda x: x[0], sinusoid_tasks(jax.random.key(1), 1, 5))
    meta = BN_LEARNER.init(jax.random.key(0))
    remat = mamlpp(BN_MODEL, inner_steps=2, inner_lr=LR, msl_anneal_steps=10, remat=True)
    g1, _ = BN_GRAD(meta, ep, jax.random.key(0), 3)
    g2, _ = jax.jit(remat.task_grad)(meta, ep, jax.random.key(0), 3)
    trees_close(g1, g2, rtol=1e-5, atol=1e-7)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="per_step_bn=False"):
        mamlpp(MLP, inner_steps=2, per_step_bn=True)  # no BatchNorm parameter to make per-step
    with pytest.raises(ValueError, match="inner_steps"):
        mamlpp(BN_MODEL, inner_steps=0)
    with pytest.raises(ValueError, match="msl_anneal_steps"):
        mamlpp(BN_MODEL, inner_steps=2, msl_anneal_steps=-1)
    with pytest.raises(ValueError, match="first_order_until"):
        mamlpp(BN_MODEL, inner_steps=2, first_order_until=1.5)
    with pytest.raises(ValueError, match="learning rate"):
        mamlpp(BN_MODEL, inner_steps=2, inner_lr=-0.1)
    with pytest.raises(ValueError, match="selects every parameter"):
        mamlpp(BN_MODEL, inner_steps=2, bn_paths=lambda p: True)
    meta = BN_LEARNER.init(jax.random.key(0))
    b = Batch(jnp.zeros((3, 1)), jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="inner_steps"):
        BN_LEARNER.adapt(meta, b, inner_steps=-1)
    with pytest.raises(ValueError, match="meta-step"):
        BN_LEARNER.task_grad(meta, Episode(b, b), jax.random.key(0))
    assert BN_LEARNER.uses_step and BN_LEARNER.inner_steps == 2


def _running_conv4_learner(eval_mode=False):
    from jmeta.core import cross_entropy_loss
    from jmeta.models import conv4

    model = conv4(1, 3, filters=4, image_size=16, bn_mode="running")
    used = model._replace(apply=model.eval_apply) if eval_mode else model
    return model, mamlpp(used, inner_steps=2, inner_lr=0.5, loss_fn=cross_entropy_loss)


def _image_episode(seed):
    x = jax.random.normal(jax.random.key(seed), (9, 16, 16, 1))
    y = jnp.arange(9) % 3
    return Episode(Batch(x[:3], y[:3]), Batch(x, y))


@pytest.mark.slow  # long; `make test-slow` runs it
def test_per_step_running_stats_are_those_of_the_network_after_k_steps():
    from jmeta.algorithms import per_step_batch_stats

    model, learner = _running_conv4_learner()
    meta = learner.init(jax.random.key(0))
    episodes = [_image_episode(s) for s in (1, 2)]
    got = per_step_batch_stats(model, learner, meta, episodes)
    assert got["bn_0"]["mean"].shape == (3, 4) and got["bn_3"]["var"].shape == (3, 4)
    # Compiled once per k (op-by-op execution of the adapted network is slow on CPU).
    adapt = jax.jit(learner.adapt, static_argnames="inner_steps")
    stats = jax.jit(model.stats_apply)
    for k in range(3):  # explicitly: adapt k steps, then the query batch's statistics
        want = []
        for ep in episodes:
            params, _ = adapt(meta, ep.support, inner_steps=k)
            want.append(stats(params, ep.query.x))
        for layer in ("bn_0", "bn_3"):
            for stat in ("mean", "var"):
                expect = np.mean([w[layer][stat] for w in want], axis=0)
                np.testing.assert_allclose(got[layer][stat][k], expect, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got["bn_3"]["mean"][0], got["bn_3"]["mean"][2])
    # Everything but the statistics is unchanged.
    np.testing.assert_array_equal(got["conv_0"]["kernel"], meta["model"]["conv_0"]["kernel"])
    np.testing.assert_array_equal(got["bn_0"]["scale"], meta["model"]["bn_0"]["scale"])


@pytest.mark.slow  # long; `make test-slow` runs it
def test_test_mode_normalises_step_k_with_slice_k():
    from jmeta.algorithms import per_step_batch_stats

    model, learner = _running_conv4_learner()
    _, test_learner = _running_conv4_learner(eval_mode=True)
    meta = learner.init(jax.random.key(0))
    ep = _image_episode(3)
    meta = dict(meta, model=per_step_batch_stats(model, learner, meta, [ep]))
    shifted = jax.tree.map(lambda a: a, meta)
    shifted["model"]["bn_3"]["mean"] = meta["model"]["bn_3"]["mean"].at[2].add(5.0)

    def outputs(m, k):
        params, _ = test_learner.adapt(m, ep.support, inner_steps=k)
        return test_learner.predict(params, ep.query.x)

    for k in (0, 1):  # slice 2 is not used before the second step
        np.testing.assert_array_equal(outputs(meta, k), outputs(shifted, k))
    assert not np.allclose(outputs(meta, 2), outputs(shifted, 2))
