"""The gradient-based family (MAML, first-order MAML, Meta-SGD, ANIL, BOIL) on one shared engine."""

from __future__ import annotations

from typing import Callable

import jax

from jmeta.algorithms._registry import register
from jmeta.core._checks import check_int
from jmeta.core._inner import InnerRule, inner_loop, mse_loss, resolve_unroll
from jmeta.core._meta import MetaLearner
from jmeta.core._registry import ConfigError
from jmeta.core._tree import mask_by_path, partition, path_name
from jmeta.core._types import Batch, Episode, Params, PRNGKey
from jmeta.inner._rules import meta_sgd, sgd
from jmeta.models._functional import Model, linear_head

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
MetricFn = Callable[[jax.Array, jax.Array], dict]


def query_metrics(model: Model, loss_fn: LossFn, metric_fn: MetricFn | None, params, query: Batch):
    """Query loss and metrics of adapted parameters, from one forward pass."""
    return _prediction_metrics(model.apply(params, query.x), query.y, loss_fn, metric_fn)


def _prediction_metrics(pred, y, loss_fn: LossFn, metric_fn: MetricFn | None):
    loss = loss_fn(pred, y)
    extra = metric_fn(pred, y) if metric_fn is not None else {}
    return loss, dict(extra, loss=loss)


def check_truncate(name: str, truncate, inner_steps: int) -> None:
    """``None``, or a positive int below ``inner_steps``: the last inner steps backpropagated."""
    if truncate is None:
        return
    check_int(f"{name}: truncate (None backprops through every inner step; k, the last k "
              "inner steps)", truncate, 1)
    if truncate >= inner_steps:
        raise ValueError(f"{name}: truncate={truncate} truncates nothing with inner_steps="
                         f"{inner_steps}: set it below inner_steps, or None.")


def _both(a: Callable[[str], bool] | None, b: Callable[[str], bool] | None):
    """The paths both filters select (``None`` selects every path)."""
    if a is None or b is None:
        return a or b
    return lambda path: a(path) and b(path)


