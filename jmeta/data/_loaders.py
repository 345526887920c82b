"""Loaders for the standard few-shot benchmarks and for user data, each returning ``ClassDataset``s.

Every image loader converts its sources once to ``uint8`` arrays, stored with ``cached_arrays`` in
the cache directory (never beside the sources, which may be read-only); later loads read the cache.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import pickle
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jmeta.data._cache import cached_arrays
from jmeta.data._dataset import ClassDataset, data_dir
from jmeta.data._registry import ClassSplits, register

__all__ = [
    "load_cifar_fs",
    "load_fc100",
    "load_image_folder",
    "load_miniimagenet",
    "load_text_file",
    "load_tieredimagenet",
]

SPLITS = ("train", "val", "test")
_SPLIT_DIR = Path(__file__).resolve().parent / "splits"

MINIIMAGENET_CLASSES = {"train": 64, "val": 16, "test": 20}
CIFAR_FS_CLASSES = {"train": 64, "val": 16, "test": 20}
FC100_SUPERCLASSES = {"train": 12, "val": 4, "test": 4}
FC100_CLASSES = {"train": 60, "val": 20, "test": 20}
TIEREDIMAGENET_CLASSES = {"train": 351, "val": 97, "test": 160}

_FORMAT_VERSION = "v1"  # bump to invalidate every cached conversion of this module


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _read_image(source, *, mode: str = "RGB", size: int | None = None, resample=None) -> np.ndarray:
    """Decodes one image (a path or encoded bytes) to ``uint8 [H, W, C]``, resized to
    ``size x size`` with ``resample`` when it is not already that size."""
    from PIL import Image

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as im:
        im = im.convert(mode)
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC if resample is None else resample)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _decode_all(items: Sequence, describe: Callable[[int], str], **kwargs) -> list[np.ndarray]:
    """``_read_image`` over ``items`` (order kept) on a few threads: PIL releases the GIL while it
    decodes. ``describe(i)`` names item ``i`` in error messages."""

    def one(i):
        try:
            return _read_image(items[i], **kwargs)
        except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError: OSError
            raise ValueError(f"Could not decode {describe(i)}: {e}") from e

    workers = max(1, min(8, os.cpu_count() or 1))
    if workers == 1 or len(items) < 64:
        return [one(i) for i in range(len(items))]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(len(items))))


def _stack(images: list[np.ndarray], describe: Callable[[int], str], hint: str) -> np.ndarray:
    """Stacks equally shaped images; a clear error names the first one whose shape differs."""
    if not images:
        raise ValueError(f"No images to stack ({hint}).")
    first = images[0].shape
    for i, im in enumerate(images):
        if im.shape != first:
            raise ValueError(
                f"{describe(i)} is {im.shape[1]}x{im.shape[0]} (WxH) but {describe(0)} is "
                f"{first[1]}x{first[0]}; all images must share one size. {hint}"
            )
    return np.stack(images).astype(np.uint8, copy=False)


def _grouped(images: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays sorted by label (stable), ready to cache and to wrap without another copy."""
    labels = np.asarray(labels, np.int64)
    order = np.argsort(labels, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        images, labels = images[order], labels[order]
    return {"images": images, "labels": labels, "names": np.array(list(names), dtype=object)}


def _dataset(arrays: dict[str, np.ndarray], name: str, split: str) -> ClassDataset:
    images, labels = arrays["images"], np.asarray(arrays["labels"], np.int64)
    names = tuple(str(n) for n in arrays["names"])
    counts = np.bincount(labels, minlength=len(names)) if len(labels) else np.zeros(len(names), int)
    if len(counts) > len(names) or np.any(counts == 0) or np.any(np.diff(labels) < 0):
        return ClassDataset.from_labels(images, labels, names, name=name, split=split)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return ClassDataset(
        data=images,
        class_start=starts,
        class_count=counts.astype(np.int64),
        class_names=names,
        name=name,
        split=split,
    )


def _check_count(found: int, expected: int, what: str, where, fix: str) -> None:
    if found != expected:
        raise ValueError(
            f"{what}: found {found} classes in {where} but the standard split has {expected}. {fix}"
        )


def _check_disjoint(splits: dict[str, Iterable[str]], what: str) -> None:
    seen: dict[str, str] = {}
    for split, names in splits.items():
        for n in names:
            if n in seen and seen[n] != split:
                raise ValueError(
                    f"{what}: class {n!r} appears in both {seen[n]!r} and {split!r}; the splits of "
                    "a few-shot benchmark must not share classes. Re-download the split files."
                )
            seen[n] = split


def _split_names(dataset: str, split: str) -> list[str]:
    """The published class (or superclass) list shipped in ``jmeta/data/splits/<dataset>/``."""
    path = _SPLIT_DIR / dataset / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"Split list {path} is missing from the jmeta installation; reinstall jmeta."
        )
    return [
        ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]


