"""Data types shared by every algorithm: batches, episodes and the meta-training state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

PyTree = Any
Params = Any
PRNGKey = jax.Array


class Batch(NamedTuple):
    """Inputs and targets of one set (support or query) of one task.

    Example:
      >>> import jax.numpy as jnp
      >>> b = Batch(x=jnp.zeros((5, 1)), y=jnp.zeros((5, 1)))
      >>> b.x.shape
      (5, 1)
    """

    x: jax.Array
    y: jax.Array


class Episode(NamedTuple):
    """One task: a support set to adapt on and a query set to score the adapted model.

    With a leading task axis on every array, the same type is a *task batch* (see
    :func:`num_tasks`).

    Example:
      >>> import jax.numpy as jnp
      >>> ep = Episode(Batch(jnp.zeros((10, 1)), jnp.zeros((10, 1))),
      ...              Batch(jnp.zeros((10, 1)), jnp.zeros((10, 1))))
      >>> ep.support.x.shape
      (10, 1)
    """

    support: Batch
    query: Batch


TaskBatch = Episode
"""An :class:`Episode` whose arrays carry a leading task axis ``T``."""


def num_tasks(batch: TaskBatch) -> int:
    """Size of the leading task axis of a task batch.

    Raises ``ValueError`` when the leaves disagree on it, naming the shapes found.

    Example:
      >>> import jax.numpy as jnp
      >>> b = Batch(jnp.zeros((4, 10, 1)), jnp.zeros((4, 10, 1)))
      >>> num_tasks(Episode(b, b))
      4
    """
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(batch)}
    if len(sizes) != 1 or None in sizes:
        shapes = jax.tree.map(lambda a: tuple(a.shape), batch)
        raise ValueError(
            "A task batch needs one leading task axis shared by every array; got shapes "
            f"{shapes}. Stack episodes with jax.tree.map(lambda *a: jnp.stack(a), *episodes)."
        )
    return sizes.pop()


class MetaState(NamedTuple):
    """Everything meta-training carries from one step to the next, as one pytree.

    Attributes:
      step: number of meta-steps taken (int32 scalar).
      params: the meta-parameters (model initialisation and learnable pieces of the inner rule).
      opt_state: the state of the outer optax optimizer.
      rng: PRNG key; each meta-step splits it, so a run is a function of its seed alone.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> tx = optax.adam(1e-3)
      >>> p = {"w": jnp.zeros(3)}
      >>> s = MetaState(jnp.zeros((), jnp.int32), p, tx.init(p), jax.random.key(0))
      >>> int(s.step)
      0
    """

    step: jax.Array
    params: Params
    opt_state: PyTree
    rng: PRNGKey
