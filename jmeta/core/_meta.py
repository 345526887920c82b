"""The meta-step: map one task's meta-gradient over the task axis, average, apply optax."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmeta.core._types import (  # noqa: F401  (Batch is used in doctests)
    Batch,
    Episode,
    MetaState,
    Params,
    PRNGKey,
    PyTree,
    TaskBatch,
    num_tasks,
)

TASK_MAPS = ("vmap", "map", "unroll")

# Measured defaults (docs/performance.md, benchmarks/task_map.py):
#  * dense models (MLP) on CPU: vmap, or a chunked map within 25% (sinusoid MAML);
#  * convolutional models on CPU (Conv-4 MAML, Omniglot 5-way 1-shot, 2 cores): a lax.map over
#    tasks, one task at a time, with the models' default im2col convolutions
#    (jmeta.models.default_conv_impl). vmap turns per-task convolutions into grouped ones, slow
#    on XLA:CPU; native convolutions inside a loop have a slow weight gradient; an unrolled loop
#    is fast per step but compiles for minutes;
#  * GPU/TPU: vmap is the fast path for every family (grouped convolutions are fast there).
_DEFAULT_TASK_MAP = {
    ("cpu", "dense"): "vmap",
    ("cpu", "conv"): "map",
}


def default_task_map(family: str = "dense", backend: str | None = None) -> str:
    """The task-mapping strategy to use for a model family on a backend.

    Args:
      family: ``"dense"`` (MLPs, transformers) or ``"conv"`` (convolutional backbones).
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``; defaults to ``jax.default_backend()``.

    Example:
      >>> default_task_map("dense", "gpu")
      'vmap'
      >>> default_task_map("conv", "cpu")
      'map'
    """
    backend = backend or jax.default_backend()
    return _DEFAULT_TASK_MAP.get((backend, family), "vmap")


def _check_task_map(strategy: str, chunk_size: int | None) -> None:
    if strategy not in TASK_MAPS:
        raise ValueError(
            f"Unknown task_map {strategy!r}; choose one of {TASK_MAPS} (or 'auto' where accepted)."
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}.")


def map_tasks(
    fn: Callable[[Params, Episode, PRNGKey], PyTree],
    params: Params,
    batch: TaskBatch,
    keys: PRNGKey,
    *,
    strategy: str = "vmap",
    chunk_size: int | None = None,
    reduce: str | None = "mean",
) -> PyTree:
    """THE place where a single-task function meets the task axis.

    Computes ``fn(params, task_i, keys[i])`` for every task of ``batch`` and either averages the
    results over tasks (``reduce="mean"``) or stacks them (``reduce=None``).

    Strategies (same values, different speed and memory):
      * ``"vmap"``: one vectorised program over all tasks;
      * ``"map"``: a ``lax.scan`` over chunks of ``chunk_size`` tasks (default 1: one task per
        iteration, not vmapped), each chunk vmapped; with ``reduce="mean"`` it accumulates a
        running sum, so memory does not grow with the number of tasks;
      * ``"unroll"``: a Python loop, one copy of the program per task (fast for convolutions on
        CPU, but compile time grows with the number of tasks).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> b = Batch(jnp.arange(4.0)[:, None], jnp.zeros((4, 1)))
      >>> f = lambda p, ep, k: p * jnp.sum(ep.support.x)
      >>> keys = jax.random.split(jax.random.key(0), 4)
      >>> float(map_tasks(f, 2.0, Episode(b, b), keys, strategy="map", chunk_size=2))
      3.0
    """
    _check_task_map(strategy, chunk_size)
    if reduce not in ("mean", None):
        raise ValueError(f"reduce must be 'mean' or None; got {reduce!r}.")
    n = num_tasks(batch)
    if keys.shape[0] != n:
        raise ValueError(f"Got {keys.shape[0]} keys for {n} tasks; pass one key per task.")
    per_task = jax.vmap(fn, in_axes=(None, 0, 0))

    if n == 1:
        # One task: no loop and no vmap, whatever the strategy (a one-iteration loop would keep
        # its body's convolutions in a loop, where XLA:CPU's convolution gradients are slow).
        out = fn(params, jax.tree.map(lambda x: x[0], batch), keys[0])
        return out if reduce else jax.tree.map(lambda x: x[None], out)

    if strategy == "vmap":
        out = per_task(params, batch, keys)
        return jax.tree.map(lambda x: jnp.mean(x, axis=0), out) if reduce else out

    if strategy == "unroll":
        outs = [
            fn(params, jax.tree.map(lambda x: x[i], batch), keys[i]) for i in range(n)
        ]
        if reduce:
            return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]) / n, *outs)
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    chunk = chunk_size or 1
    if n % chunk:
        raise ValueError(
            f"task_map='map' needs the number of tasks ({n}) to be a multiple of chunk_size "
            f"({chunk}); change meta_batch_size or chunk_size."
        )
    if chunk == 1:
        # One task per iteration: call fn itself, so the loop body holds the single-task program
        # (a vmap of size 1 would still turn per-task convolutions into grouped ones).
        def per_task(p, b, k):
            out = fn(p, jax.tree.map(lambda x: x[0], b), k[0])
            return jax.tree.map(lambda x: x[None], out)
    chunked = jax.tree.map(lambda x: x.reshape((n // chunk, chunk) + x.shape[1:]), (batch, keys))
    # Jitted, so that the shape evaluation below and the loop body share one trace of the task
    # function (jit caches it by argument shapes): tracing a second-order meta-gradient is most
    # of a step's trace time, and it was paid twice.
    per_task = jax.jit(per_task)
    if reduce is None:
        out = jax.lax.map(lambda xs: per_task(params, *xs), chunked)
        return jax.tree.map(lambda x: x.reshape((n,) + x.shape[2:]), out)

    out_shape = jax.eval_shape(per_task, params, *jax.tree.map(lambda x: x[0], chunked))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), out_shape)

    def body(acc, xs):
        out = per_task(params, *xs)
        return jax.tree.map(lambda a, o: a + jnp.sum(o, axis=0), acc, out), None

    total, _ = jax.lax.scan(body, zeros, chunked)
    return jax.tree.map(lambda x: x / n, total)


class Embedded(NamedTuple):
    """How a learner that sees its inputs only through a per-example embedding runs on
    embeddings computed beforehand (:attr:`MetaLearner.embedded`).

    Evaluation (:class:`jmeta.train.EmbeddingCache`) then embeds each distinct input of the test
    episodes once, instead of once per episode it appears in, and runs ``learner`` on the
    embeddings.

    Attributes:
      embed: ``(meta_params, x) -> [B, D]``, the embedding of a batch of inputs; each row
        depends on its own input only (no batch statistics).
      learner: the same algorithm on embeddings: its ``x`` is ``[..., D]``, its meta-parameters
        ``learner.init(key)`` (nothing is learned on top of the embedding).
      pad_id: ``None``, or the id that pads token-id inputs at their end for an embedding that
        does not change when trailing padding is cut off (attention masks it); evaluation then
        embeds inputs of similar length together, cut to their longest.
    """

    embed: Callable[[Params, jax.Array], jax.Array]
    learner: "MetaLearner"
    pad_id: int | None = None


class MetaLearner(NamedTuple):
    """A meta-learning algorithm as pure functions (see ``jmeta.algorithms`` for factories).

    Attributes:
      init: ``key -> meta_params``.
      adapt: ``(meta_params, support, *, inner_steps=None, key=None, eval_fn=None) ->
        (task_params, trace)``: the inner loop for one task (``inner_steps`` defaults to the
        training value).
      predict: ``(task_params, x) -> outputs``.
      task_grad: ``(meta_params, episode, key) -> (meta_grad, metrics)`` for one task; the
        meta-step averages it over tasks. For MAML it is the gradient of the query loss after
        adaptation; for Reptile it is ``meta_params - adapted_params``.
      family: model family (``"dense"`` or ``"conv"``), used to choose the task-mapping default.
      inner_steps: the number of inner steps used in training (0 for a closed-form learner).
      uses_step: when ``True``, ``task_grad`` also receives the meta-step counter as
        ``task_grad(meta_params, episode, key, step)`` (a traced int32 scalar, the same for all
        tasks): for schedules inside the meta-gradient, such as MAML++'s loss weights and
        derivative-order annealing.
      any_ways: its classifier is built from the support set (ProtoNets, Matching Networks,
        R2-D2, the transfer baselines), so it can be tested on episodes of any number of classes;
        ``False`` for a learner with a ``ways``-sized head.
      class_batches: ``None`` for a learner meta-trained on episodes; an int ``b`` for one
        pre-trained as a classifier over all base classes on batches of ``b`` examples with
        their global labels in ``episode.query`` (the transfer baselines,
        :func:`jmeta.data.class_batch_sampler`).
      embedded: ``None``, or an :class:`Embedded` for a learner whose adaptation and
        predictions use the inputs only through a per-example embedding of fixed parameters
        (ProtoNets on a model with ``per_example=True``): evaluation embeds each distinct test
        input once.
    """

    init: Callable[[PRNGKey], Params]
    adapt: Callable[..., tuple[Params, dict]]
    predict: Callable[[Params, jax.Array], jax.Array]
    task_grad: Callable[[Params, Episode, PRNGKey], tuple[Params, dict]]
    family: str
    inner_steps: int
    uses_step: bool = False
    any_ways: bool = False
    class_batches: int | None = None
    embedded: Embedded | None = None


def init_state(learner: MetaLearner, optimizer: optax.GradientTransformation, key: PRNGKey) -> MetaState:
    """Initial :class:`MetaState`: meta-parameters from ``learner.init`` and fresh optax state.

    Example:
      >>> import jax, optax
      >>> from jmeta.algorithms import maml
      >>> from jmeta.models import mlp
      >>> learner = maml(mlp(1, 1, hidden=(8,)), inner_lr=0.01, inner_steps=1)
      >>> state = init_state(learner, optax.adam(1e-3), jax.random.key(0))
      >>> int(state.step)
      0
    """
    init_key, run_key = jax.random.split(key)
    params = learner.init(init_key)
    return MetaState(jnp.zeros((), jnp.int32), params, optimizer.init(params), run_key)


def meta_step_fn(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    *,
    task_map: str = "auto",
    chunk_size: int | None = None,
) -> Callable[[MetaState, TaskBatch], tuple[MetaState, dict]]:
    """The pure (un-jitted) meta-step ``(state, batch) -> (state, metrics)``.

    Use :func:`make_meta_step` for the jitted, state-donating version.
    """
    strategy = default_task_map(learner.family) if task_map == "auto" else task_map
    _check_task_map(strategy, chunk_size)

    def step(state: MetaState, batch: TaskBatch) -> tuple[MetaState, dict]:
        rng, task_key = jax.random.split(state.rng)
        keys = jax.random.split(task_key, num_tasks(batch))
        task_grad = learner.task_grad
        if learner.uses_step:
            task_grad = functools.partial(learner.task_grad, step=state.step)
        grads, metrics = map_tasks(
            task_grad, state.params, batch, keys, strategy=strategy, chunk_size=chunk_size
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return MetaState(state.step + 1, params, opt_state, rng), metrics

    return step


def make_meta_step(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    *,
    task_map: str = "auto",
    chunk_size: int | None = None,
    sampler: Callable[[PRNGKey], TaskBatch] | None = None,
    donate: bool = True,
    batch_sharding: jax.sharding.Sharding | None = None,
    state_sharding: MetaState | None = None,
) -> Callable[..., tuple[MetaState, dict]]:
    """One jitted meta-step that donates its input state.

    Without ``sampler`` it is ``meta_step(state, batch) -> (state, metrics)``. With a pure
    ``sampler(key) -> task batch`` (such as a sinusoid generator) the batch is drawn inside the
    compiled step from a key derived from ``state.rng``, and the step is ``meta_step(state)``:
    the host does no work per step.

    Args:
      learner: a :class:`MetaLearner` from ``jmeta.algorithms``.
      optimizer: the outer optax optimizer.
      task_map: ``"vmap"``, ``"map"``, ``"unroll"`` or ``"auto"`` (:func:`default_task_map`).
      chunk_size: tasks per chunk for ``"map"``.
      sampler: optional in-graph task sampler.
      donate: donate the input state's buffers (do not reuse a state after passing it).
      batch_sharding: optional sharding of the task batch (e.g. ``NamedSharding(mesh,
        P("data"))``), imposed inside the step with ``with_sharding_constraint`` so that
        in-graph samplers produce a task axis split over the devices; XLA then computes the
        per-task work where the tasks live and the mean of the meta-gradient across devices.
      state_sharding: optional pytree of shardings like the state (e.g. from
        ``jax.tree.map(lambda x: x.sharding, jmeta.distributed.shard_state(state, mesh))``); the
        new state is constrained to it, so the step's output can be fed back without resharding.

    Example:
      >>> import jax, optax
      >>> from jmeta.algorithms import maml
      >>> from jmeta.data import sinusoid_sampler
      >>> from jmeta.models import mlp
      >>> learner = maml(mlp(1, 1, hidden=(8,)), inner_lr=0.01, inner_steps=1)
      >>> tx = optax.adam(1e-3)
      >>> step = make_meta_step(learner, tx, sampler=sinusoid_sampler(num_tasks=4, k_shot=5))
      >>> state, metrics = step(init_state(learner, tx, jax.random.key(0)))
      >>> int(state.step)
      1
    """
    inner = meta_step_fn(learner, optimizer, task_map=task_map, chunk_size=chunk_size)
    donate_argnums = (0,) if donate else ()

    def step(state: MetaState, batch: TaskBatch) -> tuple[MetaState, dict]:
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        new, metrics = inner(state, batch)
        if state_sharding is not None:
            new = jax.tree.map(jax.lax.with_sharding_constraint, new, state_sharding)
        return new, metrics

    if sampler is None:
        return jax.jit(step, donate_argnums=donate_argnums)

    def sampled_step(state: MetaState) -> tuple[MetaState, dict]:
        # The episodes of step s are a function of (rng at step s) only: resumable and seeded.
        batch = sampler(jax.random.fold_in(state.rng, 0x5A3))
        return step(state, batch)

    return jax.jit(sampled_step, donate_argnums=donate_argnums)


def stack_episodes(episodes: list[Episode]) -> TaskBatch:
    """Stacks single-task episodes into a task batch.

    Example:
      >>> import jax.numpy as jnp
      >>> b = Batch(jnp.zeros((5, 1)), jnp.zeros((5, 1)))
      >>> stack_episodes([Episode(b, b)] * 3).support.x.shape
      (3, 5, 1)
    """
    return jax.tree.map(lambda *xs: jnp.stack(xs), *episodes)