def gradient_learner(
    model: Model,
    rule: InnerRule,
    inner_steps: int,
    *,
    loss_fn: LossFn = mse_loss,
    first_order: bool = False,
    remat: bool = False,
    adapt_filter: Callable[[str], bool] | None = None,
    metric_fn: MetricFn | None = None,
    name: str = "gradient_learner",
    unroll: bool | None = None,
    truncate: int | None = None,
    head_features: bool = True,
    head_init: Callable[[jax.Array, jax.Array], Params] | None = None,
) -> MetaLearner:
    """A learner that adapts by ``inner_steps`` steps of ``rule`` and meta-learns by backprop.

    Meta-parameters are ``{"model": initial params, "rule": learnable pieces of the rule}``. The
    meta-gradient of one task is the gradient of its query loss after adaptation with respect to
    both; ``first_order=True`` drops the second-derivative terms.

    Args:
      model: a functional :class:`jmeta.models.Model`.
      rule: the inner update rule (:mod:`jmeta.inner`).
      inner_steps: inner steps during meta-training.
      loss_fn: ``(outputs, targets) -> scalar``.
      first_order: first-order meta-gradient (stop-gradient on the inner gradients).
      remat: ``jax.checkpoint`` each inner step: backprop keeps only each step's carry (the
        adapted parameters) and recomputes activations (see docs/performance.md for when it pays).
      adapt_filter: ``path -> bool`` choosing the parameters the inner loop adapts (paths look
        like ``"head/kernel"``); ``None`` adapts all.
      metric_fn: optional ``(outputs, targets) -> dict`` of extra query metrics (e.g. accuracy),
        reported by ``task_grad`` beside the loss.
      unroll: unroll inner loops of up to ``jmeta.core.MAX_UNROLLED_STEPS`` steps; ``None`` =
        :func:`jmeta.core.default_inner_unroll` (conv models on CPU). Values are unchanged.
      truncate: backpropagate through the last ``truncate < inner_steps`` inner steps only
        (``None``: all), for long inner loops, e.g. a learned rule meta-trained on 50-100 steps; the
        initialisation gets the gradient of the adapted parameters passed through the truncated
        steps unchanged (see :func:`jmeta.core.inner_loop`). Combine with ``remat``: memory then
        grows with ``truncate``, not with ``inner_steps``, and compile time with neither.
      head_features: when ``adapt_filter`` selects exactly the linear ``head`` of a model with
        ``features`` (ANIL on :func:`jmeta.models.conv4`, ``resnet12``, ``mlp``) and
        ``truncate`` is ``None``, run the body once per support and query set and adapt the
        head on those features, instead of running the whole model at every inner step. The
        values are the same (the body's parameters do not change in the inner loop); the step
        does fewer convolutions. ``False`` always runs the whole model.
      head_init: ``None``, or ``(support_features, support_labels) -> head`` for a model with
        ``features``: each task's inner loop starts from ``head_init``'s linear head (``kernel``
        and ``bias``), computed from the support set's features under the meta-parameters,
        instead of the meta-learned one (Proto-MAML, :func:`jmeta.algorithms.protomaml`). The
        meta-gradient flows through it into the body; the meta-learned head gets none.

    Example (BOIL-style: adapt the body, freeze the head):
      >>> import jax
      >>> from jmeta.inner import sgd
      >>> from jmeta.models import mlp
      >>> learner = gradient_learner(mlp(), sgd(0.01), 1,
      ...                            adapt_filter=lambda path: not path.startswith("head"))
      >>> sorted(learner.init(jax.random.key(0))["model"])
      ['head', 'hidden_0', 'hidden_1']
    """
    check_int(f"{name}: inner_steps", inner_steps)
    check_truncate(name, truncate, inner_steps)
    unroll = resolve_unroll(unroll, model.family)
    if not isinstance(rule, InnerRule):
        raise ValueError(f"{name}: rule must be a jmeta.inner InnerRule; got {rule!r}.")  # noqa: TRY004
    if head_init is not None and getattr(model, "features", None) is None:
        raise ValueError(
            f"{name}: head_init needs a model with features (a linear head on features of the "
            "input: jmeta.models.mlp, conv4, resnet12, bert_lora with num_classes, or from_nnx "
            "of a module with a features method and an nnx.Linear head); this model has none.")

    def mask_of(params):
        return None if adapt_filter is None else mask_by_path(params, adapt_filter)

    def init(key: PRNGKey) -> Params:
        model_key, rule_key = jax.random.split(key)
        params = model.init(model_key)
        mask = mask_of(params)
        if mask is not None and not any(jax.tree.leaves(mask)):
            raise ValueError(
                f"{name}: adapt_filter selects no parameter; parameter paths are "
                f"{_paths(params)}."
            )
        adapted, _ = partition(params, mask)
        return {"model": params, "rule": rule.init_meta(rule_key, adapted)}

    def batch_loss(params: Params, batch: Batch) -> jax.Array:
        return loss_fn(model.apply(params, batch.x), batch.y)

    on_features = (head_features and truncate is None and adapt_filter is not None
                   and _adapts_linear_head_only(model, mask_of))

    def head_loss(params: Params, batch: Batch) -> jax.Array:
        return loss_fn(linear_head(params, batch.x), batch.y)

    def adapt(meta, support, *, inner_steps=inner_steps, key=None, eval_fn=None,
              first_order=False):
        del key
        params = meta["model"]
        if on_features:  # the body's features once; the head adapts on them
            support = Batch(model.features(params, support.x), support.y)
        if head_init is not None:
            feats = support.x if on_features else model.features(params, support.x)
            params = {**params, "head": head_init(feats, support.y)}
        return inner_loop(
            head_loss if on_features else batch_loss,
            rule,
            params,
            meta["rule"],
            support,
            inner_steps,
            first_order=first_order,
            remat=remat,
            mask=mask_of(meta["model"]),
            eval_fn=eval_fn,
            unroll=unroll,
            truncate=truncate,
        )

    def task_loss(meta, episode: Episode, key):
        params, trace = adapt(meta, episode.support, key=key, first_order=first_order)
        if on_features:
            pred = linear_head(params, model.features(meta["model"], episode.query.x))
        else:
            pred = model.apply(params, episode.query.x)
        loss, metrics = _prediction_metrics(pred, episode.query.y, loss_fn, metric_fn)
        return loss, dict(metrics, support_loss_before=trace["support_loss"][0])

    def task_grad(meta, episode: Episode, key):
        (_, metrics), grads = jax.value_and_grad(task_loss, has_aux=True)(meta, episode, key)
        return grads, metrics

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=model.apply,
        task_grad=task_grad,
        family=model.family,
        inner_steps=inner_steps,
    )


