"""Learned inner rules (the LSTM meta-learner, the LSTM optimizer), the loss-reading rule
interface, truncated meta-gradients, remat, their config wiring and docs/inner_rules.md."""

import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmeta.algorithms import fomaml, maml, reptile
from jmeta.core import (
    InnerRule,
    inner_loop,
    map_tasks,
    mse_loss,
    num_tasks,
    support_minibatches,
)
from jmeta.data import sinusoid_tasks
from jmeta.inner import frozen_rule, lstm_optimizer, meta_lstm, preprocess_gradients, sgd
from jmeta.models import mlp
from jmeta.train import Config, ConfigError
from jmeta.train._build import build_learner, build_task, check_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "inner_rules.md"
MODEL = mlp(1, 1, hidden=(8, 8))
EPISODE = jax.tree.map(lambda x: x[0], sinusoid_tasks(jax.random.key(3), 1, 5))
STEPS = 4  # inner steps of the truncation tests


def batch_loss(params, batch):
    return mse_loss(MODEL.apply(params, batch.x), batch.y)


def leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


# --- preprocessing and the rules themselves ----------------------------------------------------


def test_preprocess_gradients_follows_the_formula_and_has_finite_gradients():
    x = np.array([-3.0, -1e-3, -1e-5, 0.0, 1e-5, 4.6e-5, 1e-3, 2.0], np.float32)
    p = 10.0
    big = np.abs(x) >= np.exp(-p)
    with np.errstate(divide="ignore"):
        want = np.stack([np.where(big, np.log(np.abs(x)) / p, -1.0),
                         np.where(big, np.sign(x), np.exp(p) * x)], -1)
    np.testing.assert_allclose(preprocess_gradients(x, p), want, rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda v: preprocess_gradients(v, p).sum())(jnp.asarray(x))
    assert np.isfinite(grad).all()


def _fixed_gates(rule_meta, input_bias):
    """Gate weights zero, forget gate exactly 1 (sigmoid(30) == 1 in float32), input gate
    sigmoid(input_bias); the first LSTM layer keeps its random weights."""
    gates = {
        "input_gate": {"kernel": jnp.zeros_like(rule_meta["input_gate"]["kernel"]),
                       "bias": jnp.float32(input_bias)},
        "forget_gate": {"kernel": jnp.zeros_like(rule_meta["forget_gate"]["kernel"]),
                        "bias": jnp.float32(30.0)},
    }
    return dict(rule_meta, **gates)


@pytest.mark.parametrize("input_bias", [0.0, math.log(0.01 / 0.99)])
def test_meta_lstm_with_fixed_gates_is_sgd(input_bias):
    rule = meta_lstm()
    params = MODEL.init(jax.random.key(0))
    rule_meta = _fixed_gates(rule.init_meta(jax.random.key(1), params), input_bias)
    lr = float(jax.nn.sigmoid(jnp.float32(input_bias)))  # the input gate, exactly
    assert float(jax.nn.sigmoid(jnp.float32(30.0))) == 1.0
    got, trace = inner_loop(batch_loss, rule, params, rule_meta, EPISODE.support, 4)
    want, want_trace = inner_loop(batch_loss, sgd(lr), params, (), EPISODE.support, 4)
    if lr == 0.5:  # products with a power of two are exact: bit for bit
        leaves_equal(got, want)
        leaves_equal(trace, want_trace)
    else:  # XLA may fuse SGD's multiply-add into one rounding and not the LSTM's: an ulp apart
        for a, b in zip(jax.tree.leaves((got, trace)), jax.tree.leaves((want, want_trace))):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got),
                                                         jax.tree.leaves(params)))


def test_meta_lstm_starts_near_sgd_with_a_small_step():
    rule = meta_lstm()
    params = {"w": jnp.zeros(50)}
    rule_meta = rule.init_meta(jax.random.key(0), params)
    grads = {"w": jnp.linspace(-1.0, 1.0, 50)}
    updates, state = jax.jit(rule.update)(grads, rule.init(params), params, rule_meta, loss=1.0)
    rate = -updates["w"] / grads["w"]
    assert np.all((rate > 0.005) & (rate < 0.02)), rate  # sigmoid(U(-5, -4))
    assert np.all(state["f"] > 0.98)  # sigmoid(U(4, 6))


