"""`jmeta data` and training on a few-shot dataset from the command line."""

import json

import numpy as np
import pytest

import jmeta
from jmeta.cli import main
from tests.conftest import SHARED_DATA


def test_data_verify_on_the_real_archives(omniglot_root, capsys):
    assert main(["data", "verify", "omniglot", "--data-dir", str(SHARED_DATA)]) == 0
    out = capsys.readouterr().out
    assert "images_background.zip: ok" in out and "images_evaluation.zip: ok" in out


def test_data_errors_say_how_to_place_files_by_hand(tmp_path, capsys):
    assert main(["data", "verify", "omniglot", "--data-dir", str(tmp_path)]) == 2
    assert "images_background.zip" in capsys.readouterr().err
    assert main(["data", "download", "miniimagenet", "--data-dir", str(tmp_path)]) == 2
    assert "train.csv" in capsys.readouterr().err
    assert main(["data", "verify", "imagenet21k"]) == 2
    assert "imagenet21k" in capsys.readouterr().err


@pytest.mark.parametrize("sampler", ["device", "host"])
def test_train_and_eval_on_omniglot(omniglot_root, data_cache, tmp_path, capsys, sampler):
    run = tmp_path / f"omniglot-{sampler}"
    args = ["train", "configs/omniglot_maml_mlp.py", "train.meta_steps=30", "train.log_every=10",
            "train.meta_batch_size=4", "model.hidden=(32,)", "eval.tasks=100",
            f"data.sampler={sampler!r}", f"data.cache_dir={str(data_cache)!r}",
            "--data-dir", str(SHARED_DATA), "--run-dir", str(run), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "omniglot 5-way 1-shot, test classes: query accuracy (%)" in out
    ev = json.loads((run / "eval.json").read_text())
    assert ev["split"] == "test" and ev["ways"] == 5 and ev["num_tasks"] == 100
    r = ev["results"]["maml"]
    assert 10 < r["0"]["mean"] < 30  # before adapting: chance is 20%
    assert r["1"]["mean"] > r["0"]["mean"] + 10  # one inner step already helps
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["data_dir"] == str(SHARED_DATA.absolute())


def test_impossible_episode_is_a_clear_error_before_compiling(omniglot_root, data_cache, tmp_path,
                                                              capsys):
    run = tmp_path / "never"
    args = ["train", "configs/omniglot_maml_mlp.py", "data.shots=15", "data.queries=15",
            f"data.cache_dir={str(data_cache)!r}", "--data-dir", str(SHARED_DATA),
            "--run-dir", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "30 examples per class" in err and "has 20" in err
    assert not run.exists()


@pytest.mark.slow  # long; `make test-slow` runs it
def test_protonets_conv4_on_omniglot(omniglot_root, data_cache, tmp_path, capsys):
    run = tmp_path / "pn"
    args = ["train", "configs/omniglot_protonets.py", "train.meta_steps=30", "train.log_every=10",
            "train.save_every=30", "model.filters=8", "data.ways=5", "eval.tasks=100",
            "eval.val_tasks=20", f"data.cache_dir={str(data_cache)!r}",
            "--data-dir", str(SHARED_DATA), "--run-dir", str(run), "--no-progress"]
    assert main(args) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["results"]["protonets"]["1"]["mean"] > 30  # chance is 20%


@pytest.mark.slow
def test_mamlpp_with_per_step_running_statistics(omniglot_root, data_cache, tmp_path, capsys):
    run = tmp_path / "mamlpp"
    args = ["train", "configs/omniglot_mamlpp.py:5w1s", "train.meta_steps=20",
            "train.save_every=10", "train.log_every=10", "model.filters=8",
            "train.meta_batch_size=2", "learner.inner_steps=2", "model.bn_mode='running'",
            "eval.bn_batches=3", "eval.val_tasks=10", "eval.tasks=20", "eval.steps=(0,2,4)",
            f"data.cache_dir={str(data_cache)!r}", "--data-dir", str(SHARED_DATA), "--run-dir",
            str(run), "--no-progress"]
    assert main(args) == 0
    ev = json.loads((run / "eval.json").read_text())
    r = ev["results"]["mamlpp"]
    assert r["2"]["mean"] > r["0"]["mean"]
    trained = jmeta.load(run)
    mean = np.asarray(trained.meta_params["model"]["bn_3"]["mean"])
    assert mean.shape == (3, 8) and not np.allclose(mean[0], mean[2])  # one slice per step
