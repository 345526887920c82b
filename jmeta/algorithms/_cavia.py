"""CAVIA (Zintgraf et al. 2019): adapt only a small context vector, meta-learn the network."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jmeta.algorithms._gradient import LossFn, MetricFn
from jmeta.algorithms._registry import register
from jmeta.core._checks import check_int, check_number
from jmeta.core._inner import inner_loop, mse_loss, resolve_unroll
from jmeta.core._meta import MetaLearner
from jmeta.core._types import Batch, Episode, Params, PRNGKey
from jmeta.inner._rules import sgd
from jmeta.models._context import ContextModel

TASK_KEYS = ("context", "model")
"""The keys of CAVIA's adapted task parameters ``{"model": theta, "context": phi}``."""


def cavia(
    model: ContextModel,
    *,
    inner_lr: float,
    inner_steps: int,
    num_context: int | None = None,
    loss_fn: LossFn = mse_loss,
    first_order: bool = False,
    metric_fn: MetricFn | None = None,
    unroll: bool | None = None,
) -> MetaLearner:
    """CAVIA: the inner loop adapts only a context vector; the network is meta-learned.

    For every task the context ``phi`` starts at zero (it is not meta-learned) and takes
    ``inner_steps`` SGD steps of size ``inner_lr`` on the support loss of
    ``model.apply(theta, x, phi)``; the network parameters ``theta`` stay fixed within the task.
    The meta-gradient of one task is the gradient of its query loss with the adapted context
    with respect to ``theta``, through the inner loop (second order) or, with
    ``first_order=True``, treating the adapted context as a constant.

    * meta-parameters: ``{"model": theta, "rule": ()}``;
    * ``adapt(meta, support, *, inner_steps=..., key=None, eval_fn=None)`` returns
      ``({"model": theta, "context": phi}, trace)`` with ``trace["support_loss"][t]`` before step
      ``t`` and ``trace["eval"][t]`` (``eval_fn`` of the task parameters) after step ``t``;
    * ``predict(task_params, x)`` uses the adapted context, or a zero context when given bare
      network parameters (such as ``meta["model"]``, the unadapted step 0 of an evaluation);
    * ``task_grad`` reports ``loss``, ``support_loss_before`` and ``metric_fn``'s query metrics.

    Args:
      model: a :class:`jmeta.models.ContextModel` (:func:`jmeta.models.context_mlp`,
        :func:`jmeta.models.context_conv4`).
      inner_lr: step size of the context's inner SGD (the paper uses 1.0 for regression).
      inner_steps: inner steps during meta-training.
      num_context: size of the context vector; ``None`` takes ``model.num_context`` (when both
        are set they must agree).
      loss_fn: ``(outputs, targets) -> scalar``.
      first_order: ignore the dependence of the adapted context on ``theta``.
      metric_fn: optional ``(outputs, targets) -> dict`` of extra query metrics.
      unroll: unroll inner loops of up to ``jmeta.core.MAX_UNROLLED_STEPS`` steps; ``None`` =
        :func:`jmeta.core.default_inner_unroll` (conv models on CPU). Values are unchanged.

    Example:
      >>> import jax, optax
      >>> from jmeta.core import init_state, make_meta_step
      >>> from jmeta.data import sinusoid_sampler
      >>> from jmeta.models import context_mlp
      >>> learner = cavia(context_mlp(hidden=(8,), num_context=2), inner_lr=1.0, inner_steps=2)
      >>> tx = optax.adam(1e-3)
      >>> step = make_meta_step(learner, tx, sampler=sinusoid_sampler(num_tasks=4, k_shot=5))
      >>> state, metrics = step(init_state(learner, tx, jax.random.key(0)))
      >>> sorted(metrics)
      ['grad_norm', 'loss', 'support_loss_before']
    """
    if not isinstance(model, ContextModel):
        raise ValueError(  # noqa: TRY004
            "cavia: model must be a ContextModel, whose apply takes (params, x, context); build "
            "one with jmeta.models.context_mlp, context_conv4 or context_from_nnx (in a config: "
            f"model name 'context_mlp' or 'context_conv4'); got {type(model).__name__}."
        )
    if num_context is None:
        num_context = model.num_context
    check_int("cavia: num_context (give it to the learner or the model)", num_context)
    unroll = resolve_unroll(unroll, model.family)
    if model.num_context is not None and model.num_context != num_context:
        raise ValueError(
            f"cavia: num_context={num_context} but the model was built for "
            f"{model.num_context} context parameters; pass the same value to both."
        )
    check_int("cavia: inner_steps", inner_steps)
    rule = sgd(check_number("cavia: inner_lr", inner_lr))

    def zero_context(params: Params) -> jax.Array:
        dtype = jnp.result_type(*jax.tree.leaves(params)) if jax.tree.leaves(params) else None
        return jnp.zeros((num_context,), dtype)

    def is_task_params(params) -> bool:
        return isinstance(params, dict) and set(params) == set(TASK_KEYS)

    def init(key: PRNGKey) -> Params:
        return {"model": model.init(key), "rule": ()}

    def predict(task_params: Params, x: jax.Array) -> jax.Array:
        if is_task_params(task_params):
            return model.apply(task_params["model"], x, task_params["context"])
        return model.apply(task_params, x, zero_context(task_params))

    def batch_loss(task_params: Params, batch: Batch) -> jax.Array:
        return loss_fn(predict(task_params, batch.x), batch.y)

    def adapt(meta, support, *, inner_steps=inner_steps, key=None, eval_fn=None,
              first_order=False):
        del key
        theta = meta["model"]
        params = {"model": theta, "context": zero_context(theta)}
        mask = {"model": jax.tree.map(lambda _: False, theta), "context": True}
        return inner_loop(
            batch_loss, rule, params, (), support, inner_steps,
            first_order=first_order, mask=mask, eval_fn=eval_fn, unroll=unroll,
        )

    def task_loss(meta, episode: Episode, key):
        task_params, trace = adapt(meta, episode.support, key=key, first_order=first_order)
        pred = predict(task_params, episode.query.x)
        loss = loss_fn(pred, episode.query.y)
        extra = metric_fn(pred, episode.query.y) if metric_fn is not None else {}
        return loss, dict(extra, loss=loss, support_loss_before=trace["support_loss"][0])

    def task_grad(meta, episode: Episode, key):
        (_, metrics), grads = jax.value_and_grad(task_loss, has_aux=True)(meta, episode, key)
        return grads, metrics

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        task_grad=task_grad,
        family=model.family,
        inner_steps=inner_steps,
    )


register("cavia", cavia)