def _unpickle(path: Path):
    """Loads a pickle written by Python 3 or Python 2 (``latin1`` keeps py2 byte strings intact)."""
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except UnicodeDecodeError:
            f.seek(0)
            return pickle.load(f, encoding="latin1")


def _str(x) -> str:
    return x.decode() if isinstance(x, (bytes, bytearray)) else str(x)


def _key(*parts) -> str:
    return "-".join(str(p) for p in (*parts, _FORMAT_VERSION))


def _check_size(image_size) -> None:
    if (
        not isinstance(image_size, (int, np.integer))
        or isinstance(image_size, bool)
        or image_size < 1
    ):
        raise ValueError(f"image_size must be a positive int; got {image_size!r}.")


# --------------------------------------------------------------------------------------------
# miniImageNet
# --------------------------------------------------------------------------------------------

_MINI_LAYOUTS = (
    "  (a) <root>/images/*.jpg with <root>/train.csv, val.csv, test.csv\n"
    "      (header 'filename,label'), the layout of Ravi & Larochelle's split files;\n"
    "  (b) <root>/mini-imagenet-cache-train.pkl, -val.pkl, -test.pkl (dicts with 'image_data'\n"
    "      uint8 [N, 84, 84, 3] and 'class_dict' {wnid: [indices]})."
)


def load_miniimagenet(
    root: str | os.PathLike | None = None,
    *,
    image_size: int = 84,
    cache: str | os.PathLike | None = None,
) -> dict[str, ClassDataset]:
    """miniImageNet with the split of Ravi & Larochelle (2017): 64/16/20 classes of 600 images.

    Reads either distribution found at ``root`` (default ``data_dir()/"miniimagenet"``): an
    ``images/`` folder of JPEGs with ``train.csv``/``val.csv``/``test.csv`` (``filename,label``),
    or the pickles ``mini-imagenet-cache-{train,val,test}.pkl``. Images are resized to
    ``image_size`` (PIL bicubic) when they are not already that size. The first load converts to
    ``uint8 [N, image_size, image_size, 3]`` in the cache directory ``cache``; later loads read it.
    Classes are the WordNet ids, sorted.

    Raises:
      FileNotFoundError: neither layout is complete at ``root`` (the message lists both).
      ValueError: a split does not have its standard number of classes, or splits share classes.

    Example::

        splits = load_miniimagenet("~/data/miniimagenet")
        splits["train"].num_classes, splits["train"].example_shape  # (64, (84, 84, 3))

    Without the files, the error says what to download:

      >>> load_miniimagenet("/no/such/dir")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      FileNotFoundError: No complete miniImageNet found at /no/such/dir. Expected one of:...
    """
    _check_size(image_size)
    root = Path(root).expanduser() if root is not None else data_dir() / "miniimagenet"
    csvs = {s: root / f"{s}.csv" for s in SPLITS}
    pkls = {s: root / f"mini-imagenet-cache-{s}.pkl" for s in SPLITS}
    if all(p.is_file() for p in csvs.values()) and (root / "images").is_dir():
        fmt, builders = "jpeg", {s: _mini_csv_builder(root, csvs[s], s, image_size) for s in SPLITS}
        sources = {s: [csvs[s], root / "images"] for s in SPLITS}
    elif all(p.is_file() for p in pkls.values()):
        fmt, builders = "pickle", {s: _mini_pickle_builder(pkls[s], s, image_size) for s in SPLITS}
        sources = {s: [pkls[s]] for s in SPLITS}
    else:
        missing = [str(p) for p in [*csvs.values(), root / "images"] if not p.exists()]
        missing_pkl = [str(p) for p in pkls.values() if not p.exists()]
        raise FileNotFoundError(
            f"No complete miniImageNet found at {root}. Expected one of:\n{_MINI_LAYOUTS}\n"
            f"Missing for (a): {missing or 'nothing'}; for (b): {missing_pkl or 'nothing'}.\n"
            "Download one of them and pass its folder as `root` (or set $JMETA_DATA_DIR so that "
            "it holds a `miniimagenet/` folder)."
        )
    out = {}
    for s in SPLITS:
        arrays = cached_arrays(
            _key("miniimagenet", fmt, s, image_size), builders[s], sources[s], cache=cache
        )
        out[s] = _dataset(arrays, "miniimagenet", s)
        _check_count(
            out[s].num_classes,
            MINIIMAGENET_CLASSES[s],
            f"miniimagenet/{s}",
            sources[s][0],
            "Re-download the split files of Ravi & Larochelle (2017).",
        )
    _check_disjoint({s: d.class_names for s, d in out.items()}, "miniimagenet")
    return out


