"""MetaICL (Min, Lewis, Zettlemoyer & Hajishirzi, NAACL 2022): meta-train a language model to
learn a task from demonstrations placed in its input."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jmeta.algorithms._gradient import MetricFn
from jmeta.algorithms._registry import register
from jmeta.core._checks import check_bool, check_choice, check_int
from jmeta.core._losses import accuracy, cross_entropy_loss
from jmeta.core._meta import MetaLearner
from jmeta.core._types import Batch, Episode, Params, PRNGKey
from jmeta.models import continuation_logprob, label_tokens, pack
from jmeta.models._functional import Model

SCORINGS = ("direct", "channel")
LOSSES = ("classes", "lm")


def metaicl(
    model: Model,
    *,
    ways: int,
    labels: Sequence = (),
    scoring: str = "direct",
    pad_token_id: int | None = None,
    full: bool = False,
    demonstrations: int | None = None,
    shuffle: bool = True,
    loss: str = "classes",
    metric_fn: MetricFn | None = accuracy,
) -> MetaLearner:
    """MetaICL: the support set becomes ``k`` demonstrations in the language model's input, and
    meta-training teaches the model (its LoRA adapters, or every weight) to use them.

    With verbalisers ``v_c`` (``labels``: token ids of each class) and the support set
    ``(x_1, y_1) ... (x_k, y_k)``, a query ``x`` gets the class scores

        direct:   s_c(x) = log p(v_c | x_1 v_{y_1} ... x_k v_{y_k} x)
        channel:  s_c(x) = log p(x | v_{y_1} x_1 ... v_{y_k} x_k v_c)

    (:func:`jmeta.models.continuation_logprob`; padding anywhere is packed away), and
    meta-training minimises, over tasks and their queries, ``-log softmax_c s_c(x)[y]``
    (``loss="classes"``) or MetaICL's own loss, the language-model loss of the right
    continuation ``-s_y(x)`` (``loss="lm"``), with respect to the trainable parameters.

    * meta-parameters: ``{"model": the decoder's params, "rule": ()}``; ``model`` is a
      language model (``apply(params, ids [..., L], positions=None) -> logits [..., L,
      vocab]``, or ``[..., n, vocab]`` at ``positions [..., n]`` only, such as
      ``jmeta.models.decoder(cfg, lora_targets=...)``: only the rows scored are projected
      onto the vocabulary). Whatever the model does not freeze
      trains: its adapters, or (``full=True``, a decoder with ``train_backbone=True``) all;
    * ``adapt(meta, support, key=None)`` keeps the support set as the demonstrations, in its
      order (``key`` given and ``shuffle``: in a random order); ``demonstrations=k`` keeps the
      first ``k`` (``0``: zero-shot, the verbalisers scored after ``x`` alone);
    * ``predict(task_params, x [Q, L]) -> [Q, ways]`` scores; given parameters without
      demonstrations (the bare model parameters) it scores zero-shot;
    * ``task_grad`` shuffles the demonstrations with its key (``shuffle``) and reports ``loss``
      and ``metric_fn``'s query metrics; ``inner_steps`` is 0; ``any_ways`` is True for any
      number of classes up to ``len(labels)`` (the first ``ways`` verbalisers are used).

    Direct scoring with one token per verbaliser runs one forward pass per query (the logits
    after the prompt give every class's score); otherwise one per query and class.

    Args:
      model: the language model (``jmeta.models.decoder(..., output="logits")``).
      ways: classes per episode (labels ``0..ways-1``).
      labels: one verbaliser per class: a token id or a sequence of ids (in a config, the
        model section's ``labels`` when left empty).
      scoring: ``"direct"`` or ``"channel"``.
      pad_token_id: the padding id of the examples (``None``: every token is real).
      full: the model trains its whole backbone (a check: the model must then not freeze it,
        and must freeze it when ``False``).
      demonstrations: how many support examples go into the prompt (``None``: all).
      shuffle: shuffle the demonstrations when a key is given.
      loss: ``"classes"`` (cross-entropy of the class scores) or ``"lm"`` (MetaICL's).
      metric_fn: ``(scores, labels) -> dict`` of query metrics (default accuracy), or ``None``.

    Example (a 3-way 1-shot episode on a tiny random decoder):
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.core import Batch, Episode
      >>> from jmeta.models import DecoderConfig, decoder
      >>> lm = decoder(DecoderConfig("llama", 16, 8, 1, 2, 16), lora_targets=("q", "v"))
      >>> learner = metaicl(lm, ways=3, labels=(1, 2, 3))
      >>> meta = jax.jit(learner.init)(jax.random.key(0))
      >>> support = Batch(jnp.array([[5, 6], [7, 8], [9, 10]]), jnp.array([0, 1, 2]))
      >>> classify = jax.jit(lambda m, s, x: learner.predict(learner.adapt(m, s)[0], x))
      >>> classify(meta, support, jnp.array([[5, 6], [9, 9]])).shape
      (2, 3)
      >>> episode = Episode(support, support)
      >>> grads, metrics = jax.eval_shape(learner.task_grad, meta, episode, jax.random.key(1))
      >>> sorted(metrics)
      ['accuracy', 'loss']
    """
    check_int("metaicl: ways", ways, 2)
    check_choice("metaicl: scoring", scoring, SCORINGS)
    check_choice("metaicl: loss", loss, LOSSES)
    check_bool("metaicl: full", full)
    check_bool("metaicl: shuffle", shuffle)
    if demonstrations is not None:
        check_int("metaicl: demonstrations (None: the whole support set)", demonstrations, 0)
    labels = tuple(labels) if isinstance(labels, (list, tuple)) else (labels,)
    if len(labels) < ways:
        raise ValueError(f"metaicl: {len(labels)} verbalisers (labels) for {ways} classes; give "
                         "one token id (or a sequence of ids) per class (learner.labels or "
                         "model.labels).")
    frozen = getattr(model, "frozen", None)
    if full and frozen is not None:
        raise ValueError("metaicl: full=True trains the whole decoder, but the model freezes its "
                         "backbone: build it with train_backbone=True (config "
                         "model.train_backbone=true).")
    if not full and frozen is None:
        raise ValueError("metaicl: the model trains its whole backbone (train_backbone=True): "
                         "set full=True, or build the model with its backbone frozen.")
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    vocab = jax.eval_shape(model.apply, shapes, jax.ShapeDtypeStruct((1, 1), jnp.int32)).shape[-1]
    verb = jnp.asarray(label_tokens(labels[:ways], vocab, ways))  # [C, Lv], -1 padded
    verb_mask, verb = verb >= 0, jnp.maximum(verb, 0)
    single = verb.shape[1] == 1

    def real(x):
        return jnp.ones(x.shape, bool) if pad_token_id is None else x != pad_token_id

    def init(key: PRNGKey) -> Params:
        return {"model": model.init(key), "rule": ()}

    def demos_of(support: Batch, key) -> Batch:
        if key is not None and shuffle:
            support = jax.tree.map(
                lambda a: a[jax.random.permutation(key, a.shape[0])], support)
        return support if demonstrations is None else jax.tree.map(
            lambda a: a[:demonstrations], support)

    def scores(params, demos: Batch | None, x):
        fn = lambda ids, at: model.apply(params, ids, positions=at)  # noqa: E731
        q, x_mask = x.shape[0], real(x)
        if demos is None:
            d_x, d_v = jnp.zeros((0, x.shape[1]), x.dtype), jnp.zeros((0, verb.shape[1]), x.dtype)
            d_y = jnp.zeros((0,), jnp.int32)
        else:
            d_x, d_y = demos.x, demos.y
            d_v = verb[d_y]
        d_xm, d_vm = real(d_x), verb_mask[d_y]
        if scoring == "direct":  # x_1 v_1 ... x_k v_k x | v_c
            ctx = jnp.concatenate([d_x, d_v], -1).reshape(-1)
            ctx_m = jnp.concatenate([d_xm, d_vm], -1).reshape(-1)
            prefix = jnp.concatenate([jnp.broadcast_to(ctx, (q, ctx.shape[0])), x], -1)
            prefix_m = jnp.concatenate([jnp.broadcast_to(ctx_m, (q, ctx.shape[0])), x_mask], -1)
            if single:  # the logits after the prompt score every one-token verbaliser at once
                ids, mask = (prefix, prefix_m) if pad_token_id is None else pack(prefix, prefix_m)
                last = jnp.maximum(mask.sum(-1) - 1, 0)
                rows = fn(ids, last[:, None])[:, 0]
                return jax.nn.log_softmax(rows.astype(jnp.float32), -1)[:, verb[:, 0]]
            return continuation_logprob(fn, prefix[:, None], prefix_m[:, None], verb, verb_mask)
        # channel: v_1 x_1 ... v_k x_k v_c | x
        ctx = jnp.concatenate([d_v, d_x], -1).reshape(-1)
        ctx_m = jnp.concatenate([d_vm, d_xm], -1).reshape(-1)
        c = verb.shape[0]
        prefix = jnp.concatenate([jnp.broadcast_to(ctx, (c, ctx.shape[0])), verb], -1)
        prefix_m = jnp.concatenate([jnp.broadcast_to(ctx_m, (c, ctx.shape[0])), verb_mask], -1)
        return continuation_logprob(fn, prefix[None], prefix_m[None], x[:, None], x_mask[:, None])

    def predict(task_params: Params, x: jax.Array) -> jax.Array:
        if isinstance(task_params, dict) and "demos" in task_params:
            return scores(task_params["model"], task_params["demos"], x)
        return scores(task_params, None, x)  # bare model parameters: zero-shot

    def adapt(meta, support, *, inner_steps=None, key=None, eval_fn=None, first_order=False):
        del inner_steps, first_order
        task_params = {"model": meta["model"], "demos": demos_of(support, key)}
        trace = {}
        if eval_fn is not None:
            trace["eval"] = eval_fn(task_params)[None]
        return task_params, trace

    def query_loss(meta, episode: Episode, key):
        s = scores(meta["model"], demos_of(episode.support, key), episode.query.x)
        y = episode.query.y
        value = (cross_entropy_loss(s, y) if loss == "classes"
                 else -jnp.mean(jnp.take_along_axis(s, y[:, None], -1)))
        extra = metric_fn(s, y) if metric_fn is not None else {}
        return value, dict(extra, loss=value)

    def task_grad(meta, episode: Episode, key):
        (_, metrics), grads = jax.value_and_grad(query_loss, has_aux=True)(meta, episode, key)
        return grads, metrics

    return MetaLearner(init=init, adapt=adapt, predict=predict, task_grad=task_grad,
                       family=model.family, inner_steps=0, any_ways=True)


@register("metaicl", network="lm", options=metaicl)
def _from_config(env, **options) -> MetaLearner:
    """``learner=dict(name="metaicl", ...)`` on ``model=dict(name="decoder", ...)``: ``labels``
    and ``pad_token_id`` default to the model section's; a prompt longer than the decoder's
    context is an error before anything compiles."""
    model_cfg = env.cfg.model
    if not options.get("labels"):
        options["labels"] = tuple(model_cfg.get("labels", ()))
    if options.get("pad_token_id") is None:
        options["pad_token_id"] = model_cfg.get("pad_token_id")
    learner = env.build(metaicl, options, network="lm")
    cfg = env.cfg
    shots = max(cfg.data.get("train_shots") or 0, cfg.data.shots)
    demos = env.ways * shots
    length = env.input_shape
    meta = jax.eval_shape(learner.init, jax.random.key(0))
    support = Batch(jax.ShapeDtypeStruct((demos, *length), jnp.int32),
                    jax.ShapeDtypeStruct((demos,), jnp.int32))
    query = jax.ShapeDtypeStruct((1, *length), jnp.int32)
    jax.eval_shape(lambda m, s, x: learner.predict(learner.adapt(m, s)[0], x), meta, support,
                   query)  # the decoder checks the prompt's length against its context
    return learner
