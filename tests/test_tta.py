"""`jmeta bench tta`: snapshots timed by training seconds only, tested on the exported episodes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.core import ConfigError
from jmeta.train import load_config, time_to_accuracy
from jmeta.train._tta import protocol, summarise, time_to, tta_markdown

from tests.conftest import SHARED_DATA

PROTONETS = "configs/omniglot_protonets.py:5w1s"


def test_protocol_and_options_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="Conv-4 only"):
        protocol(load_config("configs/omniglot_maml_mlp.py"))
    with pytest.raises(ConfigError, match="no peer runs learner"):
        protocol(load_config("configs/omniglot_anil.py:5w1s"))
    with pytest.raises(ConfigError, match="constant or step schedule"):
        protocol(load_config(PROTONETS, ["optimizer.schedule=cosine"]))
    common = dict(targets=(90,), budget_s=10, work=tmp_path, log=lambda s: None)
    with pytest.raises(ConfigError, match="runs .*'maml'.*not 'protonets'"):
        time_to_accuracy(PROTONETS, peer="learn2learn", peer_python="python3", **common)
    with pytest.raises(ConfigError, match="two distinct cores"):
        time_to_accuracy(PROTONETS, peer="pytorch", peer_python="python3", cores=(0, 0), **common)
    with pytest.raises(ConfigError, match="may change training only"):
        time_to_accuracy(PROTONETS, peer="pytorch", peer_python="python3",
                         peer_overrides=["eval.ways=20"], **common)
    with pytest.raises(ConfigError, match="marks must lie"):
        time_to_accuracy(PROTONETS, marks=(5, 20), **common)
    with pytest.raises(ConfigError, match="targets are accuracies"):
        time_to_accuracy(PROTONETS, **dict(common, targets=(120,)))
    assert not any(tmp_path.iterdir())  # nothing exported, nothing trained


def test_times_to_target_and_ratio():
    def lib(accs):
        return dict(snapshots=[dict(mark_s=m, train_s=m + 0.5, step=m, accuracy=a)
                               for m, a in accs], compile_s=2.0, first_step_s=1.0)

    res = dict(libraries=dict(jmeta=lib([(10, [80, 90]), (20, [96, 98])]),
                              pytorch=lib([(10, [70, 70]), (20, [90, 92]), (40, [97, 97])])),
               name="x", targets=[85.0, 97.0], tasks=2, schedule="alternate", cores=[],
               budget_s=40.0, date="d", host="h", environment=dict(commit="c"),
               protocol=dict(algorithm="protonets", model=dict(filters=8, pool=True,
                                                              bn_mode="transductive"),
                             train=dict(ways=5, shots=1, queries=15, meta_batch=1),
                             optimizer=dict(lr=1e-3, schedule="constant"),
                             test=dict(ways=5, shots=1, queries=15)))
    out = summarise(res, [85, 97.0])
    assert out["summary"]["jmeta"]["times"] == {"85": 10.5, "97": 20.5}
    assert out["summary"]["pytorch"]["times"] == {"85": 20.5, "97": 40.5}
    assert out["summary"]["jmeta"]["times_with_start"]["85"] == 13.5
    assert out["ratio"] == {"85": 20.5 / 10.5, "97": 40.5 / 20.5}
    text = tta_markdown(out)
    assert "| jmeta | 10 (14) | 20 (24) |" in text and "1.95x" in text
    assert time_to(out["summary"]["jmeta"]["curve"], 99.0) is None


def test_snapshots_are_timed_and_scored_on_the_exported_episodes(tmp_path, omniglot_train,
                                                                 data_cache):
    """A 1.5-second jmeta-only run: snapshots at each mark of training time (the compile and
    the first step left out), each scored on every exported test episode; the last snapshot's
    parameters, applied here to episodes.npz (the peer's copy of the episodes), give the same
    per-episode accuracies."""
    overrides = ["model.filters=4", "data.ways=5", "data.queries=5",
                 "optimizer.schedule=constant", f"data.cache_dir={data_cache}"]
    res = time_to_accuracy(PROTONETS, overrides, targets=(20.0, 100.0), budget_s=1.5,
                           marks=(0.5, 1.0, 1.5), tasks=12, schedule="alternate",
                           data_dir=str(SHARED_DATA), work=tmp_path / "work",
                           out=tmp_path / "out", log=lambda s: None)
    jm = res["libraries"]["jmeta"]
    snaps = jm["snapshots"]
    assert [s["mark_s"] for s in snaps] == [0.5, 1.0, 1.5]
    assert all(s["train_s"] >= s["mark_s"] for s in snaps) and jm["train_s"] >= 1.5
    assert [s["step"] for s in snaps] == sorted(s["step"] for s in snaps) and snaps[0]["step"] > 0
    assert all(len(s["accuracy"]) == 12 for s in snaps)
    assert res["summary"]["jmeta"]["times"]["100"] is None
    saved = json.loads((tmp_path / "out" / "tta_omniglot_protonets-5w1s.json").read_text())
    assert saved["episodes_sha256"] == res["episodes_sha256"]
    assert (tmp_path / "out" / "tta_omniglot_protonets-5w1s.png").stat().st_size > 1000

    from jmeta.train import build, build_task

    cfg = load_config(tmp_path / "work" / "config.json")
    learner = build(cfg, build_task(cfg, need_train=False)).learner
    z = np.load(tmp_path / "work" / "jmeta_last.npz")
    shapes = jax.eval_shape(learner.init, jax.random.key(0))
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    params = jax.tree_util.tree_unflatten(treedef, [z[jax.tree_util.keystr(k)] for k, _ in flat])
    ep = np.load(tmp_path / "work" / "episodes.npz")
    from jmeta.core import Batch

    @jax.jit
    def accuracy(xs, ys, xq, yq):
        adapted, _ = learner.adapt(params, Batch(xs / 255.0, ys))
        return 100.0 * jnp.mean(jnp.argmax(learner.predict(adapted, xq / 255.0), -1) == yq)

    here = [float(accuracy(ep["xs"][k].astype(np.float32), ep["ys"][k],
                           ep["xq"][k].astype(np.float32), ep["yq"][k])) for k in range(12)]
    np.testing.assert_allclose(here, snaps[-1]["accuracy"], atol=1e-3)