def _mini_csv_builder(root: Path, csv_path: Path, split: str, image_size: int):
    def build():
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
                raise ValueError(
                    f"{csv_path}: expected a header 'filename,label'; found {reader.fieldnames}."
                )
            rows = [(r["filename"], r["label"]) for r in reader]
        if not rows:
            raise ValueError(f"{csv_path} lists no images.")
        _check_count(
            len({lab for _, lab in rows}),
            MINIIMAGENET_CLASSES[split],
            f"miniimagenet/{split}",
            csv_path,
            "Re-download the split files of Ravi & Larochelle (2017).",
        )
        files = [root / "images" / fn for fn, _ in rows]
        absent = [str(p) for p in files if not p.is_file()]
        if absent:
            raise FileNotFoundError(
                f"{csv_path} lists {len(absent)} images missing from {root / 'images'}, e.g. "
                f"{absent[:3]}; re-extract the image archive there."
            )
        names = sorted({lab for _, lab in rows})
        index = {n: i for i, n in enumerate(names)}
        images = _decode_all(files, lambda i: str(files[i]), size=image_size)
        labels = np.array([index[lab] for _, lab in rows], np.int64)
        return _grouped(_stack(images, lambda i: str(files[i]), ""), labels, names)

    return build


def _mini_pickle_builder(path: Path, split: str, image_size: int):
    def build():
        obj = _unpickle(path)
        if not isinstance(obj, dict):
            raise ValueError(
                f"{path}: expected a dict with 'image_data' and 'class_dict'; "
                f"got {type(obj).__name__}."
            )
        obj = {_str(k): v for k, v in obj.items()}
        if "image_data" not in obj or "class_dict" not in obj:
            raise ValueError(
                f"{path}: expected keys 'image_data' and 'class_dict'; found {sorted(obj)}."
            )
        data = np.asarray(obj["image_data"])
        if data.ndim != 4 or data.shape[-1] != 3:
            raise ValueError(f"{path}: image_data should be [N, H, W, 3]; got shape {data.shape}.")
        class_dict = {
            _str(k): np.asarray(v, np.int64).ravel() for k, v in obj["class_dict"].items()
        }
        _check_count(
            len(class_dict),
            MINIIMAGENET_CLASSES[split],
            f"miniimagenet/{split}",
            path,
            "Re-download the mini-imagenet-cache pickles.",
        )
        names = sorted(class_dict)
        labels = np.full(len(data), -1, np.int64)
        for i, n in enumerate(names):
            idx = class_dict[n]
            if len(idx) == 0:
                raise ValueError(f"{path}: class {n} lists no images.")
            if idx.min() < 0 or idx.max() >= len(data):
                raise ValueError(f"{path}: class {n} points past the {len(data)} images.")
            if np.any(labels[idx] >= 0):
                raise ValueError(f"{path}: class {n} shares images with another class.")
            labels[idx] = i
        if np.any(labels < 0):  # images that no class lists are dropped
            keep = np.flatnonzero(labels >= 0)
            data, labels = data[keep], labels[keep]
        if data.dtype != np.uint8:
            data = np.clip(np.rint(data), 0, 255).astype(np.uint8)
        if data.shape[1:3] != (image_size, image_size):
            from PIL import Image

            data = _stack(
                [_resize(im, image_size, Image.BICUBIC) for im in data],
                lambda i: f"{path}[{i}]",
                "",
            )
        return _grouped(data, labels, names)

    return build


