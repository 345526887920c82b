"""Helpers shared by the tests: episodes, NumPy references and tree comparisons.

Small shapes throughout, so that every compile is quick.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.core import Batch, Episode
from jmeta.data import sinusoid_tasks


def to64(tree):
    """Every leaf as a float64 array (call under ``jax.enable_x64``)."""
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def sinusoid_episode64(seed: int = 3, k_shot: int = 6) -> Episode:
    """One sinusoid episode of ``k_shot`` support and query points, in float64."""
    ep = jax.tree.map(lambda x: x[0], sinusoid_tasks(jax.random.key(seed), 1, k_shot))
    return to64(ep)


def class_episode(key, ways: int, shots: int, queries: int, shape=(4,)) -> Episode:
    """A random classification episode: Gaussian inputs of ``shape``, labels ``0..ways-1``."""
    ks, kq = jax.random.split(key)
    ys, yq = jnp.repeat(jnp.arange(ways), shots), jnp.repeat(jnp.arange(ways), queries)
    return Episode(Batch(jax.random.normal(ks, (ways * shots, *shape)), ys),
                   Batch(jax.random.normal(kq, (ways * queries, *shape)), yq))


def blob_batch(key, num_tasks: int, ways: int = 3, shots: int = 5, queries: int = 5, dim: int = 8,
               signal: int = 2, noise: float = 3.0) -> Episode:
    """``num_tasks`` episodes whose classes are Gaussian blobs. The centres (random per episode)
    differ only in the first ``signal`` coordinates; the others are noise of scale ``noise`` that
    a random embedding mixes in, so the embedding must be learnt to separate the classes."""
    scale = jnp.concatenate([jnp.full((signal,), 0.5), jnp.full((dim - signal,), noise)])
    ys, yq = jnp.repeat(jnp.arange(ways), shots), jnp.repeat(jnp.arange(ways), queries)

    def one(k):
        kc, ks, kq = jax.random.split(k, 3)
        centres = jnp.pad(2.0 * jax.random.normal(kc, (ways, signal)), ((0, 0), (0, dim - signal)))
        xs = centres[ys] + scale * jax.random.normal(ks, (ways * shots, dim))
        xq = centres[yq] + scale * jax.random.normal(kq, (ways * queries, dim))
        return Episode(Batch(xs, ys), Batch(xq, yq))

    return jax.vmap(one)(jax.random.split(key, num_tasks))


def blob_sampler(num_tasks: int, **kwargs):
    """``key -> blob_batch(key, num_tasks, **kwargs)``: a sampler for ``make_meta_step``."""
    return lambda key: blob_batch(key, num_tasks, **kwargs)


def np_cross_entropy(logits, labels, weights=None) -> float:
    """Softmax cross-entropy in NumPy: the mean over examples, or the ``weights``-weighted sum."""
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(labels)), np.asarray(labels)]
    return nll.mean() if weights is None else np.sum(weights * nll)


def np_softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def trees_close(actual, expected, rtol: float = 1e-6, atol: float = 0.0) -> None:
    """Same tree structure and every leaf close (NumPy's ``assert_allclose``)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def trees_equal(actual, expected) -> None:
    """Same tree structure and every leaf bit-identical."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def directional_fd(fn, params, direction, eps: float = 1e-6) -> float:
    """Central finite difference of the scalar ``fn`` at ``params`` along ``direction``."""
    plus = jax.tree.map(lambda m, d: m + eps * d, params, direction)
    minus = jax.tree.map(lambda m, d: m - eps * d, params, direction)
    return float((fn(plus) - fn(minus)) / (2 * eps))


def random_direction(tree, seed: int = 0):
    """A standard-normal tree shaped like ``tree`` (float64 under x64)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), tree)
