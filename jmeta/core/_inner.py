"""The inner loop: a static number of steps of an inner update rule, as one ``lax.scan``."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jmeta.core._checks import check_int
from jmeta.core._tree import combine, partition
from jmeta.core._types import Batch, Params, PRNGKey, PyTree

RuleMeta = Any
RuleState = Any

MAX_UNROLLED_STEPS = 5
"""Longest inner loop that ``unroll=True`` unrolls; longer loops stay a rolled ``lax.scan``
(compile time grows with every unrolled step). With im2col convolutions on CPU, unrolling 5
steps was 15-30% faster than the scan, while a 10-step Reptile loop ran at the same speed either
way and compiled in less than half the time rolled (docs/performance.md)."""


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
        ``params + updates``, as in optax. With ``needs_loss`` it is called as
        ``update(grads, state, params, rule_meta, loss=loss)``.
      needs_loss: ``False`` (the default, every rule written before it existed) or ``True``:
        :func:`inner_loop` then also passes the support loss of the current step, a scalar,
        as the keyword argument ``loss`` (the LSTM meta-learner of Ravi & Larochelle reads it,
        :func:`jmeta.inner.meta_lstm`). The loss goes to the rule as a keyword rather than
        through the state so that a rule's state stays its own and existing rules need no
        change.

    ``params`` here are the parameters being adapted: leaves the inner loop leaves alone are
    ``None`` (see :func:`jmeta.core.partition`), and ``tree_map`` skips them. The state may
    hold anything per task (a step counter, optax moments, the hidden state of a recurrent
    rule); ``rule_meta`` is shared by all tasks and meta-trained. docs/inner_rules.md shows how
    to write a rule.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> halve = InnerRule(lambda key, p: (), lambda p: (),
      ...                   lambda g, s, p, m: (jax.tree.map(lambda x: -0.5 * x, g), s))
      >>> updates, _ = halve.update({"w": jnp.ones(2)}, (), None, ())
      >>> updates["w"]
      Array([-0.5, -0.5], dtype=float32)
      >>> # A rule that reads the loss: smaller steps when the loss is already small.
      >>> damped = InnerRule(lambda key, p: (), lambda p: (),
      ...                    lambda g, s, p, m, *, loss: (jax.tree.map(lambda x: -loss * x, g), s),
      ...                    needs_loss=True)
      >>> updates, _ = damped.update({"w": jnp.ones(2)}, (), None, (), loss=jnp.float32(0.1))
      >>> updates["w"]
      Array([-0.1, -0.1], dtype=float32)
    """

    init_meta: Callable[[PRNGKey, Params], RuleMeta]
    init: Callable[[Params], RuleState]
    update: Callable[..., tuple[Params, RuleState]]
    needs_loss: bool = False


def rule_learns(rule: InnerRule, init: Callable[[PRNGKey], Params]) -> bool:
    """Whether ``rule`` has learnable pieces for the parameters that ``init`` makes (found on
    shapes alone: nothing is computed).

    Example:
      >>> import jax.numpy as jnp
      >>> from jmeta.inner import meta_sgd, sgd
      >>> init = lambda key: {"w": jnp.zeros(3)}
      >>> rule_learns(sgd(0.1), init), rule_learns(meta_sgd(0.1), init)
      (False, True)
    """
    shapes = jax.eval_shape(init, jax.random.key(0))
    return bool(jax.tree.leaves(jax.eval_shape(rule.init_meta, jax.random.key(0), shapes)))


