"""Small pytree helpers: selecting the parameters an inner loop adapts."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jmeta.core._types import PyTree


def path_name(path) -> str:
    """Turns a pytree key path into ``"head/kernel"``-style text."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def mask_by_path(tree: PyTree, predicate: Callable[[str], bool]) -> PyTree:
    """A boolean pytree: ``predicate("layer/kernel")`` for every leaf of ``tree``.

    Example:
      >>> mask = mask_by_path({"body": {"w": 1.0}, "head": {"w": 2.0}},
      ...                     lambda p: p.startswith("head"))
      >>> mask
      {'body': {'w': False}, 'head': {'w': True}}
    """
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(predicate(path_name(p))), tree)


def partition(tree: PyTree, mask: PyTree | None) -> tuple[PyTree, PyTree]:
    """Splits ``tree`` into (selected, rest); unselected leaves are ``None`` in each part.

    ``mask=None`` selects everything. :func:`combine` undoes it.

    Example:
      >>> a, b = partition({"x": 1.0, "y": 2.0}, {"x": True, "y": False})
      >>> a, b
      ({'x': 1.0, 'y': None}, {'x': None, 'y': 2.0})
    """
    if mask is None:
        return tree, jax.tree.map(lambda _: None, tree)
    sel = jax.tree.map(lambda x, m: x if m else None, tree, mask)
    rest = jax.tree.map(lambda x, m: None if m else x, tree, mask)
    return sel, rest


def combine(*trees: PyTree) -> PyTree:
    """Merges trees produced by :func:`partition`: the first non-``None`` leaf wins.

    Example:
      >>> combine({"x": 1.0, "y": None}, {"x": None, "y": 2.0})
      {'x': 1.0, 'y': 2.0}
    """

    def pick(*leaves):
        for leaf in leaves:
            if leaf is not None:
                return leaf
        return None

    return jax.tree.map(pick, *trees, is_leaf=lambda x: x is None)


def tree_zeros_like(tree: PyTree) -> PyTree:
    """Zeros with the shape and dtype of every leaf."""
    return jax.tree.map(jnp.zeros_like, tree)
