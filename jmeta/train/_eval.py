"""The meta-test protocol: adapt on many new tasks, report the mean and 95% CI of the query loss."""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmeta.algorithms._gradient import maml
from jmeta.core._inner import mse_loss
from jmeta.core._meta import MetaLearner, map_tasks
from jmeta.core._types import Params, PRNGKey, TaskBatch, num_tasks
from jmeta.models._functional import Model

Z95 = 1.959963984540054


def mean_ci95(values: Sequence[float]) -> dict:
    """Mean and half-width of the normal 95% confidence interval of the mean.

    Non-finite values (an inner loop that diverged on some tasks) are counted in ``nonfinite``
    and make the mean and interval ``nan``: a divergence is reported, never averaged away.

    Example:
      >>> r = mean_ci95([1.0, 2.0, 3.0, 4.0])
      >>> round(r["mean"], 3), round(r["ci95"], 3), r["n"], r["nonfinite"]
      (2.5, 1.265, 4, 0)
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"mean_ci95 needs at least 2 values in a 1-D array; got shape {v.shape}.")
    nonfinite = int(np.sum(~np.isfinite(v)))
    if nonfinite:
        return {"mean": float("nan"), "ci95": float("nan"), "std": float("nan"), "n": int(v.size),
                "nonfinite": nonfinite}
    std = float(v.std(ddof=1))
    return {"mean": float(v.mean()), "ci95": Z95 * std / math.sqrt(v.size), "std": std,
            "n": int(v.size), "nonfinite": 0}


def adaptation_curves(
    learner: MetaLearner,
    meta_params: Params,
    tasks: TaskBatch,
    max_steps: int,
    *,
    loss_fn: Callable = mse_loss,
    task_map: str = "vmap",
    chunk_size: int | None = None,
    key: PRNGKey | None = None,
) -> np.ndarray:
    """Query loss of every task after 0, 1, ..., ``max_steps`` inner steps: ``[T, max_steps+1]``.

    One scan of ``max_steps`` steps per task; the query loss is evaluated after each step.

    Example:
      >>> import jax
      >>> from jmeta.algorithms import maml
      >>> from jmeta.data import sinusoid_tasks
      >>> from jmeta.models import mlp
      >>> learner = maml(mlp(hidden=(8,)), 0.01, 1)
      >>> tasks = sinusoid_tasks(jax.random.key(0), 6, 5)
      >>> adaptation_curves(learner, learner.init(jax.random.key(1)), tasks, 3).shape
      (6, 4)
    """
    n = num_tasks(tasks)
    keys = jax.random.split(key if key is not None else jax.random.key(0), n)
    run = _curves_fn(learner, max_steps, loss_fn, task_map, chunk_size)
    return np.asarray(jax.device_get(run(meta_params, tasks, keys)))


@functools.lru_cache(maxsize=64)
def _curves_fn(learner: MetaLearner, max_steps: int, loss_fn: Callable, task_map: str, chunk_size):
    """One compiled curve function per (learner, steps, metric, mapping): reused across calls."""

    def per_task(meta, episode, k):
        def query_loss(p):
            return loss_fn(learner.predict(p, episode.query.x), episode.query.y)

        _, trace = learner.adapt(meta, episode.support, inner_steps=max_steps, key=k,
                                 eval_fn=query_loss)
        return jnp.concatenate([query_loss(meta["model"])[None], trace["eval"]])

    return jax.jit(
        lambda m, t, k: map_tasks(per_task, m, t, k, strategy=task_map, chunk_size=chunk_size, reduce=None)
    )


def adaptation_at(
    learner: MetaLearner,
    meta_params: Params,
    tasks: TaskBatch,
    steps: Sequence[int],
    *,
    loss_fn: Callable = mse_loss,
    task_map: str = "vmap",
    chunk_size: int | None = None,
    key: PRNGKey | None = None,
) -> np.ndarray:
    """Query loss of every task after each inner-step count in ``steps`` only: ``[T, max+1]``,
    NaN in the columns not asked for; the asked ones equal :func:`adaptation_curves`'.

    Each count is one adaptation from the meta-parameters followed by one query evaluation, so
    the query set is evaluated ``len(steps)`` times instead of after every step. That is the
    cheaper order when the query set costs far more than an inner step, as for text episodes
    through a transformer (75 queries against 5 support texts in 5-way 1-shot).

    Example:
      >>> import jax
      >>> from jmeta.algorithms import maml
      >>> from jmeta.data import sinusoid_tasks
      >>> from jmeta.models import mlp
      >>> learner = maml(mlp(hidden=(8,)), 0.01, 1)
      >>> meta, tasks = learner.init(jax.random.key(1)), sinusoid_tasks(jax.random.key(0), 6, 5)
      >>> sparse = adaptation_at(learner, meta, tasks, (0, 3))
      >>> bool(np.isnan(sparse[:, 1]).all()), bool(np.allclose(sparse[:, 3],
      ...     adaptation_curves(learner, meta, tasks, 3)[:, 3], rtol=1e-5))
      (True, True)
    """
    steps = tuple(sorted(set(int(s) for s in steps)))
    if not steps or steps[0] < 0:
        raise ValueError(f"adaptation_at needs step counts >= 0; got {steps}.")
    n = num_tasks(tasks)
    keys = jax.random.split(key if key is not None else jax.random.key(0), n)
    run = _sparse_fn(learner, steps, loss_fn, task_map, chunk_size)
    values = np.asarray(jax.device_get(run(meta_params, tasks, keys)))  # [T, len(steps)]
    out = np.full((n, steps[-1] + 1), np.nan, values.dtype)
    out[:, list(steps)] = values
    return out


@functools.lru_cache(maxsize=64)
def _sparse_fn(learner: MetaLearner, steps: tuple, loss_fn: Callable, task_map: str, chunk_size):
    def per_task(meta, episode, k):
        def query_loss(p):
            return loss_fn(learner.predict(p, episode.query.x), episode.query.y)

        values = []
        for s in steps:
            if s == 0:
                values.append(query_loss(meta["model"]))
            else:
                params, _ = learner.adapt(meta, episode.support, inner_steps=s, key=k)
                values.append(query_loss(params))
        return jnp.stack(values)

    return jax.jit(
        lambda m, t, k: map_tasks(per_task, m, t, k, strategy=task_map, chunk_size=chunk_size, reduce=None)
    )


def train_pretrained(
    model: Model,
    optimizer: optax.GradientTransformation,
    sampler: Callable[[PRNGKey], TaskBatch],
    meta_steps: int,
    key: PRNGKey,
    *,
    loss_fn: Callable = mse_loss,
    steps_per_call: int = 500,
) -> Params:
    """The "pretrained" baseline of the MAML paper: one network fit to all tasks jointly.

    Every step draws a task batch from ``sampler`` and minimises the loss of a single network on
    all of its support and query points (no adaptation).
    """
    init_key, data_key = jax.random.split(key)
    params = model.init(init_key)
    opt_state = optimizer.init(params)

    def loss(p, batch):
        x = jnp.concatenate([batch.support.x, batch.query.x], axis=1)
        y = jnp.concatenate([batch.support.y, batch.query.y], axis=1)
        return loss_fn(jax.vmap(lambda xi: model.apply(p, xi))(x), y)

    def one(carry, step):
        p, s = carry
        g = jax.grad(loss)(p, sampler(jax.random.fold_in(data_key, step)))
        updates, s = optimizer.update(g, s, p)
        return (optax.apply_updates(p, updates), s), None

    @functools.partial(jax.jit, static_argnums=3)
    def run(p, s, start, length):
        (p, s), _ = jax.lax.scan(one, (p, s), start + jnp.arange(length))
        return p, s

    done = 0
    while done < meta_steps:
        length = min(steps_per_call, meta_steps - done)
        params, opt_state = run(params, opt_state, done, length)
        done += length
    return params


def finetune_curves(
    model: Model,
    params: Params,
    tasks: TaskBatch,
    max_steps: int,
    lr: float,
    *,
    loss_fn: Callable = mse_loss,
    task_map: str = "vmap",
    chunk_size: int | None = None,
) -> np.ndarray:
    """Query-loss curves of plain SGD fine-tuning from ``params`` at step size ``lr``."""
    learner = _sgd_learner(model, lr, max(max_steps, 1), loss_fn)
    return adaptation_curves(
        learner, {"model": params, "rule": ()}, tasks, max_steps, loss_fn=loss_fn,
        task_map=task_map, chunk_size=chunk_size,
    )


@functools.lru_cache(maxsize=64)
def _sgd_learner(model: Model, lr: float, steps: int, loss_fn: Callable) -> MetaLearner:
    return maml(model, lr, steps, loss_fn=loss_fn)


def tune_finetune_lr(
    model: Model,
    params: Params,
    val_tasks: TaskBatch,
    max_steps: int,
    lrs: Sequence[float],
    steps: Sequence[int],
    **kwargs,
) -> dict[int, float]:
    """For each step count in ``steps``, the step size in ``lrs`` with the lowest validation loss."""
    means = np.stack(
        [finetune_curves(model, params, val_tasks, max_steps, lr, **kwargs).mean(0) for lr in lrs]
    )
    means = np.where(np.isfinite(means), means, np.inf)
    return {int(s): float(lrs[int(np.argmin(means[:, s]))]) for s in steps}


EMBED_BATCH = 256
"""Inputs embedded together by :class:`EmbeddingCache` (a fixed size: one compile per length)."""

EMBED_LENGTH_STEP = 8
"""Token inputs are cut to their batch's longest, rounded up to a multiple of this many tokens:
at most ``max_length / 8`` shapes to compile."""


@functools.lru_cache(maxsize=16)
def _jitted_embed(embed: Callable) -> Callable:
    return jax.jit(embed)


class EmbeddingCache:
    """Test episodes on embeddings, each distinct input embedded once, for a learner with
    ``embedded`` (:class:`jmeta.core.Embedded`; ProtoNets on the BERT encoder).

    A meta-test draws its episodes from a few thousand inputs, so the same text appears in many
    episodes (600 BANKING77 5-way 1-shot episodes hold 48,000 texts, about 2,900 distinct):
    :meth:`tasks` embeds the inputs it has not seen, ``batch_size`` at a time, and returns the
    episodes with every input replaced by its embedding, for ``learner.embedded.learner``. Token
    inputs of a model with ``pad_id`` are embedded in order of length, each batch cut to its
    longest input rounded up to :data:`EMBED_LENGTH_STEP` tokens, which the model's masking makes
    exact. One cache holds one set of parameters.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.algorithms import protonets
      >>> from jmeta.core import Batch, Episode
      >>> from jmeta.models import Model
      >>> bag = Model(lambda key: {"e": jax.random.normal(key, (10, 4))},
      ...             lambda p, x: jnp.sum(p["e"][x] * (x != 0)[..., None], axis=1), "dense",
      ...             per_example=True, pad_id=0)
      >>> learner = protonets(bag, ways=2)
      >>> meta = learner.init(jax.random.key(0))
      >>> ids = jnp.array([[[1, 2, 0], [3, 0, 0]]] * 3)  # 3 tasks, the same 2 texts
      >>> tasks = Episode(Batch(ids, jnp.array([[0, 1]] * 3)), Batch(ids, jnp.array([[0, 1]] * 3)))
      >>> cache = EmbeddingCache(learner, meta)
      >>> cache.tasks(tasks).support.x.shape, cache.size
      ((3, 2, 4), 2)
    """

    def __init__(self, learner: MetaLearner, meta_params: Params, *,
                 batch_size: int = EMBED_BATCH):
        if learner.embedded is None:
            raise ValueError("EmbeddingCache needs a learner with `embedded` (one that uses its "
                             "inputs only through a per-example embedding, such as ProtoNets on "
                             "a model with per_example=True).")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"EmbeddingCache: batch_size must be a positive int; "
                             f"got {batch_size!r}.")
        self.embedded = learner.embedded
        self.meta_params = meta_params
        self.batch_size = int(batch_size)
        self._embed = _jitted_embed(self.embedded.embed)
        self._index: dict[bytes, int] = {}
        self._table: np.ndarray | None = None  # [size, D], rows in the order of _index

    @property
    def size(self) -> int:
        """How many distinct inputs are embedded."""
        return len(self._index)

    @property
    def learner(self) -> MetaLearner:
        """The learner to run on :meth:`tasks`' episodes (with ``learner.init``'s parameters)."""
        return self.embedded.learner

    def _embed_rows(self, rows: np.ndarray) -> np.ndarray:
        pad, b = self.embedded.pad_id, self.batch_size
        if pad is not None and rows.ndim == 2 and np.issubdtype(rows.dtype, np.integer):
            real = rows != pad
            lengths = np.where(real.any(1), rows.shape[1] - np.argmax(real[:, ::-1], axis=1), 0)
        else:
            pad, lengths = None, np.zeros(len(rows), int)
        order = np.argsort(lengths, kind="stable")
        out = None
        for i in range(0, len(rows), b):
            sel = order[i:i + b]
            x = rows[sel]
            if pad is not None:
                step = EMBED_LENGTH_STEP
                cut = min(rows.shape[1], max(step, -(-int(lengths[sel].max()) // step) * step))
                x = x[:, :cut]
            if len(x) < b:  # one shape per length: fill the last batch with its first row
                x = np.concatenate([x, np.repeat(x[:1], b - len(x), axis=0)])
            e = np.asarray(jax.device_get(self._embed(self.meta_params, jnp.asarray(x))))
            if out is None:
                out = np.empty((len(rows),) + e.shape[1:], e.dtype)
            out[sel] = e[:len(sel)]
        return out

    def embed(self, x) -> np.ndarray:
        """Embeddings ``[T, N, D]`` of the inputs ``x`` ``[T, N, *input_shape]`` of one set of
        a task batch, computing only the inputs not seen before."""
        x = np.asarray(jax.device_get(x))
        if x.ndim < 3:
            raise ValueError(f"EmbeddingCache.embed: x must be one set of a task batch, "
                             f"[tasks, examples, *input_shape]; got shape {x.shape}.")
        lead = x.shape[:2]
        rows = np.ascontiguousarray(x.reshape((-1,) + x.shape[2:]))
        keys = [r.tobytes() for r in rows]
        new = {}  # first row of each input not embedded yet, in order
        for i, k in enumerate(keys):
            if k not in self._index:
                new.setdefault(k, i)
        if new:
            emb = self._embed_rows(rows[list(new.values())])
            base = self.size
            self._index.update((k, base + j) for j, k in enumerate(new))
            self._table = emb if self._table is None else np.concatenate([self._table, emb])
        index = np.fromiter((self._index[k] for k in keys), np.int64, len(keys))
        return self._table[index].reshape(lead + self._table.shape[1:])

    def tasks(self, tasks: TaskBatch) -> TaskBatch:
        """``tasks`` (a task batch) with each set's inputs replaced by their embeddings."""
        return tasks._replace(support=tasks.support._replace(x=self.embed(tasks.support.x)),
                              query=tasks.query._replace(x=self.embed(tasks.query.x)))
