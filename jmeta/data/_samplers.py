"""Episode samplers with one contract: N-way K-shot Q-query episodes, labels 0..N-1, the N
classes distinct, deterministic in (seed, step).

* :func:`device_sampler`: the whole dataset lives on the device; episodes are gathered by index
  inside the jitted step from a PRNG key, so the host does no work per step.
* :class:`HostSampler`: NumPy sampling from a seed derived from ``(seed, process_index, step)``
  with a background thread that prefetches a few batches to the device, placing the task axis
  with a given sharding.

Both return a task batch ``Episode(support=Batch(x[T, N*K, H, W, C], y[T, N*K]),
query=Batch(x[T, N*Q, ...], y[T, N*Q]))``, class-major (the K shots of class 0 first), images
as float32 in [0, 1].
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.core._types import Batch, Episode, PRNGKey, TaskBatch
from jmeta.data._dataset import ClassDataset


def _check(ds: ClassDataset, ways: int, shots: int, queries: int, num_tasks: int) -> None:
    ds.check_episode(ways, shots, queries)
    if not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}.")
    if ds.data.dtype == object:
        raise ValueError(
            f"{ds.label} holds text; episodes of text need a tokenizer and the host-side sampler's "
            "transform=..., not the device-resident sampler."
        )


def _labels(ways: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(ways, dtype=np.int32), per_class)


def device_sampler(
    ds: ClassDataset,
    ways: int,
    shots: int,
    queries: int,
    num_tasks: int,
    *,
    augment_rotations: bool = False,
) -> Callable[[PRNGKey], TaskBatch]:
    """A pure ``key -> task batch`` sampler over a dataset held on the device.

    The uint8 examples are put on the device once; each call picks ``ways`` distinct classes and
    ``shots + queries`` distinct examples of each by ranking uniform random numbers (``top_k``),
    gathers them, applies the classes' quarter turns (and a random one per class and episode
    with ``augment_rotations``, as MAML did on Omniglot), and scales to [0, 1].

    Example:
      >>> import jax, numpy as np
      >>> ds = ClassDataset.from_labels(np.zeros((40, 4, 4, 1), np.uint8), np.arange(40) % 8,
      ...                               [str(i) for i in range(8)])
      >>> sample = device_sampler(ds, ways=5, shots=1, queries=2, num_tasks=3)
      >>> batch = jax.jit(sample)(jax.random.key(0))
      >>> batch.support.x.shape, batch.query.y.shape
      ((3, 5, 4, 4, 1), (3, 10))
    """
    _check(ds, ways, shots, queries, num_tasks)
    per_class = shots + queries
    data = jnp.asarray(ds.data)
    start = jnp.asarray(ds.class_start, jnp.int32)
    count = jnp.asarray(ds.class_count, jnp.int32)
    max_count = int(ds.class_count.max())
    has_rot = ds.class_rotation is not None and bool(np.any(ds.class_rotation))
    rotation = jnp.asarray(ds.class_rotation if has_rot else np.zeros(ds.num_classes), jnp.int32)
    rotate = has_rot or augment_rotations
    if rotate and (data.ndim != 4 or data.shape[1] != data.shape[2]):
        raise ValueError(f"Rotations need square images [N, S, S, C]; {ds.label} has {data.shape}.")
    labels_s, labels_q = jnp.asarray(_labels(ways, shots)), jnp.asarray(_labels(ways, queries))

    def one(key):
        k_cls, k_ex, k_rot = jax.random.split(key, 3)
        _, classes = jax.lax.top_k(jax.random.uniform(k_cls, (ds.num_classes,)), ways)
        scores = jax.random.uniform(k_ex, (ways, max_count))
        valid = jnp.arange(max_count)[None, :] < count[classes][:, None]
        _, pick = jax.lax.top_k(jnp.where(valid, scores, -1.0), per_class)  # distinct, in range
        x = data[start[classes][:, None] + pick]  # [ways, per_class, ...]
        if rotate:
            turns = rotation[classes]
            if augment_rotations:
                turns = turns + jax.random.randint(k_rot, (ways,), 0, 4)
            x = jax.vmap(_rot90)(x, turns % 4)
        x = x.astype(jnp.float32) / 255.0
        support = x[:, :shots].reshape((ways * shots,) + x.shape[2:])
        query = x[:, shots:].reshape((ways * queries,) + x.shape[2:])
        return Episode(Batch(support, labels_s), Batch(query, labels_q))

    def sample(key: PRNGKey) -> TaskBatch:
        return jax.vmap(one)(jax.random.split(key, num_tasks))

    return sample


def _rot90(x: jax.Array, k: jax.Array) -> jax.Array:
    """Rotates images ``[n, S, S, C]`` by ``k`` quarter turns counter-clockwise (traced ``k``)."""
    return jax.lax.switch(k, [lambda a, i=i: jnp.rot90(a, i, axes=(1, 2)) for i in range(4)], x)


class HostSampler:
    """NumPy episode sampler with background prefetch to the device.

    ``sample(step)`` is a pure function of ``(seed, process_index, step)``: a resumed run that
    restarts at step ``s`` draws the same episodes. Iterating yields device batches starting at
    ``start_step``, prepared ``prefetch`` batches ahead by a background thread and placed with
    ``sharding`` (e.g. ``NamedSharding(mesh, P("data"))`` to shard the task axis).

    ``transform`` (optional) maps each gathered example array ``[n, ...]`` before stacking, e.g.
    a tokenizer for text datasets.

    Example:
      >>> import numpy as np
      >>> ds = ClassDataset.from_labels(np.zeros((40, 4, 4, 1), np.uint8), np.arange(40) % 8,
      ...                               [str(i) for i in range(8)])
      >>> sampler = HostSampler(ds, ways=5, shots=1, queries=2, num_tasks=3, seed=0)
      >>> sampler.sample(step=7).support.x.shape
      (3, 5, 4, 4, 1)
      >>> with sampler.iterate(start_step=0) as batches:
      ...     first = next(batches)
      >>> first.query.y.shape
      (3, 10)
    """

    def __init__(
        self,
        ds: ClassDataset,
        ways: int,
        shots: int,
        queries: int,
        num_tasks: int,
        *,
        seed: int = 0,
        process_index: int = 0,
        augment_rotations: bool = False,
        sharding: jax.sharding.Sharding | None = None,
        prefetch: int = 2,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        if transform is None:
            _check(ds, ways, shots, queries, num_tasks)
        else:
            ds.check_episode(ways, shots, queries)
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1; got {prefetch}.")
        self.ds, self.ways, self.shots, self.queries = ds, ways, shots, queries
        self.num_tasks, self.seed, self.process_index = num_tasks, seed, process_index
        self.augment_rotations, self.sharding, self.prefetch = augment_rotations, sharding, prefetch
        self.transform = transform
        rot = ds.class_rotation
        self._rotation = np.zeros(ds.num_classes, np.int64) if rot is None else np.asarray(rot, np.int64)

    def sample(self, step: int) -> TaskBatch:
        """The task batch of ``step`` as NumPy arrays (vectorised over tasks)."""
        rng = np.random.default_rng([self.seed, self.process_index, step])
        ds, per_class, t, n = self.ds, self.shots + self.queries, self.num_tasks, self.ways
        # N distinct classes per task: the N smallest of C uniform numbers.
        classes = np.argpartition(rng.random((t, ds.num_classes)), n - 1, axis=1)[:, :n]
        # shots + queries distinct examples per class, only among that class's examples.
        count = ds.class_count[classes]  # [t, n]
        scores = rng.random((t, n, int(ds.class_count.max())))
        scores[np.arange(scores.shape[2]) >= count[..., None]] = 2.0
        pick = np.argpartition(scores, per_class - 1, axis=2)[..., :per_class]
        x = ds.data[ds.class_start[classes][..., None] + pick]  # [t, n, per_class, ...]
        turns = self._rotation[classes]
        if self.augment_rotations:
            turns = turns + rng.integers(0, 4, (t, n))
        turns %= 4
        for k in (1, 2, 3):
            sel = turns == k
            if sel.any():
                x[sel] = np.rot90(x[sel], k, axes=(2, 3))
        if self.transform is not None:
            x = self.transform(x.reshape((-1,) + x.shape[3:])).reshape(x.shape[:3] + (-1,))
        else:
            x = x.astype(np.float32) * np.float32(1 / 255)
        tail = x.shape[3:]
        support = x[:, :, : self.shots].reshape((t, -1) + tail)
        query = x[:, :, self.shots :].reshape((t, -1) + tail)
        ys = np.broadcast_to(_labels(n, self.shots), (t, n * self.shots))
        yq = np.broadcast_to(_labels(n, self.queries), (t, n * self.queries))
        return Episode(Batch(support, np.array(ys)), Batch(query, np.array(yq)))

    def iterate(self, start_step: int = 0) -> "_Prefetcher":
        """A context manager yielding device batches for ``start_step, start_step + 1, ...``."""
        return _Prefetcher(self, start_step)


class _Prefetcher:
    def __init__(self, sampler: HostSampler, start_step: int):
        self.sampler, self.step = sampler, start_step
        self.queue: queue.Queue = queue.Queue(maxsize=sampler.prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self):
        step = self.step
        try:
            while not self.stop.is_set():
                batch = self.sampler.sample(step)
                batch = jax.device_put(batch, self.sampler.sharding) if self.sampler.sharding else jax.device_put(batch)
                while not self.stop.is_set():
                    try:
                        self.queue.put((step, batch), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += 1
        except BaseException as err:  # surface errors in the consumer
            self.queue.put((None, err))

    def __iter__(self) -> Iterator[TaskBatch]:
        return self

    def __next__(self) -> TaskBatch:
        step, item = self.queue.get()
        if step is None:
            raise item
        self.step = step + 1
        return item

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
