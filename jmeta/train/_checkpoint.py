"""Saving and restoring parameter pytrees of a run with Orbax."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jmeta.core._types import PyTree


def save_tree(directory: str | Path, tree: PyTree) -> Path:
    """Writes ``tree`` to ``directory`` (which must not exist); the write is atomic."""
    directory = Path(directory).absolute()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory, tree)
        ckptr.wait_until_finished()
    return directory


def restore_tree(directory: str | Path, abstract: PyTree) -> PyTree:
    """Restores into the structure, shapes and dtypes of ``abstract`` (e.g. from ``eval_shape``)."""
    directory = Path(directory).absolute()
    if not directory.exists():
        raise FileNotFoundError(
            f"No checkpoint at {directory}: was the run finished? Re-run `jmeta train` for it."
        )
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(directory, abstract)
