"""Prototypical Networks (Snell et al. 2017): classify by distance to per-class mean embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jmeta.algorithms._gradient import MetricFn
from jmeta.algorithms._registry import register
from jmeta.core._checks import check_choice, check_int
from jmeta.core._losses import accuracy, cross_entropy_loss
from jmeta.core._meta import Embedded, MetaLearner
from jmeta.core._types import Batch, Episode, Params, PRNGKey
from jmeta.models._functional import Model

DISTANCES = ("sqeuclidean", "cosine")
COSINE_SCALE = 10.0
"""Fixed temperature of the cosine-similarity logits (cosine similarities lie in [-1, 1])."""

_EPS = 1e-8


def prototypes_of(embeddings: jax.Array, labels: jax.Array, ways: int) -> jax.Array:
    """Per-class mean of ``embeddings`` ``[S, D]`` over ``labels`` in ``0..ways-1``: ``[ways, D]``.

    A class without any support example gets the zero vector.

    Example:
      >>> import jax.numpy as jnp
      >>> e = jnp.array([[0.0, 2.0], [2.0, 4.0], [5.0, 5.0]])
      >>> prototypes_of(e, jnp.array([0, 0, 1]), 2).tolist()
      [[1.0, 3.0], [5.0, 5.0]]
    """
    one_hot = jax.nn.one_hot(labels, ways, dtype=embeddings.dtype)  # [S, ways]
    sums = one_hot.T @ embeddings  # [ways, D]
    counts = jnp.sum(one_hot, axis=0)  # [ways]
    return sums / jnp.maximum(counts, 1.0)[:, None]


def _logits(embeddings: jax.Array, prototypes: jax.Array, distance: str) -> jax.Array:
    if distance == "sqeuclidean":
        diff = embeddings[:, None, :] - prototypes[None, :, :]
        return -jnp.sum(diff * diff, axis=-1)

    def normalise(v):
        return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + _EPS)

    return COSINE_SCALE * normalise(embeddings) @ normalise(prototypes).T


def protonets(
    model: Model,
    *,
    ways: int,
    distance: str = "sqeuclidean",
    metric_fn: MetricFn | None = accuracy,
) -> MetaLearner:
    """Prototypical Networks: a closed-form "inner loop" over a meta-learned embedding.

    ``model`` embeds inputs (``model.apply(params, x) -> [B, D]``), e.g.
    ``flatten_inputs(mlp(in_dim, D))`` or a convolutional backbone. Adaptation computes one
    prototype per class, the mean embedding of its support examples (labels ``0..ways-1``; a
    class absent from the support gets the zero vector), and predicts logits equal to minus the
    squared Euclidean distance to each prototype (``distance="sqeuclidean"``) or
    ``10 * cosine similarity`` (``distance="cosine"``). Meta-training minimises the query
    cross-entropy of this classifier with respect to the embedding parameters.

    * meta-parameters: ``{"model": embedding params, "rule": ()}``;
    * ``adapt(meta, support, ...)`` returns ``({"model": params, "prototypes": [ways, D]},
      trace)`` with ``trace["support_loss"]`` of shape ``[1]`` and, if ``eval_fn`` is given,
      ``trace["eval"]`` stacked over ``max(inner_steps or 1, 1)`` identical "steps" (more steps
      change nothing for a closed-form learner);
    * ``predict(task_params, x)`` returns ``[B, ways]`` logits. Given parameters without
      prototypes (the bare embedding parameters, as ``jmeta.train.adaptation_curves`` passes
      for "step 0"), the unadapted ProtoNet predicts chance: uniform (all-zero) logits;
    * ``task_grad`` reports ``loss`` (query cross-entropy), ``support_loss_before`` (support
      cross-entropy with the prototypes) and ``metric_fn``'s query metrics;
    * ``inner_steps`` is 0; ``any_ways`` is True (test on episodes of any number of classes);
    * ``embedded`` is set when ``model.per_example``: the inputs matter only through their
      embeddings, so evaluation embeds each distinct test input once
      (:class:`jmeta.core.Embedded`).

    Args:
      model: the embedding network, a functional :class:`jmeta.models.Model`.
      ways: number of classes per episode (static; labels are ``0..ways-1``), at least 2.
      distance: ``"sqeuclidean"`` or ``"cosine"``.
      metric_fn: ``(logits, labels) -> dict`` of extra query metrics (default: accuracy), or
        ``None``.

    Example (a 3-way 2-shot episode with a tiny MLP embedding):
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.core import Batch, Episode
      >>> from jmeta.models import mlp
      >>> learner = protonets(mlp(2, 4, hidden=(8,)), ways=3)
      >>> meta = learner.init(jax.random.key(0))
      >>> x = jax.random.normal(jax.random.key(1), (6, 2))
      >>> support = Batch(x, jnp.array([0, 0, 1, 1, 2, 2]))
      >>> task_params, trace = learner.adapt(meta, support)
      >>> task_params["prototypes"].shape, trace["support_loss"].shape
      ((3, 4), (1,))
      >>> learner.predict(task_params, x).shape
      (6, 3)
      >>> grads, metrics = learner.task_grad(meta, Episode(support, support), jax.random.key(2))
      >>> sorted(metrics)
      ['accuracy', 'loss', 'support_loss_before']
    """
    check_choice("protonets: distance", distance, DISTANCES)
    check_int("protonets: ways", ways, 2)

    def init(key: PRNGKey) -> Params:
        return {"model": model.init(key), "rule": ()}

    def classify(params: Params, prototypes: jax.Array, x: jax.Array) -> jax.Array:
        return _logits(model.apply(params, x), prototypes, distance)

    def fit_prototypes(params: Params, support: Batch) -> jax.Array:
        return prototypes_of(model.apply(params, support.x), support.y, ways)

    def predict(task_params: Params, x: jax.Array) -> jax.Array:
        if isinstance(task_params, dict) and "prototypes" in task_params:
            return classify(task_params["model"], task_params["prototypes"], x)
        # Unadapted (bare embedding parameters): no prototypes, so chance-level uniform logits.
        return jnp.zeros((x.shape[0], ways), jnp.float32)

    def adapt(meta, support, *, inner_steps=None, key=None, eval_fn=None, first_order=False):
        del key, first_order
        params = meta["model"]
        prototypes = fit_prototypes(params, support)
        task_params = {"model": params, "prototypes": prototypes}
        support_loss = cross_entropy_loss(classify(params, prototypes, support.x), support.y)
        trace = {"support_loss": support_loss[None]}
        if eval_fn is not None:
            steps = max(inner_steps or 1, 1)
            value = eval_fn(task_params)
            trace["eval"] = jax.tree.map(
                lambda v: jnp.broadcast_to(v, (steps,) + jnp.shape(v)), value
            )
        return task_params, trace

    def task_loss(meta, episode: Episode):
        params = meta["model"]
        prototypes = fit_prototypes(params, episode.support)
        support_loss = cross_entropy_loss(
            classify(params, prototypes, episode.support.x), episode.support.y
        )
        logits = classify(params, prototypes, episode.query.x)
        loss = cross_entropy_loss(logits, episode.query.y)
        extra = metric_fn(logits, episode.query.y) if metric_fn is not None else {}
        metrics = dict(extra, loss=loss, support_loss_before=jax.lax.stop_gradient(support_loss))
        return loss, metrics

    def task_grad(meta, episode: Episode, key):
        del key
        (_, metrics), grads = jax.value_and_grad(task_loss, has_aux=True)(meta, episode)
        return grads, metrics

    embedded = None
    if model.per_example:
        embedded = Embedded(embed=lambda meta, x: model.apply(meta["model"], x),
                            learner=protonets(_IDENTITY, ways=ways, distance=distance,
                                              metric_fn=metric_fn),
                            pad_id=model.pad_id)
    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        task_grad=task_grad,
        family=model.family,
        inner_steps=0,
        any_ways=True,
        embedded=embedded,
    )


_IDENTITY = Model(init=lambda key: {}, apply=lambda params, x: x, family="dense")
"""The embedding of inputs that are embeddings already (``Embedded.learner``)."""


register("protonets", protonets, network="embedding")