@pytest.mark.parametrize("factory", [meta_lstm, lstm_optimizer])
def test_second_order_false_treats_gradient_and_loss_as_inputs(factory):
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    grads = {"w": jnp.linspace(0.5, -0.5, 6)}

    def total_update(g, loss, rule):
        rule_meta = rule.init_meta(jax.random.key(0), params)
        kw = {"loss": loss} if rule.needs_loss else {}
        updates, _ = rule.update(g, rule.init(params), params, rule_meta, **kw)
        return updates["w"].sum()

    grad = jax.jit(jax.grad(total_update, argnums=(0, 1)), static_argnums=2)
    d_grads, d_loss = grad(grads, 0.5, factory())
    assert not np.any(d_grads["w"]) and float(d_loss) == 0.0
    d_grads, d_loss = grad(grads, 0.5, factory(second_order=True))
    assert np.any(d_grads["w"])
    assert float(d_loss) != 0.0 or factory is lstm_optimizer  # it does not read the loss


def test_lstm_optimizer_state_shapes_and_finite_updates():
    rule = lstm_optimizer(hidden=6, num_layers=2)
    params = MODEL.init(jax.random.key(0))
    n = sum(p.size for p in jax.tree.leaves(params))
    rule_meta = rule.init_meta(jax.random.key(1), params)
    state = rule.init(params)
    assert state["h"].shape == state["c"].shape == (n, 2, 6)
    # Gradients over many orders of magnitude, zeros included, give finite updates.
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 1e6) * jnp.sign(jnp.sin(p)), params)
    grads = dict(grads, head={"kernel": jnp.zeros_like(params["head"]["kernel"]),
                              "bias": jnp.full_like(params["head"]["bias"], 1e-30)})
    update = jax.jit(rule.update)
    for _ in range(3):
        updates, state = update(grads, state, params, rule_meta)
        assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
        assert all(np.isfinite(u).all() for u in jax.tree.leaves(updates))
        assert all(np.abs(u).max() <= 0.1 * 6 for u in jax.tree.leaves(updates))  # scale * |W|_1
    assert state["h"].shape == (n, 2, 6) and np.isfinite(state["c"]).all()


