"""Flax NNX modules used functionally: split once, apply as a pure function of the parameters."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
from flax import nnx

from jmeta.core._types import Params, PRNGKey

FAMILIES = ("dense", "conv")


class Model(NamedTuple):
    """A model as pure functions.

    Attributes:
      init: ``key -> params``, a nested dict of arrays (plain pytree, checkpoint-friendly).
      apply: ``(params, x) -> outputs`` for one batch of inputs; pure, safe inside ``jit``,
        ``vmap``, ``grad`` and ``lax.scan``.
      family: ``"dense"`` or ``"conv"``; chooses the default task-mapping strategy.
    """

    init: Callable[[PRNGKey], Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    family: str


def from_nnx(
    make_module: Callable[[nnx.Rngs], nnx.Module],
    family: str = "dense",
    *,
    batch_stats: str | None = None,
) -> Model:
    """Wraps an NNX module constructor as a functional :class:`Model`.

    The module is built once (abstractly, no compute) to obtain its graph definition; ``apply``
    merges that graph with the given parameters inside the traced function, so the module is
    never mutated and no state leaks out of a jitted inner loop.

    Modules with BatchNorm need ``batch_stats="transductive"``: normalisation uses the statistics
    of each batch it sees, and running averages are neither used nor kept.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> model = from_nnx(lambda rngs: nnx.Linear(3, 2, rngs=rngs))
      >>> params = model.init(jax.random.key(0))
      >>> model.apply(params, jnp.ones((4, 3))).shape
      (4, 2)
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown model family {family!r}; choose one of {FAMILIES}.")
    abstract = nnx.eval_shape(lambda: make_module(nnx.Rngs(0)))
    graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest) and batch_stats != "transductive":
        raise NotImplementedError(
            "from_nnx supports modules whose only state is nnx.Param for now; this module also "
            f"holds {jax.tree.map(lambda x: x.shape, rest)}; for BatchNorm pass "
            "batch_stats='transductive'."
        )

    def init(key: PRNGKey) -> Params:
        _, params, _ = nnx.split(make_module(nnx.Rngs(key)), nnx.Param, ...)
        return nnx.to_pure_dict(params)

    if batch_stats == "transductive":
        _, _, rest = nnx.split(make_module(nnx.Rngs(0)), nnx.Param, ...)  # concrete constants

    def apply(params: Params, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, rest, copy=True)(x)

    return Model(init=init, apply=apply, family=family)


def with_compute_dtype(model: Model, dtype) -> Model:
    """The same model computing in ``dtype`` (e.g. bfloat16) from float32 master parameters.

    Parameters and inputs are cast inside ``apply`` and outputs cast back to float32, so the
    parameters, their gradients, inner-loop updates and optimizer state all stay float32.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.models import mlp
      >>> model = with_compute_dtype(mlp(), jnp.bfloat16)
      >>> params = model.init(jax.random.key(0))
      >>> params["head"]["kernel"].dtype, model.apply(params, jnp.ones((3, 1))).dtype
      (dtype('float32'), dtype('float32'))
    """
    import jax.numpy as jnp

    dtype = jnp.dtype(dtype)

    def apply(params, x):
        cast = jax.tree.map(lambda p: p.astype(dtype), params)
        return model.apply(cast, x.astype(dtype)).astype(jnp.float32)

    return Model(init=model.init, apply=apply, family=model.family)
