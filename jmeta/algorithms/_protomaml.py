"""Proto-MAML (Triantafillou et al., ICLR 2020, "Meta-Dataset"): MAML whose linear head starts
each task at the Prototypical Network classifier of its support set."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jmeta.algorithms._gradient import LossFn, MetricFn, gradient_learner
from jmeta.algorithms._protonets import prototypes_of
from jmeta.algorithms._registry import register
from jmeta.core._checks import check_int, check_number
from jmeta.core._inner import InnerRule
from jmeta.core._losses import accuracy, cross_entropy_loss
from jmeta.core._meta import MetaLearner
from jmeta.core._types import Params
from jmeta.inner._rules import sgd
from jmeta.models._functional import Model


def prototype_head(features: jax.Array, labels: jax.Array, ways: int,
                   scale: float = 1.0) -> Params:
    """The linear head whose logits rank classes as ProtoNets' squared Euclidean distance does.

    With prototypes ``c_k`` (the class means of ``features`` ``[S, D]`` over ``labels`` in
    ``0..ways-1``), ``kernel[:, k] = 2 * scale * c_k`` and ``bias[k] = -scale * |c_k|^2``, so
    ``f @ kernel + bias = -scale * |f - c_k|^2 + scale * |f|^2``: the same softmax as
    ``-scale * |f - c_k|^2``, because the last term does not depend on the class.

    Example:
      >>> import jax.numpy as jnp
      >>> f = jnp.array([[0.0, 2.0], [2.0, 4.0], [5.0, 5.0]])
      >>> head = prototype_head(f, jnp.array([0, 0, 1]), 2)
      >>> head["kernel"].T.tolist(), head["bias"].tolist()
      ([[2.0, 6.0], [10.0, 10.0]], [-10.0, -50.0])
    """
    c = prototypes_of(features, labels, ways)  # [ways, D]
    return {"kernel": 2.0 * scale * c.T, "bias": -scale * jnp.sum(c * c, axis=-1)}


def protomaml(
    model: Model,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    *,
    ways: int,
    scale: float = 1.0,
    adapt_filter: Callable[[str], bool] | None = None,
    loss_fn: LossFn = cross_entropy_loss,
    first_order: bool = False,
    remat: bool = False,
    unroll: bool | None = None,
    truncate: int | None = None,
    rule: InnerRule | None = None,
    metric_fn: MetricFn | None = accuracy,
    head_features: bool = True,
) -> MetaLearner:
    """Proto-MAML: MAML over a model with a linear head that each task initialises from its
    support set's prototypes (:func:`prototype_head`), then adapts with the rest.

    Before the inner loop, the body (``model.features``, under the meta-parameters) embeds the
    support set; the head starts at the ProtoNets classifier of those embeddings, so step 0
    already predicts as a Prototypical Network, and the inner steps fine-tune from there. The
    meta-gradient reaches the body both through the adapted parameters and through the
    prototypes; ``first_order=True`` drops the inner steps' second derivatives but keeps the
    path through the prototypes (fo-Proto-MAML, as Meta-Dataset trains it). The meta-learned
    head (``meta["model"]["head"]``) is never used and gets a zero meta-gradient; only its
    shape matters. Predictions without adaptation (``learner.predict(meta["model"], x)``) use
    it, so they are not Proto-MAML's step 0: adapt first.

    Args:
      model: a :class:`jmeta.models.Model` with ``features`` whose head has ``ways`` outputs
        (``mlp``, ``conv4``, ``resnet12``, ``bert_lora`` with ``num_classes=ways``).
      inner_lr: SGD step size of the inner loop (ignored when ``rule`` is given).
      inner_steps: inner steps during meta-training.
      ways: classes per episode; labels are ``0..ways-1``.
      scale: multiplies the prototype logits (``scale * -|f - c_k|^2``): a temperature for
        embeddings of small norm (unit-norm sentence embeddings want about 5, the
        equivalent of a cosine temperature of 10).
      adapt_filter: the parameters the inner loop adapts (``None``: all). A filter that keeps
        only ``head/...`` makes it Proto-ANIL, which computes the body's features once.
      loss_fn, first_order, remat, unroll, truncate, rule, metric_fn, head_features: as in
        :func:`jmeta.algorithms.gradient_learner`.

    Example (a 3-way task on a tiny MLP: step 0 is the ProtoNets classifier):
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.core import Batch
      >>> from jmeta.models import mlp
      >>> learner = protomaml(mlp(2, 3, hidden=(8,)), inner_lr=0.1, ways=3)
      >>> meta = learner.init(jax.random.key(0))
      >>> support = Batch(jax.random.normal(jax.random.key(1), (6, 2)), jnp.array([0, 0, 1, 1, 2, 2]))
      >>> adapted, trace = learner.adapt(meta, support)
      >>> adapted["head"]["kernel"].shape, trace["support_loss"].shape
      ((8, 3), (1,))
    """
    check_int("protomaml: ways", ways, 2)
    check_number("protomaml: scale", scale)
    if getattr(model, "eval_apply", None) is not None:
        raise ValueError(
            "protomaml builds each task's head from training-mode features, which a model with "
            "stored BatchNorm statistics (bn_mode='running') does not have at test time: use "
            "bn_mode='transductive'.")
    if getattr(model, "features", None) is None:
        raise ValueError(
            "protomaml: the model has no features (the input of its linear head): use "
            "jmeta.models.mlp, conv4, resnet12, bert_lora with num_classes, or from_nnx of a "
            "module with a features method and an nnx.Linear head.")
    outputs = jax.eval_shape(model.init, jax.random.key(0))["head"]["kernel"].shape[-1]
    if outputs != ways:
        raise ValueError(f"protomaml: the model's head has {outputs} outputs but ways={ways}; "
                         f"build the model with {ways} classes.")

    def head_init(features, labels):
        return prototype_head(features, labels, ways, scale)

    return gradient_learner(
        model,
        rule if rule is not None else sgd(inner_lr),
        inner_steps,
        loss_fn=loss_fn,
        first_order=first_order,
        remat=remat,
        adapt_filter=adapt_filter,
        metric_fn=metric_fn,
        name="protomaml",
        unroll=unroll,
        truncate=truncate,
        head_features=head_features,
        head_init=head_init,
    )


register("protomaml", protomaml)