def _resize(image: np.ndarray, size: int, resample) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), resample), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# CIFAR-100 based: CIFAR-FS and FC100
# --------------------------------------------------------------------------------------------


def _cifar100(root, cache) -> dict[str, np.ndarray]:
    """All 60,000 CIFAR-100 images as ``uint8 [N, 32, 32, 3]`` with fine and coarse labels and
    names, converted once from the official python archive and cached."""
    root = (
        Path(root).expanduser()
        if root is not None
        else data_dir() / "cifar100" / "cifar-100-python"
    )
    files = [root / "train", root / "test", root / "meta"]
    absent = [str(p) for p in files if not p.is_file()]
    if absent:
        raise FileNotFoundError(
            f"CIFAR-100 not found at {root}: missing {absent}. Download the official python "
            "archive https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, extract it, and "
            "pass the extracted `cifar-100-python` folder as `root` (or place it under "
            "$JMETA_DATA_DIR/cifar100/)."
        )

    def build():
        meta = {_str(k): v for k, v in _unpickle(root / "meta").items()}
        for k in ("fine_label_names", "coarse_label_names"):
            if k not in meta:
                raise ValueError(
                    f"{root / 'meta'}: key {k!r} missing; is this the CIFAR-100 python archive?"
                )
        images, fine, coarse = [], [], []
        for part in ("train", "test"):
            d = {_str(k): v for k, v in _unpickle(root / part).items()}
            for k in ("data", "fine_labels", "coarse_labels"):
                if k not in d:
                    raise ValueError(
                        f"{root / part}: key {k!r} missing; is this the CIFAR-100 python archive?"
                    )
            x = np.asarray(d["data"], np.uint8)
            if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
                raise ValueError(f"{root / part}: data should be uint8 [N, 3072]; got {x.shape}.")
            images.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            fine.append(np.asarray(d["fine_labels"], np.int64))
            coarse.append(np.asarray(d["coarse_labels"], np.int64))
        return {
            "images": np.ascontiguousarray(np.concatenate(images)),
            "fine": np.concatenate(fine),
            "coarse": np.concatenate(coarse),
            "fine_names": np.array([_str(n) for n in meta["fine_label_names"]], dtype=object),
            "coarse_names": np.array([_str(n) for n in meta["coarse_label_names"]], dtype=object),
        }

    arrays = cached_arrays(_key("cifar100", "hwc"), build, files, cache=cache)
    arrays["root"] = root
    return arrays


def _cifar_split(c100, fine_ids: list[int], name: str, split: str) -> ClassDataset:
    """The images of the CIFAR-100 fine classes ``fine_ids``, relabelled ``0..len-1`` in order."""
    remap = np.full(len(c100["fine_names"]), -1, np.int64)
    remap[fine_ids] = np.arange(len(fine_ids))
    labels = remap[c100["fine"]]
    keep = np.flatnonzero(labels >= 0)
    names = [str(c100["fine_names"][i]) for i in fine_ids]
    counts = np.bincount(labels[keep], minlength=len(fine_ids))
    if np.any(counts == 0):
        empty = [names[i] for i in np.flatnonzero(counts == 0)]
        raise ValueError(
            f"{name}/{split}: no images of classes {empty[:5]} in {c100['root']}; the CIFAR-100 "
            "archive is incomplete. Re-download it."
        )
    return _dataset(_grouped(c100["images"][keep], labels[keep], names), name, split)