def inner_loop(
    loss_fn: Callable[..., jax.Array],
    rule: InnerRule,
    params: Params,
    rule_meta: RuleMeta,
    support: Batch,
    inner_steps: int,
    *,
    first_order: bool = False,
    remat: bool = False,
    mask: PyTree | None = None,
    eval_fn: Callable[..., PyTree] | None = None,
    per_step_batches: bool = False,
    unroll: bool = False,
    truncate: int | None = None,
    with_step: bool = False,
) -> tuple[Params, dict]:
    """Adapts ``params`` to one task: ``inner_steps`` steps of ``rule`` on the support loss.

    Written for ONE task; map it over tasks with :func:`jmeta.core.map_tasks`. The loop is a
    ``lax.scan`` of static length, so compile time does not grow with ``inner_steps``.

    Args:
      loss_fn: ``(params, batch) -> scalar`` loss of the full parameter tree on a batch; with
        ``with_step``, ``(params, batch, step) -> scalar`` where ``step`` (a traced int32,
        0-based) is the inner step being taken.
      rule: the inner update rule; a rule with ``needs_loss`` also receives each step's support
        loss (see :class:`InnerRule`).
      params: the starting parameters (the meta-learned initialisation).
      rule_meta: the learnable pieces of ``rule`` (``()`` for none).
      support: the batch to adapt on; with ``per_step_batches`` its leaves carry a leading
        axis of length ``inner_steps`` and step ``t`` uses ``support[t]`` (minibatches, as
        Reptile's inner loop; see :func:`support_minibatches`).
      inner_steps: number of inner steps (a Python int, >= 0).
      first_order: stop gradients through the inner gradients (first-order MAML); the
        meta-gradient then ignores second-derivative terms.
      remat: wrap each step in ``jax.checkpoint``: backprop through the loop stores only each
        step's carry (the adapted parameters and the rule's state) and recomputes the step's
        activations. It saves memory when activations outweigh parameters (convolutions on many
        images, or a recurrent rule's per-coordinate gates); for small support sets through
        dense layers it can cost memory (docs/performance.md). Values are unchanged.
      mask: a boolean pytree like ``params``; only ``True`` leaves are adapted (ANIL adapts the
        head only). ``None`` adapts everything.
      eval_fn: optional ``params -> pytree`` evaluated after every step (for example the query
        loss); with ``with_step``, ``(params, steps_taken) -> pytree``. Its values are stacked
        along a leading step axis in the returned trace.
      per_step_batches: ``support`` holds one batch per step (see above).
      unroll: unroll the loop into straight-line code when it has at most
        :data:`MAX_UNROLLED_STEPS` steps (faster convolutions on CPU, see
        :func:`default_inner_unroll`); values are the same either way.
      truncate: truncated backpropagation for long inner loops: ``None`` (the default)
        backpropagates through every step; a positive int ``k < inner_steps`` backpropagates
        through the last ``k`` steps only. The first ``inner_steps - k`` steps run as a separate
        scan on stopped gradients, so backprop stores nothing for them, and the carry entering
        the last ``k`` steps is a constant for the rule's meta-parameters, the frozen
        parameters and the rule's state. The initialisation ``params`` keeps a gradient: the
        truncated prefix passes the gradient of its output through to it unchanged, as
        first-order MAML treats the whole loop (with a plain stop-gradient the initialisation
        would never be meta-learned). ``k >= inner_steps`` is the full loop, exactly. Values
        (adapted parameters, trace) are the same for every ``truncate``; only gradients
        change. Trace entries of the prefix (``eval_fn`` values, say) carry no gradient.
      with_step: pass the step index to ``loss_fn`` and ``eval_fn`` (schedules inside the inner
        loop, such as MAML++'s per-step BatchNorm weights or minibatches chosen by step).

    Returns:
      ``(adapted_params, trace)`` where ``trace["support_loss"][t]`` is the support loss before
      step ``t`` and ``trace["eval"][t]`` (if ``eval_fn``) is ``eval_fn`` after step ``t``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.inner import sgd
      >>> loss = lambda p, b: jnp.mean((p["w"] * b.x - b.y) ** 2)
      >>> p, trace = inner_loop(loss, sgd(0.1), {"w": jnp.zeros(())}, (),
      ...                       Batch(jnp.ones(4), jnp.ones(4)), inner_steps=3)
      >>> trace["support_loss"].shape
      (3,)
      >>> # Each step maps w to 0.98 w + 0.02; backprop through the last 2 of 50 steps only:
      >>> def adapted_w(w, truncate):
      ...     p, _ = inner_loop(loss, sgd(0.01), {"w": w}, (), Batch(jnp.ones(4), jnp.ones(4)),
      ...                       50, truncate=truncate)
      ...     return p["w"]
      >>> float(adapted_w(0.0, 2)) == float(adapted_w(0.0, None))
      True
      >>> [round(float(jax.grad(adapted_w)(0.0, k)), 4) for k in (None, 2)]  # 0.98**50, 0.98**2
      [0.3642, 0.9604]
      >>> # The step index: a (flat) loss whose weight doubles at every step.
      >>> scaled = lambda p, b, t: (2.0 ** t) * (1.0 + 0.0 * p["w"])
      >>> _, trace = inner_loop(scaled, sgd(0.1), {"w": jnp.zeros(())}, (),
      ...                       Batch(jnp.ones(4), jnp.ones(4)), 3, with_step=True)
      >>> trace["support_loss"].tolist()
      [1.0, 2.0, 4.0]
    """
    check_int("inner_loop: inner_steps (it fixes the scan length)", inner_steps, 0)
    if truncate is not None:
        check_int("inner_loop: truncate (None backprops through every step, k the last k "
                  "steps)", truncate, 1)
    if per_step_batches:
        lengths = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(support)}
        if lengths != {inner_steps}:
            raise ValueError(
                f"per_step_batches needs support leaves with a leading axis of inner_steps="
                f"{inner_steps}; got leading sizes {sorted(map(str, lengths))}."
            )
    adapted, frozen = partition(params, mask)
    full_unroll = bool(unroll) and inner_steps <= MAX_UNROLLED_STEPS

    def run(carry, xs, length, rule_meta, frozen):
        """``length`` steps of the rule from ``carry`` as one scan."""

        def full(a):
            return combine(a, frozen)

        def step(carry, xs):
            a, state = carry
            batch, t = xs if with_step else (xs, None)
            batch = batch if per_step_batches else support
            extra = (t,) if with_step else ()
            loss, grads = jax.value_and_grad(lambda a_: loss_fn(full(a_), batch, *extra))(a)
            if first_order:
                grads = jax.lax.stop_gradient(grads)
            if rule.needs_loss:
                updates, state = rule.update(grads, state, a, rule_meta, loss=loss)
            else:
                updates, state = rule.update(grads, state, a, rule_meta)
            a = jax.tree.map(lambda p, u: p + u.astype(p.dtype), a, updates)
            out = {"support_loss": loss}
            if eval_fn is not None:
                out["eval"] = eval_fn(full(a), *(t + 1 for t in extra))
            return (a, state), out

        if remat:
            step = jax.checkpoint(step)
        return jax.lax.scan(step, carry, xs, length=length, unroll=full_unroll or 1)

    xs = support if per_step_batches else None
    if with_step:
        xs = (xs, jnp.arange(inner_steps, dtype=jnp.int32))
    carry = (adapted, rule.init(adapted))
    if truncate is None or truncate >= inner_steps:
        (adapted, _), trace = run(carry, xs, inner_steps, rule_meta, frozen)
        return combine(adapted, frozen), trace

    head = inner_steps - truncate
    split = (lambda lo, hi: jax.tree.map(lambda x: x[lo:hi], xs)) if xs is not None else None
    stop = jax.lax.stop_gradient
    (a_head, state), trace_head = run(
        stop(carry), split(0, head) if split else None, head, stop(rule_meta), stop(frozen)
    )
    a_head = jax.tree.map(_pass_gradient, adapted, a_head)
    (adapted, _), trace_tail = run(
        (a_head, state), split(head, inner_steps) if split else None, truncate, rule_meta, frozen
    )
    trace = jax.tree.map(lambda h, t: jnp.concatenate([h, t]), trace_head, trace_tail)
    return combine(adapted, frozen), trace


