"""MAML++ (Antoniou, Edwards & Storkey 2019, "How to train your MAML")."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

from jmeta.algorithms._gradient import LossFn, MetricFn, query_metrics
from jmeta.algorithms._registry import register
from jmeta.core._checks import check_bool, check_int
from jmeta.core._inner import inner_loop, mse_loss, resolve_unroll
from jmeta.core._meta import MetaLearner
from jmeta.core._tree import mask_by_path, partition, path_name
from jmeta.core._types import Batch, Episode, Params, PRNGKey
from jmeta.inner._rules import lslr
from jmeta.models._functional import Model

MSL_FLOOR = 0.03
"""The paper's floor of every non-final multi-step-loss weight, times ``inner_steps``."""


def _default_bn_paths(path: str) -> bool:
    return "bn" in path


def msl_weights(step, inner_steps: int, anneal_steps: int, *,
                floor: float = MSL_FLOOR) -> jax.Array:
    """MAML++'s multi-step-loss weights of the query losses after inner steps ``1..inner_steps``.

    The schedule of the paper's code, with the epoch counter replaced by the meta-step: at step
    0 every weight is ``1/N``; as ``step`` goes to ``anneal_steps`` every non-final weight decays
    linearly as ``(1 - step/anneal_steps)/N`` down to the floor ``floor/N``, and the final weight
    gains what they lose (``min((1 + step/anneal_steps*(N-1))/N, 1 - (N-1)*floor/N)``), so the
    weights always sum to 1. From ``step >= anneal_steps`` on, only the final step counts
    (weights ``[0, ..., 0, 1]``). ``step`` may be traced (the meta-step counter).

    Example:
      >>> msl_weights(0, 4, 100).tolist()
      [0.25, 0.25, 0.25, 0.25]
      >>> [round(w, 4) for w in msl_weights(50, 4, 100).tolist()]
      [0.125, 0.125, 0.125, 0.625]
      >>> msl_weights(100, 4, 100).tolist()
      [0.0, 0.0, 0.0, 1.0]
    """
    check_int("mamlpp: inner_steps", inner_steps, 1)
    check_int("mamlpp: anneal_steps", anneal_steps, 0)
    dtype = jnp.result_type(float)
    step = jnp.asarray(step).astype(dtype)
    n = inner_steps
    last = jnp.zeros((n,), dtype).at[-1].set(1.0)
    if anneal_steps == 0 or n == 1:
        return last
    frac = step / anneal_steps
    non_final = jnp.maximum((1.0 - frac) / n, floor / n)
    final = jnp.minimum((1.0 + frac * (n - 1)) / n, 1.0 - (n - 1) * floor / n)
    annealed = jnp.concatenate([jnp.full((n - 1,), non_final, dtype), final[None]])
    return jnp.where(step < anneal_steps, annealed, last)


