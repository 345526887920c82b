"""Config loading, overrides and validation: every mistake is named before anything compiles."""

from pathlib import Path

import pytest

from jmeta.train import Config, ConfigError, check_config, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_carries_its_provenance(path):
    cfg = load_config(path)
    text = path.read_text()
    assert '"""' in text and "jmeta train" in text and "Paper" in text
    assert cfg.eval.tasks >= 600


def _rows():
    from jmeta.train._config import config_rows

    return [(r["config"], r["row"]) for r in config_rows(ROOT / "configs")]


@pytest.mark.parametrize("config,row", _rows(), ids=lambda v: str(v))
def test_every_published_row_loads_and_shrinks_for_a_cpu(config, row):
    path = ROOT / "configs" / f"{config}.py"
    cfg = load_config(f"{path}:{row}")
    ways, shots = (int(v) for v in row.rstrip("s").split("w"))
    assert ((cfg.eval.ways or cfg.data.ways), cfg.data.shots) == (ways, shots)
    # Image rows test on 1000 tasks as the papers did; text rows (BANKING77) on 600.
    text = cfg.data.name == "banking77"
    assert cfg.name == f"{config}-{row}" and cfg.eval.tasks >= (600 if text else 1000)
    assert cfg.paper.source or not cfg.paper.result
    local = load_config(f"{path}:{row},runlocal")
    assert local.train.meta_steps <= 100 and local.train.meta_batch_size <= 4
    assert local.name.endswith("-runlocal")
    assert (local.learner.name, local.model.name, local.data.ways, local.data.shots) == (
        cfg.learner.name, cfg.model.name, cfg.data.ways, cfg.data.shots)


def test_rows_are_errors_when_unknown_or_unsupported(tmp_path):
    with pytest.raises(ConfigError,
                       match="unknown row '7w1s'; its rows are: 5w1s, 5w5s, 20w1s, 20w5s"):
        load_config(ROOT / "configs/omniglot_maml.py:7w1s")
    with pytest.raises(ConfigError, match="takes no argument"):
        load_config(ROOT / "configs/sinusoid_maml.py:5w1s")


def test_overrides_are_typed_and_applied():
    cfg = load_config(ROOT / "configs/sinusoid_maml.py",
                      ["data.shots=5", "optimizer.lr=3e-4", "learner.remat=true"])
    assert (cfg.data.shots, cfg.optimizer.lr, cfg.learner.remat) == (5, 3e-4, True)
    assert parse_overrides(["model.hidden=[64, 64]"]) == {"model.hidden": [64, 64]}
    hidden = load_config(ROOT / "configs/sinusoid_maml.py", ["model.hidden=[64, 64]"]).model.hidden
    assert hidden == (64, 64)


def test_unknown_key_names_the_key_and_suggests_the_fix():
    with pytest.raises(ConfigError, match=r"Unknown option data.shotss .*Did you mean 'shots'"):
        load_config(ROOT / "configs/sinusoid_maml.py", ["data.shotss=5"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.shots=0", "data.shots must be at least 1"),
        ("learner.name=mamal", "Unknown algorithm 'mamal'. Did you mean 'maml'"),
        ("learner.inner_lr=-0.1", "'maml': learner.inner_lr: the learning rate must be a positive"),
        ("train.meta_batch_size=2.5", "train.meta_batch_size must be an integer"),
        ("train.task_map=pmap", "train.task_map='pmap' is not one of"),
        ("eval.steps=(1,-1)", "eval.steps must list"),
        ("learner.init_lr=(0.1,0.01)", "low <= high"),
        ("model.hidden=(40,0)", "model 'mlp': mlp: every layer size must be a positive int"),
        ("optimizer.grad_clip=-1", "optimizer.grad_clip must be >= 0"),
        ("data.shots", "not of the form key=value"),
    ],
)
def test_impossible_values_are_clear_errors(override, message):
    config = "sinusoid_metasgd" if override.startswith("learner.init_lr") else "sinusoid_maml"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_config(load_config(ROOT / f"configs/{config}.py", [override]))


def test_incompatible_combinations():
    omniglot = dict(name="omniglot", ways=5, shots=1, train_shots=10)
    with pytest.raises(ConfigError, match="multiple of train.chunk_size"):
        Config(train=dict(task_map="map", chunk_size=4, meta_batch_size=25)).replace()
    with pytest.raises(ConfigError, match="'metasgd' takes no inner rule"):
        check_config(Config(learner=dict(name="metasgd"), rule=dict(name="lslr")))
    with pytest.raises(ConfigError, match="Unknown option learner.inner_batch of algorithm 'maml'"):
        Config(learner=dict(name="maml", inner_batch=5)).replace()
    with pytest.raises(ConfigError,
                       match=r"exceeds the training support set \(50 examples: ways x train_shots"):
        check_config(Config(data=omniglot, learner=dict(name="reptile", inner_batch=60)))
    check_config(Config(data=omniglot, learner=dict(name="reptile", inner_batch=10)))
    with pytest.raises(ConfigError, match=r"rule 'adam': adam: b1 must be a number in \[0.0, 1"):
        check_config(Config(rule=dict(name="adam", b1=1.0)))
    with pytest.raises(ConfigError, match="'protomaml' classifies episodes .* is regression"):
        check_config(Config(learner=dict(name="protomaml")))
    with pytest.raises(ConfigError, match="protomaml builds each task's head from training-mode"):
        check_config(Config(data=dict(name="omniglot"), model=dict(name="conv4", bn_mode="running"),
                            learner=dict(name="protomaml")))
    with pytest.raises(ConfigError, match="'protomaml': protomaml: scale must be a number > 0"):
        check_config(Config(data=dict(name="omniglot"), learner=dict(name="protomaml", scale=0.0)))
    with pytest.raises(ConfigError, match="rule 'sgd': sgd: body_lr must be a number > 0"):
        check_config(Config(rule=dict(name="sgd", body_lr=-0.1)))
    for learner, rule, message in (
            ("anil", "sgd", "body_lr sets the step size of the adapted parameters outside"),
            ("metasgd", "sgd", "'metasgd' takes no inner rule"),
            ("maml", "lslr", "Unknown option rule.body_lr of inner rule 'lslr'")):
        with pytest.raises(ConfigError, match=message):
            check_config(Config(learner=dict(name=learner), rule=dict(name=rule, body_lr=0.1)))


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        load_config(bad)