def _adapts_linear_head_only(model: Model, mask_of) -> bool:
    """Whether the inner loop adapts exactly ``params["head"]`` of a model with ``features``
    (decided on shapes: no compute)."""
    if getattr(model, "features", None) is None:  # duck-typed models may not have the field
        return False
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    mask = mask_of(shapes)
    if mask is None or not isinstance(shapes, dict) or not isinstance(shapes.get("head"), dict):
        return False
    head = jax.tree.leaves(mask["head"])
    rest = jax.tree.leaves({k: v for k, v in mask.items() if k != "head"})
    return (sorted(shapes["head"]) == ["bias", "kernel"] and all(head) and not any(rest))


def _paths(params):
    return [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def maml(
    model: Model,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    *,
    loss_fn: LossFn = mse_loss,
    first_order: bool = False,
    remat: bool = False,
    unroll: bool | None = None,
    truncate: int | None = None,
    rule: InnerRule | None = None,
    metric_fn: MetricFn | None = None,
    adapt_filter: Callable[[str], bool] | None = None,
) -> MetaLearner:
    """MAML (Finn et al. 2017): learn an initialisation that adapts in a few SGD steps.

    ``rule`` replaces plain SGD by another inner rule (e.g. :func:`jmeta.inner.lslr`, or a
    learned recurrent rule, :func:`jmeta.inner.meta_lstm` or :func:`jmeta.inner.lstm_optimizer`,
    whose weights are then meta-learned with the initialisation). ``truncate`` backpropagates
    through the last ``truncate`` inner steps only; ``adapt_filter`` chooses the parameters the
    inner loop adapts (LoRA adapters and the head of a pretrained encoder, say: see
    :func:`gradient_learner`).

    Example:
      >>> import jax, optax
      >>> from jmeta.core import init_state, make_meta_step
      >>> from jmeta.data import sinusoid_sampler
      >>> from jmeta.models import mlp
      >>> learner = maml(mlp(), inner_lr=0.01, inner_steps=1)
      >>> tx = optax.adam(1e-3)
      >>> step = make_meta_step(learner, tx, sampler=sinusoid_sampler(num_tasks=25, k_shot=10))
      >>> state = init_state(learner, tx, jax.random.key(0))
      >>> for _ in range(3):
      ...     state, metrics = step(state)
      >>> int(state.step)
      3
    """
    return gradient_learner(
        model,
        rule if rule is not None else sgd(inner_lr),
        inner_steps,
        loss_fn=loss_fn,
        first_order=first_order,
        remat=remat,
        unroll=unroll,
        truncate=truncate,
        metric_fn=metric_fn,
        name="maml",
        adapt_filter=adapt_filter,
    )


def fomaml(model: Model, inner_lr: float = 0.01, inner_steps: int = 1, **kwargs) -> MetaLearner:
    """First-order MAML: MAML whose meta-gradient ignores second derivatives (the keywords of
    :func:`maml`, but ``first_order``).

    Example:
      >>> from jmeta.models import mlp
      >>> fomaml(mlp(), inner_lr=0.01, inner_steps=5).inner_steps
      5
    """
    return maml(model, inner_lr, inner_steps, first_order=True, **kwargs)


def metasgd(
    model: Model,
    init_lr: float | tuple[float, float] = (0.005, 0.1),
    inner_steps: int = 1,
    *,
    loss_fn: LossFn = mse_loss,
    first_order: bool = False,
    remat: bool = False,
    unroll: bool | None = None,
    truncate: int | None = None,
    metric_fn: MetricFn | None = None,
    adapt_filter: Callable[[str], bool] | None = None,
) -> MetaLearner:
    """Meta-SGD (Li et al. 2017): learn the initialisation and a step size per coordinate.

    ``init_lr``: the rates' initial value, or a ``(low, high)`` range drawn per coordinate.
    ``adapt_filter`` as in :func:`gradient_learner` (rates are learned for the adapted
    parameters only).

    Example:
      >>> import jax
      >>> from jmeta.models import mlp
      >>> meta = metasgd(mlp(), init_lr=0.01).init(jax.random.key(0))
      >>> meta["rule"]["head"]["kernel"].shape == meta["model"]["head"]["kernel"].shape
      True
    """
    if isinstance(init_lr, (tuple, list)) and len(init_lr) == 1:
        init_lr = init_lr[0]
    return gradient_learner(
        model,
        meta_sgd(init_lr),
        inner_steps,
        loss_fn=loss_fn,
        first_order=first_order,
        remat=remat,
        unroll=unroll,
        truncate=truncate,
        metric_fn=metric_fn,
        name="metasgd",
        adapt_filter=adapt_filter,
    )


def anil(
    model: Model,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    *,
    head: str = "head",
    loss_fn: LossFn = mse_loss,
    first_order: bool = False,
    remat: bool = False,
    unroll: bool | None = None,
    truncate: int | None = None,
    rule: InnerRule | None = None,
    metric_fn: MetricFn | None = None,
    head_features: bool = True,
) -> MetaLearner:
    """ANIL (Raghu et al. 2020): MAML that adapts only the head in the inner loop.

    ``head`` is the path prefix of the adapted parameters (``"head"`` for :func:`jmeta.models.mlp`).
    On models with ``features`` (``mlp``, ``conv4``, ``resnet12``) the body runs once per
    support and query set and the head adapts on its features (``head_features``, see
    :func:`gradient_learner`): the same values as running the whole model at every inner step,
    with fewer convolutions.

    Example:
      >>> import jax
      >>> from jmeta.models import mlp
      >>> learner = anil(mlp(), inner_lr=0.01)
      >>> meta = learner.init(jax.random.key(0))
      >>> sorted(meta["model"]) == ['head', 'hidden_0', 'hidden_1']
      True
    """
    prefix = head.rstrip("/") + "/"
    return gradient_learner(
        model,
        rule if rule is not None else sgd(inner_lr),
        inner_steps,
        loss_fn=loss_fn,
        first_order=first_order,
        remat=remat,
        unroll=unroll,
        truncate=truncate,
        adapt_filter=lambda path: (path + "/").startswith(prefix),
        metric_fn=metric_fn,
        name="anil",
        head_features=head_features,
    )


def boil(
    model: Model,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    *,
    head: str = "head",
    loss_fn: LossFn = mse_loss,
    first_order: bool = False,
    remat: bool = False,
    unroll: bool | None = None,
    truncate: int | None = None,
    rule: InnerRule | None = None,
    metric_fn: MetricFn | None = None,
    adapt_filter: Callable[[str], bool] | None = None,
) -> MetaLearner:
    """BOIL (Oh et al. 2021): MAML that adapts only the body; the head stays at its meta-learned value.

    The mirror image of :func:`anil`: the inner loop updates every parameter whose path does not
    start with ``head`` (the classifier), so adaptation must move the features towards the fixed
    decision boundaries. ``adapt_filter`` narrows the body further (the LoRA adapters of a
    pretrained encoder, say).

    Example:
      >>> import jax
      >>> from jmeta.core import Batch
      >>> from jmeta.models import mlp
      >>> learner = boil(mlp(2, 1, hidden=(4,)), inner_lr=0.1)
      >>> meta = learner.init(jax.random.key(0))
      >>> support = Batch(jax.numpy.ones((3, 2)), jax.numpy.zeros((3, 1)))
      >>> adapted, _ = learner.adapt(meta, support)
      >>> bool((adapted["head"]["kernel"] == meta["model"]["head"]["kernel"]).all())
      True
    """
    prefix = head.rstrip("/") + "/"
    return gradient_learner(
        model,
        rule if rule is not None else sgd(inner_lr),
        inner_steps,
        loss_fn=loss_fn,
        first_order=first_order,
        remat=remat,
        unroll=unroll,
        truncate=truncate,
        adapt_filter=_both(lambda path: not (path + "/").startswith(prefix), adapt_filter),
        metric_fn=metric_fn,
        name="boil",
    )


register("maml", maml)
register("fomaml", maml, fixed={"first_order": True})
register("metasgd", metasgd)
register("anil", anil)
register("boil", boil)


@register("finetune", options=maml)
def _finetune(env, **options) -> MetaLearner:
    """``learner=dict(name="finetune", ...)``: MAML's inner loop from the initial parameters on
    every test task, never meta-trained (the fine-tuning baseline of a pretrained encoder)."""
    if env.meta_steps:
        raise ConfigError(
            "learner 'finetune' fine-tunes the initial parameters on each test task and is never "
            f"meta-trained: set train.meta_steps=0 (got {env.meta_steps}).")
    return env.build(maml, options)
