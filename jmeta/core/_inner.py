"""The inner loop: a static number of steps of an inner update rule, as one ``lax.scan``."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jmeta.core._tree import combine, partition
from jmeta.core._types import Batch, Params, PRNGKey, PyTree

RuleMeta = Any
RuleState = Any

MAX_UNROLLED_STEPS = 10
"""Longest inner loop that ``unroll=True`` unrolls; longer loops stay a rolled ``lax.scan``
(compile time grows with every unrolled step)."""


def default_inner_unroll(family: str = "dense", backend: str | None = None) -> bool:
    """Whether learners unroll their inner loop (up to :data:`MAX_UNROLLED_STEPS` steps) by
    default: for convolutional models on CPU, where XLA runs convolutions inside a loop several
    times slower than the same convolutions unrolled (docs/performance.md: 1.6x for a 1-step MAML
    meta-step, 6x for Reptile's 5-step inner loop on Omniglot's Conv-4). Elsewhere a rolled scan
    compiles faster at the same speed.

    Example:
      >>> default_inner_unroll("conv", "cpu"), default_inner_unroll("conv", "gpu")
      (True, False)
    """
    backend = backend or jax.default_backend()
    return family == "conv" and backend == "cpu"


def resolve_unroll(unroll: bool | None, family: str) -> bool:
    """A learner's ``unroll`` argument: ``None`` means :func:`default_inner_unroll`."""
    if unroll is None:
        return default_inner_unroll(family)
    if not isinstance(unroll, bool):
        raise ValueError(
            f"unroll must be True, False or None (the backend's default); got {unroll!r}."
        )
    return unroll


class InnerRule(NamedTuple):
    """An optax-shaped inner update rule whose pieces may be meta-learned.

    Attributes:
      init_meta: ``(key, params) -> rule_meta``, the learnable pieces at initialisation
        (``()`` for a rule with none, such as plain SGD). ``rule_meta`` is part of the
        meta-parameters, so the outer optimizer trains it.
      init: ``(params) -> state``, the per-task state at the start of adaptation.
      update: ``(grads, state, params, rule_meta) -> (updates, state)``; the new parameters are
        ``params + updates``, as in optax.

    ``params`` here are the parameters being adapted: leaves the inner loop leaves alone are
    ``None`` (see :func:`jmeta.core.partition`), and ``tree_map`` skips them.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> halve = InnerRule(lambda key, p: (), lambda p: (),
      ...                   lambda g, s, p, m: (jax.tree.map(lambda x: -0.5 * x, g), s))
      >>> updates, _ = halve.update({"w": jnp.ones(2)}, (), None, ())
      >>> updates["w"]
      Array([-0.5, -0.5], dtype=float32)
    """

    init_meta: Callable[[PRNGKey, Params], RuleMeta]
    init: Callable[[Params], RuleState]
    update: Callable[[Params, RuleState, Params, RuleMeta], tuple[Params, RuleState]]


