"""Evaluation on embeddings computed once per distinct input (``jmeta.train.EmbeddingCache``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.algorithms import protonets
from jmeta.core import Batch, Episode
from jmeta.models import Model, conv4
from jmeta.train import EmbeddingCache
from jmeta.train._eval import adaptation_at

VOCAB, LENGTH, DIM = 12, 20, 6


def _bag_init(key):
    k1, k2 = jax.random.split(key)
    return {"e": jax.random.normal(k1, (VOCAB, DIM)), "w": jax.random.normal(k2, (DIM, DIM))}


def _bag_apply(params, ids):
    """A per-example token model that masks padding (id 0), as the BERT encoder does: a
    position-weighted bag of embeddings through a nonlinearity."""
    pos = 1.0 + 0.1 * jnp.arange(ids.shape[-1])
    h = jnp.sum(params["e"][ids] * ((ids != 0) * pos)[..., None], axis=-2)
    return jnp.tanh(h @ params["w"])


BAG = Model(_bag_init, _bag_apply, "dense", per_example=True, pad_id=0)


def _texts(rng, n):
    """``n`` token rows of assorted lengths (1 to LENGTH), padded with 0 at the end."""
    rows = np.zeros((n, LENGTH), np.int32)
    for i, k in enumerate(rng.integers(1, LENGTH + 1, n)):
        rows[i, :k] = rng.integers(1, VOCAB, k)
    return rows


def _tasks(rng, pool, n_tasks, ways=3, shots=1, queries=2):
    """Episodes drawn from a small pool, so that the same rows recur across tasks."""
    per = shots + queries
    pick = rng.integers(0, len(pool), (n_tasks, ways * per))
    x = pool[pick].reshape(n_tasks, ways, per, LENGTH)
    y = np.broadcast_to(np.arange(ways)[None, :, None], (n_tasks, ways, per))
    sx, qx = x[:, :, :shots].reshape(n_tasks, -1, LENGTH), x[:, :, shots:].reshape(n_tasks, -1, LENGTH)
    sy, qy = y[:, :, :shots].reshape(n_tasks, -1), y[:, :, shots:].reshape(n_tasks, -1)
    return Episode(Batch(jnp.asarray(sx), jnp.asarray(sy)), Batch(jnp.asarray(qx), jnp.asarray(qy)))


def _metric(logits, y):
    return jnp.mean(jnp.argmax(logits, -1) == y)


@pytest.mark.parametrize("distance", ["sqeuclidean", "cosine"])
def test_scores_on_cached_embeddings_equal_the_per_episode_path(distance):
    """ProtoNets tested on embeddings computed once per distinct row (length-sorted batches cut
    to their longest row, the last batch filled) equals ProtoNets run on the raw episodes, task
    by task; the cache embeds each distinct row exactly once across calls."""
    rng = np.random.default_rng(0)
    pool = _texts(rng, 9)
    learner = protonets(BAG, ways=3, distance=distance)
    meta = learner.init(jax.random.key(1))
    cache = EmbeddingCache(learner, meta, batch_size=4)  # 9 rows: batches of 4, 4, 1 (filled)
    params = cache.learner.init(jax.random.key(0))
    for seed in (1, 2):  # two gathers of tasks share the cache
        tasks = _tasks(np.random.default_rng(seed), pool, 7)
        want = adaptation_at(learner, meta, tasks, (1,), loss_fn=_metric)
        got = adaptation_at(cache.learner, params, cache.tasks(tasks), (1,), loss_fn=_metric)
        np.testing.assert_allclose(got[:, 1], want[:, 1], atol=1e-6)
    used = np.unique(pool, axis=0)
    assert cache.size <= len(used)
    # The cached embeddings are the model's on the full padded rows.
    e = cache.embed(pool[None])
    np.testing.assert_allclose(e[0], np.asarray(BAG.apply(meta["model"], pool)), atol=1e-5)
    assert cache.size == len(used)


def test_learners_declare_when_they_can_run_on_embeddings():
    assert protonets(BAG, ways=2).embedded is not None
    assert protonets(BAG, ways=2).embedded.pad_id == 0
    # BatchNorm of each set: an image's embedding depends on its set, so no cache.
    assert protonets(conv4(filters=4), ways=2).embedded is None
    # The learner over embeddings does not nest another.
    assert protonets(BAG, ways=2).embedded.learner.embedded is None


def test_cache_errors_name_the_problem():
    meta = protonets(BAG, ways=2).init(jax.random.key(0))
    with pytest.raises(ValueError, match="learner with `embedded`"):
        EmbeddingCache(protonets(conv4(filters=4), ways=2), meta)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        EmbeddingCache(protonets(BAG, ways=2), meta, batch_size=0)
    with pytest.raises(ValueError, match=r"\[tasks, examples, \*input_shape\]"):
        EmbeddingCache(protonets(BAG, ways=2), meta).embed(np.zeros((4, LENGTH), np.int32))