@jax.custom_vjp
def _pass_gradient(start: jax.Array, end: jax.Array) -> jax.Array:
    """``end``, whose gradient flows to ``start`` unchanged (a truncated stretch of the inner
    loop seen as the identity by backprop; ``end`` itself gets none)."""
    del start
    return end


def _pass_gradient_fwd(start, end):
    return end, None


def _pass_gradient_bwd(_, g):
    return g, jnp.zeros_like(g)


_pass_gradient.defvjp(_pass_gradient_fwd, _pass_gradient_bwd)


def support_minibatches(key: PRNGKey, support: Batch, inner_steps: int, batch_size: int) -> Batch:
    """``inner_steps`` minibatches of ``batch_size`` examples drawn from ``support`` without
    replacement, reshuffling whenever the set is used up (Reptile's inner-loop batches).

    Returns a :class:`Batch` whose leaves have a leading axis of ``inner_steps``; pass it to
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
    epochs = -(-inner_steps * batch_size // n)
    keys = jax.random.split(key, epochs)
    order = jnp.concatenate([jax.random.permutation(k, n) for k in keys])
    idx = order[: inner_steps * batch_size].reshape(inner_steps, batch_size)
    return jax.tree.map(lambda leaf: leaf[idx], support)


def mse_loss(pred: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error.

    Example:
      >>> import jax.numpy as jnp
      >>> float(mse_loss(jnp.array([1.0, 3.0]), jnp.array([1.0, 1.0])))
      2.0
    """
    return jnp.mean((pred - y) ** 2)
