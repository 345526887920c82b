"""Few-shot text classification: labelled texts tokenized once, split by class, sampled as episodes.

A text dataset is read with :func:`jmeta.data.load_text_file` (any CSV or JSON-lines file of
``(text, label)`` rows; several files are pooled per label), tokenized once on the host to
``int32 [n, max_length]`` token ids (cached in the cache directory), split into disjoint sets of
classes, and sampled like an image dataset: :func:`token_sampler` keeps the ids on the device and
draws N-way K-shot episodes inside the jitted step.

BANKING77 (Casanueva et al. 2020: 13,083 online-banking queries, 77 intents) is the standard
dataset: its ``train.csv`` and ``test.csv`` are pooled per intent (the class split, not the
official utterance split, separates meta-training from meta-testing) and split 50 / 10 / 17
intents as listed in ``jmeta/data/splits/banking77/``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.core._types import Batch, Episode, PRNGKey, TaskBatch
from jmeta.data._cache import cached_arrays
from jmeta.data import _dataset
from jmeta.data._dataset import ClassDataset, data_dir
from jmeta.data._loaders import SPLITS, load_text_file
from jmeta.data._pretrained import tokenize, tokenizer_file
from jmeta.data._registry import ClassSplits, register

BANKING77_SPLIT_DIR = Path(__file__).resolve().parent / "splits" / "banking77"
BANKING77_CLASSES = {"train": 50, "val": 10, "test": 17}
BANKING77_FILES = ("train.csv", "test.csv")
RANDOM_SPLIT_FRACTIONS = (50 / 77, 10 / 77, 17 / 77)
"""Class fractions (train, val, test) of :func:`random_class_split`: BANKING77's proportions."""

_FORMAT_VERSION = "v1"  # bump to invalidate every cached tokenization of this module


