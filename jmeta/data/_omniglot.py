"""Omniglot (Lake et al. 2015) from the official archives, with the Vinyals and MAML splits."""

from __future__ import annotations

import io
import os
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from jmeta.core._checks import check_choice
from jmeta.data._cache import cached_arrays
from jmeta.data._dataset import ClassDataset, data_dir
from jmeta.data._registry import ClassSplits, register

ARCHIVES = ("images_background", "images_evaluation")
NUM_CHARACTERS = 1623
DRAWINGS = 20
SPLITS = ("vinyals", "maml")
RESAMPLING = ("lanczos", "nearest")


def _sources(root: Path) -> list[tuple[str, Path]]:
    found = []
    for name in ARCHIVES:
        if (root / f"{name}.zip").is_file():
            found.append(("zip", root / f"{name}.zip"))
        elif (root / name).is_dir():
            found.append(("dir", root / name))
        else:
            raise FileNotFoundError(
                f"Omniglot: neither {root / (name + '.zip')} nor the extracted folder {root / name} "
                "exists. Run `jmeta data download omniglot`, or place the official "
                "images_background.zip and images_evaluation.zip in that folder (or pass "
                "--data-dir / set JMETA_DATA_DIR to the folder that holds omniglot/)."
            )
    return found


def _list_pngs(kind: str, path: Path) -> list[tuple[str, object]]:
    """(``Alphabet/characterNN/file.png``, handle) for every drawing, sorted."""
    if kind == "zip":
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".png")]
        return sorted((n.split("/", 1)[1], n) for n in names)
    return sorted(
        (str(p.relative_to(path)).replace(os.sep, "/"), p) for p in path.rglob("*.png")
    )


def _convert(root: Path, image_size: int, resampling: str) -> dict[str, np.ndarray]:
    from PIL import Image

    method = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}[resampling]
    images, names = [], []
    for kind, path in _sources(root):
        entries = _list_pngs(kind, path)
        z = zipfile.ZipFile(path) if kind == "zip" else None
        try:
            for rel, handle in entries:
                raw = z.read(handle) if z else Path(handle).read_bytes()
                img = Image.open(io.BytesIO(raw)).convert("L")
                if img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), method)
                images.append(255 - np.asarray(img, np.uint8))  # invert: ink bright on dark
                names.append(rel.rsplit("/", 1)[0])
        finally:
            if z:
                z.close()
    characters = sorted(set(names))
    index = {c: i for i, c in enumerate(characters)}
    labels = np.array([index[n] for n in names], np.int64)
    counts = np.bincount(labels, minlength=len(characters))
    if len(characters) != NUM_CHARACTERS or np.any(counts != DRAWINGS):
        raise ValueError(
            f"Omniglot at {root}: expected {NUM_CHARACTERS} characters with {DRAWINGS} drawings "
            f"each, found {len(characters)} characters and drawings per character in "
            f"[{counts.min()}, {counts.max()}]. Re-download with `jmeta data download omniglot`."
        )
    order = np.argsort(labels, kind="stable")
    return {
        "images": np.stack(images)[order][..., None],
        "characters": np.array(characters, dtype=object),
    }


def load_omniglot_characters(
    root: str | os.PathLike | None = None,
    *,
    image_size: int = 28,
    resampling: str = "lanczos",
    cache: str | os.PathLike | None = None,
) -> tuple[np.ndarray, list[str]]:
    """All 1623 characters: ``uint8 [1623, 20, S, S, 1]`` (ink bright) and their names.

    The first call converts the archives (about 20 s) and caches the arrays in the cache
    directory; later calls read the cache (well under a second at 28x28).

    Example::

        images, names = load_omniglot_characters("../shared/data/omniglot")
        images.shape, names[0]      # (1623, 20, 28, 28, 1), 'Alphabet_of_the_Magi/character01'
    """
    if image_size < 1 or image_size > 105:
        raise ValueError(f"image_size must be in 1..105 (the drawings are 105x105); got {image_size}.")
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling must be one of {RESAMPLING}; got {resampling!r}.")
    root = Path(root) if root else data_dir() / "omniglot"
    sources = [p for _, p in _sources(root)]
    arrays = cached_arrays(
        f"omniglot-{image_size}-{resampling}", lambda: _convert(root, image_size, resampling),
        [s for s in sources if s.is_file()], cache=cache,
    )
    images = arrays["images"].reshape(NUM_CHARACTERS, DRAWINGS, image_size, image_size, 1)
    return images, [str(c) for c in arrays["characters"]]