def mamlpp(
    model: Model,
    *,
    inner_steps: int,
    inner_lr: float = 0.1,
    multi_step_loss: bool = True,
    msl_anneal_steps: int = 5000,
    first_order_until: int = 0,
    per_step_bn: bool | None = None,
    bn_paths: Callable[[str], bool] = _default_bn_paths,
    loss_fn: LossFn = mse_loss,
    metric_fn: MetricFn | None = None,
    remat: bool = False,
    unroll: bool | None = None,
) -> MetaLearner:
    """MAML++: MAML with the stabilising and speeding-up changes of Antoniou et al. (2019).

    * **LSLR**: one learned inner learning rate per inner step and per parameter tensor,
      initialised to ``inner_lr`` (the rates of :func:`jmeta.inner.lslr`, kept in
      ``meta["rule"]``; a leaf that the inner loop does not adapt has ``None`` there).
    * **Per-step BatchNorm weights and biases (BNWB)**: every parameter whose path satisfies
      ``bn_paths`` (default: contains ``"bn"``, as ``"bn_0/scale"`` of
      :func:`jmeta.models.conv4`) is stored in ``meta["model"]`` with a leading axis of size
      ``inner_steps + 1`` (copies of its initial value). Slice ``k`` is used by every forward pass
      of weights that have taken ``k`` inner steps: the support pass of inner step ``k`` (0-based)
      and the query pass after ``k`` steps; slice 0 is also the unadapted model's. These
      parameters are meta-learned only (the inner loop does not adapt them), and each slice gets
      its own meta-gradient. With a transductive model (``bn_mode="transductive"``)
      normalisation uses the statistics of the batch being normalised. With
      ``bn_mode="running"`` the ``mean``/``var`` leaves get the step axis too: the paper's
      per-step running statistics, filled by :func:`per_step_batch_stats` and used at test time
      by ``model.eval_apply``. With ``per_step_bn=False`` no leaf gets an extra axis and the
      inner loop adapts every parameter, BatchNorm's included (as MAML). ``None`` (the default)
      is ``True`` when ``bn_paths`` selects a parameter and ``False`` for a model without
      BatchNorm.
    * **Multi-step loss (MSL)**: the meta-objective is ``sum_i w_i * query_loss(after step
      i+1)`` with the weights of :func:`msl_weights` at the current meta-step, annealed over
      ``msl_anneal_steps`` meta-steps to the final step only (the paper: the first 10 epochs);
      with ``multi_step_loss=False`` only the final step's loss counts. Query passes whose
      weight is 0 are skipped (a ``lax.cond`` on a predicate shared by all tasks).
    * **Derivative-order annealing**: the meta-gradient is first-order (inner gradients treated
      as constants) while the meta-step is below ``first_order_until`` and second-order after
      (the paper: 50 epochs); one ``lax.cond`` on the meta-step, which stays a real branch under
      ``vmap`` because the step is the same for every task.
    * **Cosine annealing of the meta learning rate** is a property of the outer optimizer, e.g.
      ``optax.adam(optax.cosine_decay_schedule(1e-3, total_steps, alpha=1e-2))``; it is not part
      of the learner.

    The learner has ``uses_step=True``: ``task_grad(meta, episode, key, step)`` needs the
    meta-step counter (:func:`jmeta.core.make_meta_step` passes ``state.step``); its metrics are
    ``loss`` (query loss after the final step), ``objective`` (the weighted multi-step loss),
    ``support_loss_before`` and ``metric_fn``'s query metrics.

    ``adapt(meta, support, *, inner_steps=None, key=None, eval_fn=None, first_order=False)`` runs
    ``inner_steps`` (default: the training count, any int >= 0) steps; beyond the trained count the
    last step's rates and the last BatchNorm slice are reused. It returns ``(task_params,
    trace)``: ``task_params`` is a plain parameter tree of ``model`` (BatchNorm leaves are the
    slice of the steps taken, without the step axis), ``trace["support_loss"][t]`` the support
    loss before step ``t`` and ``trace["eval"][t]`` (if ``eval_fn``) ``eval_fn`` after step
    ``t + 1``. ``predict(params, x)`` accepts either ``task_params`` or ``meta["model"]`` (then
    BatchNorm slice 0 is used: the unadapted model).

    Args:
      model: a functional :class:`jmeta.models.Model`.
      inner_steps: inner steps during meta-training (>= 1).
      inner_lr: initial value of every learned per-step, per-layer rate.
      multi_step_loss: use the annealed multi-step loss.
      msl_anneal_steps: meta-steps over which the multi-step-loss weights anneal (>= 0; 0 counts
        only the final step from the start).
      first_order_until: first-order meta-gradient while the meta-step is below this (>= 0).
      per_step_bn: per-step BatchNorm weights and biases (``True`` needs ``bn_paths`` to select
        at least one parameter; ``None``: whenever it does).
      bn_paths: ``path -> bool`` choosing the BatchNorm parameters (paths like ``"bn_0/scale"``).
      loss_fn: ``(outputs, targets) -> scalar``, for both the inner loop and the query.
      metric_fn: optional ``(outputs, targets) -> dict`` of extra query metrics.
      remat: ``jax.checkpoint`` each inner step (see :func:`jmeta.core.inner_loop`).
      unroll: unroll inner loops of up to ``jmeta.core.MAX_UNROLLED_STEPS`` steps; ``None`` =
        :func:`jmeta.core.default_inner_unroll` (conv models on CPU). Values are unchanged.

    Example (sinusoid regression: no BatchNorm, so ``per_step_bn=False``):
      >>> import jax, optax
      >>> from jmeta.core import init_state, make_meta_step
      >>> from jmeta.data import sinusoid_sampler, sinusoid_tasks
      >>> from jmeta.models import mlp
      >>> learner = mamlpp(mlp(hidden=(8,)), inner_steps=2, inner_lr=0.01, per_step_bn=False,
      ...                  msl_anneal_steps=10, first_order_until=1)
      >>> tx = optax.adam(optax.cosine_decay_schedule(1e-3, 100))
      >>> step = make_meta_step(learner, tx, sampler=sinusoid_sampler(num_tasks=4, k_shot=5))
      >>> state = init_state(learner, tx, jax.random.key(0))
      >>> for _ in range(2):
      ...     state, metrics = step(state)
      >>> state.params["rule"]["head"]["kernel"].shape
      (2,)
      >>> support = jax.tree.map(lambda x: x[0], sinusoid_tasks(jax.random.key(1), 1, 5)).support
      >>> params, trace = learner.adapt(state.params, support, inner_steps=5)
      >>> trace["support_loss"].shape, learner.predict(params, support.x).shape
      ((5,), (5, 1))
    """
    check_int("mamlpp: inner_steps", inner_steps, 1)
    check_int("mamlpp: msl_anneal_steps", msl_anneal_steps, 0)
    check_int("mamlpp: first_order_until", first_order_until, 0)
    check_bool("mamlpp: multi_step_loss", multi_step_loss)
    if not callable(bn_paths):
        raise ValueError(f"mamlpp: bn_paths must be a function path -> bool; got {bn_paths!r}.")  # noqa: TRY004
    rule = lslr(inner_lr, inner_steps)  # validates inner_lr
    unroll = resolve_unroll(unroll, model.family)
    n_train = inner_steps
    n_slices = n_train + 1

    shapes = jax.eval_shape(model.init, jax.random.key(0))
    paths = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]]
    if per_step_bn is None:
        per_step_bn = any(jax.tree.leaves(mask_by_path(shapes, bn_paths)))
    check_bool("mamlpp: per_step_bn (or None: when bn_paths selects a parameter)", per_step_bn)
    if not per_step_bn and getattr(model, "eval_apply", None) is not None:
        raise ValueError("mamlpp on a model that keeps BatchNorm statistics (bn_mode='running') "
                         "keeps them per step: set per_step_bn=True (or use "
                         "bn_mode='transductive').")
    if per_step_bn:
        bn_mask = mask_by_path(shapes, bn_paths)
        if not any(jax.tree.leaves(bn_mask)):
            raise ValueError(
                "mamlpp: per_step_bn=True but bn_paths selects no parameter; parameter paths are "
                f"{paths}. Pass per_step_bn=False for a model without BatchNorm, or a bn_paths "
                "that selects its BatchNorm scales and biases."
            )
        adapt_mask = jax.tree.map(lambda m: not m, bn_mask)
        if not any(jax.tree.leaves(adapt_mask)):
            raise ValueError(
                f"mamlpp: bn_paths selects every parameter ({paths}); the inner loop would "
                "adapt nothing. Select only the BatchNorm parameters."
            )
    else:
        bn_mask = jax.tree.map(lambda _: False, shapes)
        adapt_mask = None
    base_ndim = jax.tree.map(lambda s: len(s.shape), shapes)
    msl_on = multi_step_loss and msl_anneal_steps > 0 and n_train > 1

    def init(key: PRNGKey) -> Params:
        model_key, rule_key = jax.random.split(key)
        params = model.init(model_key)
        params = jax.tree.map(
            lambda p, m: jnp.repeat(p[None], n_slices, axis=0) if m else p, params, bn_mask
        )
        adapted, _ = partition(params, adapt_mask)
        return {"model": params, "rule": rule.init_meta(rule_key, adapted)}

    def bn_slice(params: Params, index) -> Params:
        """The model parameters with every per-step BatchNorm leaf replaced by its slice."""
        return jax.tree.map(lambda p, m: p[index] if m else p, params, bn_mask)

    def batch_loss(params: Params, batch: Batch) -> jax.Array:
        return loss_fn(model.apply(params, batch.x), batch.y)

    def predict(params: Params, x: jax.Array) -> jax.Array:
        def pick(p, m, nd):
            if not m or p.ndim == nd:
                return p
            if p.ndim == nd + 1:
                return p[0]
            raise ValueError(
                f"mamlpp.predict: a BatchNorm parameter has shape {p.shape}; expected {nd} "
                "dimensions (adapted parameters) or one more (meta['model'])."
            )

        return model.apply(jax.tree.map(pick, params, bn_mask, base_ndim), x)

    def run(meta, support: Batch, steps: int, first_order: bool, after_step=None):
        """``steps`` inner steps; ``after_step(k, params)`` is stacked into ``trace["eval"]``.
        The forward passes of weights that have taken ``k`` steps use BatchNorm slice ``k``."""

        def loss(params, batch, k):
            return batch_loss(bn_slice(params, jnp.minimum(k, n_train)), batch)

        def after(params, k):
            return after_step(k - 1, bn_slice(params, jnp.minimum(k, n_train)))

        params, trace = inner_loop(
            loss, rule, meta["model"], meta["rule"], support, steps, first_order=first_order,
            remat=remat, mask=adapt_mask, eval_fn=None if after_step is None else after,
            unroll=unroll, with_step=True)
        return bn_slice(params, min(steps, n_train)), trace

    def adapt(meta, support, *, inner_steps=None, key=None, eval_fn=None, first_order=False):
        del key
        steps = n_train if inner_steps is None else inner_steps
        check_int("mamlpp.adapt: inner_steps (it fixes the scan length)", steps, 0)
        after = None if eval_fn is None else (lambda k, p: eval_fn(p))
        return run(meta, support, steps, first_order, after)

    def objective(meta, episode: Episode, weights, first_order: bool):
        after = None
        if msl_on:
            def after(k, params):
                def query_loss():
                    return batch_loss(params, episode.query)

                dtype = jax.eval_shape(query_loss).dtype
                use = (weights[k] > 0) & (k < n_train - 1)
                return jax.lax.cond(use, query_loss, lambda: jnp.zeros((), dtype))

        params, trace = run(meta, episode.support, n_train, first_order, after)
        loss, metrics = query_metrics(model, loss_fn, metric_fn, params, episode.query)
        total = weights[-1] * loss
        if msl_on:
            total = total + jnp.sum(weights[:-1] * trace["eval"][:-1])
        total = total.astype(loss.dtype)
        return total, dict(metrics, objective=total, support_loss_before=trace["support_loss"][0])

    def grad_fn(first_order: bool):
        def fn(meta, episode, weights):
            (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(
                meta, episode, weights, first_order
            )
            return grads, metrics

        return fn

    def task_grad(meta, episode: Episode, key, step=None):
        del key
        if step is None:
            raise ValueError(
                "mamlpp.task_grad needs the meta-step: task_grad(meta, episode, key, step) "
                "(jmeta.core.make_meta_step passes state.step because learner.uses_step is True)."
            )
        step = jnp.asarray(step)
        weights = msl_weights(step, n_train, msl_anneal_steps if msl_on else 0)
        if first_order_until > 0:
            return jax.lax.cond(
                step < first_order_until, grad_fn(True), grad_fn(False), meta, episode, weights
            )
        return grad_fn(False)(meta, episode, weights)

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        task_grad=task_grad,
        family=model.family,
        inner_steps=n_train,
        uses_step=True,
    )