def test_learned_rules_adapt_a_subset_of_parameters():
    # ANIL-style masks leave None leaves in params and grads; the state covers adapted ones only.
    params = {"body": None, "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    for rule in (meta_lstm(hidden=4), lstm_optimizer(hidden=4)):
        state = rule.init(params)
        assert jax.tree.leaves(state)[0].shape[0] == 8
        kw = {"loss": 1.0} if rule.needs_loss else {}
        rule_meta = rule.init_meta(jax.random.key(0), params)
        updates, _ = jax.jit(rule.update)(params, state, params, rule_meta, **kw)
        assert updates["body"] is None and updates["head"]["kernel"].shape == (3, 2)


@pytest.mark.parametrize("bad", [
    lambda: meta_lstm(hidden=0), lambda: meta_lstm(forget_bias=(6.0, 4.0)),
    lambda: meta_lstm(input_bias="small"), lambda: lstm_optimizer(num_layers=0),
    lambda: lstm_optimizer(output_scale=0.0), lambda: preprocess_gradients(jnp.ones(2), p=0.0),
    lambda: frozen_rule(optax.sgd(0.1), ()),
])
def test_bad_arguments_are_clear_errors(bad):
    with pytest.raises(ValueError, match="must be"):
        bad()


def test_a_rule_without_needs_loss_is_called_as_before():
    seen = []

    def update(grads, state, params, rule_meta):  # no loss keyword: would fail if passed one
        seen.append(True)
        return jax.tree.map(lambda g: -0.1 * g, grads), state

    rule = InnerRule(lambda k, p: (), lambda p: (), update)
    assert rule.needs_loss is False
    inner_loop(batch_loss, rule, MODEL.init(jax.random.key(0)), (), EPISODE.support, 2)
    assert seen


def test_a_rule_with_needs_loss_receives_each_steps_support_loss():
    def update(grads, state, params, rule_meta, *, loss):
        return jax.tree.map(lambda g: -0.01 * g, grads), jnp.append(state[1:], loss)

    rule = InnerRule(lambda k, p: (), lambda p: jnp.zeros(3), update, needs_loss=True)
    params = MODEL.init(jax.random.key(0))
    _, trace = inner_loop(batch_loss, rule, params, (), EPISODE.support, 3)
    # The state recorded the loss of every step, as the trace did.
    final_state = jax.lax.scan(lambda s, l: (jnp.append(s[1:], l), None), jnp.zeros(3),
                               trace["support_loss"])[0]
    np.testing.assert_allclose(final_state, trace["support_loss"])
    assert float(trace["support_loss"][-1]) < float(trace["support_loss"][0])


# --- meta-training with the learned rules -------------------------------------------------------


BATCH = 8  # tasks per meta-step
EVAL_TASKS = sinusoid_tasks(jax.random.key(100), 4 * BATCH, 5)  # held out, scored batch by batch
TRAIN_TASKS = sinusoid_tasks(jax.random.key(101), 100 * BATCH, 5)


def _batch(tasks, i):
    return jax.tree.map(lambda x: x[BATCH * i: BATCH * (i + 1)], tasks)


# One compiled meta-step per rule serves both tests below. maml with lstm_optimizer
# (second_order=False) computes exactly what fomaml does, so fomaml covers both; that run also
# truncates its inner loop, inside the vmapped meta-step.
@pytest.fixture(scope="module", params=[
    (maml, meta_lstm, {}), (fomaml, lstm_optimizer, {"truncate": 2}),
], ids=["maml-meta_lstm", "fomaml-lstm_optimizer-truncated"])
def short_run(request):
    """100 meta-steps (Adam, 8 sinusoid tasks each) of a learner with a learned rule; the mean
    MAML meta-gradient of the first step; the held-out query loss (32 tasks) before and after."""
    factory, rule, options = request.param
    learner = factory(MODEL, inner_steps=3, rule=rule(), **options)
    tx = optax.adam(1e-2)

    @jax.jit
    def step(meta, opt_state, batch):
        keys = jax.random.split(jax.random.key(0), num_tasks(batch))
        grads, metrics = map_tasks(learner.task_grad, meta, batch, keys)
        updates, opt_state = tx.update(grads, opt_state, meta)
        return optax.apply_updates(meta, updates), opt_state, grads, metrics["loss"]

    def held_out_loss(meta, opt_state):  # the query loss after adaptation, before any update
        return np.mean([float(step(meta, opt_state, _batch(EVAL_TASKS, j))[3]) for j in range(4)])

    meta = learner.init(jax.random.key(0))
    opt_state = tx.init(meta)
    start, before, first_grads = meta, held_out_loss(meta, opt_state), None
    for i in range(100):
        meta, opt_state, grads, _ = step(meta, opt_state, _batch(TRAIN_TASKS, i))
        first_grads = grads if first_grads is None else first_grads
    return {"grads": first_grads, "start": start, "end": meta, "before": before,
            "after": held_out_loss(meta, opt_state)}


def test_meta_gradients_reach_every_lstm_weight(short_run):
    grads = short_run["grads"]
    flat = jax.tree_util.tree_flatten_with_path(grads["rule"])[0]
    # meta_lstm: the first LSTM layer (kernel, bias) and two gates (kernel, bias);
    # lstm_optimizer: two LSTM layers (kernel, bias) and the output (kernel, bias).
    assert len(flat) == 6
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g))]
    assert not dead, f"no meta-gradient reaches {dead}"
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert all(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["model"]))  # initialisation


def test_a_short_meta_training_run_lowers_the_held_out_query_loss(short_run):
    before, after = short_run["before"], short_run["after"]
    assert np.isfinite(after) and after < 0.95 * before, (before, after)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(short_run["start"]["rule"]),
                                                     jax.tree.leaves(short_run["end"]["rule"]))]
    assert all(moved)  # the rule's weights were meta-trained


