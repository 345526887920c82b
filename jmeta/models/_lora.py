"""LoRA: low-rank adapters ``W x + (alpha / rank) B A x`` beside the frozen linear maps of a model."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LORA_TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")
"""Names of the linear maps of a BERT layer that can carry an adapter: the attention's query, key
and value projections, its output projection, and the feed-forward block's two maps."""


def _kaiming_uniform(fan_in: int):
    # The LoRA reference code (and PEFT) initialise A like a PyTorch nn.Linear:
    # kaiming_uniform(a=sqrt(5)), that is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class LoRAAdapter(nnx.Module):
    """One low-rank update of a ``[in_features -> out_features]`` linear map.

    ``a`` is ``[in_features, rank]`` (random, as in the LoRA paper), ``b`` is
    ``[rank, out_features]`` (zeros), and the adapter returns ``(alpha / rank) * (x @ a) @ b``,
    so a freshly initialised adapter adds exactly zero to the map it sits beside.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> adapter = LoRAAdapter(6, 4, rank=2, alpha=4.0, rngs=nnx.Rngs(0))
      >>> adapter.a.shape, adapter.b.shape, float(abs(adapter(jnp.ones((3, 6)))).max())
      ((6, 2), (2, 4), 0.0)
    """

    def __init__(self, in_features: int, out_features: int, *, rank: int, alpha: float,
                 rngs: nnx.Rngs):
        self.scale = float(alpha) / rank
        self.a = nnx.Param(_kaiming_uniform(in_features)(rngs.params(), (in_features, rank)))
        self.b = nnx.Param(jnp.zeros((rank, out_features), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        a, b = self.a[...], self.b[...]
        return self.scale * ((x @ a.astype(x.dtype)) @ b.astype(x.dtype))


class LoRALayer(nnx.Module):
    """The adapters of one layer: an attribute per adapted map, named as in :data:`LORA_TARGETS`.

    Example:
      >>> from flax import nnx
      >>> layer = LoRALayer({"query": (8, 8), "value": (8, 8)}, rank=2, alpha=4.0, rngs=nnx.Rngs(0))
      >>> layer.names
      ('query', 'value')
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], *, rank: int, alpha: float,
                 rngs: nnx.Rngs):
        self.names = tuple(shapes)
        for name, (fan_in, fan_out) in shapes.items():
            setattr(self, name, LoRAAdapter(fan_in, fan_out, rank=rank, alpha=alpha, rngs=rngs))


class LoRA(nnx.Module):
    """Adapters for the layers ``layers`` of a network, each with the maps in ``shapes``.

    ``shapes`` maps a target name to the ``(in_features, out_features)`` of the map it adapts.
    Layer ``i``'s adapters are the attribute ``layer_i``, so their parameters have paths such as
    ``"layer_4/query/a"``; a layer without adapters has no attribute.

    Example:
      >>> from flax import nnx
      >>> lora = LoRA({"query": (8, 8)}, layers=(2, 3), rank=2, alpha=4.0, rngs=nnx.Rngs(0))
      >>> sorted(nnx.to_pure_dict(nnx.state(lora, nnx.Param)))
      ['layer_2', 'layer_3']
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], *, layers: Sequence[int], rank: int,
                 alpha: float, rngs: nnx.Rngs):
        validate_lora(rank, alpha, tuple(shapes))
        self.layers = tuple(int(i) for i in layers)
        for i in self.layers:
            setattr(self, f"layer_{i}", LoRALayer(shapes, rank=rank, alpha=alpha, rngs=rngs))

    def at(self, i: int) -> LoRALayer | None:
        """The adapters of layer ``i``, or None."""
        return getattr(self, f"layer_{i}", None)


def validate_lora(rank: int, alpha: float, targets: Sequence[str]) -> None:
    """Raises ``ValueError`` for a rank below 1, a non-positive alpha, or an unknown target
    (``TypeError`` for one string instead of a sequence of names).

    Example:
      >>> validate_lora(8, 16.0, ("query", "value"))
      >>> validate_lora(8, 16.0, ("qurey",))
      Traceback (most recent call last):
        ...
      ValueError: LoRA: unknown target 'qurey'; choose among ('query', 'key', 'value', 'attention_output', 'intermediate', 'output').
    """
    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
        raise ValueError(f"LoRA: rank must be an int >= 1; got rank={rank!r}.")
    if not alpha > 0:
        raise ValueError(f"LoRA: alpha must be positive; got alpha={alpha!r}.")
    if isinstance(targets, str):
        raise TypeError(f"LoRA: targets must be a sequence of names, not the string {targets!r}.")
    for name in targets:
        if name not in LORA_TARGETS:
            raise ValueError(f"LoRA: unknown target {name!r}; choose among {LORA_TARGETS}.")
    if len(set(targets)) != len(tuple(targets)):
        raise ValueError(f"LoRA: targets repeat a name: {tuple(targets)}.")


def lora_filter(path: str) -> bool:
    """True for the parameters a task adapts in a LoRA model: the adapters and the head.

    ``path`` is a ``"lora/layer_0/query/a"``-style name, as
    :func:`jmeta.core.mask_by_path` gives; the frozen ``"backbone/..."`` is never selected.

    Example:
      >>> from jmeta.core import mask_by_path
      >>> params = {"backbone": {"w": 0.0}, "lora": {"layer_5": {"query": {"a": 0.0}}},
      ...           "head": {"kernel": 0.0}}
      >>> mask_by_path(params, lora_filter)
      {'backbone': {'w': False}, 'head': {'kernel': True}, 'lora': {'layer_5': {'query': {'a': True}}}}
    """
    top = path.split("/", 1)[0]
    return top in ("lora", "head")
