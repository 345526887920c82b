"""Matching Networks (Vinyals et al. 2016): attention over the support set, optional full context
embeddings (FCE)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jmeta.algorithms._gradient import MetricFn
from jmeta.algorithms._registry import register
from jmeta.core._checks import check_bool, check_int, check_number
from jmeta.core._losses import accuracy
from jmeta.core._meta import MetaLearner
from jmeta.core._types import Batch, Episode, Params, PRNGKey
from jmeta.inner._lstm import lstm_cell
from jmeta.models._functional import Model

_EPS = 1e-8
CANDIDATE_INIT_SCALE = 0.1
"""Factor on the initial weights of the LSTM cell input ("candidate") gate: the cells start
with small outputs, so the skip connections make FCE start close to the plain embeddings."""


def _cell_init(key: PRNGKey, in_features: int, recurrent: int, hidden: int) -> Params:
    """One FCE LSTM cell (:func:`jmeta.inner.lstm_cell`): the input and recurrent blocks of the
    kernel drawn from two keys, uniform in ``+-1/sqrt(hidden)``, the candidate gate's weights
    scaled by :data:`CANDIDATE_INIT_SCALE`, the forget-gate bias 1."""
    k_in, k_rec = jax.random.split(key)
    bound = 1.0 / math.sqrt(hidden)
    blocks = [jax.random.uniform(k, (n, 4 * hidden), jnp.float32, -bound, bound)
              for k, n in ((k_in, in_features), (k_rec, recurrent))]
    scale = jnp.repeat(jnp.array([1.0, 1.0, CANDIDATE_INIT_SCALE, 1.0]), hidden)
    bias = jnp.zeros((4 * hidden,), jnp.float32).at[hidden:2 * hidden].set(1.0)
    return {"kernel": jnp.concatenate(blocks) * scale, "bias": bias}


def fce_support(rule: Params, emb: jax.Array) -> jax.Array:
    """Full context embedding of the support set: ``g(x_i) = h_fwd_i + h_bwd_i + g'(x_i)``.

    ``emb`` ``[S, D]`` holds the plain embeddings ``g'(x_i)`` in support order; a forward and a
    backward LSTM (hidden size ``D``, zero initial state) read them as a sequence.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> rule = {"fwd": _cell_init(jax.random.key(0), 4, 4, 4),
      ...         "bwd": _cell_init(jax.random.key(1), 4, 4, 4)}
      >>> fce_support(rule, jnp.ones((5, 4))).shape
      (5, 4)
    """
    zeros = jnp.zeros(emb.shape[-1:], emb.dtype)

    def run(cell_params, seq):
        def step(carry, x):
            h, c = lstm_cell(cell_params, x, *carry)
            return (h, c), h

        return jax.lax.scan(step, (zeros, zeros), seq)[1]

    forward = run(rule["fwd"], emb)
    backward = run(rule["bwd"], emb[::-1])[::-1]
    return forward + backward + emb


def fce_query(rule: Params, emb: jax.Array, memory: jax.Array, steps: int) -> jax.Array:
    """Full context embedding of queries: the attention LSTM of the paper's appendix.

    For every query ``f'(x)`` (rows of ``emb`` ``[Q, D]``, processed independently), starting from
    ``h_0 = f'(x)``, ``c_0 = 0`` and repeating ``steps`` times::

        r = sum_i softmax_i(h . g(x_i)) g(x_i)
        h_hat, c = LSTM(f'(x), [h, r], c)
        h = h_hat + f'(x)

    and returns the last ``h``. ``memory`` ``[S, D]`` holds the support embeddings ``g(x_i)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> att = _cell_init(jax.random.key(0), 4, 8, 4)
      >>> fce_query({"att": att}, jnp.ones((3, 4)), jnp.ones((5, 4)), steps=2).shape
      (3, 4)
    """

    def step(carry, _):
        h, c = carry
        attention = jax.nn.softmax(h @ memory.T, axis=-1)
        r = attention @ memory
        h_hat, c = lstm_cell(rule["att"], emb, jnp.concatenate([h, r], axis=-1), c)
        return (h_hat + emb, c), None

    (h, _), _ = jax.lax.scan(step, (emb, jnp.zeros_like(emb)), None, length=steps)
    return h


def attention_log_probs(
    query: jax.Array, memory: jax.Array, memory_labels: jax.Array, scale: float = 1.0
) -> jax.Array:
    """Log class probabilities of the matching-network classifier: ``[Q, ways]``.

    ``a(x, x_i) = softmax_i(scale * cos(query, memory_i))`` over the support examples and
    ``p(c | x) = sum_i a(x, x_i) [y_i = c]``, computed as a masked log-sum-exp of the log
    attention (exact and stable for small probabilities). A class with no support example gets
    probability 0 (log-probability ``-inf``). ``memory_labels`` is one-hot ``[S, ways]``.

    Example:
      >>> import jax.numpy as jnp
      >>> mem = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> lp = attention_log_probs(mem, mem, jnp.eye(2))
      >>> [round(v, 4) for v in jnp.exp(lp[0]).tolist()]
      [0.7311, 0.2689]
    """

    def unit(v):
        return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + _EPS)

    log_attention = jax.nn.log_softmax(scale * unit(query) @ unit(memory).T, axis=-1)  # [Q, S]
    masked = jnp.where(memory_labels[None, :, :] > 0, log_attention[:, :, None], -jnp.inf)
    return jax.nn.logsumexp(masked, axis=1)


def _nll(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=1))


def matching_networks(
    model: Model,
    *,
    ways: int,
    fce: bool = False,
    fce_steps: int | None = None,
    embed_dim: int | None = None,
    scale: float = 1.0,
    metric_fn: MetricFn | None = accuracy,
) -> MetaLearner:
    """Matching Networks: a soft nearest-neighbour classifier over a meta-learned embedding.

    ``model`` embeds inputs (``model.apply(params, x) -> [B, D]``). A query ``x`` attends to the
    support examples with ``a(x, x_i) = softmax_i(scale * cos(f(x), g(x_i)))`` and its class
    probabilities are the attention summed per support label; meta-training minimises the query
    negative log-likelihood of these probabilities.

    Without FCE, ``f = g =`` the embedding. With ``fce=True`` (full context embeddings, the
    paper's appendix), ``g`` runs a bidirectional LSTM over the support embeddings in support
    order with a skip connection (:func:`fce_support`), and ``f`` refines each query embedding
    with an attention LSTM reading ``g`` for ``fce_steps`` steps (:func:`fce_query`; default: the
    number of support examples, known when the support is traced). The LSTM cells start near
    zero output, so FCE starts close to the plain embeddings. ``g`` depends on the order of the
    support set (as in the paper); without FCE the classifier is invariant to it.

    * meta-parameters: ``{"model": embedding params, "rule": LSTM params}``, where ``rule`` is
      ``{"fwd", "bwd", "att"}`` cells (each ``{"kernel", "bias"}``, :func:`jmeta.inner.lstm_cell`)
      with FCE and ``()`` without;
    * ``adapt(meta, support, ...)`` returns ``({"model", "rule", "memory": g [S, D],
      "memory_labels": one-hot [S, ways]}, trace)`` with ``trace["support_loss"]`` of shape ``[1]``
      (each support example classified with the whole support set as memory) and, if ``eval_fn``
      is given, ``trace["eval"]`` repeated over ``max(inner_steps or 1, 1)`` "steps";
    * ``predict(task_params, x)`` returns ``[B, ways]`` log-probabilities. Given parameters
      without a memory (the bare embedding parameters, as ``jmeta.train.adaptation_curves``
      passes for "step 0"), it predicts chance: uniform log-probabilities ``-log(ways)``;
    * ``task_grad`` reports ``loss`` (query NLL), ``support_loss_before`` (support NLL) and
      ``metric_fn``'s query metrics (computed on the log-probabilities);
    * ``inner_steps`` is 0; ``any_ways`` is True.

    Args:
      model: the embedding network, a functional :class:`jmeta.models.Model` returning
        ``[B, D]``.
      ways: number of classes per episode (static; labels are ``0..ways-1``), at least 2.
      fce: use full context embeddings.
      fce_steps: attention-LSTM steps for the queries (``None``: the number of support examples).
      embed_dim: the embedding size ``D``; required with ``fce=True`` (sizes the LSTMs).
      scale: multiplies the cosine similarities before the softmax (1.0 in the paper).
      metric_fn: ``(log_probs, labels) -> dict`` of extra query metrics (default: accuracy), or
        ``None``.

    Example (a 3-way 2-shot episode, with and without FCE):
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.core import Batch, Episode
      >>> from jmeta.models import mlp
      >>> x = jax.random.normal(jax.random.key(1), (6, 2))
      >>> support = Batch(x, jnp.array([0, 0, 1, 1, 2, 2]))
      >>> for fce in (False, True):
      ...     learner = matching_networks(mlp(2, 4, hidden=(8,)), ways=3, fce=fce, embed_dim=4)
      ...     meta = learner.init(jax.random.key(0))
      ...     task_params, trace = learner.adapt(meta, support)
      ...     log_probs = learner.predict(task_params, x)
      ...     print(log_probs.shape, trace["support_loss"].shape,
      ...           bool(jnp.allclose(jnp.exp(log_probs).sum(-1), 1.0, atol=1e-5)))
      (6, 3) (1,) True
      (6, 3) (1,) True
      >>> grads, metrics = learner.task_grad(meta, Episode(support, support), jax.random.key(2))
      >>> sorted(metrics), sorted(grads["rule"])
      (['accuracy', 'loss', 'support_loss_before'], ['att', 'bwd', 'fwd'])
    """
    check_int("matching_networks: ways", ways, 2)
    check_bool("matching_networks: fce", fce)
    if fce_steps is not None:
        check_int("matching_networks: fce_steps (or None: the support size)", fce_steps)
    if fce:
        check_int("matching_networks: fce=True needs embed_dim, the size D of the embeddings "
                  "model.apply returns ([B, D]); embed_dim", embed_dim)
    check_number("matching_networks: scale", scale)

    def init(key: PRNGKey) -> Params:
        model_key, fwd_key, bwd_key, att_key = jax.random.split(key, 4)
        rule = ()
        if fce:
            d = embed_dim
            rule = {
                "fwd": _cell_init(fwd_key, d, d, d),
                "bwd": _cell_init(bwd_key, d, d, d),
                "att": _cell_init(att_key, d, 2 * d, d),
            }
        return {"model": model.init(model_key), "rule": rule}

    def embed(params: Params, x: jax.Array) -> jax.Array:
        e = model.apply(params, x)
        if e.ndim != 2:
            raise ValueError(
                f"matching_networks: the model must return embeddings [B, D]; got shape {e.shape}. "
                "Flatten its output (e.g. an embedding network without a classification head)."
            )
        if fce and e.shape[-1] != embed_dim:
            raise ValueError(
                f"matching_networks: embed_dim={embed_dim} but the model returns embeddings of "
                f"size {e.shape[-1]}; pass embed_dim={e.shape[-1]}."
            )
        return e

    def memory_of(meta_rule: Params, support_emb: jax.Array) -> jax.Array:
        return fce_support(meta_rule, support_emb) if fce else support_emb

    def classify(meta_rule: Params, query_emb: jax.Array, memory, memory_labels) -> jax.Array:
        if fce:
            steps = fce_steps if fce_steps is not None else memory.shape[0]
            query_emb = fce_query(meta_rule, query_emb, memory, steps)
        return attention_log_probs(query_emb, memory, memory_labels, scale)

    def fit(meta: Params, support: Batch):
        support_emb = embed(meta["model"], support.x)
        memory = memory_of(meta["rule"], support_emb)
        labels = jax.nn.one_hot(support.y, ways, dtype=memory.dtype)
        support_loss = _nll(classify(meta["rule"], support_emb, memory, labels), support.y)
        return memory, labels, support_loss

    def predict(task_params: Params, x: jax.Array) -> jax.Array:
        if isinstance(task_params, dict) and "memory" in task_params:
            return classify(
                task_params["rule"],
                embed(task_params["model"], x),
                task_params["memory"],
                task_params["memory_labels"],
            )
        # Unadapted (bare embedding parameters): no memory, so chance-level uniform predictions.
        return jnp.full((x.shape[0], ways), -math.log(ways), jnp.float32)

    def adapt(meta, support, *, inner_steps=None, key=None, eval_fn=None, first_order=False):
        del key, first_order
        memory, labels, support_loss = fit(meta, support)
        task_params = {
            "model": meta["model"],
            "rule": meta["rule"],
            "memory": memory,
            "memory_labels": labels,
        }
        trace = {"support_loss": support_loss[None]}
        if eval_fn is not None:
            steps = max(inner_steps or 1, 1)
            value = eval_fn(task_params)
            trace["eval"] = jax.tree.map(
                lambda v: jnp.broadcast_to(v, (steps,) + jnp.shape(v)), value
            )
        return task_params, trace

    def task_loss(meta, episode: Episode):
        memory, labels, support_loss = fit(meta, episode.support)
        query_emb = embed(meta["model"], episode.query.x)
        log_probs = classify(meta["rule"], query_emb, memory, labels)
        loss = _nll(log_probs, episode.query.y)
        extra = metric_fn(log_probs, episode.query.y) if metric_fn is not None else {}
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


register("matching", matching_networks, network="embedding")
register("matching_fce", matching_networks, network="embedding", fixed=dict(fce=True))