def test_reptile_rejects_a_learnable_rule_and_runs_a_frozen_one():
    with pytest.raises(ValueError, match="frozen_rule"):
        reptile(MODEL, inner_steps=2, rule=lstm_optimizer()).init(jax.random.key(0))
    trained = lstm_optimizer(hidden=4).init_meta(jax.random.key(1), None)
    learner = reptile(MODEL, inner_steps=2, rule=frozen_rule(lstm_optimizer(hidden=4), trained))
    meta = learner.init(jax.random.key(0))
    assert meta["rule"] == ()
    grads, metrics = jax.jit(learner.task_grad)(meta, EPISODE, jax.random.key(2))
    assert np.isfinite(float(metrics["loss"])) and grads["rule"] == ()
    assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["model"]))


# --- truncated meta-gradients and remat ----------------------------------------------------------


RULE = meta_lstm(hidden=6)
META = (MODEL.init(jax.random.key(0)), RULE.init_meta(jax.random.key(1), None))


def query_loss(meta, truncate=None, remat=False, steps=STEPS):
    params, _ = inner_loop(batch_loss, RULE, meta[0], meta[1], EPISODE.support, steps,
                           truncate=truncate, remat=remat)
    return batch_loss(params, EPISODE.query)


meta_grad = jax.jit(jax.value_and_grad(query_loss), static_argnums=(1, 2, 3))


def explicit_truncated_loss(meta, truncate):
    """Python loop: full steps, then at step STEPS - truncate the carry's gradient is cut (the
    initialisation receives the carry's gradient unchanged) and the rule state is stopped."""
    params, rule_meta = meta
    a, state = params, RULE.init(params)
    for t in range(STEPS):
        if t == STEPS - truncate:
            a = jax.tree.map(lambda x0, x: x0 + jax.lax.stop_gradient(x - x0), params, a)
            state = jax.lax.stop_gradient(state)
        loss, g = jax.value_and_grad(batch_loss)(a, EPISODE.support)
        updates, state = RULE.update(g, state, a, rule_meta, loss=loss)
        a = jax.tree.map(jnp.add, a, updates)
    return batch_loss(a, EPISODE.query)


@pytest.fixture(scope="module")
def full_grad():
    return meta_grad(META, None, False, STEPS)


def test_truncation_at_the_horizon_is_the_full_meta_gradient(full_grad):
    leaves_equal(meta_grad(META, STEPS, False, STEPS), full_grad)  # and beyond: the same path


def test_truncated_meta_gradient_is_the_explicit_computation(full_grad):
    loss, grads = meta_grad(META, 2, False, STEPS)
    want_loss, want = jax.jit(jax.value_and_grad(explicit_truncated_loss),
                              static_argnums=1)(META, 2)
    assert float(loss) == float(full_grad[0])  # values do not change
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-7)
    differs = [not np.allclose(g, f, rtol=1e-3)
               for g, f in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(full_grad[1][1]))]
    assert any(differs)  # the rule's meta-gradient is truncated
    assert all(np.any(np.asarray(g)) for g in jax.tree.leaves(grads[1]))
    assert all(np.any(np.asarray(g)) for g in jax.tree.leaves(grads[0]))  # init still learns


def test_truncation_keeps_values_with_per_step_batches():
    params, rule_meta = META
    batches = support_minibatches(jax.random.key(5), EPISODE.support, STEPS, 3)
    run = jax.jit(lambda k: inner_loop(batch_loss, RULE, params, rule_meta, batches, STEPS,
                                       per_step_batches=True, truncate=k), static_argnums=0)
    leaves_equal(run(2), run(None))


def test_remat_changes_no_value_or_gradient(full_grad):
    got = meta_grad(META, None, True, STEPS)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(full_grad), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9)


def test_remat_and_truncation_bound_the_memory_of_the_inner_loop():
    # Backprop through 16 steps stores what every step needs for its backward pass; remat
    # keeps the carries only; truncate=2 stores the last 2 steps. (The LSTM cell already
    # recomputes its gates, so remat saves less than on a rule without it.) docs/inner_rules.md
    # reports the same comparison for 60 steps.
    def temp_bytes(truncate, remat):
        analysis = meta_grad.lower(META, truncate, remat, 16).compile().memory_analysis()
        if analysis is None:
            pytest.skip("this backend reports no memory analysis of compiled programs")
        return analysis.temp_size_in_bytes

    full, remat, truncated = temp_bytes(None, False), temp_bytes(None, True), temp_bytes(2, False)
    assert remat < 0.75 * full, (remat, full)
    assert truncated < full / 2, (truncated, full)


