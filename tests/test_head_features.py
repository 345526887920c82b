"""ANIL on a model's features: the body runs once per set and the head adapts on its output.

The values must equal running the whole model at every inner step; the program must hold fewer
convolutions; every wrapper that changes ``apply`` must keep ``features`` consistent with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.algorithms import anil, gradient_learner
from jmeta.core import Batch, Episode
from jmeta.core._losses import cross_entropy_loss
from jmeta.inner import sgd
from jmeta.models import conv4, flatten_inputs, linear_head, mlp, resnet12, with_compute_dtype
from jmeta.train import _build

WAYS = 3


def _episode(shape):
    x = jax.random.normal(jax.random.key(1), (2 * WAYS,) + shape)
    y = jnp.arange(2 * WAYS) % WAYS
    return Episode(Batch(x, y), Batch(0.5 * x + 0.1, y))


MODELS = {
    "conv4": lambda: conv4(1, WAYS, filters=4, strided=True, conv_impl="xla"),
    "conv4_running_bn": lambda: conv4(1, WAYS, filters=4, strided=True, conv_impl="xla",
                                      bn_mode="running"),
    "resnet12": lambda: resnet12(1, WAYS, widths=(2, 2, 2, 2), image_size=16, conv_impl="xla"),
    "flattened_mlp": lambda: flatten_inputs(mlp(16 * 16, WAYS, hidden=(8,))),
}
SHAPES = {"conv4": (28, 28, 1), "conv4_running_bn": (28, 28, 1), "resnet12": (16, 16, 1),
          "flattened_mlp": (16, 16, 1)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_apply_is_the_linear_head_on_the_features(name):
    model = MODELS[name]()
    params = model.init(jax.random.key(0))
    x = _episode(SHAPES[name]).support.x
    np.testing.assert_allclose(linear_head(params, model.features(params, x)),
                               model.apply(params, x), rtol=1e-5, atol=1e-6)
    low = with_compute_dtype(model, jnp.bfloat16)
    np.testing.assert_allclose(linear_head(params, low.features(params, x)),
                               low.apply(params, x), rtol=0.05, atol=0.05)


def test_wrappers_without_matching_features_drop_them():
    running = MODELS["conv4_running_bn"]()
    assert running.features is not None and _build.test_mode(running).features is None
    assert _build.test_mode(MODELS["conv4"]()).features is not None  # transductive: apply unchanged
    assert conv4(1, None, filters=4).features is None  # embeddings: no head to adapt


def _flops(learner, meta, episode):
    """FLOPs of the (unoptimised) meta-gradient program: lowered, not compiled."""
    lowered = jax.jit(learner.task_grad).lower(meta, episode, jax.random.key(2))
    cost = lowered.cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


@pytest.mark.parametrize("name", ["conv4", "conv4_running_bn"])
def test_anil_on_features_equals_anil_on_the_whole_model(name):
    model = MODELS[name]()
    episode = _episode(SHAPES[name])
    on = anil(model, 0.4, 3, loss_fn=cross_entropy_loss)
    off = anil(model, 0.4, 3, loss_fn=cross_entropy_loss, head_features=False)
    meta = on.init(jax.random.key(0))
    g_on, m_on = jax.jit(on.task_grad)(meta, episode, jax.random.key(2))
    g_off, m_off = jax.jit(off.task_grad)(meta, episode, jax.random.key(2))
    for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_off)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(m_on["loss"], m_off["loss"], rtol=1e-5)
    # The body runs once per set: fewer FLOPs than once per inner step (counted with the inner
    # loop unrolled, so that every step appears in the program).
    on_unrolled = anil(model, 0.4, 3, loss_fn=cross_entropy_loss, unroll=True)
    off_unrolled = anil(model, 0.4, 3, loss_fn=cross_entropy_loss, unroll=True, head_features=False)
    assert _flops(on_unrolled, meta, episode) < _flops(off_unrolled, meta, episode)
    # Adaptation through the learner (as at test time) gives the same head as well.
    a_on, _ = jax.jit(on.adapt)(meta, episode.support)
    a_off, _ = jax.jit(off.adapt)(meta, episode.support)
    np.testing.assert_allclose(a_on["head"]["kernel"], a_off["head"]["kernel"], rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("case", ["maml", "boil", "anil_truncated", "anil_bias_only"])
def test_learners_that_adapt_more_or_less_than_the_head_run_the_whole_model(case):
    model = MODELS["conv4"]()
    episode = _episode(SHAPES["conv4"])
    adapt_filter = {"maml": None, "boil": lambda p: not p.startswith("head"),
                    "anil_truncated": lambda p: p.startswith("head"),
                    "anil_bias_only": lambda p: p == "head/bias"}[case]
    truncate = 1 if case == "anil_truncated" else None

    def learner(head_features):
        return gradient_learner(model, sgd(0.4), 2, loss_fn=cross_entropy_loss,
                                adapt_filter=adapt_filter, truncate=truncate, unroll=True,
                                head_features=head_features)

    meta = learner(True).init(jax.random.key(0))
    assert _flops(learner(True), meta, episode) == _flops(learner(False), meta,
                                                                        episode)
