"""Reptile (Nichol et al. 2018): move the initialisation towards the adapted parameters."""

from __future__ import annotations

from collections.abc import Callable

import jax

from jmeta.algorithms._gradient import LossFn, MetricFn, query_metrics
from jmeta.algorithms._registry import register
from jmeta.core._checks import check_int
from jmeta.core._inner import (InnerRule, inner_loop, mse_loss, resolve_unroll, rule_learns,
                               support_minibatches)
from jmeta.core._meta import MetaLearner
from jmeta.core._tree import mask_by_path
from jmeta.core._types import Batch, Episode, Params, PRNGKey
from jmeta.inner._rules import sgd
from jmeta.models._functional import Model


def reptile(
    model: Model,
    inner_lr: float = 0.01,
    inner_steps: int = 5,
    *,
    loss_fn: LossFn = mse_loss,
    rule: InnerRule | None = None,
    metric_fn: MetricFn | None = None,
    inner_batch: int | None = None,
    unroll: bool | None = None,
    adapt_filter: Callable[[str], bool] | None = None,
) -> MetaLearner:
    """Reptile: the meta-gradient of a task is ``meta_params - adapted_params``.

    With ``optax.sgd(eps)`` as the outer optimizer the meta-step is exactly Reptile's
    ``theta <- theta + eps * mean_i(phi_i - theta)``; any optax optimizer may be used instead.
    The inner loop runs plain SGD at ``inner_lr`` unless ``rule`` is given (e.g.
    ``jmeta.inner.from_optax(optax.adam(1e-3, b1=0.0))`` as in the paper).

    ``inner_batch``: in meta-training, each inner step takes a minibatch of this many support
    examples, drawn without replacement and reshuffled when the set is used up (the paper trains
    on 10 "train shots" per class in minibatches of 10: set the sampler's support size to the
    train shots). ``None`` takes full-batch steps. Adaptation at test time (``adapt``) always
    uses the whole support set.

    Reptile's meta-gradient moves the initialisation only: it has no term for the learnable
    pieces of a rule (Meta-SGD rates, the weights of :func:`jmeta.inner.lstm_optimizer`), which
    would stay at their random initialisation. A rule with learnable pieces is therefore an
    error; to run a learned rule trained elsewhere (by MAML, say), fix it with
    :func:`jmeta.inner.frozen_rule`.

    ``unroll``: unroll inner loops of up to ``jmeta.core.MAX_UNROLLED_STEPS`` steps; ``None`` =
    :func:`jmeta.core.default_inner_unroll` (conv models on CPU). Values are unchanged.

    ``adapt_filter``: ``path -> bool`` choosing the parameters the inner loop adapts (as in
    :func:`jmeta.algorithms.gradient_learner`, e.g. ``jmeta.models.lora_filter``); the others
    stay out of the loop's carry and their meta-gradient is exactly zero. ``None`` adapts all.

    Example:
      >>> import jax, optax
      >>> from jmeta.core import init_state, make_meta_step
      >>> from jmeta.data import sinusoid_sampler
      >>> from jmeta.models import mlp
      >>> learner = reptile(mlp(), inner_lr=0.02, inner_steps=5)
      >>> tx = optax.sgd(1.0)
      >>> step = make_meta_step(learner, tx, sampler=sinusoid_sampler(num_tasks=5, k_shot=10))
      >>> state, metrics = step(init_state(learner, tx, jax.random.key(0)))
      >>> sorted(metrics)
      ['grad_norm', 'loss', 'support_loss_before']
    """
    check_int("reptile: inner_steps", inner_steps)
    if inner_batch is not None:
        check_int("reptile: inner_batch (or None: full-batch steps)", inner_batch)
    rule = rule if rule is not None else sgd(inner_lr)
    unroll = resolve_unroll(unroll, model.family)
    if rule_learns(rule, model.init):
        raise ValueError(
            "reptile: the inner rule has learnable pieces (such as meta_sgd rates or LSTM "
            "weights), but Reptile's meta-gradient (meta_params - adapted_params) cannot "
            "train them; use a rule with nothing to learn (sgd, from_optax), fix a trained "
            "rule with jmeta.inner.frozen_rule(rule, rule_meta), or meta-train the rule "
            "with maml/fomaml."
        )

    def mask_of(params):
        return None if adapt_filter is None else mask_by_path(params, adapt_filter)

    def init(key: PRNGKey) -> Params:
        model_key, rule_key = jax.random.split(key)
        params = model.init(model_key)
        return {"model": params, "rule": rule.init_meta(rule_key, params)}

    def batch_loss(params: Params, batch: Batch) -> jax.Array:
        return loss_fn(model.apply(params, batch.x), batch.y)

    def adapt(meta, support, *, inner_steps=inner_steps, key=None, eval_fn=None,
              first_order=True):
        del key, first_order
        return inner_loop(
            batch_loss, rule, meta["model"], meta["rule"], support, inner_steps, eval_fn=eval_fn,
            unroll=unroll, mask=mask_of(meta["model"]),
        )

    def task_grad(meta, episode: Episode, key):
        meta = jax.lax.stop_gradient(meta)
        if inner_batch is None:
            params, trace = adapt(meta, episode.support, key=key)
        else:
            n = jax.tree.leaves(episode.support)[0].shape[0]
            if inner_batch > n:
                raise ValueError(
                    f"inner_batch={inner_batch} is larger than the support set ({n} examples); "
                    "lower inner_batch or sample more shots per class in training."
                )
            batches = support_minibatches(key, episode.support, inner_steps, inner_batch)
            params, trace = inner_loop(batch_loss, rule, meta["model"], meta["rule"], batches,
                                       inner_steps, per_step_batches=True, unroll=unroll,
                                       mask=mask_of(meta["model"]))
        grads = {
            "model": jax.tree.map(lambda m, p: m - p, meta["model"], params),
            "rule": jax.tree.map(lambda r: 0.0 * r, meta["rule"]),
        }
        _, metrics = query_metrics(model, loss_fn, metric_fn, params, episode.query)
        return grads, dict(metrics, support_loss_before=trace["support_loss"][0])

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=model.apply,
        task_grad=task_grad,
        family=model.family,
        inner_steps=inner_steps,
    )


@register("reptile", options=reptile)
def _from_config(env, **options) -> MetaLearner:
    """``learner=dict(name="reptile", ...)``; ``inner_batch`` must fit the training support set."""
    batch = options.get("inner_batch")
    if batch is not None and batch > env.support_size:
        raise ValueError(
            f"inner_batch={batch} exceeds the training support set ({env.support_size} "
            "examples: ways x train_shots): lower inner_batch or raise data.train_shots.")
    return env.build(reptile, options)
