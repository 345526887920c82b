"""Dataset loaders: small files in the official formats in tmp_path, plus the real BANKING77."""

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jmeta.data import _loaders as L
from jmeta.data import (
    load_cifar_fs,
    load_fc100,
    load_image_folder,
    load_miniimagenet,
    load_text_file,
    load_tieredimagenet,
)

SPLITS = ("train", "val", "test")
BANKING77 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77"

# The CIFAR-100 hierarchy (Krizhevsky 2009): superclass -> its 5 fine classes.
CIFAR100 = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
FINE = sorted(f for fs in CIFAR100.values() for f in fs)
COARSE = sorted(CIFAR100)
COARSE_OF = {f: c for c, fs in CIFAR100.items() for f in fs}


def _dump(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _wnids(n, offset):
    return [f"n{offset + i:08d}" for i in range(n)]


def _sizes(splits):
    return [splits[s].num_classes for s in SPLITS]


# ------------------------------------------------------------------------------------ CIFAR


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """A fake ``cifar-100-python`` folder: real label names, 3 train + 1 test image per class."""
    root = tmp_path_factory.mktemp("cifar") / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(0)
    for part, per_class in (("train", 3), ("test", 1)):
        fine = np.repeat(np.arange(100), per_class)
        rng.shuffle(fine)
        coarse = [COARSE.index(COARSE_OF[FINE[f]]) for f in fine]
        data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        _dump(
            {
                b"data": data,
                b"fine_labels": fine.tolist(),
                b"coarse_labels": coarse,
                b"filenames": [b"x.png"] * len(fine),
            },
            root / part,
        )
    _dump(
        {
            b"fine_label_names": [f.encode() for f in FINE],
            b"coarse_label_names": [c.encode() for c in COARSE],
        },
        root / "meta",
    )
    return root


def test_cifar_fs_splits_and_pixels(cifar_root, tmp_path):
    splits = load_cifar_fs(cifar_root, cache=tmp_path / "cache")
    assert _sizes(splits) == [64, 16, 20]
    names = [set(splits[s].class_names) for s in SPLITS]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set.union(*names) == set(FINE)
    # Published CIFAR-FS test classes (Bertinetto et al. 2019), spot-checked.
    assert {"baby", "bed", "whale", "worm", "rocket"} <= names[2]
    assert {"otter", "tractor", "sea"} <= names[1]
    for s in SPLITS:
        ds = splits[s]
        assert ds.data.dtype == np.uint8 and ds.example_shape == (32, 32, 3)
        assert ds.class_count.tolist() == [4] * ds.num_classes
    # Pixel round trip CHW -> HWC: the first example of a class is its first train image.
    with open(cifar_root / "train", "rb") as f:
        raw = pickle.load(f)
    j = 5
    fine = FINE[raw[b"fine_labels"][j]]
    s = next(s for s in SPLITS if fine in splits[s].class_names)
    ds = splits[s]
    k = ds.class_names.index(fine)
    first = min(i for i, lab in enumerate(raw[b"fine_labels"]) if lab == raw[b"fine_labels"][j])
    got = ds.data[ds.class_start[k]]
    src = raw[b"data"][first]
    assert got[7, 11, 2] == src[2 * 1024 + 7 * 32 + 11]
    np.testing.assert_array_equal(got, src.reshape(3, 32, 32).transpose(1, 2, 0))


def test_fc100_superclass_split(cifar_root, tmp_path):
    splits = load_fc100(cifar_root, cache=tmp_path / "cache")
    assert _sizes(splits) == [60, 20, 20]
    supers = [{COARSE_OF[n] for n in splits[s].class_names} for s in SPLITS]
    assert [len(x) for x in supers] == [12, 4, 4]
    assert not (supers[0] & supers[1] or supers[0] & supers[2] or supers[1] & supers[2])
    assert supers[2] == {"aquatic_mammals", "insects", "medium_mammals", "people"}
    assert supers[1] == {
        "large_carnivores",
        "large_omnivores_and_herbivores",
        "non-insect_invertebrates",
        "small_mammals",
    }


def test_cifar_cache_round_trip(cifar_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_cifar_fs(cifar_root, cache=cache)
    assert list(cache.glob("*.npz")) and not list(cifar_root.glob("*.npz"))

    def boom(path):
        raise AssertionError("the archive was unpickled again instead of read from the cache")

    monkeypatch.setattr(L, "_unpickle", boom)
    second = load_cifar_fs(cifar_root, cache=cache)
    fc = load_fc100(cifar_root, cache=cache)  # shares the cached archive
    assert _sizes(fc) == [60, 20, 20]
    for s in SPLITS:
        np.testing.assert_array_equal(first[s].data, second[s].data)
        assert first[s].class_names == second[s].class_names


def test_cifar_missing_archive_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python.tar.gz"):
        load_cifar_fs(tmp_path / "nowhere", cache=tmp_path / "cache")


def test_cifar_missing_class_is_reported(cifar_root, tmp_path):
    bad = tmp_path / "cifar-100-python"
    bad.mkdir()
    for part in ("train", "test"):
        with open(cifar_root / part, "rb") as f:
            d = pickle.load(f)
        keep = [i for i, lab in enumerate(d[b"fine_labels"]) if FINE[lab] != "whale"]
        _dump(
            {
                b"data": d[b"data"][keep],
                b"fine_labels": [d[b"fine_labels"][i] for i in keep],
                b"coarse_labels": [d[b"coarse_labels"][i] for i in keep],
            },
            bad / part,
        )
    (bad / "meta").write_bytes((cifar_root / "meta").read_bytes())
    with pytest.raises(ValueError, match="whale"):
        load_cifar_fs(bad, cache=tmp_path / "cache")


# ------------------------------------------------------------------------------ miniImageNet


def _mini_pickles(root, counts=(64, 16, 20), per_class=1, size=84):
    rng = np.random.default_rng(1)
    offset = 0
    for s, n in zip(SPLITS, counts):
        wnids = _wnids(n, offset)
        offset += n
        data = rng.integers(0, 256, (n * per_class, size, size, 3), dtype=np.uint8)
        class_dict = {
            w: list(range(i * per_class, (i + 1) * per_class)) for i, w in enumerate(wnids)
        }
        _dump({"image_data": data, "class_dict": class_dict}, root / f"mini-imagenet-cache-{s}.pkl")


def _mini_jpegs(root, size=8, fmt="JPEG", per_class=1):
    rng = np.random.default_rng(2)
    (root / "images").mkdir(parents=True)
    offset, pixels = 0, {}
    for s, n in zip(SPLITS, (64, 16, 20)):
        rows = ["filename,label"]
        for w in _wnids(n, offset):
            for k in range(per_class):
                fn = f"{w}{k:08d}.{'jpg' if fmt == 'JPEG' else 'png'}"
                arr = rng.integers(0, 256, (size, size + 2 * (fmt == "JPEG"), 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / "images" / fn, format=fmt)
                pixels[fn] = arr
                rows.append(f"{fn},{w}")
        offset += n
        (root / f"{s}.csv").write_text("\n".join(rows) + "\n")
    return pixels


def test_miniimagenet_pickles(tmp_path):
    root = tmp_path / "mini"
    root.mkdir()
    _mini_pickles(root, per_class=2)
    splits = load_miniimagenet(root, cache=tmp_path / "cache")
    assert _sizes(splits) == [64, 16, 20]
    assert splits["train"].example_shape == (84, 84, 3) and splits["train"].data.dtype == np.uint8
    assert splits["val"].class_count.tolist() == [2] * 16
    with open(root / "mini-imagenet-cache-test.pkl", "rb") as f:
        raw = pickle.load(f)
    ds = splits["test"]
    k = ds.class_names.index(_wnids(20, 80)[3])
    np.testing.assert_array_equal(ds.data[ds.class_start[k] + 1], raw["image_data"][7])


def test_miniimagenet_pickles_resized(tmp_path):
    root = tmp_path / "mini"
    root.mkdir()
    _mini_pickles(root)
    splits = load_miniimagenet(root, image_size=32, cache=tmp_path / "cache")
    assert splits["test"].example_shape == (32, 32, 3)


def test_miniimagenet_wrong_class_count(tmp_path):
    root = tmp_path / "mini"
    root.mkdir()
    _mini_pickles(root, counts=(63, 16, 20))
    with pytest.raises(ValueError, match=r"miniimagenet/train: found 63 classes .* has 64"):
        load_miniimagenet(root, cache=tmp_path / "cache")


def test_miniimagenet_jpeg_csv_resized(tmp_path):
    root = tmp_path / "mini"
    _mini_jpegs(root, size=8, fmt="JPEG")
    splits = load_miniimagenet(root, image_size=12, cache=tmp_path / "cache")
    assert _sizes(splits) == [64, 16, 20]
    assert splits["train"].example_shape == (12, 12, 3)
    assert splits["train"].class_names == tuple(_wnids(64, 0))


def test_miniimagenet_csv_exact_pixels_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "mini"
    pixels = _mini_jpegs(root, size=8, fmt="PNG", per_class=2)
    cache = tmp_path / "cache"
    first = load_miniimagenet(root, image_size=8, cache=cache)
    ds = first["val"]
    w = _wnids(16, 64)[5]
    k = ds.class_names.index(w)
    np.testing.assert_array_equal(ds.data[ds.class_start[k] + 1], pixels[f"{w}{1:08d}.png"])

    def boom(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(L, "_read_image", boom)
    second = load_miniimagenet(root, image_size=8, cache=cache)
    for s in SPLITS:
        np.testing.assert_array_equal(first[s].data, second[s].data)
        np.testing.assert_array_equal(first[s].class_count, second[s].class_count)
        assert first[s].class_names == second[s].class_names
    # A different image size is a different conversion: it must decode again.
    with pytest.raises(AssertionError, match="decoded again"):
        load_miniimagenet(root, image_size=10, cache=cache)


def test_miniimagenet_missing_lists_both_layouts(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_miniimagenet(tmp_path, cache=tmp_path / "cache")
    msg = str(e.value)
    assert "train.csv" in msg and "mini-imagenet-cache-train.pkl" in msg and "images" in msg


# ---------------------------------------------------------------------------- tieredImageNet


def _tiered(root, counts=(351, 97, 160), per_class=1, size=6):
    rng = np.random.default_rng(3)
    offset = 0
    for s, n in zip(SPLITS, counts):
        labels = np.repeat(np.arange(n), per_class)
        rng.shuffle(labels)
        arrays = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
        # The release stores each PNG as a uint8 array of its bytes.
        encoded = [np.frombuffer(_png(a), np.uint8) for a in arrays]
        _dump(encoded, root / f"{s}_images_png.pkl")
        _dump(
            {
                "label_specific": labels,
                "label_general": labels // 10,
                "label_specific_str": _wnids(n, offset),
                "label_general_str": ["g"] * (n // 10 + 1),
            },
            root / f"{s}_labels.pkl",
        )
        offset += n
        if s == "val":
            val = (arrays, labels)
    return val


def test_tieredimagenet(tmp_path, monkeypatch):
    root = tmp_path / "tiered"
    root.mkdir()
    arrays, labels = _tiered(root, per_class=1)
    cache = tmp_path / "cache"
    splits = load_tieredimagenet(root, cache=cache)
    assert _sizes(splits) == [351, 97, 160]
    ds = splits["val"]
    assert ds.example_shape == (6, 6, 3) and ds.data.dtype == np.uint8
    j = 10
    k = ds.class_names.index(_wnids(97, 351)[labels[j]])
    np.testing.assert_array_equal(ds.data[ds.class_start[k]], arrays[j])
    monkeypatch.setattr(L, "_read_image", lambda *a, **k: 1 / 0)
    again = load_tieredimagenet(root, cache=cache)
    np.testing.assert_array_equal(again["val"].data, ds.data)


def test_tieredimagenet_wrong_count_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_images_png.pkl"):
        load_tieredimagenet(tmp_path, cache=tmp_path / "cache")
    root = tmp_path / "tiered"
    root.mkdir()
    _tiered(root, counts=(350, 97, 160), size=2)
    with pytest.raises(ValueError, match=r"tieredimagenet/train: found 350 classes .* has 351"):
        load_tieredimagenet(root, cache=tmp_path / "cache")


# ------------------------------------------------------------------------------ image folder


def _folder(root, sizes):
    rng = np.random.default_rng(4)
    pixels = {}
    for c, ss in sizes.items():
        (root / c).mkdir(parents=True)
        for i, (w, h) in enumerate(ss):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
            pixels[(c, i)] = arr
    return pixels


def test_image_folder(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    pixels = _folder(root, {"zebra": [(5, 4)] * 3, "ant": [(5, 4)] * 2})
    (root / "ant" / "notes.txt").write_text("not an image")
    cache = tmp_path / "cache"
    ds = load_image_folder(root, cache=cache)
    assert ds.class_names == ("ant", "zebra") and ds.class_count.tolist() == [2, 3]
    assert ds.data.shape == (5, 4, 5, 3) and ds.data.dtype == np.uint8
    np.testing.assert_array_equal(ds.data[ds.class_start[1] + 2], pixels[("zebra", 2)])

    gray = load_image_folder(root, image_size=3, grayscale=True, cache=cache)
    assert gray.data.shape == (5, 3, 3, 1)

    monkeypatch.setattr(L, "_read_image", lambda *a, **k: 1 / 0)
    again = load_image_folder(root, cache=cache)
    np.testing.assert_array_equal(again.data, ds.data)
    assert again.class_names == ds.class_names


def test_image_folder_source_change_rebuilds(tmp_path):
    root = tmp_path / "imgs"
    _folder(root, {"a": [(4, 4)] * 2, "b": [(4, 4)] * 2})
    cache = tmp_path / "cache"
    load_image_folder(root, cache=cache)
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(root / "b" / "2.png")
    ds = load_image_folder(root, cache=cache)
    assert ds.class_count.tolist() == [2, 3]


def test_image_folder_inconsistent_sizes(tmp_path):
    root = tmp_path / "imgs"
    _folder(root, {"a": [(5, 4), (5, 4)], "b": [(5, 4), (6, 4)]})
    with pytest.raises(ValueError, match=r"b[/\\]1\.png.*image_size"):
        load_image_folder(root, cache=tmp_path / "cache")
    ds = load_image_folder(root, image_size=4, cache=tmp_path / "cache")
    assert ds.data.shape == (4, 4, 4, 3)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        load_image_folder(tmp_path / "empty", cache=tmp_path / "cache")
    (tmp_path / "empty" / "cls" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"Could not decode .*broken\.png"):
        load_image_folder(tmp_path / "empty", cache=tmp_path / "cache")


# ------------------------------------------------------------------------------------- text


def test_text_csv_and_jsonl(tmp_path):
    f = tmp_path / "d" / "train.csv"
    f.parent.mkdir()
    f.write_text('text,intent\n"hello, there",greet\nbye,leave\n"multi\nline",greet\n')
    ds = load_text_file(f)
    assert ds.class_names == ("greet", "leave") and ds.class_count.tolist() == [2, 1]
    assert ds.data.dtype == object and list(ds.data[:2]) == ["hello, there", "multi\nline"]
    assert ds.label == "d/train"

    j = tmp_path / "d" / "test.jsonl"
    j.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"utterance": "a", "label": "y", "category": "ignored"},
                {"utterance": "b", "label": "x", "category": "ignored"},
                {"utterance": "c", "label": "y", "category": "ignored"},
            ]
        )
        + "\n"
    )
    ds = load_text_file(j, text_field="utterance")
    assert ds.class_names == ("x", "y") and ds.class_count.tolist() == [1, 2]
    assert load_text_file(j, text_field="utterance", label_field="category").num_classes == 1
    arr = tmp_path / "d" / "all.json"
    arr.write_text(json.dumps([{"text": "a", "label": "p"}, {"text": "b", "label": "q"}]))
    assert load_text_file(arr).class_names == ("p", "q")


def test_text_errors_list_columns(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("sentence,tag\nhi,a\n")
    with pytest.raises(ValueError, match=r"columns found: \['sentence', 'tag'\]"):
        load_text_file(f)
    with pytest.raises(ValueError, match=r"label columns .*columns found: \['sentence', 'tag'\]"):
        load_text_file(f, text_field="sentence")
    assert load_text_file(f, text_field="sentence", label_field="tag").num_classes == 1
    with pytest.raises(FileNotFoundError):
        load_text_file(tmp_path / "nope.csv")


def test_banking77_real():
    if not BANKING77.is_dir():
        pytest.skip(f"BANKING77 not found at {BANKING77}")
    train = load_text_file(BANKING77 / "train.csv")
    test = load_text_file(BANKING77 / "test.csv")
    assert train.num_classes == test.num_classes == 77
    assert len(train.data) == 10003 and len(test.data) == 3080
    assert train.class_names == test.class_names
    cats = json.loads((BANKING77 / "categories.json").read_text())
    assert set(train.class_names) == set(cats)
    assert all(isinstance(t, str) and t for t in train.data[:100])