def load_cifar_fs(
    root: str | os.PathLike | None = None, *, cache: str | os.PathLike | None = None
) -> dict[str, ClassDataset]:
    """CIFAR-FS (Bertinetto et al., ICLR 2019): the 100 CIFAR-100 classes split 64/16/20 by name,
    600 images of ``uint8 [32, 32, 3]`` per class (CIFAR-100's train and test images together).

    Built from the official CIFAR-100 python archive extracted at ``root`` (default
    ``data_dir()/"cifar100"/"cifar-100-python"``: the pickles ``train``, ``test``, ``meta``), with
    the published class lists shipped in ``jmeta/data/splits/cifar_fs/``. The decoded archive is
    cached in ``cache`` (shared with :func:`load_fc100`).

    Example::

        splits = load_cifar_fs("~/data/cifar100/cifar-100-python")
        [splits[s].num_classes for s in ("train", "val", "test")]  # [64, 16, 20]

    Without the archive, the error says where to get it:

      >>> load_cifar_fs("/no/such/dir")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      FileNotFoundError: CIFAR-100 not found at /no/such/dir: ...cifar-100-python.tar.gz...
    """
    c100 = _cifar100(root, cache)
    index = {str(n): i for i, n in enumerate(c100["fine_names"])}
    out = {}
    for s in SPLITS:
        names = _split_names("cifar_fs", s)
        _check_count(
            len(names),
            CIFAR_FS_CLASSES[s],
            f"cifar_fs/{s}",
            _SPLIT_DIR / "cifar_fs",
            "Reinstall jmeta.",
        )
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(
                f"cifar_fs/{s}: classes {unknown[:5]} are not CIFAR-100 fine labels of "
                f"{c100['root'] / 'meta'}; is this the CIFAR-100 (not CIFAR-10) python archive?"
            )
        out[s] = _cifar_split(c100, [index[n] for n in names], "cifar_fs", s)
    _check_disjoint({s: d.class_names for s, d in out.items()}, "cifar_fs")
    return out


def load_fc100(
    root: str | os.PathLike | None = None, *, cache: str | os.PathLike | None = None
) -> dict[str, ClassDataset]:
    """FC100 (Oreshkin et al., NeurIPS 2018, TADAM): CIFAR-100 split by superclass, 12/4/4
    superclasses = 60/20/20 fine classes, so that no superclass is shared between splits.

    Same source and cache as :func:`load_cifar_fs`; the superclass lists ship in
    ``jmeta/data/splits/fc100/``. Each split's classes are its superclasses' fine classes, in
    superclass-list order, fine names sorted within a superclass.

    Example::

        splits = load_fc100("~/data/cifar100/cifar-100-python")
        [splits[s].num_classes for s in ("train", "val", "test")]  # [60, 20, 20]

    The superclass split it applies:

      >>> from jmeta.data._loaders import _split_names
      >>> _split_names("fc100", "test")
      ['aquatic_mammals', 'insects', 'medium_mammals', 'people']
    """
    c100 = _cifar100(root, cache)
    fine_names = [str(n) for n in c100["fine_names"]]
    coarse_names = [str(n) for n in c100["coarse_names"]]
    coarse_of = {}
    for f, c in zip(*np.unique(np.stack([c100["fine"], c100["coarse"]]), axis=1)):
        if int(f) in coarse_of:
            raise ValueError(
                f"{c100['root']}: fine class {fine_names[f]!r} has several coarse labels."
            )
        coarse_of[int(f)] = int(c)
    coarse_index = {n: i for i, n in enumerate(coarse_names)}
    out = {}
    for s in SPLITS:
        supers = _split_names("fc100", s)
        unknown = [n for n in supers if n not in coarse_index]
        if unknown:
            raise ValueError(
                f"fc100/{s}: superclasses {unknown} are not coarse labels of "
                f"{c100['root'] / 'meta'}; is this the CIFAR-100 python archive?"
            )
        _check_count(
            len(supers),
            FC100_SUPERCLASSES[s],
            f"fc100/{s} (superclasses)",
            _SPLIT_DIR / "fc100",
            "Reinstall jmeta.",
        )
        fine_ids = [
            f
            for c in supers
            for f in sorted(
                (f for f, cc in coarse_of.items() if cc == coarse_index[c]),
                key=lambda f: fine_names[f],
            )
        ]
        _check_count(
            len(fine_ids),
            FC100_CLASSES[s],
            f"fc100/{s}",
            c100["root"],
            "Each CIFAR-100 superclass should have 5 fine classes; re-download the archive.",
        )
        out[s] = _cifar_split(c100, fine_ids, "fc100", s)
    _check_disjoint({s: d.class_names for s, d in out.items()}, "fc100")
    return out


# --------------------------------------------------------------------------------------------
# tieredImageNet
# --------------------------------------------------------------------------------------------


