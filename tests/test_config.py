"""Config loading, overrides and validation: every mistake is named before anything compiles."""

from pathlib import Path

import pytest

from jmeta.train import Config, ConfigError, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_carries_its_provenance(path):
    cfg = load_config(path)
    text = path.read_text()
    assert '"""' in text and "jmeta train" in text and "Paper" in text
    assert cfg.eval_tasks >= 600


def _rows():
    from jmeta.train._config import config_rows

    return [(r["config"], r["row"]) for r in config_rows(ROOT / "configs")]


@pytest.mark.parametrize("config,row", _rows(), ids=lambda v: str(v))
def test_every_published_row_loads_and_shrinks_for_a_cpu(config, row):
    path = ROOT / "configs" / f"{config}.py"
    cfg = load_config(f"{path}:{row}")
    ways, shots = (int(v) for v in row.rstrip("s").split("w"))
    assert ((cfg.eval_ways or cfg.ways), cfg.k_shot) == (ways, shots)
    # Image rows test on 1000 tasks as the papers did; text rows (BANKING77) on 600.
    assert cfg.name == f"{config}-{row}" and cfg.eval_tasks >= (600 if cfg.task == "banking77" else 1000)
    assert cfg.paper_source or not cfg.paper_result
    local = load_config(f"{path}:{row},runlocal")
    assert local.num_steps <= 100 and local.meta_batch_size <= 4 and local.name.endswith("-runlocal")
    assert (local.algorithm, local.model, local.ways, local.k_shot) == (cfg.algorithm, cfg.model, cfg.ways, cfg.k_shot)


def test_rows_are_errors_when_unknown_or_unsupported(tmp_path):
    with pytest.raises(ConfigError, match="unknown row '7w1s'; its rows are: 5w1s, 5w5s, 20w1s, 20w5s"):
        load_config(ROOT / "configs/omniglot_maml.py:7w1s")
    with pytest.raises(ConfigError, match="takes no argument"):
        load_config(ROOT / "configs/sinusoid_maml.py:5w1s")


def test_overrides_are_typed_and_applied():
    cfg = load_config(ROOT / "configs/sinusoid_maml.py", ["k_shot=5", "meta_lr=3e-4", "remat=true"])
    assert (cfg.k_shot, cfg.meta_lr, cfg.remat) == (5, 3e-4, True)
    assert parse_overrides(["hidden=[64, 64]"]) == {"hidden": [64, 64]}
    assert load_config(ROOT / "configs/sinusoid_maml.py", ["hidden=[64, 64]"]).hidden == (64, 64)


def test_unknown_key_names_the_key_and_suggests_the_fix():
    with pytest.raises(ConfigError, match=r"Unknown config key 'k_shots'.*Did you mean 'k_shot'"):
        load_config(ROOT / "configs/sinusoid_maml.py", ["k_shots=5"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("k_shot=0", "k_shot must be at least 1"),
        ("algorithm=mamal", "algorithm='mamal' is not one of"),
        ("inner_lr=-0.1", "inner_lr must be positive"),
        ("meta_batch_size=2.5", "meta_batch_size must be an integer"),
        ("task_map=pmap", "task_map='pmap' is not one of"),
        ("eval_steps=(1,-1)", "eval_steps must list"),
        ("metasgd_init_lr=(0.1,0.01)", "low <= high"),
        ("hidden=(40,0)", "hidden must be a list of positive"),
        ("meta_grad_clip=-1", "meta_grad_clip must be >= 0"),
        ("k_shot", "not of the form key=value"),
    ],
)
def test_impossible_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(ROOT / "configs/sinusoid_maml.py", [override])


def test_incompatible_combinations():
    with pytest.raises(ConfigError, match="multiple of chunk_size"):
        Config(task_map="map", chunk_size=4, meta_batch_size=25).replace()
    with pytest.raises(ConfigError, match="metasgd learns its own"):
        Config(algorithm="metasgd", inner_rule="lslr").replace()
    with pytest.raises(ConfigError, match="inner_batch .* is a reptile option"):
        Config(algorithm="maml", inner_batch=5).replace()
    with pytest.raises(ConfigError,
                       match=r"exceeds the training support set \(ways x train_shots = 50\)"):
        Config(task="omniglot", algorithm="reptile", ways=5, k_shot=1, train_shots=10,
               inner_batch=60).replace()
    Config(task="omniglot", algorithm="reptile", ways=5, k_shot=1, train_shots=10,
           inner_batch=10).replace()
    with pytest.raises(ConfigError, match=r"inner_beta1 must be in \[0, 1\)"):
        Config(inner_beta1=1.0).replace()
    with pytest.raises(ConfigError, match="protomaml builds a classifier .* sinusoid is regression"):
        Config(algorithm="protomaml").replace()
    with pytest.raises(ConfigError, match="protomaml builds each task's head from training-mode"):
        Config(task="omniglot", model="conv4", algorithm="protomaml", bn_mode="running").replace()
    with pytest.raises(ConfigError, match="proto_scale must be positive"):
        Config(task="omniglot", algorithm="protomaml", proto_scale=0.0).replace()
    with pytest.raises(ConfigError, match="body_inner_lr must be >= 0"):
        Config(body_inner_lr=-0.1).replace()
    for bad in ({"algorithm": "anil"}, {"algorithm": "metasgd"},
                {"algorithm": "maml", "inner_rule": "lslr"}):
        with pytest.raises(ConfigError, match="body_inner_lr sets a fixed SGD step size"):
            Config(body_inner_lr=0.1, **bad).replace()


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        load_config(bad)
