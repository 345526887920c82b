"""Run directories written before the components' settings were nested still load: the committed
records under benchmarks/results/ hold ``config.json`` files in the flat layout."""

import json
from pathlib import Path

import pytest

from jmeta.train import ConfigError, RunDir, check_config
from jmeta.train._config import from_dict
from jmeta.train._legacy import NESTED

ROOT = Path(__file__).resolve().parents[1]
RECORDS = sorted((ROOT / "benchmarks" / "results").rglob("config.json"))
FLAT = [p for p in RECORDS if "algorithm" in json.loads(p.read_text())]


UNSET_AS_ZERO = {"image_size", "lora_top_layers", "inner_truncate", "inner_batch"}
DEFAULTS = {"data.image_size": 28}


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def test_the_committed_records_hold_flat_configs():
    assert len(FLAT) >= 20, [str(p) for p in RECORDS]


@pytest.mark.parametrize("path", FLAT, ids=lambda p: p.parent.name)
def test_a_flat_config_json_loads_with_every_value_where_it_now_lives(path):
    old = json.loads(path.read_text())
    cfg = RunDir(path.parent).config
    flat = cfg.flat()
    moved = 0
    for key, value in old.items():
        new = NESTED.get(key)
        if new is None or new not in flat:
            continue  # an option of another algorithm or model, which this run did not use
        if key == "model" and value == "bert_lora":
            value = "bert"
        if key == "inner_rule" and value == "default":
            continue
        if key in UNSET_AS_ZERO and not value:  # 0 meant "the default" in the flat layout
            assert flat[new] in (None, DEFAULTS.get(new)), (key, flat[new])
            continue
        assert _plain(flat[new]) == _plain(value), (key, new, flat[new], value)
        moved += 1
    assert moved >= 15
    assert cfg.learner.name == old["algorithm"] and cfg.train.meta_steps == old["num_steps"]


# One build per kind of record: the model and learner of each (algorithm, model, rule) are built
# on shapes alone, as when they were trained.
KINDS = {}
for _p in FLAT:
    _v = json.loads(_p.read_text())
    KINDS.setdefault((_v["algorithm"], _v.get("model", "mlp"), _v.get("inner_rule", "default")), _p)


@pytest.mark.parametrize("path", sorted(KINDS.values()), ids=lambda p: p.parent.name)
def test_a_flat_record_builds_its_learner(path):
    cfg = check_config(RunDir(path.parent).config)
    assert cfg.learner.name == json.loads(path.read_text())["algorithm"]


def test_a_flat_key_that_never_existed_is_named_with_the_closest():
    with pytest.raises(ConfigError, match="k_shot"):
        from_dict({"algorithm": "maml", "k_shots": 5})