def load_tieredimagenet(
    root: str | os.PathLike | None = None, *, cache: str | os.PathLike | None = None
) -> dict[str, ClassDataset]:
    """tieredImageNet (Ren et al., ICLR 2018): 351/97/160 classes of ``uint8 [84, 84, 3]``.

    Reads the common pickle format of the paper's release at ``root`` (default
    ``data_dir()/"tieredimagenet"``): ``{split}_images_png.pkl`` (a list of PNG-encoded images) and
    ``{split}_labels.pkl`` (a dict with ``label_specific``, one int per image, and
    ``label_specific_str``, the class names). PNGs are decoded with PIL once and cached in
    ``cache``.

    Example::

        splits = load_tieredimagenet("~/data/tieredimagenet")
        splits["test"].num_classes  # 160

    Without the files, the error lists them:

      >>> load_tieredimagenet("/no/such/dir")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      FileNotFoundError: tieredImageNet not found at /no/such/dir: ...train_images_png.pkl...
    """
    root = Path(root).expanduser() if root is not None else data_dir() / "tieredimagenet"
    files = {s: (root / f"{s}_images_png.pkl", root / f"{s}_labels.pkl") for s in SPLITS}
    absent = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if absent:
        raise FileNotFoundError(
            f"tieredImageNet not found at {root}: missing {absent}. Expected "
            "{train,val,test}_images_png.pkl and {train,val,test}_labels.pkl from the release of "
            "Ren et al. (2018); extract them into one folder and pass it as `root` (or place it "
            "under $JMETA_DATA_DIR/tieredimagenet/)."
        )
    out = {}
    for s in SPLITS:
        img_path, lab_path = files[s]
        arrays = cached_arrays(
            _key("tieredimagenet", s),
            _tiered_builder(img_path, lab_path, s),
            [img_path, lab_path],
            cache=cache,
        )
        out[s] = _dataset(arrays, "tieredimagenet", s)
        _check_count(
            out[s].num_classes,
            TIEREDIMAGENET_CLASSES[s],
            f"tieredimagenet/{s}",
            lab_path,
            "Re-download the tieredImageNet pickles.",
        )
    _check_disjoint({s: d.class_names for s, d in out.items()}, "tieredimagenet")
    return out


def _tiered_builder(img_path: Path, lab_path: Path, split: str):
    def build():
        meta = _unpickle(lab_path)
        if not isinstance(meta, dict):
            raise ValueError(f"{lab_path}: expected a dict; got {type(meta).__name__}.")
        meta = {_str(k): v for k, v in meta.items()}
        for k in ("label_specific", "label_specific_str"):
            if k not in meta:
                raise ValueError(f"{lab_path}: key {k!r} missing; found {sorted(meta)}.")
        labels = np.asarray(meta["label_specific"], np.int64).ravel()
        names = [_str(n) for n in meta["label_specific_str"]]
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(
                f"{lab_path}: labels go up to {labels.max()} but only {len(names)} names given."
            )
        _check_count(
            len(np.unique(labels)),
            TIEREDIMAGENET_CLASSES[split],
            f"tieredimagenet/{split}",
            lab_path,
            "Re-download the tieredImageNet pickles.",
        )
        encoded = _unpickle(img_path)
        if isinstance(encoded, dict):  # some re-packs wrap the list: {"images": [...]}
            encoded = next(iter(v for k, v in encoded.items() if "image" in _str(k)), encoded)
        encoded = [_png_bytes(e) for e in encoded]
        if len(encoded) != len(labels):
            raise ValueError(
                f"{img_path} holds {len(encoded)} images but {lab_path} has {len(labels)} labels."
            )
        images = _decode_all(encoded, lambda i: f"image {i} of {img_path}")
        return _grouped(_stack(images, lambda i: f"image {i} of {img_path}", ""), labels, names)

    return build


def _png_bytes(item) -> bytes:
    if isinstance(item, np.ndarray):
        return item.tobytes()
    if isinstance(item, str):  # a Python 2 str unpickled as latin1
        return item.encode("latin1")
    return bytes(item)


# --------------------------------------------------------------------------------------------
# User data: image folders and text files
# --------------------------------------------------------------------------------------------


