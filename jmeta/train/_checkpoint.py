"""Saving and restoring parameter pytrees of a run with Orbax.

Leaves that a run never changes (a pretrained encoder under LoRA adapters) need not be written:
given ``frozen``, a predicate on leaf paths (``"model/backbone/layer_0/query/kernel"``), saves
skip those leaves and restores take them from ``frozen_values`` (the freshly initialised
parameters, which load the same pretrained weights). A checkpoint written with them restores
the same way, so run directories from before this saving mode still load.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jmeta.core._tree import path_name
from jmeta.core._types import PyTree

Frozen = Callable[[str], bool] | None


def strip_frozen(tree: PyTree, frozen: Frozen) -> PyTree:
    """``tree`` with every leaf whose path ``frozen`` selects replaced by ``None``.

    Example:
      >>> strip_frozen({"backbone": {"w": 1.0}, "head": {"w": 2.0}}, lambda p: p.startswith("backbone"))
      {'backbone': {'w': None}, 'head': {'w': 2.0}}
    """
    if frozen is None:
        return tree
    return jax.tree_util.tree_map_with_path(
        lambda p, x: None if frozen(path_name(p)) else x, tree)


def fill_frozen(stripped: PyTree, values: PyTree, frozen: Frozen) -> PyTree:
    """Undoes :func:`strip_frozen`: the frozen leaves from ``values`` (a tree of the full
    structure), every other leaf from ``stripped``.

    Example:
      >>> fill_frozen({"backbone": {"w": None}, "head": {"w": 2.0}},
      ...             {"backbone": {"w": 1.0}, "head": {"w": 0.0}}, lambda p: p.startswith("backbone"))
      {'backbone': {'w': 1.0}, 'head': {'w': 2.0}}
    """
    if frozen is None:
        return stripped
    kept = iter(jax.tree.leaves(stripped))
    filled = jax.tree_util.tree_map_with_path(
        lambda p, v: v if frozen(path_name(p)) else next(kept), values)
    if next(kept, None) is not None:
        raise ValueError("fill_frozen: the stripped tree has more leaves than the unfrozen part "
                         "of values; they come from different models.")
    return filled


def _frozen_values(frozen_values):
    if frozen_values is None:
        raise ValueError("Restoring a checkpoint saved without its frozen leaves needs "
                         "frozen_values (the initialised parameters that hold them).")
    return frozen_values() if callable(frozen_values) else frozen_values


def save_tree(directory: str | Path, tree: PyTree, *, frozen: Frozen = None) -> Path:
    """Writes ``tree`` to ``directory`` (which must not exist); the write is atomic. Leaves
    that ``frozen`` selects are not written."""
    directory = Path(directory).absolute()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory, strip_frozen(tree, frozen))
        ckptr.wait_until_finished()
    return directory


def restore_tree(directory: str | Path, abstract: PyTree, *, frozen: Frozen = None,
                 frozen_values=None) -> PyTree:
    """Restores into the structure, shapes and dtypes of ``abstract`` (e.g. from ``eval_shape``).

    With ``frozen``, the selected leaves come from ``frozen_values`` (a tree, or a function
    returning one, called only then) instead of the checkpoint.
    """
    directory = Path(directory).absolute()
    if not directory.exists():
        raise FileNotFoundError(
            f"No checkpoint at {directory}: was the run finished? Re-run `jmeta train` for it."
        )
    # Restore onto this process's first device, whatever topology saved it (8 GPUs -> 1 CPU).
    here = local_placement()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here), abstract)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(directory, strip_frozen(abstract, frozen))
    if frozen is None:
        return restored
    return fill_frozen(restored, _frozen_values(frozen_values), frozen)


STEPS_DIR = "steps"


def _saveable(state, frozen: Frozen = None) -> dict:
    """A MetaState as a plain dict (the typed PRNG key as its raw uint32 data), the frozen
    leaves of its parameters left out."""
    return {"step": state.step, "params": strip_frozen(state.params, frozen),
            "opt_state": state.opt_state, "rng": jax.random.key_data(state.rng)}


def _restore_state(tree: dict):
    from jmeta.core._types import MetaState

    return MetaState(tree["step"], tree["params"], tree["opt_state"], jax.random.wrap_key_data(tree["rng"]))


def local_placement() -> jax.sharding.SingleDeviceSharding:
    """This process's first device: where unsharded states are restored, and where a fresh
    training state is put so that a fresh and a resumed run lower to the same program."""
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def abstract_state(make_state, sharding=None) -> dict:
    """The checkpoint structure of ``make_state()`` from ``jax.eval_shape`` (nothing computed),
    placed with ``sharding`` (default: this process's first device)."""
    sharding = sharding or local_placement()
    shapes = jax.eval_shape(lambda: _saveable(make_state()))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


class RunCheckpoints:
    """Checkpoints of a training run: Orbax ``CheckpointManager``, asynchronous saves, the last
    ``keep`` steps plus the best by validation score (higher is better), atomic.

    A save copies the state to the host before returning, then writes in the background; Orbax
    writes each step into a temporary folder renamed into place when complete, so a process
    killed mid-save leaves no step that a later run would trust. :meth:`restore_latest` falls
    back to the previous step, with a warning, when the newest cannot be read.

    Example::

        ckpts = RunCheckpoints("runs/x/checkpoints/steps", keep=3)
        ckpts.save(100, state, val_score=0.93)
        state, meta = ckpts.restore_latest(state_like)   # (None, None) when there is none

    ``frozen`` (a predicate on parameter paths) leaves those parameters out of every save;
    restores then take them from ``frozen_values`` (see the module docstring).
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, asynchronous: bool = True,
                 frozen: Frozen = None):
        self.frozen = frozen
        cm = ocp.checkpoint_managers
        policy = cm.AnyPreservationPolicy([
            cm.LatestN(keep),
            cm.BestN(get_metric_fn=lambda m: m["val_score"], n=1, keep_checkpoints_without_metrics=False),
        ])
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=asynchronous,
            best_fn=lambda m: m["val_score"], best_mode="max",
        )
        # The manager reads every step's metadata when it starts: a step whose metadata cannot be
        # read (a torn write, a damaged disk) is moved aside with a warning, never trusted.
        for _ in range(len(self._step_dirs()) + 1):
            try:
                self.manager = ocp.CheckpointManager(self.directory, options=options)
                break
            except Exception as err:  # noqa: BLE001
                bad = self._unreadable_step() or max(self._step_dirs(), default=None)
                if bad is None:
                    raise
                self._quarantine(bad, err)

    def _step_dirs(self) -> list[int]:
        if not self.directory.exists():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit())

    def _unreadable_step(self) -> int | None:
        import json

        for step in reversed(self._step_dirs()):
            for f in (self.directory / str(step)).rglob("*"):
                jsonish = f.name in ("_CHECKPOINT_METADATA", "_METADATA") or f.suffix == ".json" or (
                    f.parent.name in ("meta", "metrics") and f.name == "metadata")
                if f.is_file() and jsonish:
                    try:
                        json.loads(f.read_text())
                    except (ValueError, UnicodeDecodeError):
                        return step
        return None

    def _quarantine(self, step: int, err: BaseException) -> None:
        import warnings

        aside = self.directory / f"corrupt-{step}"
        warnings.warn(
            f"Checkpoint at step {step} in {self.directory} cannot be restored "
            f"({type(err).__name__}: {str(err)[:200]}); moved it to {aside.name} and "
            "falling back to the previous checkpoint.", stacklevel=3,
        )
        (self.directory / str(step)).rename(aside)

    def save(self, step: int, state, *, val_score: float | None = None, meta: dict | None = None) -> None:
        metrics = {"val_score": float(val_score)} if val_score is not None else None
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(_saveable(state, self.frozen)),
                                    meta=ocp.args.JsonSave(dict(meta or {}, step=step))),
            metrics=metrics,
            force=True,
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def val_score(self, step: int) -> float | None:
        """The validation score saved with ``step`` (``None`` without one)."""
        metrics = self.manager.metrics(step)
        return float(metrics["val_score"]) if metrics and "val_score" in metrics else None

    def restore(self, step: int, state_like, frozen_values=None):
        """The checkpoint of ``step`` as ``(MetaState, meta)`` (see :meth:`restore_latest`).

        With ``frozen``, those parameters come from ``frozen_values`` (parameters, or a function
        returning them), by default from ``state_like`` when it is a ``MetaState`` of arrays."""
        tree = state_like if isinstance(state_like, dict) else _saveable(state_like)
        if frozen_values is None and not isinstance(state_like, dict):
            frozen_values = state_like.params
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            tree,
        )
        abstract["params"] = strip_frozen(abstract["params"], self.frozen)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                          meta=ocp.args.JsonRestore()))
        state = dict(restored.state)
        if self.frozen is not None:
            state["params"] = fill_frozen(state["params"], _frozen_values(frozen_values), self.frozen)
        return _restore_state(state), dict(restored.meta)

    def restore_latest(self, state_like, frozen_values=None):
        """The newest readable checkpoint as ``(MetaState, meta)``, or ``(None, None)``.

        ``state_like`` gives the structure: a ``MetaState`` of arrays, or the abstract tree of
        :func:`abstract_state` (shapes from ``jax.eval_shape``, no computation). A checkpoint that
        fails to restore is moved aside (renamed ``corrupt-<step>``, kept for inspection) with a
        warning, and the previous one is tried.
        """
        if self.frozen is not None and frozen_values is None and isinstance(state_like, dict):
            _frozen_values(None)  # a usage error, raised before any checkpoint is set aside
        for step in reversed(self.steps()):
            try:
                return self.restore(step, state_like, frozen_values)
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint falls back
                self._quarantine(step, err)
                self.manager.reload()
        return None, None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