def inner_loop(
    loss_fn: Callable[[Params, Batch], jax.Array],
    rule: InnerRule,
    params: Params,
    rule_meta: RuleMeta,
    support: Batch,
    num_steps: int,
    *,
    first_order: bool = False,
    remat: bool = False,
    mask: PyTree | None = None,
    eval_fn: Callable[[Params], PyTree] | None = None,
    per_step_batches: bool = False,
    unroll: bool = False,
) -> tuple[Params, dict]:
    """Adapts ``params`` to one task: ``num_steps`` steps of ``rule`` on the support loss.

    Written for ONE task; map it over tasks with :func:`jmeta.core.map_tasks`. The loop is a
    ``lax.scan`` of static length, so compile time does not grow with ``num_steps``.

    Args:
      loss_fn: ``(params, batch) -> scalar`` loss of the full parameter tree on a batch.
      rule: the inner update rule.
      params: the starting parameters (the meta-learned initialisation).
      rule_meta: the learnable pieces of ``rule`` (``()`` for none).
      support: the batch to adapt on; with ``per_step_batches`` its leaves carry a leading
        axis of length ``num_steps`` and step ``t`` uses ``support[t]`` (minibatches, as
        Reptile's inner loop; see :func:`support_minibatches`).
      num_steps: number of inner steps (a Python int, >= 0).
      first_order: stop gradients through the inner gradients (first-order MAML); the
        meta-gradient then ignores second-derivative terms.
      remat: wrap each step in ``jax.checkpoint``: backprop through the loop stores only each
        step's carry (the adapted parameters) and recomputes the step's activations. It saves
        memory when activations outweigh parameters (convolutions on many images); for small
        support sets through dense layers it can cost memory (docs/performance.md).
      mask: a boolean pytree like ``params``; only ``True`` leaves are adapted (ANIL adapts the
        head only). ``None`` adapts everything.
      eval_fn: optional ``params -> pytree`` evaluated after every step (for example the query
        loss); its values are stacked along a leading step axis in the returned trace.
      per_step_batches: ``support`` holds one batch per step (see above).
      unroll: unroll the loop into straight-line code when it has at most
        :data:`MAX_UNROLLED_STEPS` steps (faster convolutions on CPU, see
        :func:`default_inner_unroll`); values are the same either way.

    Returns:
      ``(adapted_params, trace)`` where ``trace["support_loss"][t]`` is the support loss before
      step ``t`` and ``trace["eval"][t]`` (if ``eval_fn``) is ``eval_fn`` after step ``t``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jmeta.inner import sgd
      >>> loss = lambda p, b: jnp.mean((p["w"] * b.x - b.y) ** 2)
      >>> p, trace = inner_loop(loss, sgd(0.1), {"w": jnp.zeros(())}, (),
      ...                       Batch(jnp.ones(4), jnp.ones(4)), num_steps=3)
      >>> trace["support_loss"].shape
      (3,)
    """
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(
            f"num_steps must be a non-negative Python int (it fixes the scan length); got "
            f"{num_steps!r}."
        )
    if per_step_batches:
        lengths = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(support)}
        if lengths != {num_steps}:
            raise ValueError(
                f"per_step_batches needs support leaves with a leading axis of num_steps="
                f"{num_steps}; got leading sizes {sorted(map(str, lengths))}."
            )
    adapted, frozen = partition(params, mask)

    def full(a):
        return combine(a, frozen)

    def step(carry, batch):
        a, state = carry
        batch = batch if per_step_batches else support
        loss, grads = jax.value_and_grad(lambda a_: loss_fn(full(a_), batch))(a)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        updates, state = rule.update(grads, state, a, rule_meta)
        a = jax.tree.map(lambda p, u: p + u.astype(p.dtype), a, updates)
        out = {"support_loss": loss}
        if eval_fn is not None:
            out["eval"] = eval_fn(full(a))
        return (a, state), out

    if remat:
        step = jax.checkpoint(step)
    xs = support if per_step_batches else None
    full_unroll = bool(unroll) and num_steps <= MAX_UNROLLED_STEPS
    (adapted, _), trace = jax.lax.scan(step, (adapted, rule.init(adapted)), xs, length=num_steps,
                                       unroll=full_unroll or 1)
    return full(adapted), trace


def support_minibatches(key: PRNGKey, support: Batch, num_steps: int, batch_size: int) -> Batch:
    """``num_steps`` minibatches of ``batch_size`` examples drawn from ``support`` without
    replacement, reshuffling whenever the set is used up (Reptile's inner-loop batches).

    Returns a :class:`Batch` whose leaves have a leading axis of ``num_steps``; pass it to
    :func:`inner_loop` with ``per_step_batches=True``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> b = support_minibatches(jax.random.key(0), Batch(jnp.arange(6.0), jnp.arange(6)), 3, 4)
      >>> b.x.shape
      (3, 4)
      >>> sorted(b.y[:1].ravel().tolist() + b.y[1, :2].tolist()) == list(range(6))
      True
    """
    n = jax.tree.leaves(support)[0].shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be 1..{n} (the support size); got {batch_size}.")
    epochs = -(-num_steps * batch_size // n)
    keys = jax.random.split(key, epochs)
    order = jnp.concatenate([jax.random.permutation(k, n) for k in keys])
    idx = order[: num_steps * batch_size].reshape(num_steps, batch_size)
    return jax.tree.map(lambda leaf: leaf[idx], support)


def mse_loss(pred: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error.

    Example:
      >>> import jax.numpy as jnp
      >>> float(mse_loss(jnp.array([1.0, 3.0]), jnp.array([1.0, 1.0])))
      2.0
    """
    return jnp.mean((pred - y) ** 2)
