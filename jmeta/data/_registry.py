"""The registry of datasets: ``data=dict(name=..., ...)`` in a config.

A dataset registers a builder that takes its own options and returns what the training loop
samples from: :class:`ClassSplits` (few-shot classification: named splits of classes, registered
with ``kind="classes"``) or :class:`TaskFamily` (tasks generated in-graph, such as sinusoid
regression, ``kind="tasks"``). The episode shape (ways, shots, queries) is the loop's, not the
dataset's: it is the same keys for every dataset of a kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from jmeta.core._registry import Registry
from jmeta.core._types import PRNGKey, TaskBatch
from jmeta.data._dataset import ClassDataset
from jmeta.data._samplers import device_sampler

DATASETS = Registry("dataset")
"""``name -> builder(**options) -> ClassSplits | TaskFamily``; the entry's ``kind`` attribute
is ``"classes"`` or ``"tasks"``."""

KINDS = ("classes", "tasks")


def register(name: str, builder: Callable | None = None, *, kind: str = "classes"):
    """Registers a dataset builder for configs (``data=dict(name=name, ...)``).

    ``kind="classes"``: the builder takes ``data_dir`` and ``cache_dir`` (strings, ``""`` for
    the defaults) and its own options, and returns a :class:`ClassSplits`; ``kind="tasks"``: it
    takes its own options and returns a :class:`TaskFamily`.

    Example:
      >>> from jmeta.data import DATASETS
      >>> DATASETS["omniglot"].attributes["kind"], sorted(DATASETS["omniglot"].options)
      ('classes', ['cache_dir', 'data_dir', 'image_size', 'protocol'])
    """
    if kind not in KINDS:
        raise ValueError(f"register: kind must be one of {KINDS}; got {kind!r}.")
    return DATASETS.register(name, builder, kind=kind)


@dataclasses.dataclass(frozen=True, eq=False)
class ClassSplits:
    """A few-shot classification dataset as a config's training loop uses it.

    Attributes:
      load: ``split -> ClassDataset`` for ``"train"``, ``"val"`` and ``"test"`` (called once per
        split and process; the result is kept).
      example_shape: the shape of one example as the model sees it, known without loading.
      inputs: ``"images"`` (``uint8 [H, W, C]``, fed as float32 in [0, 1]) or ``"tokens"``
        (``int32 [length]`` token ids).
      image_format: for images, how examples were made from image files (``size``,
        ``channels``, PIL ``mode``, ``invert``, ``resampling``), to prepare a user's images
        the same way; ``None`` otherwise.
      encode: ``None``, or ``raw examples -> model inputs`` for a user's examples that are not
        images (a text dataset tokenizes its strings).
      eval_chunk: test tasks adapted together by default at evaluation (0: all of a batch).
      sparse_eval: evaluate the query set only after the inner-step counts asked for (when a
        query set costs far more than an inner step, as text through a transformer).
      sampler: ``(ds, ways, shots, queries, num_tasks, **options) -> (key -> task batch)``, the
        in-graph episode sampler (:func:`jmeta.data.device_sampler`).
      host_transform: what :class:`jmeta.data.HostSampler` applies to a gathered batch
        (``None``: uint8 images to float32 in [0, 1]).

    Example:
      >>> ds = ClassDataset.from_labels(np.zeros((6, 4, 4, 1), np.uint8), np.arange(6) % 3,
      ...                               ["a", "b", "c"])
      >>> splits = ClassSplits(load=lambda split: ds, example_shape=(4, 4, 1))
      >>> splits.split("train").num_classes
      3
    """

    load: Callable[[str], ClassDataset]
    example_shape: tuple
    inputs: str = "images"
    image_format: dict | None = None
    encode: Callable[[Sequence], np.ndarray] | None = None
    eval_chunk: int = 0
    sparse_eval: bool = False
    sampler: Callable = device_sampler
    host_transform: Callable | None = None
    _loaded: dict = dataclasses.field(default_factory=dict, repr=False)

    def split(self, name: str) -> ClassDataset:
        """The split ``name``, loaded once."""
        if name not in self._loaded:
            self._loaded[name] = self.load(name)
        return self._loaded[name]


@dataclasses.dataclass(frozen=True, eq=False)
class TaskFamily:
    """Tasks generated in-graph from a PRNG key (a regression benchmark such as sinusoid).

    Attributes:
      sample: ``(key, num_tasks, shots, queries) -> task batch``, pure and traceable.
      example_shape: the shape of one input.
      outputs: the size of one target (the model's output size).
      eval_queries: query points per test task when the config gives none.

    Example:
      >>> import jax
      >>> from jmeta.data import sinusoid_tasks
      >>> family = TaskFamily(sinusoid_tasks, example_shape=(1,))
      >>> family.sample(jax.random.key(0), 2, 5, 5).support.x.shape
      (2, 5, 1)
    """

    sample: Callable[[PRNGKey, int, int, int], TaskBatch]
    example_shape: tuple = (1,)
    outputs: int = 1
    eval_queries: int = 100
    inputs: str = "vectors"
