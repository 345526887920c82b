"""Meshes and shardings for data parallelism over the task axis.

The meta-batch (the leading task axis of a :class:`jmeta.core.Episode` batch) is split over the
``"data"`` axis of a mesh; the meta-state (parameters, optimizer state, step, PRNG key) is
replicated. Passing ``batch_sharding=task_sharding(mesh)`` to
:func:`jmeta.core.make_meta_step` is then enough for XLA to compute each task's meta-gradient on
the device that holds the task and to average the meta-gradients across devices with one
all-reduce. This uses ``jit`` with :class:`jax.sharding.NamedSharding` only: no ``pmap`` and no
``shard_map`` (``jax.pmap`` would be the fallback on a JAX too old to have these APIs; jmeta does
not implement it).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jmeta.core._types import MetaState

DATA = "data"
MODEL = "model"


def make_mesh(data: int | None = None, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``("data", "model")`` mesh over all devices of all processes.

    ``data=None`` uses ``len(devices) // model``. The axes are ``AxisType.Auto`` (``jax.make_mesh``
    alone would make them ``Explicit``), so shardings propagate through ``jit`` as usual. Unlike
    ``jax.make_mesh``, which silently drops devices when the sizes multiply to fewer, a mesh that
    does not use every device is an error.

    Args:
      data: size of the data (task) axis; ``None`` for every device not used by ``model``.
      model: size of the model axis (1: no model parallelism).
      devices: the devices to use; defaults to ``jax.devices()`` (every process's devices).

    Raises:
      ValueError: when ``data * model`` differs from the number of devices.

    Example:
      >>> mesh = make_mesh()
      >>> mesh.axis_names
      ('data', 'model')
      >>> dict(mesh.shape) == {"data": jax.device_count(), "model": 1}
      True
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if not isinstance(model, int) or model < 1:
        raise ValueError(f"make_mesh: model must be a positive int; got {model!r}.")
    if data is None:
        if n % model:
            raise ValueError(
                f"make_mesh: model={model} does not divide the {n} devices; choose a model axis "
                f"size that divides {n}."
            )
        data = n // model
    if not isinstance(data, int) or data < 1:
        raise ValueError(f"make_mesh: data must be a positive int or None; got {data!r}.")
    if data * model != n:
        raise ValueError(
            f"make_mesh: data={data} x model={model} = {data * model} devices, but there are {n} "
            f"devices over {jax.process_count()} process(es); choose sizes whose product is {n} "
            f"(or data=None to use every device not on the model axis)."
        )
    return jax.make_mesh(
        (data, model), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
    )


def task_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the leading task axis over ``"data"``; every other axis is replicated.

    One sharding fits every leaf of a task batch, whatever its rank.

    Example:
      >>> task_sharding(make_mesh()).spec
      P('data',)
    """
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh`` (for parameters and optimizer state).

    Example:
      >>> replicated(make_mesh()).is_fully_replicated
      True
    """
    return NamedSharding(mesh, P())


def data_size(mesh: Mesh | int) -> int:
    """The size of the ``"data"`` axis of ``mesh`` (an int is returned as is).

    Example:
      >>> data_size(make_mesh()) == jax.device_count()
      True
    """
    if isinstance(mesh, int):
        return mesh
    return int(mesh.shape[DATA])


def check_batch(meta_batch_size: int, mesh: Mesh | int) -> None:
    """Fails early when the meta-batch cannot be split evenly over the ``"data"`` axis.

    Call it at start-up, before compiling anything: a task axis that is not a multiple of the
    data-axis size would otherwise fail deep inside XLA (or silently pad).

    Args:
      meta_batch_size: number of tasks per meta-step (global, over all processes).
      mesh: a mesh from :func:`make_mesh`, or the data-axis size as an int.

    Example:
      >>> check_batch(16, 8)
      >>> check_batch(10, 8)
      Traceback (most recent call last):
      ...
      ValueError: meta_batch_size=10 is not divisible by the data-axis size 8 ...
    """
    n = data_size(mesh)
    if not isinstance(meta_batch_size, int) or meta_batch_size < 1:
        raise ValueError(f"meta_batch_size must be a positive int; got {meta_batch_size!r}.")
    if meta_batch_size % n:
        lower = (meta_batch_size // n) * n
        upper = lower + n
        hint = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"meta_batch_size={meta_batch_size} is not divisible by the data-axis size {n} "
            f"(devices that split the task axis): use a meta-batch that is a multiple of {n} "
            f"(e.g. {hint}), or a mesh whose data axis divides {meta_batch_size} "
            f"(make_mesh(data=..., model=...))."
        )


def param_sharding(x, mesh: Mesh) -> NamedSharding:
    """Where one parameter (or optimizer-state) array lives: split along its last axis over
    ``"model"`` when that axis is larger than one and divides it (weight matrices, conv kernels),
    replicated otherwise (biases, scalars, the step, the key).

    Example:
      >>> import jax.numpy as jnp
      >>> param_sharding(jnp.zeros((3, 4)), make_mesh()).spec
      P()
    """
    size = mesh.shape.get(MODEL, 1)
    shape = getattr(x, "shape", ())
    if size > 1 and len(shape) >= 2 and shape[-1] % size == 0:
        return NamedSharding(mesh, P(*([None] * (len(shape) - 1)), MODEL))
    return replicated(mesh)


def shard_state(state: MetaState, mesh: Mesh) -> MetaState:
    """Places a :class:`~jmeta.core.MetaState` on ``mesh``: replicated over ``"data"``, and with
    weight matrices split over ``"model"`` when the mesh has a model axis (:func:`param_sharding`).

    With a model axis of size 1 every leaf (step, parameters, optimizer state, PRNG key) is
    :func:`replicated`. In a multi-process run every process must pass the same state (e.g. built
    from the same seed).

    Example:
      >>> import optax
      >>> from jmeta.algorithms import maml
      >>> from jmeta.core import init_state
      >>> from jmeta.models import mlp
      >>> learner, tx = maml(mlp(1, 1, hidden=(8,))), optax.adam(1e-3)
      >>> state = shard_state(init_state(learner, tx, jax.random.key(0)), make_mesh())
      >>> state.params["model"]["head"]["kernel"].sharding.is_fully_replicated
      True
    """
    def place(x):
        sharding = param_sharding(x, mesh) if not _is_key(x) else replicated(mesh)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return _replicate_global(x, sharding)

    return jax.tree.map(place, state)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _replicate_global(x, sharding: NamedSharding):
    """Builds a replicated global array from a value that every process holds identically."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        data = _replicate_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
