"""FLOPs of a step: counted on its jaxpr with every loop's trip count, and XLA's own count."""

from __future__ import annotations

import math
import re


def cost_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled JAX function, from XLA's cost analysis; ``None`` when
    the backend does not report them. Accepts the dict of current JAX and the list of dicts
    (one per program) of older versions.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> a = jnp.ones((64, 32)); b = jnp.ones((32, 16))
      >>> cost_flops(jax.jit(jnp.matmul).lower(a, b).compile())
      65536.0
    """
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (backends without cost analysis raise various errors)
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost:
        return None
    flops = cost.get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


def _sub_jaxprs(value):
    """The jaxprs inside an equation's parameter (a jaxpr, a closed jaxpr, or tuples of them)."""
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value, "consts"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _jaxpr_flops(jaxpr) -> tuple[float, bool]:
    total, exact = 0.0, True
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        out = eqn.outvars[0].aval.shape if eqn.outvars else ()
        if name == "dot_general":
            (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contracting)
            continue
        if name == "conv_general_dilated":
            # Each output element sums over the kernel window and the kernel's input features.
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec
            rhs = eqn.invars[1].aval.shape
            total += 2.0 * math.prod(out) * math.prod(rhs[d] for d in rhs_spec[1:])
            continue
        if name == "while":  # trip count known only at run time: the body once
            total += _jaxpr_flops(eqn.params["body_jaxpr"].jaxpr)[0]
            exact = False
            continue
        counts = [_jaxpr_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v)]
        if not counts:
            continue
        exact &= all(c[1] for c in counts)
        if name == "cond":  # one branch runs: the costliest
            total += max(c[0] for c in counts)
        else:  # scan (length times), jit, remat, custom_jvp / custom_vjp calls (once)
            times = eqn.params["length"] if name == "scan" else 1
            total += times * sum(c[0] for c in counts)
    return total, exact


def jaxpr_flops(fn, *args, **kwargs) -> tuple[float, bool]:
    """Matrix-multiply and convolution FLOPs of one call ``fn(*args, **kwargs)``, counted on
    its jaxpr: ``(flops, exact)``.

    A ``dot_general`` costs 2 x (output size) x (contracted size); a convolution 2 x (output
    size) x (kernel window x kernel input features), padding included. A ``lax.scan`` (and so
    ``lax.map`` and rolled inner loops) counts its body ``length`` times, a ``cond`` its
    costliest branch; ``exact`` is False when a ``while_loop`` with a run-time trip count is
    present (its body is counted once). Work that ``jax.checkpoint`` (remat) recomputes in the
    backward pass counts again: the figure is the work done, not the model's FLOPs. Elementwise
    work is not counted: the figure is the one to hold against a matmul peak, on any backend.
    XLA's cost analysis (:func:`cost_flops`) counts a loop's body once instead, and XLA may drop
    work that is computed twice.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
      >>> jaxpr_flops(jnp.matmul, a, b)
      (65536.0, True)
      >>> jaxpr_flops(lambda a: jax.lax.map(lambda x: x @ b, a[None].repeat(3, 0)), a)
      (196608.0, True)
    """
    import jax

    return _jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def has_loops(compiled) -> bool:
    """Whether a compiled program keeps a loop (``while``): XLA's cost analysis counts a loop's
    body once, so :func:`cost_flops` is then a lower bound. The small loops of the threefry
    random-number generator (``jax.random.split`` on CPU) do not count.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = lambda x: jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c), x)
      >>> has_loops(jax.jit(f).lower(jnp.ones(3)).compile())
      True
    """
    try:
        return any(re.search(r"\bwhile\(", line) and "threefry" not in line
                   for line in compiled.as_text().splitlines())
    except Exception:  # noqa: BLE001
        return False


