"""Sinusoid regression (Finn et al. 2017), generated in-graph from a PRNG key."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from jmeta.core._types import Batch, Episode, PRNGKey, TaskBatch
from jmeta.data._registry import TaskFamily, register

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


def sinusoid_tasks(key: PRNGKey, num_tasks: int, k_shot: int, k_query: int | None = None) -> TaskBatch:
    """Draws ``num_tasks`` sinusoid tasks ``y = A sin(x - phase)``, exactly MAML's benchmark.

    Amplitude ~ U[0.1, 5], phase ~ U[0, pi], inputs ~ U[-5, 5]; ``k_shot`` support points and
    ``k_query`` (default ``k_shot``) query points per task, all shaped ``[T, K, 1]``. Pure and
    traceable: call it inside ``jit``.

    Example:
      >>> import jax
      >>> tasks = sinusoid_tasks(jax.random.key(0), num_tasks=25, k_shot=10)
      >>> tasks.support.x.shape, tasks.query.y.shape
      ((25, 10, 1), (25, 10, 1))
    """
    k_query = k_shot if k_query is None else k_query
    for name, v in (("num_tasks", num_tasks), ("k_shot", k_shot), ("k_query", k_query)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"sinusoid_tasks: {name} must be a positive int; got {v!r}.")
    k_amp, k_phase, k_x = jax.random.split(key, 3)
    amp = jax.random.uniform(k_amp, (num_tasks, 1, 1), minval=AMPLITUDE[0], maxval=AMPLITUDE[1])
    phase = jax.random.uniform(k_phase, (num_tasks, 1, 1), minval=PHASE[0], maxval=PHASE[1])
    x = jax.random.uniform(
        k_x, (num_tasks, k_shot + k_query, 1), minval=INPUT_RANGE[0], maxval=INPUT_RANGE[1]
    )
    y = amp * jnp.sin(x - phase)
    return Episode(
        support=Batch(x[:, :k_shot], y[:, :k_shot]), query=Batch(x[:, k_shot:], y[:, k_shot:])
    )


def sinusoid_sampler(num_tasks: int, k_shot: int, k_query: int | None = None) -> Callable[[PRNGKey], TaskBatch]:
    """A ``key -> task batch`` sampler for :func:`jmeta.core.make_meta_step`.

    Example:
      >>> import jax
      >>> sample = sinusoid_sampler(num_tasks=4, k_shot=5)
      >>> sample(jax.random.key(1)).support.x.shape
      (4, 5, 1)
    """
    sinusoid_tasks(jax.random.key(0), num_tasks, k_shot, k_query)  # validate eagerly

    def sample(key: PRNGKey) -> TaskBatch:
        return sinusoid_tasks(key, num_tasks, k_shot, k_query)

    return sample


@register("sinusoid", kind="tasks")
def _from_config() -> TaskFamily:
    """``data=dict(name="sinusoid", shots=..., queries=...)``: MAML's sinusoid regression."""
    return TaskFamily(sinusoid_tasks, example_shape=(1,), outputs=1, eval_queries=100)