register("mamlpp", mamlpp)


@functools.lru_cache(maxsize=8)
def _per_step_stats_fn(model: Model, learner: MetaLearner):
    """One jitted per-episode function per (model, learner): the step-0 statistics of the query
    images and those after every inner step."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    base_ndim = jax.tree.map(lambda s: len(s.shape), shapes)
    n_train = learner.inner_steps

    def slice0(params):
        return jax.tree.map(lambda p, nd: p[0] if p.ndim == nd + 1 else p, params, base_ndim)

    @jax.jit
    def one(meta, episode):
        x = episode.query.x
        first = model.stats_apply(slice0(meta["model"]), x)
        _, trace = learner.adapt(meta, episode.support, inner_steps=n_train,
                                 eval_fn=lambda p: model.stats_apply(p, x))
        return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, trace["eval"])

    return one


def per_step_batch_stats(model: Model, learner: MetaLearner, meta: Params,
                         episodes: Iterable[Episode]) -> Params:
    """MAML++'s per-step BatchNorm running statistics, estimated as population statistics.

    With a model built with ``bn_mode="running"`` and ``mamlpp(..., per_step_bn=True)``, the
    BatchNorm ``mean``/``var`` leaves of ``meta["model"]`` carry the per-step axis like the
    BatchNorm weights: slice ``k`` normalises the network after ``k`` inner steps at test time
    (``model.eval_apply``). This fills slice ``k`` with the statistics of the network adapted
    ``k`` steps: for every episode, the learner adapts on the support set (batch statistics, as in
    training) and the query images are passed through the network after each step; the per-batch
    means and variances are averaged over the episodes, per step (the paper keeps a running
    average of the same quantities during training). Returns ``meta["model"]`` with those leaves
    replaced.

    Args:
      model: the training-mode model (with ``stats_apply``), as given to :func:`mamlpp`.
      learner: the :func:`mamlpp` learner built on ``model``.
      meta: its meta-parameters ``{"model": ..., "rule": ...}``.
      episodes: a non-empty iterable of single :class:`jmeta.core.Episode` (training tasks).

    Example:
      >>> import jax
      >>> from jmeta.core import Batch, Episode
      >>> from jmeta.core._losses import cross_entropy_loss
      >>> from jmeta.models import conv4
      >>> model = conv4(1, 3, filters=4, image_size=16, bn_mode="running")
      >>> learner = mamlpp(model, inner_steps=2, loss_fn=cross_entropy_loss)
      >>> meta = learner.init(jax.random.key(0))
      >>> x = jax.random.normal(jax.random.key(1), (6, 16, 16, 1))
      >>> ep = Episode(Batch(x[:3], jax.numpy.arange(3)), Batch(x, jax.numpy.arange(6) % 3))
      >>> per_step_batch_stats(model, learner, meta, [ep])["bn_0"]["mean"].shape
      (3, 4)
    """
    if getattr(model, "stats_apply", None) is None:
        raise ValueError(
            "per_step_batch_stats: the model keeps no BatchNorm statistics; build it with "
            "bn_mode='running'.")
    one = _per_step_stats_fn(model, learner)
    total, count = None, 0
    for episode in episodes:
        stats = one(meta, episode)
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        count += 1
    if count == 0:
        raise ValueError("per_step_batch_stats: `episodes` is empty; pass at least one episode.")
    mean = jax.tree.map(lambda t: t / count, total)

    def put(params, stats):
        if isinstance(stats, dict):
            return {k: (put(v, stats[k]) if k in stats else v) for k, v in params.items()}
        if params.shape != stats.shape:
            raise ValueError(
                f"per_step_batch_stats: a BatchNorm statistic has shape {params.shape} but the "
                f"per-step estimate has {stats.shape}; build mamlpp with per_step_bn=True on a "
                "bn_mode='running' model (its bn_paths must select the mean/var leaves).")
        return stats.astype(params.dtype)

    return put(meta["model"], mean)
