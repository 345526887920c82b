"""Transfer baselines (Chen et al. 2019, "A Closer Look at Few-shot Classification"): pre-train
an embedding as a classifier over all base classes, then fit a new classifier on each task's
support embeddings with the embedding frozen. Baseline uses a linear head, Baseline++ a cosine
head."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from jmeta.algorithms._gradient import MetricFn
from jmeta.algorithms._protonets import prototypes_of
from jmeta.algorithms._registry import register
from jmeta.core._checks import check_choice, check_int, check_number
from jmeta.core._inner import inner_loop
from jmeta.core._losses import accuracy
from jmeta.core._meta import MetaLearner
from jmeta.core._types import Batch, Episode, Params, PRNGKey
from jmeta.inner._rules import momentum_sgd
from jmeta.models._functional import Model

HEADS = ("linear", "cosine")
_EPS = 1e-8


def default_cosine_scale(num_outputs: int) -> float:
    """Baseline++'s fixed temperature of cosine logits for a head with ``num_outputs`` classes.

    2 for at most 200 classes, 10 for more (the reference implementation's choice: with
    thousands of classes, as in Omniglot, logits in [-2, 2] cannot separate the softmax).

    Example:
      >>> default_cosine_scale(5), default_cosine_scale(64), default_cosine_scale(4112)
      (2.0, 2.0, 10.0)
    """
    return 2.0 if num_outputs <= 200 else 10.0


def _normalise(v: jax.Array, axis: int) -> jax.Array:
    return v / jnp.sqrt(jnp.sum(v * v, axis=axis, keepdims=True) + _EPS)


def _logits(head: Params, embeddings: jax.Array, kind: str, scale: float) -> jax.Array:
    if kind == "linear":
        return embeddings @ head["kernel"] + head["bias"]
    return scale * _normalise(embeddings, -1) @ _normalise(head["kernel"], 0)


def transfer_baseline(
    model: Model,
    *,
    num_classes: int,
    ways: int,
    head: str = "linear",
    embed_dim: int | None = None,
    input_shape: Sequence[int] | None = None,
    finetune_steps: int = 100,
    finetune_lr: float = 0.01,
    finetune_batch: int | None = 4,
    finetune_momentum: float = 0.9,
    finetune_dampening: float = 0.9,
    finetune_weight_decay: float = 0.001,
    cosine_scale: float | None = None,
    pretrain_batch: int = 16,
    metric_fn: MetricFn | None = accuracy,
) -> MetaLearner:
    """Baseline (``head="linear"``) and Baseline++ (``head="cosine"``) of Chen et al. 2019.

    ``model`` is the embedding network (``model.apply(params, x) -> [B, D]``). Pre-training
    uses ``model.apply`` (training mode); fine-tuning and prediction use the model's test-mode
    ``eval_apply`` when it has one (BatchNorm with stored population statistics, as the paper's
    feature extraction in ``eval()`` mode), else ``model.apply``.

    **Pre-training** is the meta-training of this learner, fed by
    :func:`jmeta.data.class_batch_sampler`: ``task_grad(meta, episode, key)`` is the gradient of
    the softmax cross-entropy of the pre-training classifier over ``num_classes`` base classes
    on ``episode.query`` (global labels ``0..num_classes-1``) with respect to the embedding and
    that classifier; ``episode.support`` is ignored (it may be empty). Its metrics are ``loss``
    and ``metric_fn``'s (pre-training accuracy on the batch by default). The learner's
    ``class_batches`` is ``pretrain_batch``: a config trains it on class batches of that size.

    * meta-parameters: ``{"model": embedding params, "head": pre-training classifier}``; the
      classifier is ``{"kernel": [D, num_classes], "bias": [num_classes]}`` (linear, logits
      ``e @ kernel + bias``) or ``{"kernel": [D, num_classes]}`` (cosine, logits ``scale *
      cos(e, kernel[:, c])``), initialised uniformly in ``+-1/sqrt(D)`` with a zero bias.

    **Fine-tuning** is ``adapt(meta, support, *, inner_steps=None, key=None, eval_fn=None)``:
    the embedding is frozen and applied once to the support set; a NEW ``ways``-class head of
    the same kind is trained on the support embeddings for ``inner_steps`` (default
    ``finetune_steps``) steps of SGD with momentum, dampening and weight decay with PyTorch's
    semantics (``g += wd * p``; ``buf = g`` at the first step, then ``buf = momentum * buf + (1 -
    dampening) * g``; ``p -= lr * buf``); the defaults (lr 0.01, momentum 0.9, dampening 0.9,
    weight decay 0.001, batches of 4) are those of the reference implementation. One step is one
    mini-batch: step ``t`` belongs to epoch ``e = t // ceil(S / b)`` of the ``S`` support
    examples, which visits them in the order ``jax.random.permutation(fold_in(key, e), S)`` in
    consecutive batches of ``b = finetune_batch`` (the last one smaller when ``b`` does not
    divide ``S``); ``finetune_batch=None`` (or ``b >= S``) takes the whole support set every
    step. The paper's 100 epochs are ``100 * ceil(ways * shots / 4)`` steps. ``key=None`` uses
    ``jax.random.key(0)``.

    * initial head: linear, all zeros (the problem is convex, and a zero start makes the
      result independent of the key); cosine, the normalised mean support embedding of each
      class (the cosine-prototype classifier; the paper starts from random weights);
    * cosine scale: ``cosine_scale``, or :func:`default_cosine_scale` of the head's number of
      classes (2 for ``ways``-class heads and up to 200 base classes, 10 beyond); the cosine
      is the plain cosine similarity (the reference code adds a learned per-class norm);
    * returns ``({"model": embedding params, "task_head": head}, trace)`` with
      ``trace["support_loss"][t]`` the cross-entropy on the WHOLE support set before step ``t``
      and, if ``eval_fn`` is given, ``trace["eval"][t] = eval_fn(task params after step t)``;
      both have ``max(inner_steps, 1)`` entries (with ``inner_steps=0``, the values of the
      initial head);
    * ``predict(task_params, x)`` returns ``[B, ways]`` logits; given parameters without a
      task head (the bare embedding parameters that ``jmeta.train.adaptation_curves`` passes
      for "step 0", or the meta-parameters), it predicts chance: all-zero logits.

    ``inner_steps`` of the learner is ``finetune_steps``; ``any_ways`` is True (the new head
    has as many classes as the test episode). The fine-tuning steps are
    :func:`jmeta.core.inner_loop` with the rule :func:`jmeta.inner.momentum_sgd`.

    Args:
      model: the embedding network, a functional :class:`jmeta.models.Model`.
      num_classes: number of pre-training classes (the labels of the pre-training batches;
        ``4 * ds.num_classes`` with ``class_batch_sampler(..., augment_rotations=True)``).
      ways: classes per few-shot task (labels ``0..ways-1``), at least 2.
      head: ``"linear"`` (Baseline) or ``"cosine"`` (Baseline++).
      embed_dim: the embedding width ``D``; or give ``input_shape``.
      input_shape: the shape of one input example (e.g. ``(28, 28, 1)``), to infer ``D``.
      finetune_steps: fine-tuning steps (mini-batches) by default, >= 0.
      finetune_lr, finetune_momentum, finetune_dampening, finetune_weight_decay: the SGD of
        fine-tuning.
      finetune_batch: support examples per step, or ``None`` for the whole support set.
      cosine_scale: fixed temperature of the cosine logits (both heads), or ``None``.
      pretrain_batch: examples per class batch of the pre-training (``class_batches``).
      metric_fn: ``(logits, labels) -> dict`` of extra metrics of pre-training, or ``None``.

    Example (Baseline++ with a tiny MLP embedding, a 3-way 2-shot task):
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.core import Batch, Episode
      >>> from jmeta.models import mlp
      >>> learner = transfer_baseline(mlp(2, 4, hidden=(8,)), num_classes=10, ways=3,
      ...                             head="cosine", embed_dim=4, finetune_steps=5)
      >>> meta = learner.init(jax.random.key(0))
      >>> meta["head"]["kernel"].shape
      (4, 10)
      >>> x = jax.random.normal(jax.random.key(1), (6, 2))
      >>> support = Batch(x, jnp.array([0, 0, 1, 1, 2, 2]))
      >>> task_params, trace = learner.adapt(meta, support)
      >>> trace["support_loss"].shape, learner.predict(task_params, x).shape
      ((5,), (6, 3))
      >>> pretrain = Episode(Batch(x[:0], support.y[:0]), Batch(x, jnp.array([7, 1, 0, 9, 3, 3])))
      >>> grads, metrics = learner.task_grad(meta, pretrain, jax.random.key(2))
      >>> sorted(metrics)
      ['accuracy', 'loss']
    """
    name = "transfer_baseline"
    check_choice(f"{name}: head", head, HEADS)
    check_int(f"{name}: num_classes", num_classes, 2)
    check_int(f"{name}: ways", ways, 2)
    check_int(f"{name}: finetune_steps", finetune_steps, 0)
    check_int(f"{name}: pretrain_batch", pretrain_batch)
    if finetune_batch is not None:
        check_int(f"{name}: finetune_batch (or None for the whole support set)", finetune_batch)
    if cosine_scale is not None:
        check_number(f"{name}: cosine_scale (or None for the default)", cosine_scale)
    try:  # the fine-tuning rule checks the step size, momentum, dampening and weight decay
        rule = momentum_sgd(finetune_lr, momentum=finetune_momentum,
                            dampening=finetune_dampening, weight_decay=finetune_weight_decay)
    except ValueError as err:
        raise ValueError(f"{name}: finetune_{str(err).split(': ', 1)[1]}") from err
    dim = _embed_dim(model, embed_dim, input_shape)
    embed_eval = getattr(model, "eval_apply", None) or model.apply
    pre_scale = float(cosine_scale or default_cosine_scale(num_classes))
    task_scale = float(cosine_scale or default_cosine_scale(ways))

    def init(key: PRNGKey) -> Params:
        model_key, head_key = jax.random.split(key)
        bound = 1.0 / dim**0.5
        kernel = jax.random.uniform(head_key, (dim, num_classes), jnp.float32, -bound, bound)
        classifier = {"kernel": kernel}
        if head == "linear":
            classifier["bias"] = jnp.zeros((num_classes,), jnp.float32)
        return {"model": model.init(model_key), "head": classifier}

    def pretrain_loss(meta, batch: Batch):
        logits = _logits(meta["head"], model.apply(meta["model"], batch.x), head, pre_scale)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch.y))
        extra = metric_fn(logits, batch.y) if metric_fn is not None else {}
        return loss, dict(extra, loss=loss)

    def task_grad(meta, episode: Episode, key):
        del key
        (_, metrics), grads = jax.value_and_grad(pretrain_loss, has_aux=True)(meta, episode.query)
        return grads, metrics

    def initial_head(embeddings: jax.Array, labels: jax.Array) -> Params:
        if head == "linear":
            return {
                "kernel": jnp.zeros((embeddings.shape[-1], ways), embeddings.dtype),
                "bias": jnp.zeros((ways,), embeddings.dtype),
            }
        return {"kernel": _normalise(prototypes_of(embeddings, labels, ways), -1).T}

    def predict(task_params: Params, x: jax.Array) -> jax.Array:
        if isinstance(task_params, dict) and "task_head" in task_params:
            embeddings = embed_eval(task_params["model"], x)
            return _logits(task_params["task_head"], embeddings, head, task_scale)
        # No task head (bare embedding or meta-parameters): chance-level uniform logits.
        return jnp.zeros((x.shape[0], ways), jnp.float32)

    def adapt(meta, support, *, inner_steps=None, key=None, eval_fn=None, first_order=False):
        del first_order
        steps = finetune_steps if inner_steps is None else inner_steps
        check_int(f"{name}: inner_steps (it fixes the scan length)", steps, 0)
        body = meta["model"]
        embeddings = jax.lax.stop_gradient(embed_eval(body, support.x))
        labels = support.y
        size = embeddings.shape[0]
        batch = size if finetune_batch is None else min(finetune_batch, size)
        per_epoch = -(-size // batch)
        key = jax.random.key(0) if key is None else key

        def weighted_loss(task_head, weights):
            logits = _logits(task_head, embeddings, head, task_scale)
            return jnp.sum(
                weights * optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            )

        uniform = jnp.full((size,), 1.0 / size, embeddings.dtype)

        def batch_weights(t):
            if batch == size:
                return uniform
            order = jax.random.permutation(jax.random.fold_in(key, t // per_epoch), size)
            position = (
                jnp.zeros((size,), jnp.int32).at[order].set(jnp.arange(size, dtype=jnp.int32))
            )
            first = (t % per_epoch) * batch
            chosen = ((position >= first) & (position < first + batch)).astype(embeddings.dtype)
            return chosen / jnp.sum(chosen)

        def full(task_head):
            return {"model": body, "task_head": task_head}

        head0 = initial_head(embeddings, labels)
        before = weighted_loss(head0, uniform)[None]
        if steps == 0:
            trace = {"support_loss": before}
            if eval_fn is not None:
                trace["eval"] = jax.tree.map(lambda v: jnp.asarray(v)[None], eval_fn(full(head0)))
            return full(head0), trace

        def after(task_head, _):  # the whole support set's loss, and eval_fn, after each step
            return weighted_loss(task_head, uniform), (
                () if eval_fn is None else eval_fn(full(task_head)))

        task_head, steps_trace = inner_loop(
            lambda h, _, t: weighted_loss(h, batch_weights(t)), rule, head0, (), support, steps,
            eval_fn=after, with_step=True)
        losses, evals = steps_trace["eval"]
        trace = {"support_loss": jnp.concatenate([before, losses[:-1]])}
        if eval_fn is not None:
            trace["eval"] = evals
        return full(task_head), trace

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        task_grad=task_grad,
        family=model.family,
        inner_steps=finetune_steps,
        any_ways=True,
        class_batches=pretrain_batch,
    )


def _embed_dim(model: Model, embed_dim, input_shape) -> int:
    if embed_dim is None and input_shape is None:
        raise ValueError(
            "transfer_baseline: pass embed_dim (the width D of the embeddings) or input_shape "
            "(the shape of one example, to infer D) so that init can build the classifier."
        )
    if embed_dim is not None:
        check_int("transfer_baseline: embed_dim", embed_dim)
    if input_shape is None:
        return embed_dim
    shape = tuple(input_shape)
    for s in shape:
        check_int(f"transfer_baseline: input_shape {input_shape!r}: each size", s)
    out = jax.eval_shape(
        lambda k: model.apply(model.init(k), jnp.zeros((2,) + shape, jnp.float32)),
        jax.random.key(0),
    )
    if len(out.shape) != 2:
        raise ValueError(
            f"transfer_baseline: the model must embed a batch into [B, D]; on inputs "
            f"{(2,) + shape} it returns {out.shape}."
        )
    if embed_dim is not None and embed_dim != out.shape[1]:
        raise ValueError(
            f"transfer_baseline: embed_dim={embed_dim} but the model's embeddings have width "
            f"{out.shape[1]} on inputs of shape {shape}."
        )
    return int(out.shape[1])


register("baseline", transfer_baseline, network="embedding", fixed=dict(head="linear"))
register("baseline++", transfer_baseline, network="embedding", fixed=dict(head="cosine"))