def image_extensions() -> set[str]:
    """The file extensions PIL reads (``".png"``, ``".jpg"``, ...), lower case.

    Example:
      >>> {".png", ".jpg"} <= image_extensions()
      True
    """
    from PIL import Image

    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def load_image_folder(
    path: str | os.PathLike,
    *,
    image_size: int | None = None,
    grayscale: bool = False,
    cache: str | os.PathLike | None = None,
) -> ClassDataset:
    """A folder of class folders of images (any extension PIL reads) as one ``ClassDataset``.

    Class names are the sorted subfolder names; files PIL does not recognise by extension, and
    hidden files, are skipped. Images become ``uint8 [N, H, W, 3]`` (``[N, H, W, 1]`` when
    ``grayscale``), resized to ``image_size x image_size`` with PIL's Lanczos filter when
    ``image_size`` is given; otherwise all images must already share one size. Converted once,
    then read from ``cache``.

    Example:
      >>> import tempfile, numpy as np
      >>> from pathlib import Path
      >>> from PIL import Image
      >>> root = Path(tempfile.mkdtemp())
      >>> for c in ("cat", "dog"):
      ...     (root / "imgs" / c).mkdir(parents=True)
      ...     for i in range(3):
      ...         Image.new("RGB", (10, 8)).save(root / "imgs" / c / f"{i}.png")
      >>> ds = load_image_folder(root / "imgs", image_size=6, cache=root / "cache")
      >>> ds.class_names, ds.data.shape
      (('cat', 'dog'), (6, 6, 6, 3))
    """
    if image_size is not None:
        _check_size(image_size)
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"Image folder {path} does not exist (expected <path>/<class>/<image>)."
        )
    exts = image_extensions()
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{path} has no class subfolders; expected <path>/<class>/<image files>.")
    files, labels = [], []
    for i, c in enumerate(classes):
        found = sorted(
            p
            for p in (path / c).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
        )
        if not found:
            raise ValueError(
                f"Class folder {path / c} holds no images (extensions PIL reads, e.g. .png, .jpg); "
                "remove it or add images."
            )
        files += found
        labels += [i] * len(found)
    mode = "L" if grayscale else "RGB"

    def build():
        from PIL import Image

        describe = lambda i: str(files[i])
        images = _decode_all(files, describe, mode=mode, size=image_size, resample=Image.LANCZOS)
        hint = "Pass image_size=... to resize every image to one size."
        return _grouped(_stack(images, describe, hint), np.array(labels, np.int64), classes)

    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    key = _key("imagefolder", path.name[:40], where, image_size or "native", mode, "lanczos")
    arrays = cached_arrays(key, build, [path, *(path / c for c in classes), *files], cache=cache)
    return _dataset(arrays, path.name, "")


LABEL_FIELDS = ("label", "category", "intent")
"""Columns a labelled text file's label may be in, in the order they are looked for."""


