"""Several processes (hosts): start-up, the tasks each process owns, and global task batches.

Each process draws only its own slice of the meta-batch, deterministically from
``(seed, process_index, step)``, and :func:`global_batch_from_local` assembles the slices into
one global ``jax.Array`` sharded over the ``"data"`` axis of the mesh; the jitted meta-step then
runs as one SPMD program over every device of every process.
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
from jax.sharding import Mesh

from jmeta.core._types import TaskBatch, num_tasks
from jmeta.distributed._mesh import check_batch, data_size, task_sharding

# Launchers whose environment jax.distributed.initialize() detects by itself.
_AUTO_DETECTED = {"SLURM_NTASKS": "Slurm", "OMPI_COMM_WORLD_SIZE": "Open MPI"}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Environment variable {name}={value!r} is not an integer.") from None


def initialize(
    num_processes: int | None = None,
    process_id: int | None = None,
    coordinator: str | None = None,
    *,
    local_device_ids: int | list[int] | None = None,
    timeout: int = 300,
) -> bool:
    """Starts JAX's multi-process runtime (call it first, before any other JAX call).

    Explicit arguments win; each one left ``None`` is read from the environment:
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process
    0). Without any of these, a Slurm or Open MPI job (``SLURM_NTASKS`` / ``OMPI_COMM_WORLD_SIZE``
    above 1) is left to ``jax.distributed.initialize``'s own detection. A single process
    (nothing set, or ``num_processes=1``) does nothing. Calling it again after a successful start
    does nothing either.

    The setup is checked before JAX is touched: ``process_id`` must be in
    ``[0, num_processes)`` and the coordinator must look like ``host:port``.

    Returns:
      ``True`` when the distributed runtime is running (started now or before), ``False`` for a
      single process.

    Example::

        # two processes on one machine, one line per process:
        # process 0                                   # process 1
        initialize(2, 0, "127.0.0.1:12345")           initialize(2, 1, "127.0.0.1:12345")
        mesh = make_mesh()                            # same program on every process

    On CPU, the cross-process collectives use Gloo (``jax_cpu_collectives_implementation``, the
    default of current jaxlib).
    """
    if jax.distributed.is_initialized():
        return True
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None

    if num_processes is None and process_id is None and coordinator is None:
        if any((_env_int(var) or 1) > 1 for var in _AUTO_DETECTED):
            jax.distributed.initialize(initialization_timeout=timeout)  # JAX reads the launcher
            return True
        return False  # a single process: nothing to start

    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(
            f"initialize: num_processes must be a positive int (argument or JAX_NUM_PROCESSES); "
            f"got {num_processes!r}."
        )
    if num_processes == 1 and process_id in (None, 0):
        return False
    if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise ValueError(
            f"initialize: process_id must be an int in [0, {num_processes}) for "
            f"num_processes={num_processes} (argument or JAX_PROCESS_ID); got {process_id!r}. "
            f"Number the processes 0 .. {num_processes - 1}."
        )
    if not isinstance(coordinator, str) or not re.fullmatch(r".+:\d+", coordinator):
        raise ValueError(
            f"initialize: coordinator must be 'host:port' of process 0 (argument or "
            f"JAX_COORDINATOR_ADDRESS), the same on every process; got {coordinator!r}."
        )
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=timeout,
    )
    return True


def process_slice(global_batch: int, mesh: Mesh | None = None) -> tuple[int, int]:
    """The tasks ``[start, stop)`` of the global meta-batch that this process supplies.

    With ``mesh`` the slice is read from :func:`task_sharding` (the rows held by this process's
    devices), so it is right for any device order; without it, process ``p`` of ``P`` owns
    ``[p * global_batch // P, (p + 1) * global_batch // P)``, which is what :func:`make_mesh`
    gives on CPU and GPU. Draw this process's tasks from ``(seed, jax.process_index(), step)``,
    e.g. ``HostSampler(..., num_tasks=stop - start, seed=seed, process_index=jax.process_index())``.

    Raises:
      ValueError: when ``global_batch`` is not divisible by the number of processes times the
        local devices (or by the mesh's data axis), or when this process's devices hold a
        non-contiguous part of the task axis.

    Example:
      >>> process_slice(8) == (0, 8) if jax.process_count() == 1 else True
      True
    """
    count, index = jax.process_count(), jax.process_index()
    if mesh is None:
        per = count * jax.local_device_count()
        if not isinstance(global_batch, int) or global_batch < 1 or global_batch % per:
            raise ValueError(
                f"global meta-batch {global_batch!r} is not divisible by {count} process(es) x "
                f"{jax.local_device_count()} local device(s) = {per}: use a multiple of {per}."
            )
        local = global_batch // count
        return index * local, (index + 1) * local
    check_batch(global_batch, mesh)
    indices = task_sharding(mesh).addressable_devices_indices_map((global_batch,))
    rows = sorted({(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop)
                   for s in indices.values()})
    start, stop = rows[0][0], rows[-1][1]
    covered = sum(b - a for a, b in rows)
    if covered != stop - start:
        raise ValueError(
            f"The devices of process {index} hold tasks {rows} of the task axis, which is not one "
            f"contiguous block; build the mesh with make_mesh() so that each process's devices are "
            f"adjacent on the 'data' axis."
        )
    return start, stop


def global_batch_from_local(local_batch: TaskBatch, mesh: Mesh) -> TaskBatch:
    """Assembles each process's task slice into one global task batch sharded over ``"data"``.

    ``local_batch`` holds the tasks :func:`process_slice` gives this process (NumPy or JAX arrays,
    task axis first). The result is a pytree of global ``jax.Array`` s with
    :func:`task_sharding`, ready for a meta-step built with ``batch_sharding=task_sharding(mesh)``.
    In a single process it is a sharded ``device_put``.

    Raises:
      ValueError: when the local task count times the number of processes is not divisible by
        the mesh's data axis, or differs from what :func:`process_slice` expects.

    Example:
      >>> from jmeta.data import sinusoid_tasks
      >>> from jmeta.distributed import make_mesh
      >>> mesh = make_mesh()
      >>> local = sinusoid_tasks(jax.random.key(0), num_tasks=jax.local_device_count(), k_shot=5)
      >>> batch = global_batch_from_local(local, mesh)
      >>> batch.support.x.shape[0] == jax.device_count()
      True
    """
    local = num_tasks(local_batch)
    # The data-axis rows held by this process's devices (one row per data index).
    rows = [i for i, row in enumerate(np.asarray(mesh.devices)) if any(
        d.process_index == jax.process_index() for d in row)]
    if not rows or local % len(rows):
        raise ValueError(
            f"This process (index {jax.process_index()}) passed {local} tasks, which does not split "
            f"evenly over the {len(rows)} position(s) of the 'data' axis its devices hold: pass a "
            f"multiple of {max(len(rows), 1)} tasks per process."
        )
    global_size = local // len(rows) * data_size(mesh)
    check_batch(global_size, mesh)
    start, stop = process_slice(global_size, mesh)
    if stop - start != local:
        raise ValueError(
            f"This process (index {jax.process_index()}) passed {local} tasks but its devices hold "
            f"tasks [{start}, {stop}) of a global meta-batch of {global_size}: pass "
            f"{stop - start} tasks per process."
        )
    sharding = task_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, np.asarray(x), (global_size,) + tuple(np.shape(x)[1:])
        ),
        local_batch,
    )
