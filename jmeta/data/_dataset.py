"""The one input type of every episode sampler: examples grouped by class."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where source archives live: ``explicit`` (``--data-dir``), else ``$JMETA_DATA_DIR``, else
    ``$XDG_CACHE_HOME/jmeta/data`` (``~/.cache/jmeta/data``).

    Example:
      >>> str(data_dir("/tmp/d"))
      '/tmp/d'
    """
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("JMETA_DATA_DIR"):
        return Path(os.environ["JMETA_DATA_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "jmeta" / "data"


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where converted arrays are cached: ``explicit``, else ``$JMETA_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/jmeta/cache``. Never beside the source archives, which may be read-only.

    Example:
      >>> str(cache_dir("/tmp/c"))
      '/tmp/c'
    """
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("JMETA_CACHE_DIR"):
        return Path(os.environ["JMETA_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "jmeta" / "cache"


@dataclasses.dataclass(frozen=True, eq=False)
class ClassDataset:
    """Examples grouped by class, for one split of a few-shot dataset.

    The examples of class ``c`` are ``data[class_start[c] : class_start[c] + class_count[c]]``.
    Several classes may share examples: Omniglot's rotated classes point at the same drawings
    with a different ``class_rotation`` (quarter turns, applied when an episode is gathered).

    Attributes:
      data: ``[num_examples, ...]`` examples: ``uint8`` images ``[H, W, C]``, or an object array
        of strings for text.
      class_start, class_count: ``int64 [num_classes]``.
      class_names: one name per class.
      class_rotation: ``int8 [num_classes]`` quarter turns (0-3), or ``None`` for none.
      name, split: for messages, e.g. ``"omniglot"``, ``"train"``.

    Example:
      >>> import numpy as np
      >>> ds = ClassDataset.from_labels(np.zeros((6, 2, 2, 1), np.uint8), np.array([1, 0, 1, 0, 1, 1]),
      ...                               ["a", "b"])
      >>> ds.num_classes, ds.class_count.tolist()
      (2, [2, 4])
    """

    data: np.ndarray
    class_start: np.ndarray
    class_count: np.ndarray
    class_names: tuple
    class_rotation: np.ndarray | None = None
    name: str = ""
    split: str = ""

    def __post_init__(self):
        n = len(self.class_names)
        start, count = np.asarray(self.class_start), np.asarray(self.class_count)
        if start.shape != (n,) or count.shape != (n,):
            raise ValueError(
                f"{self.label}: class_start {start.shape} and class_count {count.shape} must both "
                f"have one entry per class ({n})."
            )
        if n and (count.min() < 1 or start.min() < 0 or (start + count).max() > len(self.data)):
            raise ValueError(f"{self.label}: class ranges fall outside the {len(self.data)} examples.")
        if self.class_rotation is not None and np.asarray(self.class_rotation).shape != (n,):
            raise ValueError(f"{self.label}: class_rotation needs one entry per class ({n}).")

    @property
    def label(self) -> str:
        return "/".join(p for p in (self.name, self.split) if p) or "dataset"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def min_count(self) -> int:
        """Fewest examples in any class: the most shots + queries an episode can ask for."""
        return int(np.min(self.class_count))

    @property
    def example_shape(self) -> tuple:
        return tuple(self.data.shape[1:])

    @staticmethod
    def from_labels(
        data: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        *,
        name: str = "",
        split: str = "",
    ) -> "ClassDataset":
        """Groups ``data`` by integer ``labels`` in ``0..len(class_names)-1`` (stable order)."""
        labels = np.asarray(labels)
        if labels.shape != (len(data),):
            raise ValueError(f"labels must be one int per example; got {labels.shape} for {len(data)}.")
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=len(class_names))
        if len(counts) > len(class_names):
            raise ValueError(f"labels go up to {labels.max()} but only {len(class_names)} names given.")
        if np.any(counts == 0):
            empty = [class_names[i] for i in np.flatnonzero(counts == 0)[:5]]
            raise ValueError(f"{name}/{split}: classes without examples: {empty}.")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return ClassDataset(
            data=data[order], class_start=starts.astype(np.int64), class_count=counts.astype(np.int64),
            class_names=tuple(class_names), name=name, split=split,
        )

    def check_episode(self, ways: int, shots: int, queries: int) -> None:
        """Raises a clear ``ValueError`` when an N-way K-shot Q-query episode is impossible."""
        for key, v in (("ways", ways), ("shots", shots), ("queries", queries)):
            if not isinstance(v, (int, np.integer)) or v < (0 if key == "queries" else 1):
                raise ValueError(f"{key} must be a {'non-negative' if key == 'queries' else 'positive'} int; got {v!r}.")
        if ways > self.num_classes:
            raise ValueError(
                f"{ways}-way episodes need {ways} distinct classes but {self.label} has only "
                f"{self.num_classes}; lower ways or use a split with more classes."
            )
        if shots + queries > self.min_count:
            raise ValueError(
                f"{shots} shots + {queries} queries per class need {shots + queries} examples per "
                f"class but the smallest class of {self.label} has {self.min_count}; lower shots "
                "or queries."
            )
