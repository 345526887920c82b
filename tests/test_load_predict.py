"""jmeta.load and `jmeta predict`: a saved run adapts to a user's support set like the learner."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jmeta
from jmeta.algorithms import ALGORITHMS
from jmeta.cli import main
from jmeta.core import Batch
from jmeta.train import Config, validate
from jmeta.train._build import build_learner, model_task
from jmeta.train._checkpoint import save_tree

WAYS = 3


def _run(tmp_path, algorithm, **changes):
    """A run directory with a config and final meta-parameters, as training leaves it."""
    inner = {k: v for k, v in dict(inner_lr=0.4, inner_steps=1).items()
             if k in ALGORITHMS[algorithm].options}
    cfg = validate(Config(data=dict(name="omniglot", ways=WAYS, shots=1),
                          model=dict(name="conv4", filters=4),
                          learner=dict(name=algorithm, **inner), eval=dict(steps=(0, 2)),
                          **changes))
    learner = build_learner(cfg, model_task(cfg))
    meta = learner.init(jax.random.key(3))
    run = tmp_path / algorithm
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_tree(run / "checkpoints" / "meta", meta)
    return run, cfg, learner, meta


def _strokes(seed: int) -> np.ndarray:
    """A 40x40 'drawing' on a white page: dark random strokes, as Omniglot files look."""
    rng = np.random.default_rng(seed)
    page = np.full((40, 40), 255, np.uint8)
    for _ in range(6):
        r, c = rng.integers(4, 36, size=2)
        page[r - 2:r + 2, c - 8:c + 8] = 0
    return page


def _omniglot_like(page: np.ndarray) -> np.ndarray:
    """The training preprocessing written out: grayscale, Lanczos to 28x28, inverted, [0, 1]."""
    im = Image.fromarray(page).resize((28, 28), Image.Resampling.LANCZOS)
    return ((255 - np.asarray(im, np.float32)) / 255.0)[..., None]


@pytest.fixture(scope="module")
def pages():
    return [_strokes(i) for i in range(3 * WAYS)]


def test_protonets_load_adapts_like_the_learner(tmp_path, pages):
    run, cfg, learner, meta = _run(tmp_path, "protonets")
    trained = jmeta.load(run)
    assert trained.checkpoint_step is None and trained.ways == WAYS
    support, labels = pages[:WAYS], ["b", "a", "c"]
    queries = pages[WAYS:]
    adapted = trained.adapt(support, labels)
    assert adapted.labels == ["a", "b", "c"]

    x = jnp.asarray(np.stack([_omniglot_like(p) for p in support]))
    y = jnp.asarray([1, 0, 2])
    params, _ = learner.adapt(meta, Batch(x, y))
    q = jnp.asarray(np.stack([_omniglot_like(p) for p in queries]))
    expected = np.asarray(jax.nn.softmax(learner.predict(params, q), axis=-1))
    np.testing.assert_allclose(adapted.predict_proba(queries), expected, rtol=1e-4, atol=1e-6)
    assert adapted.predict(queries) == [adapted.labels[i] for i in expected.argmax(-1)]
    # Already-preprocessed float images are used as they are.
    np.testing.assert_allclose(adapted.predict_proba(np.asarray(q)), expected, rtol=1e-4, atol=1e-6)
    # A metric-based learner takes any number of classes.
    assert trained.adapt(pages[:2], ["x", "y"]).predict_proba(queries).shape == (len(queries), 2)


def test_maml_load_uses_test_steps_and_rejects_other_ways(tmp_path, pages):
    run, cfg, learner, meta = _run(tmp_path, "maml")
    trained = jmeta.load(run)
    assert trained.test_steps == 2
    adapted = trained.adapt(pages[:WAYS], [0, 1, 2])
    x = jnp.asarray(np.stack([_omniglot_like(p) for p in pages[:WAYS]]))
    params, _ = learner.adapt(meta, Batch(x, jnp.arange(WAYS)), inner_steps=2)
    q = np.stack([_omniglot_like(p) for p in pages[WAYS:]])
    expected = np.asarray(jax.nn.softmax(learner.predict(params, jnp.asarray(q)), axis=-1))
    np.testing.assert_allclose(adapted.predict_proba(q), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="trained 3-way"):
        trained.adapt(pages[:2], [0, 1])
    with pytest.raises(ValueError, match="labels"):
        trained.adapt(pages[:WAYS], [0, 1])


def test_predict_command_labels_a_folder(tmp_path, pages, capsys):
    run, *_ = _run(tmp_path, "protonets")
    support, query = tmp_path / "support", tmp_path / "query"
    for i, name in enumerate(["cat", "dog", "owl"]):
        (support / name).mkdir(parents=True)
        Image.fromarray(pages[i]).save(support / name / "1.png")
    query.mkdir()
    for i in range(WAYS, len(pages)):
        Image.fromarray(pages[i]).save(query / f"q{i}.png")
    assert main(["predict", str(run), "--support", str(support), "--query", str(query)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "file,label,p(cat),p(dog),p(owl)"
    adapted = jmeta.load(run).adapt([pages[i] for i in range(WAYS)], ["cat", "dog", "owl"])
    expected = adapted.predict([pages[i] for i in range(WAYS, len(pages))])
    assert [line.split(",")[1] for line in lines[1:]] == expected
    probs = np.array([[float(v) for v in line.split(",")[2:]] for line in lines[1:]])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_predict_command_errors(tmp_path, capsys):
    run, *_ = _run(tmp_path, "protonets")
    assert main(["predict", str(run), "--support", str(tmp_path / "nope"),
                 "--query", str(tmp_path)]) == 2
    assert "expected <support>/<label>/<images>" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(run), "--support", str(tmp_path / "empty"),
                 "--query", str(tmp_path)]) == 2
    assert "found no support class subfolders" in capsys.readouterr().err


def test_predict_names_an_unreadable_image_and_an_empty_class_folder(tmp_path, pages, capsys):
    run, *_ = _run(tmp_path, "protonets")
    support, query = tmp_path / "support", tmp_path / "query"
    for i, name in enumerate(["cat", "dog", "owl"]):
        (support / name).mkdir(parents=True)
        Image.fromarray(pages[i]).save(support / name / "1.png")
    query.mkdir()
    (query / "broken.png").write_bytes(b"not an image")
    assert main(["predict", str(run), "--support", str(support), "--query", str(query)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.png" in err and "Cannot read the image" in err, err
    (support / "emu").mkdir()
    assert main(["predict", str(run), "--support", str(support), "--query", str(query)]) == 2
    err = capsys.readouterr().err
    assert "emu" in err and "holds no images" in err, err
