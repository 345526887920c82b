"""Omniglot from the real archives in ../shared/data/omniglot (skipped when absent)."""

import time

import numpy as np
import pytest

from jmeta.data import load_omniglot, load_omniglot_characters, vinyals_split


def test_counts_and_pixels(omniglot_root, data_cache, omniglot_train):
    images, names = load_omniglot_characters(omniglot_root, cache=data_cache)
    assert images.shape == (1623, 20, 28, 28, 1) and images.dtype == np.uint8
    assert len(set(names)) == 1623
    alphabets = {n.split("/")[0] for n in names}
    assert len(alphabets) == 50
    assert images.size // (28 * 28) == 32460
    # Inverted: background dark (most pixels 0), ink bright; antialiasing gives grey levels.
    assert np.median(images) == 0 and images.max() == 255
    assert 0.05 < (images > 127).mean() < 0.3
    assert len(np.unique(images)) > 50


def test_background_and_evaluation_character_counts(omniglot_root, data_cache):
    import zipfile

    counts = []
    for name in ("images_background.zip", "images_evaluation.zip"):
        with zipfile.ZipFile(omniglot_root / name) as z:
            chars = {"/".join(n.split("/")[1:3]) for n in z.namelist() if n.endswith(".png")}
        counts.append(len(chars))
    assert counts == [964, 659]


@pytest.mark.parametrize("split,classes", [("train", 4112), ("val", 688), ("test", 1692),
                                          ("trainval", 4800)])
def test_vinyals_split_sizes(omniglot_root, data_cache, split, classes):
    ds = load_omniglot(split, root=omniglot_root, cache=data_cache)
    assert ds.num_classes == classes
    assert ds.num_classes == 4 * len({n.rsplit("/", 1)[0] for n in ds.class_names})
    assert set(ds.class_rotation.tolist()) == {0, 1, 2, 3}
    assert np.all(ds.class_count == 20)


def test_splits_share_no_character(omniglot_root, data_cache):
    chars = {}
    for protocol, splits in (("vinyals", ("train", "val", "test")),
                             ("maml", ("train", "val", "test"))):
        sets = [
            {n.rsplit("/rot", 1)[0] for n in load_omniglot(s, protocol=protocol, root=omniglot_root,
                                                           cache=data_cache).class_names}
            for s in splits
        ]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        chars[protocol] = [len(s) for s in sets]
    assert chars == {"vinyals": [1028, 172, 423], "maml": [1100, 100, 423]}


def test_rotated_classes_point_at_the_same_drawings(omniglot_train):
    ds = omniglot_train
    assert ds.class_names[:4] == tuple(f"Angelic/character01/rot{r:03d}" for r in (0, 90, 180, 270))
    assert len(set(ds.class_start[:4].tolist())) == 1
    assert ds.class_rotation[:4].tolist() == [0, 1, 2, 3]
    assert vinyals_split("train")[:4] == [("Angelic/character01", r) for r in range(4)]


def test_cache_round_trip_is_fast_and_equal(omniglot_root, tmp_path):
    t = time.perf_counter()
    first, _ = load_omniglot_characters(omniglot_root, cache=tmp_path)
    convert_s = time.perf_counter() - t
    assert list(tmp_path.glob("omniglot-28-lanczos-*.npz"))
    t = time.perf_counter()
    again, _ = load_omniglot_characters(omniglot_root, cache=tmp_path)
    cached_s = time.perf_counter() - t
    np.testing.assert_array_equal(first, again)
    assert cached_s < convert_s  # (the benchmark reports the times; this checks the cache is used)


@pytest.mark.slow  # long; `make test-slow` runs it
def test_other_sizes_and_resampling(omniglot_root, tmp_path):
    big, _ = load_omniglot_characters(omniglot_root, image_size=105, cache=tmp_path)
    near, _ = load_omniglot_characters(omniglot_root, resampling="nearest", cache=tmp_path)
    assert big.shape[2:] == (105, 105, 1)
    assert set(np.unique(big).tolist()) <= {0, 255}  # the originals are one-bit
    assert set(np.unique(near).tolist()) <= {0, 255}  # nearest neighbour keeps them binary
    with pytest.raises(ValueError, match="resampling"):
        load_omniglot_characters(omniglot_root, resampling="bicubic", cache=tmp_path)


def test_missing_archives_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="jmeta data download omniglot"):
        load_omniglot("train", root=tmp_path, cache=tmp_path)