def read_class_split(folder: str | os.PathLike) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` class names from ``folder/{split}.txt``
    (one name per line; blank lines ignored). The three lists must be disjoint.

    Example:
      >>> split = read_class_split(BANKING77_SPLIT_DIR)
      >>> {k: len(v) for k, v in split.items()}
      {'train': 50, 'val': 10, 'test': 17}
    """
    folder = Path(folder).expanduser()
    out = {}
    for split in SPLITS:
        f = folder / f"{split}.txt"
        if not f.is_file():
            raise FileNotFoundError(f"Class split {folder} lacks {f.name}: a split folder holds "
                                    "train.txt, val.txt and test.txt, one class name per line.")
        out[split] = [line.strip() for line in f.read_text(encoding="utf-8").splitlines()
                      if line.strip()]
    _check_disjoint(out, str(folder))
    return out


def _check_disjoint(split: dict[str, list[str]], source: str) -> None:
    seen: dict[str, str] = {}
    for name, classes in split.items():
        for c in classes:
            if c in seen:
                raise ValueError(f"{source}: class {c!r} is in both {seen[c]} and {name}; the "
                                 "splits must be disjoint.")
            seen[c] = name


def random_class_split(names: Sequence[str], *, seed: int = 0,
                       fractions: Sequence[float] = RANDOM_SPLIT_FRACTIONS) -> dict[str, list[str]]:
    """A seeded split of ``names`` into train / val / test classes (each sorted).

    The sorted names are permuted with ``numpy.random.default_rng(seed)``; val and test get
    ``round(fraction * n)`` classes (at least one each), train the rest. With BANKING77's 77
    intents and ``seed=0`` this is exactly the shipped split (``BANKING77_SPLIT_DIR``).

    Example:
      >>> s = random_class_split([f"c{i}" for i in range(20)], seed=0)
      >>> [len(s[k]) for k in ("train", "val", "test")]
      [13, 3, 4]
    """
    names = sorted(set(names))
    n = len(names)
    if n < 3:
        raise ValueError(f"A class split needs at least 3 classes; got {n}.")
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} classes are too few for train / val / test fractions {fractions}.")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = n - n_val - n_test
    parts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val],
             "test": perm[n_train + n_val:]}
    return {k: sorted(names[i] for i in idx) for k, idx in parts.items()}


def load_texts(paths: str | os.PathLike | Sequence[str | os.PathLike], *,
               text_field: str = "text", label_field: str | None = None) -> ClassDataset:
    """One or more labelled text files (:func:`jmeta.data.load_text_file`), pooled per label.

    Example:
      >>> import tempfile
      >>> d = Path(tempfile.mkdtemp())
      >>> _ = (d / "a.csv").write_text("text,label\\nhi,greet\\nlost card,card\\n")
      >>> _ = (d / "b.csv").write_text("text,label\\nhello,greet\\n")
      >>> ds = load_texts([d / "a.csv", d / "b.csv"])
      >>> ds.class_names, ds.class_count.tolist()
      (('card', 'greet'), [1, 2])
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("load_texts: no file given.")
    parts = [load_text_file(p, text_field=text_field, label_field=label_field) for p in paths]
    texts, labels = [], []
    for ds in parts:
        for c, name in enumerate(ds.class_names):
            s, k = int(ds.class_start[c]), int(ds.class_count[c])
            texts += list(ds.data[s:s + k])
            labels += [name] * k
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    data = np.empty(len(texts), dtype=object)
    data[:] = texts
    first = Path(paths[0])
    return ClassDataset.from_labels(data, np.array([index[x] for x in labels], np.int64), names,
                                    name=first.parent.name or first.stem, split="all")


def tokenize_dataset(ds: ClassDataset, max_length: int, *, bert_path=None,
                     sources: Sequence[str | os.PathLike] = (), cache=None,
                     key: str = "") -> ClassDataset:
    """The same classes with every text tokenized: ``data`` becomes ``int32 [n, max_length]``.

    ``bert_path`` is the checkpoint folder whose ``tokenizer.json`` is used (None:
    all-MiniLM-L6-v2). With ``sources`` (the files ``ds`` was read from) the ids are cached in
    the cache directory under a name that changes with the files, the tokenizer, ``max_length``
    and ``key``; later calls read the cache.

    Example:
      >>> ds = ClassDataset.from_labels(np.array(["hi", "lost my card"], dtype=object),
      ...                               np.array([0, 1]), ["greet", "card"])
      >>> tokenize_dataset(ds, 8).data.shape  # doctest: +SKIP
      (2, 8)
    """
    if ds.data.dtype != object:
        raise ValueError(f"{ds.label} is already tokenized (data {ds.data.dtype}).")

    def build():
        return {"ids": tokenize(list(ds.data), max_length, path=bert_path)}

    if sources:
        tokenizer = tokenizer_file(bert_path)
        name = f"text-{key or ds.label}-{ds.num_classes}c-{len(ds.data)}-L{max_length}-{_FORMAT_VERSION}"
        ids = cached_arrays(name, build, [*sources, tokenizer], cache=cache)["ids"]
    else:
        ids = build()["ids"]
    return ClassDataset(data=np.asarray(ids, np.int32), class_start=ds.class_start,
                        class_count=ds.class_count, class_names=ds.class_names, name=ds.name,
                        split=ds.split)


def select_classes(ds: ClassDataset, names: Sequence[str], split: str) -> ClassDataset:
    """The classes ``names`` of ``ds`` (in that order) as a dataset of their own.

    Example:
      >>> ds = ClassDataset.from_labels(np.arange(5)[:, None], np.array([0, 1, 2, 1, 0]),
      ...                               ["a", "b", "c"])
      >>> sub = select_classes(ds, ["c", "a"], "test")
      >>> sub.class_names, sub.data[:, 0].tolist()
      (('c', 'a'), [2, 0, 4])
    """
    index = {n: i for i, n in enumerate(ds.class_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"{ds.label}: the {split} split names classes the data does not have: "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; classes found "
                         f"include {list(ds.class_names[:5])}.")
    idx = [index[n] for n in names]
    parts = [np.arange(ds.class_start[i], ds.class_start[i] + ds.class_count[i]) for i in idx]
    rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    counts = ds.class_count[idx].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return ClassDataset(data=ds.data[rows], class_start=starts, class_count=counts,
                        class_names=tuple(names), name=ds.name, split=split)


def load_text_splits(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    split: str | os.PathLike | dict | None = None,
    max_length: int = 32,
    bert_path=None,
    cache=None,
    text_field: str = "text",
    label_field: str | None = None,
    seed: int = 0,
    name: str | None = None,
) -> dict[str, ClassDataset]:
    """Few-shot splits of your own labelled texts: ``{"train", "val", "test"}`` datasets of token
    ids ``int32 [n, max_length]``, with disjoint classes.

    ``paths``: one or more CSV / JSON-lines files of ``(text, label)`` rows, pooled per label.
    ``split``: a folder with ``train.txt``, ``val.txt``, ``test.txt`` (one class name per line),
    a dict of the three lists, or None for :func:`random_class_split` with ``seed``. Classes in
    no list are left out. ``name`` names the datasets in messages (default: the first file's
    folder).

    Example::

        splits = load_text_splits("my_intents.csv", max_length=32)
        sampler = token_sampler(splits["train"], ways=5, shots=1, queries=15, num_tasks=4)
    """
    pooled = load_texts(paths, text_field=text_field, label_field=label_field)
    if name:
        pooled = dataclasses.replace(pooled, name=name)
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    tokens = tokenize_dataset(pooled, max_length, bert_path=bert_path, sources=files, cache=cache,
                              key=f"{pooled.name}-{text_field}-{label_field}")
    if split is None:
        classes = random_class_split(pooled.class_names, seed=seed)
    elif isinstance(split, dict):
        classes = {k: list(split[k]) for k in SPLITS}
        _check_disjoint(classes, "split")
    else:
        classes = read_class_split(split)
    return {k: select_classes(tokens, classes[k], k) for k in SPLITS}


def load_banking77(root: str | os.PathLike | None = None, *, max_length: int = 32,
                   bert_path=None, cache=None) -> dict[str, ClassDataset]:
    """BANKING77 as few-shot splits of token ids: 50 / 10 / 17 intents (the shipped split).

    ``root`` holds ``train.csv`` and ``test.csv`` (columns ``text,category``, as released by
    PolyAI); default ``<data dir>/banking77``. Both files are pooled per intent (75 to 227
    utterances per intent), tokenized once to ``int32 [n, max_length]`` and cached.

    Example:
      >>> splits = load_banking77("../shared/data/banking77", max_length=32)  # doctest: +SKIP
      >>> {k: v.num_classes for k, v in splits.items()}  # doctest: +SKIP
      {'train': 50, 'val': 10, 'test': 17}
    """
    root = Path(root).expanduser() if root else data_dir() / "banking77"
    files = [root / f for f in BANKING77_FILES]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"BANKING77 not found in {root} (missing {', '.join(missing)}): place the dataset's "
            "train.csv and test.csv (columns text,category; PolyAI's task-specific-datasets, "
            "banking_data/) in <data dir>/banking77, or pass --data-dir.")
    splits = load_text_splits(files, split=BANKING77_SPLIT_DIR, max_length=max_length,
                              bert_path=bert_path, cache=cache, text_field="text",
                              label_field="category", name="banking77")
    return splits


def token_sampler(ds: ClassDataset, ways: int, shots: int, queries: int,
                  num_tasks: int) -> Callable[[PRNGKey], TaskBatch]:
    """A pure ``key -> task batch`` sampler of text episodes; the token ids live on the device.

    The text counterpart of :func:`jmeta.data.device_sampler` (same class and example draws):
    ``support.x`` is ``int32 [num_tasks, ways * shots, max_length]``, ``query.x`` ``int32
    [num_tasks, ways * queries, max_length]``, labels ``0..ways-1`` class-major; the ids are
    never converted to floats.

    Example:
      >>> ds = ClassDataset.from_labels(np.arange(80, dtype=np.int32).reshape(40, 2),
      ...                               np.arange(40) % 8, [str(i) for i in range(8)])
      >>> batch = jax.jit(token_sampler(ds, ways=5, shots=1, queries=2, num_tasks=3))(
      ...     jax.random.key(0))
      >>> batch.support.x.shape, batch.support.x.dtype, batch.query.y[0].tolist()
      ((3, 5, 2), dtype('int32'), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    """
    ds.check_episode(ways, shots, queries)
    if not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}.")
    if ds.data.dtype == object or not np.issubdtype(ds.data.dtype, np.integer) or ds.data.ndim != 2:
        raise ValueError(f"{ds.label}: token_sampler needs token ids int [n, length]; got "
                         f"{ds.data.dtype} {ds.data.shape} (tokenize the texts with "
                         "jmeta.data.tokenize_dataset first).")
    per_class = shots + queries
    data = jnp.asarray(ds.data, jnp.int32)
    start = jnp.asarray(ds.class_start, jnp.int32)
    count = jnp.asarray(ds.class_count, jnp.int32)
    max_count = int(ds.class_count.max())
    labels_s = jnp.repeat(jnp.arange(ways, dtype=jnp.int32), shots)
    labels_q = jnp.repeat(jnp.arange(ways, dtype=jnp.int32), queries)

    def one(key):
        k_cls, k_ex = jax.random.split(key)
        _, classes = jax.lax.top_k(jax.random.uniform(k_cls, (ds.num_classes,)), ways)
        scores = jax.random.uniform(k_ex, (ways, max_count))
        valid = jnp.arange(max_count)[None, :] < count[classes][:, None]
        _, pick = jax.lax.top_k(jnp.where(valid, scores, -1.0), per_class)  # distinct, in range
        x = data[start[classes][:, None] + pick]  # [ways, per_class, length]
        support = x[:, :shots].reshape(ways * shots, -1)
        query = x[:, shots:].reshape(ways * queries, -1)
        return Episode(Batch(support, labels_s), Batch(query, labels_q))

    def sample(key: PRNGKey) -> TaskBatch:
        return jax.vmap(one)(jax.random.split(key, num_tasks))

    return sample


def encode_texts(texts, max_length: int, tokenizer=None) -> np.ndarray:
    """A user's texts as token ids ``int32 [N, max_length]``, tokenized as a text dataset's
    training examples were (ids already so shaped pass through). Empty texts, non-strings and
    one string instead of a list are clear errors.

    Example:
      >>> encode_texts(np.zeros((2, 8), np.int32), 8).shape
      (2, 8)
      >>> encode_texts(["fine", " "], 8)
      Traceback (most recent call last):
        ...
      ValueError: Text 1 is empty (after stripping spaces).
    """
    if isinstance(texts, np.ndarray) and texts.dtype.kind in "iu":
        if texts.ndim != 2 or texts.shape[1] != max_length:
            raise ValueError(f"Token ids must have shape [N, {max_length}]; got "
                             f"{texts.shape}. Pass strings to have them tokenized.")
        return texts.astype(np.int32)
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence | np.ndarray):
        raise ValueError(f"Pass a list of texts (strings); got {type(texts).__name__}.")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"Texts must be strings; item {bad[0]} is "
                         f"{type(texts[bad[0]]).__name__}.")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(f"Text {empty[0]} is empty (after stripping spaces).")
    if not texts:
        return np.zeros((0, max_length), np.int32)
    return tokenize(texts, max_length, path=tokenizer)


def _token_splits(load_all, max_length: int, tokenizer: str) -> ClassSplits:
    # Text episodes are adapted 5 at a time at evaluation by default: a 5-shot episode through a
    # transformer holds hundreds of MB of activations. The query set costs far more than an inner
    # step, so it is evaluated only after the step counts asked for.
    return ClassSplits(
        lambda split: load_all()[split], (max_length,), inputs="tokens",
        encode=functools.partial(encode_texts, max_length=max_length,
                                 tokenizer=tokenizer or None),
        eval_chunk=5, sparse_eval=True, sampler=token_sampler, host_transform=_same)


def _same(ids):
    return ids


@register("banking77")
def _banking77(*, data_dir: str = "", cache_dir: str = "", max_length: int = 32,
               tokenizer: str = "") -> ClassSplits:
    """``data=dict(name="banking77", ...)``: ``data_dir`` holds ``banking77/``; texts tokenized
    to ``max_length`` ids by the checkpoint folder ``tokenizer`` (``""``: the model's folder,
    or all-MiniLM-L6-v2)."""
    root = _dataset.data_dir(data_dir or None) / "banking77"
    return _token_splits(functools.lru_cache(1)(lambda: load_banking77(
        root, max_length=max_length, bert_path=tokenizer or None, cache=cache_dir or None)),
        max_length, tokenizer)


@register("text")
def _text(*, files: str | Sequence[str], data_dir: str = "", cache_dir: str = "",
          class_split: str = "", max_length: int = 32, tokenizer: str = "",
          text_field: str = "text", label_field: str = "") -> ClassSplits:
    """``data=dict(name="text", files=...)``: your own CSV / JSON-lines files of (text, label)
    rows (several: a list, or comma-separated); ``class_split`` a folder with train.txt,
    val.txt and test.txt (``""``: a seeded random split of the classes)."""
    del data_dir
    paths = [f.strip() for f in files.split(",")] if isinstance(files, str) else list(files)
    paths = [p for p in paths if p]
    if not paths:
        raise ValueError("text: files must name at least one CSV or JSON-lines file of "
                         "(text, label) rows.")
    return _token_splits(functools.lru_cache(1)(lambda: load_text_splits(
        paths, split=class_split or None, max_length=max_length, bert_path=tokenizer or None,
        cache=cache_dir or None, text_field=text_field, label_field=label_field or None)),
        max_length, tokenizer)

