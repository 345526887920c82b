"""Ordinary supervised batches over all classes of a split, in the shape of a task batch.

Transfer baselines (Chen et al. 2019) pre-train an embedding as a plain classifier over every
base class. :func:`class_batch_sampler` draws such batches inside the compiled step, like
:func:`jmeta.data.device_sampler`, and packs them as a task batch so that the meta-training
machinery (``jmeta.core.make_meta_step(learner, tx, sampler=...)``) runs pre-training unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.core._types import Batch, Episode, PRNGKey, TaskBatch
from jmeta.data._dataset import ClassDataset
from jmeta.data._samplers import _rot90


def class_batch_sampler(
    ds: ClassDataset,
    batch_size: int,
    *,
    num_tasks: int = 1,
    augment_rotations: bool = False,
) -> Callable[[PRNGKey], TaskBatch]:
    """A pure ``key -> task batch`` sampler of labelled examples over ALL classes of ``ds``.

    Each of the ``num_tasks`` "tasks" is one batch of ``batch_size`` examples drawn uniformly,
    independently and with replacement over all examples of all classes (a class that shares
    its drawings with another, such as an Omniglot rotated class, counts its examples again), so
    a class is drawn in proportion to its number of examples. Labels are the GLOBAL class ids
    ``0 .. ds.num_classes - 1``; each class's quarter turns (``ds.class_rotation``) are applied,
    so rotated classes are separate classes, as in :func:`jmeta.data.device_sampler`.

    ``augment_rotations=True`` adds a random quarter turn ``k`` (0-3) to every example and makes
    the turned example a class of its own: its label is ``class + k * ds.num_classes``, so the
    classifier trained on these batches needs ``4 * ds.num_classes`` outputs.

    The batch is the QUERY set of the returned episode, images as float32 in [0, 1]
    (``uint8 / 255``); the support set is empty (``x[T, 0, ...]``, ``y[T, 0]``): pre-training
    has no inner loop, and an empty support keeps memory and transfers at one copy of the batch.
    Learners that read the support (MAML, ProtoNets) cannot use these batches; the transfer
    baselines (:func:`jmeta.algorithms.transfer_baseline`) read only the query.

    Args:
      ds: the split to pre-train on (image data; text needs a host-side pipeline).
      batch_size: examples per task batch (positive int).
      num_tasks: leading task axis ``T``; the meta-step averages the per-task gradients, so
        ``T`` batches of ``B`` are one step on ``T * B`` examples (with batch-statistics
        normalisation computed per task batch of ``B``).
      augment_rotations: random extra quarter turns as extra classes (see above).

    Returns:
      ``sample(key) -> Episode(support=Batch(x[T, 0, ...], y[T, 0]), query=Batch(x[T, B, ...],
      y[T, B]))`` with int32 labels; pure, for ``jit`` and in-graph sampling.

    Example:
      >>> import jax, numpy as np
      >>> data = np.repeat(np.arange(12, dtype=np.uint8), 16).reshape(12, 4, 4, 1)
      >>> ds = ClassDataset.from_labels(data, np.arange(12) % 3, ["a", "b", "c"])
      >>> sample = class_batch_sampler(ds, batch_size=8, num_tasks=2)
      >>> batch = jax.jit(sample)(jax.random.key(0))
      >>> batch.support.x.shape, batch.query.x.shape, batch.query.y.shape
      ((2, 0, 4, 4, 1), (2, 8, 4, 4, 1), (2, 8))
      >>> ids = np.rint(np.asarray(batch.query.x)[..., 0, 0, 0] * 255).astype(int)
      >>> bool(np.all(ids % 3 == np.asarray(batch.query.y)))
      True
    """
    for name, value in (("batch_size", batch_size), ("num_tasks", num_tasks)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"class_batch_sampler: {name} must be a positive int; got {value!r}.")
    if ds.data.dtype == object:
        raise ValueError(
            f"{ds.label} holds text; class batches of text need a tokenizer on the host, not "
            "the device-resident class_batch_sampler."
        )
    counts = np.asarray(ds.class_count, np.int64)
    total = int(counts.sum())
    if total >= 2**31:
        raise ValueError(
            f"{ds.label} has {total} (class, example) pairs; class_batch_sampler indexes them "
            "with int32 and supports fewer than 2**31."
        )
    num_classes = ds.num_classes
    has_rot = ds.class_rotation is not None and bool(np.any(ds.class_rotation))
    rotate = has_rot or augment_rotations
    if rotate and (ds.data.ndim != 4 or ds.data.shape[1] != ds.data.shape[2]):
        raise ValueError(
            f"Rotations need square images [N, S, S, C]; {ds.label} has {ds.data.shape}."
        )
    data = jnp.asarray(ds.data)
    start = jnp.asarray(ds.class_start, jnp.int32)
    ends = jnp.asarray(np.cumsum(counts), jnp.int32)  # exclusive end of each class's range
    first = ends - jnp.asarray(counts, jnp.int32)  # first flat index of each class
    rotation = jnp.asarray(ds.class_rotation if has_rot else np.zeros(num_classes), jnp.int32)
    batch_size, num_tasks = int(batch_size), int(num_tasks)

    def turn_one(image, k):
        return _rot90(image[None], k)[0]

    def one(key):
        k_ex, k_rot = jax.random.split(key)
        flat = jax.random.randint(k_ex, (batch_size,), 0, total, jnp.int32)
        cls = jnp.searchsorted(ends, flat, side="right").astype(jnp.int32)
        x = data[start[cls] + flat - first[cls]]
        labels = cls
        if rotate:
            turns = rotation[cls]
            if augment_rotations:
                extra = jax.random.randint(k_rot, (batch_size,), 0, 4, jnp.int32)
                turns = turns + extra
                labels = cls + extra * num_classes
            x = jax.vmap(turn_one)(x, turns % 4)
        x = x.astype(jnp.float32) / 255.0
        empty = Batch(jnp.zeros((0,) + x.shape[1:], x.dtype), jnp.zeros((0,), jnp.int32))
        return Episode(empty, Batch(x, labels))

    def sample(key: PRNGKey) -> TaskBatch:
        return jax.vmap(one)(jax.random.split(key, num_tasks))

    return sample