def load_text_file(
    path: str | os.PathLike, *, text_field: str = "text", label_field: str | None = None
) -> ClassDataset:
    """A labelled text file (CSV with a header row, or JSON lines) as a ``ClassDataset`` of strings.

    ``data`` is an object array of ``str``; class names are the sorted distinct labels.
    ``label_field=None`` uses the first of ``label``, ``category``, ``intent`` that the file has.
    The format follows the extension (``.jsonl``/``.ndjson``/``.json`` are JSON lines, anything
    else is CSV unless its first character is ``{``); a file holding one JSON array of objects is
    read too. The dataset's ``name`` is the parent folder's
    name and its ``split`` the file's stem, e.g. ``banking77/train``.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> f = Path(tempfile.mkdtemp()) / "train.csv"
      >>> rows = ["text,category", "lost my card,card_lost", "hi,greet", "stolen card,card_lost"]
      >>> _ = f.write_text("\\n".join(rows))
      >>> ds = load_text_file(f)
      >>> ds.class_names, ds.class_count.tolist(), ds.data[0]
      (('card_lost', 'greet'), [2, 1], 'lost my card')
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Text file {path} does not exist.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith("[") and path.suffix.lower() != ".csv":  # one JSON array of objects
            rows, columns = read_jsonl(_json_array(f, path), path)
        elif path.suffix.lower() in (".jsonl", ".ndjson", ".json") or head.startswith("{"):
            rows, columns = read_jsonl(f, path)
        else:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    if not rows:
        raise ValueError(f"{path} has no rows.")
    if text_field not in columns:
        raise ValueError(
            f"{path}: no text column {text_field!r}; columns found: {columns}. Pass text_field=..."
        )
    if label_field is None:
        label_field = next((c for c in LABEL_FIELDS if c in columns), None)
        if label_field is None:
            raise ValueError(
                f"{path}: none of the label columns {list(LABEL_FIELDS)} found; columns found: "
                f"{columns}. Pass label_field=..."
            )
    elif label_field not in columns:
        raise ValueError(f"{path}: no label column {label_field!r}; columns found: {columns}.")
    texts, labels = [], []
    for i, r in enumerate(rows):
        t, lab = r.get(text_field), r.get(label_field)
        if t is None or lab is None or (isinstance(lab, str) and not lab.strip()):
            raise ValueError(
                f"{path}: row {i + 1} lacks {text_field!r} or {label_field!r} "
                "(a short or ragged row?)."
            )
        texts.append(str(t))
        labels.append(str(lab))
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    data = np.empty(len(texts), dtype=object)
    data[:] = texts
    return ClassDataset.from_labels(
        data,
        np.array([index[x] for x in labels], np.int64),
        names,
        name=path.parent.name,
        split=path.stem,
    )


def read_jsonl(f, path: Path) -> tuple[list[dict], list[str]]:
    """The rows (dicts) of a JSON-lines file ``f`` and the columns they use, in first-seen
    order; a line that is not a JSON object is an error naming ``path`` and the line.

    Example:
      >>> import io
      >>> read_jsonl(io.StringIO('{"text": "hi", "label": "a"}\\n'), Path("x.jsonl"))
      ([{'text': 'hi', 'label': 'a'}], ['text', 'label'])
    """
    rows, columns = [], {}
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON object per line ({e.msg}).") from e
        if not isinstance(r, dict):
            raise ValueError(
                f"{path}:{n}: expected a JSON object per line; got {type(r).__name__}."
            )
        rows.append(r)
        columns.update(dict.fromkeys(r))
    return rows, list(columns)


def _json_array(f, path: Path) -> list[str]:
    try:
        rows = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}).") from e
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON array of objects; got {type(rows).__name__}.")
    return [json.dumps(r) for r in rows]


# --------------------------------------------------------------------------------------------
# Config registrations: ``data=dict(name=..., data_dir=..., cache_dir=...)``
# --------------------------------------------------------------------------------------------


def _root(data_dir: str, *parts: str) -> Path | None:
    return Path(data_dir).expanduser().joinpath(*parts) if data_dir else None


def _rgb(size: int) -> dict:
    return dict(size=size, channels=3, mode="RGB", invert=False, resampling="bicubic")


def _splits(load_all, size: int) -> ClassSplits:
    return ClassSplits(lambda split: load_all()[split], (size, size, 3), image_format=_rgb(size))


@register("miniimagenet")
def _miniimagenet(*, data_dir: str = "", cache_dir: str = "", image_size: int = 84) -> ClassSplits:
    """``data=dict(name="miniimagenet", ...)``: ``data_dir`` holds ``miniimagenet/``."""
    _check_size(image_size)
    return _splits(functools.lru_cache(1)(lambda: load_miniimagenet(
        _root(data_dir, "miniimagenet"), image_size=image_size, cache=cache_dir or None)),
        image_size)


@register("tieredimagenet")
def _tieredimagenet(*, data_dir: str = "", cache_dir: str = "") -> ClassSplits:
    """``data=dict(name="tieredimagenet", ...)``: ``data_dir`` holds ``tieredimagenet/``."""
    return _splits(functools.lru_cache(1)(lambda: load_tieredimagenet(
        _root(data_dir, "tieredimagenet"), cache=cache_dir or None)), 84)


@register("cifar_fs")
def _cifar_fs(*, data_dir: str = "", cache_dir: str = "") -> ClassSplits:
    """``data=dict(name="cifar_fs", ...)``: ``data_dir`` holds ``cifar100/cifar-100-python/``."""
    return _splits(functools.lru_cache(1)(lambda: load_cifar_fs(
        _root(data_dir, "cifar100", "cifar-100-python"), cache=cache_dir or None)), 32)


@register("fc100")
def _fc100(*, data_dir: str = "", cache_dir: str = "") -> ClassSplits:
    """``data=dict(name="fc100", ...)``: ``data_dir`` holds ``cifar100/cifar-100-python/``."""
    return _splits(functools.lru_cache(1)(lambda: load_fc100(
        _root(data_dir, "cifar100", "cifar-100-python"), cache=cache_dir or None)), 32)