def vinyals_split(split: str) -> list[tuple[str, int]]:
    """The (character, quarter turns) classes of the Vinyals split shipped with the package.

    Example:
      >>> classes = vinyals_split("train")
      >>> len(classes), classes[1]
      (4112, ('Angelic/character01', 1))
    """
    if split not in ("train", "val", "trainval", "test"):
        raise ValueError(f"Vinyals split must be train, val, trainval or test; got {split!r}.")
    text = resources.files("jmeta.data").joinpath(f"splits/omniglot/vinyals/{split}.txt").read_text()
    out = []
    for line in text.split():
        alphabet, character, rot = line.split("/")
        out.append((f"{alphabet}/{character}", int(rot[3:]) // 90))
    return out


def maml_split(split: str, characters: list[str], seed: int = 1) -> list[str]:
    """MAML's character split: 1100 / 100 / 423 characters of a seeded permutation.

    MAML's own code shuffled the characters of its preprocessed folder with ``random.seed(1)``
    in file-system order, which cannot be reproduced exactly; this is the same protocol (random
    1100 / 100 / 423 characters, random rotations as augmentation) over a sorted, seeded order.

    Example:
      >>> names = [f"A/character{i:04d}" for i in range(1623)]
      >>> [len(maml_split(s, names)) for s in ("train", "val", "test")]
      [1100, 100, 423]
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"MAML split must be train, val or test; got {split!r}.")
    order = np.random.RandomState(seed).permutation(len(characters))
    part = {"train": order[:1100], "val": order[1100:1200], "test": order[1200:]}[split]
    return [characters[i] for i in sorted(part)]


def load_omniglot(
    split: str = "train",
    *,
    protocol: str = "vinyals",
    root: str | os.PathLike | None = None,
    image_size: int = 28,
    resampling: str = "lanczos",
    cache: str | os.PathLike | None = None,
) -> ClassDataset:
    """One split of Omniglot as a :class:`ClassDataset`.

    ``protocol="vinyals"``: the split of Vinyals et al. (1028 / 172 / 423 characters), each
    rotation by 0/90/180/270 degrees a class of its own (4112 / 688 / 1692 classes), as in
    Prototypical Networks. ``protocol="maml"``: 1100 / 100 / 423 characters, one class each;
    MAML rotated classes randomly per episode (``augment_rotations=True`` in the samplers).

    Example::

        train = load_omniglot("train", root="../shared/data/omniglot")
        train.num_classes        # 4112
    """
    if protocol not in SPLITS:
        raise ValueError(f"Omniglot protocol must be one of {SPLITS}; got {protocol!r}.")
    images, characters = load_omniglot_characters(
        root, image_size=image_size, resampling=resampling, cache=cache
    )
    index = {c: i for i, c in enumerate(characters)}
    if protocol == "vinyals":
        classes = vinyals_split(split)
        missing = [c for c, _ in classes if c not in index]
        if missing:
            raise ValueError(f"Omniglot: the Vinyals split names characters not in the archives: {missing[:3]}")
        base = np.array([index[c] for c, _ in classes])
        rotation = np.array([r for _, r in classes], np.int8)
        names = tuple(f"{c}/rot{90 * r:03d}" for c, r in classes)
    else:
        chosen = maml_split(split, characters)
        base = np.array([index[c] for c in chosen])
        rotation = None
        names = tuple(chosen)
    flat = images.reshape((-1,) + images.shape[2:])
    return ClassDataset(
        data=flat,
        class_start=(base * DRAWINGS).astype(np.int64),
        class_count=np.full(len(base), DRAWINGS, np.int64),
        class_names=names,
        class_rotation=rotation,
        name="omniglot",
        split=f"{protocol}/{split}",
    )


@register("omniglot")
def _from_config(*, data_dir: str = "", cache_dir: str = "", protocol: str = "vinyals",
                 image_size: int = 28) -> ClassSplits:
    """``data=dict(name="omniglot", ...)``: ``data_dir`` holds ``omniglot/`` (the official
    archives); images inverted (ink bright), resized with Lanczos."""
    check_choice("omniglot: protocol", protocol, SPLITS)
    root = Path(data_dir).expanduser() / "omniglot" if data_dir else None

    def load(split):
        return load_omniglot(split, protocol=protocol, root=root, image_size=image_size,
                             cache=cache_dir or None)

    return ClassSplits(load, (image_size, image_size, 1), image_format=dict(
        size=image_size, channels=1, mode="L", invert=True, resampling="lanczos"))

