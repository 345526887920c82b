"""R2-D2 (Bertinetto et al. 2019): a closed-form ridge-regression head on a learned embedding."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.scipy.linalg

from jmeta.algorithms._gradient import MetricFn
from jmeta.algorithms._registry import register
from jmeta.core._checks import check_bool, check_int, check_number
from jmeta.core._losses import accuracy, cross_entropy_loss
from jmeta.core._meta import MetaLearner
from jmeta.core._types import Batch, Episode, Params, PRNGKey
from jmeta.models._functional import Model


def ridge_head(features: jax.Array, targets: jax.Array, lam: jax.Array) -> jax.Array:
    """Ridge-regression weights ``W = X^T (X X^T + lam I_S)^{-1} Y``: ``[D, C]``.

    The Woodbury form of ``(X^T X + lam I_D)^{-1} X^T Y``: a Cholesky solve of size ``S`` (the
    number of support examples, small in few-shot learning) instead of ``D``. Differentiable in
    ``features``, ``targets`` and ``lam``.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> [[round(v, 4) for v in row] for row in ridge_head(x, jnp.eye(2), 1.0).tolist()]
      [[0.5, 0.0], [0.0, 0.4]]
    """
    gram = features @ features.T
    eye = jnp.eye(gram.shape[0], dtype=gram.dtype)
    alpha = jax.scipy.linalg.solve(gram + lam * eye, targets, assume_a="pos")
    return features.T @ alpha


def r2d2(
    model: Model,
    *,
    ways: int,
    lam_init: float = 1.0,
    scale_init: float = 1.0,
    bias_column: bool = True,
    metric_fn: MetricFn | None = accuracy,
) -> MetaLearner:
    """R2-D2: ridge regression to one-hot targets on meta-learned embeddings, solved per episode.

    ``model`` embeds inputs (``model.apply(params, x) -> [B, D]``). Adaptation embeds the support
    set ``X`` ``[S, D]`` (with a column of ones appended when ``bias_column``, so the ridge head
    has an intercept, regularised like the weights) and fits ``W = X^T (X X^T + lam I_S)^{-1} Y``
    to the one-hot targets ``Y`` ``[S, ways]`` (:func:`ridge_head`). Query logits are
    ``scale * X_q W + bias`` and meta-training minimises their cross-entropy; gradients flow
    through the solve into the embedding and into ``lam``, ``scale`` and ``bias``.

    ``lam`` is learned as ``log_lam``; ``scale`` and ``bias`` are learned scalars (the paper's
    "adjust" layer). The scalar ``bias`` shifts every logit equally, so the softmax and its
    cross-entropy do not depend on it and its meta-gradient is zero; it is kept to match the
    paper's parameterisation.

    * meta-parameters: ``{"model": embedding params, "rule": {"log_lam", "scale", "bias"}}``
      (scalars);
    * ``adapt(meta, support, ...)`` returns ``({"model", "rule", "weights": W [D(+1), ways]},
      trace)`` with ``trace["support_loss"]`` of shape ``[1]`` and, if ``eval_fn`` is given,
      ``trace["eval"]`` repeated over ``max(inner_steps or 1, 1)`` "steps";
    * ``predict(task_params, x)`` returns ``[B, ways]`` logits. Given parameters without ridge
      weights (the bare embedding parameters, as ``jmeta.train.adaptation_curves`` passes for
      "step 0"), it predicts chance: uniform (all-zero) logits;
    * ``task_grad`` reports ``loss`` (query cross-entropy), ``support_loss_before`` (support
      cross-entropy of the fitted head) and ``metric_fn``'s query metrics;
    * ``inner_steps`` is 0; ``any_ways`` is True.

    Args:
      model: the embedding network, a functional :class:`jmeta.models.Model` returning
        ``[B, D]``.
      ways: number of classes per episode (static; labels are ``0..ways-1``), at least 2.
      lam_init: initial ridge regulariser ``lam > 0``.
      scale_init: initial output scale.
      bias_column: append a constant 1 feature (an intercept for the ridge head).
      metric_fn: ``(logits, labels) -> dict`` of extra query metrics (default: accuracy), or
        ``None``.

    Example (a 3-way 2-shot episode with a tiny MLP embedding):
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.core import Batch, Episode
      >>> from jmeta.models import mlp
      >>> learner = r2d2(mlp(2, 4, hidden=(8,)), ways=3)
      >>> meta = learner.init(jax.random.key(0))
      >>> sorted(meta["rule"])
      ['bias', 'log_lam', 'scale']
      >>> x = jax.random.normal(jax.random.key(1), (6, 2))
      >>> support = Batch(x, jnp.array([0, 0, 1, 1, 2, 2]))
      >>> task_params, trace = learner.adapt(meta, support)
      >>> task_params["weights"].shape, trace["support_loss"].shape
      ((5, 3), (1,))
      >>> learner.predict(task_params, x).shape
      (6, 3)
      >>> grads, metrics = learner.task_grad(meta, Episode(support, support), jax.random.key(2))
      >>> sorted(metrics)
      ['accuracy', 'loss', 'support_loss_before']
    """
    check_int("r2d2: ways", ways, 2)
    check_number("r2d2: lam_init", lam_init)
    check_number("r2d2: scale_init", scale_init, low=-math.inf)
    if scale_init == 0:
        raise ValueError(f"r2d2: scale_init must be a non-zero finite number; got {scale_init!r}.")
    check_bool("r2d2: bias_column", bias_column)

    def init(key: PRNGKey) -> Params:
        rule = {
            "log_lam": jnp.asarray(math.log(lam_init), jnp.float32),
            "scale": jnp.asarray(scale_init, jnp.float32),
            "bias": jnp.zeros((), jnp.float32),
        }
        return {"model": model.init(key), "rule": rule}

    def features(params: Params, x: jax.Array) -> jax.Array:
        e = model.apply(params, x)
        if e.ndim != 2:
            raise ValueError(
                f"r2d2: the model must return embeddings [B, D]; got shape {e.shape}. "
                "Flatten its output (e.g. an embedding network without a classification head)."
            )
        if bias_column:
            e = jnp.concatenate([e, jnp.ones((e.shape[0], 1), e.dtype)], axis=1)
        return e

    def logits_of(rule: Params, feats: jax.Array, weights: jax.Array) -> jax.Array:
        return rule["scale"] * (feats @ weights) + rule["bias"]

    def fit(meta: Params, support: Batch):
        rule = meta["rule"]
        feats = features(meta["model"], support.x)
        targets = jax.nn.one_hot(support.y, ways, dtype=feats.dtype)
        weights = ridge_head(feats, targets, jnp.exp(rule["log_lam"]).astype(feats.dtype))
        support_loss = cross_entropy_loss(logits_of(rule, feats, weights), support.y)
        return weights, support_loss

    def predict(task_params: Params, x: jax.Array) -> jax.Array:
        if isinstance(task_params, dict) and "weights" in task_params:
            feats = features(task_params["model"], x)
            return logits_of(task_params["rule"], feats, task_params["weights"])
        # Unadapted (bare embedding parameters): no ridge head, so chance-level uniform logits.
        return jnp.zeros((x.shape[0], ways), jnp.float32)

    def adapt(meta, support, *, inner_steps=None, key=None, eval_fn=None, first_order=False):
        del key, first_order
        weights, support_loss = fit(meta, support)
        task_params = {"model": meta["model"], "rule": meta["rule"], "weights": weights}
        trace = {"support_loss": support_loss[None]}
        if eval_fn is not None:
            steps = max(inner_steps or 1, 1)
            value = eval_fn(task_params)
            trace["eval"] = jax.tree.map(
                lambda v: jnp.broadcast_to(v, (steps,) + jnp.shape(v)), value
            )
        return task_params, trace

    def task_loss(meta, episode: Episode):
        weights, support_loss = fit(meta, episode.support)
        logits = logits_of(meta["rule"], features(meta["model"], episode.query.x), weights)
        loss = cross_entropy_loss(logits, episode.query.y)
        extra = metric_fn(logits, episode.query.y) if metric_fn is not None else {}
        metrics = dict(extra, loss=loss, support_loss_before=jax.lax.stop_gradient(support_loss))
        return loss, metrics

    def task_grad(meta, episode: Episode, key):
        del key
        (_, metrics), grads = jax.value_and_grad(task_loss, has_aux=True)(meta, episode)
        return grads, metrics

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        task_grad=task_grad,
        family=model.family,
        inner_steps=0,
        any_ways=True,
    )


register("r2d2", r2d2, network="embedding")