def test_bad_truncate_is_a_clear_error():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="truncate"):
            inner_loop(batch_loss, sgd(0.1), META[0], (), EPISODE.support, 3, truncate=bad)
        with pytest.raises(ValueError, match="truncate"):
            maml(MODEL, inner_steps=3, truncate=bad)


# --- config wiring -------------------------------------------------------------------------------


LEARNERS = {
    "reptile": {"learner": {"name": "reptile"}},
    "metasgd": {"learner": {"name": "metasgd"}},
    "cavia": {"learner": {"name": "cavia", "inner_lr": 0.01, "inner_steps": 1},
              "model": {"name": "context_mlp"}},
    "imaml": {"learner": {"name": "imaml", "inner_lr": 0.01, "inner_steps": 1}},
    "mamlpp": {"learner": {"name": "mamlpp", "inner_steps": 1}},
    "protonets": {"learner": {"name": "protonets"}, "data": {"name": "omniglot"},
                  "model": {"name": "conv4"}},
}


@pytest.mark.parametrize("algorithm", ["reptile", "metasgd", "cavia", "imaml", "mamlpp",
                                       "protonets"])
@pytest.mark.parametrize("inner_rule", ["meta_lstm", "lstm_optimizer"])
def test_learned_rules_need_an_algorithm_that_trains_them(algorithm, inner_rule):
    with pytest.raises(ConfigError, match="inner rule"):
        check_config(Config(rule={"name": inner_rule}, **LEARNERS[algorithm]))


@pytest.mark.parametrize("changes,match", [
    ({"learner": {"name": "maml", "truncate": -1}}, "truncate .*must be an int >= 1"),
    ({"learner": {"name": "reptile", "inner_steps": 5, "truncate": 2}},
     "Unknown option learner.truncate"),
    ({"learner": {"name": "maml", "inner_steps": 3, "truncate": 3}}, "below inner_steps"),
    ({"rule": {"name": "lstm_optimizer", "hidden": 0}}, "lstm_optimizer: hidden"),
    ({"rule": {"name": "lstm_optimizer", "output_scale": 0.0}}, "lstm_optimizer: output_scale"),
    ({"learner": {"name": "maml", "inner_lr": 1.0}, "rule": {"name": "meta_lstm"}},
     r"must be in \(0, 1\)"),
])
def test_bad_truncation_and_lstm_settings_are_config_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        check_config(Config(**changes))


@pytest.mark.parametrize("inner_rule", ["meta_lstm", "lstm_optimizer"])
def test_configs_build_learners_with_learned_rules(inner_rule):
    cfg = Config(learner=dict(name="fomaml", inner_steps=4, truncate=2),
                 rule=dict(name=inner_rule, hidden=5), model=dict(name="mlp", hidden=(8,)),
                 train=dict(meta_batch_size=2)).replace()
    meta = build_learner(cfg, build_task(cfg)).init(jax.random.key(0))
    first_layer = meta["rule"]["lstm"] if inner_rule == "meta_lstm" else meta["rule"]["layers"][0]
    assert first_layer["kernel"].shape[1] == 4 * 5
    if inner_rule == "meta_lstm":  # the input gate (step size) starts around inner_lr
        rate = jax.nn.sigmoid(meta["rule"]["input_gate"]["bias"])
        lr = cfg.learner.inner_lr
        lo, hi = (float(jax.nn.sigmoid(math.log(lr / (1 - lr)) + d)) for d in (-0.5, 0.5))
        assert lo <= float(rate) <= hi and lo < lr < hi


# --- the documentation's example -----------------------------------------------------------------


def test_inner_rules_doc_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert blocks, "docs/inner_rules.md has no ```python example"
    code = compile("\n".join(blocks), str(DOC), "exec")
    exec(code, {"__name__": "inner_rules_doc"})  # noqa: S102
    out = capsys.readouterr().out
    first, last = map(float, re.search(r"first 5 steps ([0-9.]+), last 5 ([0-9.]+)", out).groups())
    assert last < first
