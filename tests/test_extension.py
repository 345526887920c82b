"""Extending jmeta from outside: a user's module registers an algorithm and a dataset of its own,
a config names the module in ``imports``, and ``jmeta train`` trains and meta-tests them, with
nothing under ``jmeta/`` edited. The module below is the recipe of docs/guide.md, "Adding an
algorithm / model / dataset / inner rule"."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A toy dataset (blob images) and a toy algorithm (nearest centroid, learned temperature)."""
import jax
import jax.numpy as jnp
import numpy as np

from jmeta.algorithms import register as register_algorithm
from jmeta.core import MetaLearner, accuracy, check_number, cross_entropy_loss
from jmeta.data import ClassDataset, ClassSplits, register as register_dataset


@register_dataset("toy_blobs")
def toy_blobs(data_dir="", cache_dir="", classes=18, per_class=8, noise=30.0):
    """Classes of 6x6 grey images: a random pattern per class plus uniform noise."""
    check_number("toy_blobs: noise", noise, strict=False)

    def load(split):
        rng = np.random.default_rng(("train", "val", "test").index(split))
        patterns = rng.integers(0, 256, size=(classes, 6, 6, 1))
        labels = np.repeat(np.arange(classes), per_class)
        x = patterns[labels] + rng.uniform(-noise, noise, size=(len(labels), 6, 6, 1))
        return ClassDataset.from_labels(np.clip(x, 0, 255).astype(np.uint8), labels,
                                        [f"c{i}" for i in range(classes)])

    return ClassSplits(load=load, example_shape=(6, 6, 1))


@register_algorithm("toy_centroid", network="embedding")
def toy_centroid(env, temperature=1.0):
    """Nearest centroid on a meta-learned embedding, logits scaled by a learned temperature."""
    check_number("toy_centroid: temperature", temperature)
    model, ways = env.model("embedding"), env.ways

    def init(key):
        return {"model": model.init(key), "rule": {"log_t": jnp.log(temperature)}}

    def adapt(meta, support, *, inner_steps=None, key=None, eval_fn=None):
        z = model.apply(meta["model"], support.x)
        onehot = jax.nn.one_hot(support.y, ways)
        centres = onehot.T @ z / jnp.maximum(onehot.sum(0)[:, None], 1.0)
        params = {"model": meta["model"], "centres": centres, "log_t": meta["rule"]["log_t"]}
        trace = {"support_loss": cross_entropy_loss(predict(params, support.x), support.y)[None]}
        if eval_fn is not None:
            trace["eval"] = jax.tree.map(lambda v: v[None], eval_fn(params))
        return params, trace

    def predict(params, x):
        if "centres" not in params:
            return jnp.zeros((x.shape[0], ways))
        z = model.apply(params["model"], x)
        d = ((z[:, None, :] - params["centres"][None]) ** 2).sum(-1)
        return -jnp.exp(params["log_t"]) * d

    def task_grad(meta, episode, key):
        def loss(m):
            logits = predict(adapt(m, episode.support)[0], episode.query.x)
            return cross_entropy_loss(logits, episode.query.y), logits

        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(meta)
        return grads, {"loss": value, **accuracy(logits, episode.query.y)}

    return MetaLearner(init, adapt, predict, task_grad, family=model.family, inner_steps=0,
                       any_ways=True)
'''

CONFIG = '''
def get_config(arg=""):
    return dict(
        name="toy",
        imports=["toy_plugin.py"],
        data=dict(name="toy_blobs", noise=110.0, ways=3, shots=2, queries=4),
        model=dict(name="mlp", hidden=(16,)),
        learner=dict(name="toy_centroid", temperature=0.5),
        optimizer=dict(lr=3e-3),
        train=dict(meta_steps=40, meta_batch_size=4, log_every=20, save_every=20),
        eval=dict(tasks=60, val_tasks=20, steps=(1,)),
    )
'''


def _jmeta(*args, cwd):
    exe = Path(sys.executable).with_name("jmeta")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "jmeta.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "toy_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (folder / "toy_config.py").write_text(textwrap.dedent(CONFIG))
    return folder


def test_a_users_algorithm_and_dataset_train_with_jmeta_train(user_dir):
    run = user_dir / "run"
    proc = _jmeta("train", "toy_config.py", "--run-dir", str(run), "--no-progress", cwd=user_dir)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    saved = json.loads((run / "config.json").read_text())
    assert saved["learner"] == {"name": "toy_centroid", "temperature": 0.5}
    assert saved["data"]["name"] == "toy_blobs" and saved["data"]["noise"] == 110.0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and losses[-1] < losses[0], losses
    ev = json.loads((run / "eval.json").read_text())
    assert ev["metric"] == "query accuracy (%)" and ev["split"] == "test"
    result = ev["results"]["toy_centroid"]["1"]
    # Noisy 3-way classes of unseen patterns: far above chance (33%), short of perfect.
    assert result["n"] == 60 and 50.0 < result["mean"] < 100.0, result


def test_a_users_options_are_checked_before_anything_compiles(user_dir):
    proc = _jmeta("train", "toy_config.py", "learner.temprature=2.0", "--run-dir",
                  str(user_dir / "bad"), "--no-progress", cwd=user_dir)
    assert proc.returncode != 0
    assert "learner.temprature" in proc.stderr and "temperature" in proc.stderr, proc.stderr
    assert not (user_dir / "bad" / "checkpoints").exists()
    proc = _jmeta("train", "toy_config.py", "learner.temperature=-1.0", "--run-dir",
                  str(user_dir / "bad2"), "--no-progress", cwd=user_dir)
    assert proc.returncode != 0 and "toy_centroid: temperature" in proc.stderr, proc.stderr
