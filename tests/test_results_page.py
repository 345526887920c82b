"""benchmarks/results_page.py builds docs/results.md from run directories: the text and
inner-rule sections read every number from the runs, and compare against the baselines."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def page():
    spec = importlib.util.spec_from_file_location("_jmeta_results_page",
                                                  ROOT / "benchmarks" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ENV = {"backend": "cpu", "device": "cpu", "num_devices": 1, "cpu": "x86_64", "cpu_count": 2,
       "jax": "0", "python": "3.11", "commit": "abc1234"}


def _run(root: Path, name: str, cfg: dict, results: dict, *, ways: int, shots: int, steps=0,
         steps_per_sec=0.0, train_s=0.0, per_task=None, episodes=None, num_tasks=600):
    d = root / name
    d.mkdir(parents=True)
    base = {"name": name, "data": {"ways": ways, "shots": shots}, "model": {"name": "bert"}}
    cfg = {**base, **cfg, "data": {**base["data"], **cfg.get("data", {})}}
    ev = {"name": name, "ways": ways, "k_shot": shots, "num_tasks": num_tasks, "results": results,
          "environment": ENV}
    if per_task is not None:
        ev.update(per_task=per_task, episodes_sha256=episodes)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "eval.json").write_text(json.dumps(ev))
    (d / "results.json").write_text(json.dumps({
        "steps": steps, "train_s": train_s, "steps_per_sec": steps_per_sec, "environment": ENV}))
    rows = [{"step": steps, "loss": 1.0, "time": train_s}] if steps else []
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _acc(mean, ci):
    return {"mean": mean, "ci95": ci, "std": 1.0, "n": 600, "nonfinite": 0}


def _text(algorithm, **learner):
    """A BANKING77 run's config sections."""
    return {"data": {"name": "banking77"}, "learner": {"name": algorithm, **learner}}


def test_text_and_inner_rule_sections(page, tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "banking77_frozen-5w1s", _text("protonets"),
         {"protonets": {"1": _acc(88.5, 0.6)}}, ways=5, shots=1)
    # Fine-tuning is reported at its configured 5 steps, not the larger 10 it was also scored at.
    _run(runs, "banking77_finetune-5w1s", _text("finetune", inner_steps=5),
         {"finetune": {"5": _acc(89.0, 0.8), "10": _acc(99.0, 0.1)}}, ways=5, shots=1)
    _run(runs, "banking77_protonets-5w1s", _text("protonets"),
         {"protonets": {"1": _acc(92.0, 0.6)}}, ways=5, shots=1, steps=2000, steps_per_sec=1.0,
         train_s=2000.0)
    _run(runs, "banking77_maml-5w1s", _text("maml", inner_steps=2),
         {"maml": {"1": _acc(80.0, 0.5), "2": _acc(89.5, 0.7)}}, ways=5, shots=1, steps=1000,
         steps_per_sec=0.5, train_s=2000.0)
    rules = {"data": {"name": "omniglot"}, "model": {"name": "conv4", "filters": 64},
             "learner": {"name": "maml", "inner_steps": 5}}
    _run(runs, "omniglot_inner_rules-5w1s-sgd",
         {**rules, "name": "omniglot_inner_rules_sgd-5w1s", "rule": {"name": "sgd"}},
         {"maml": {"0": _acc(20.0, 1.0), "5": _acc(90.0, 1.0)}}, ways=5, shots=1, steps=10,
         steps_per_sec=2.0, train_s=5.0)
    _run(runs, "omniglot_inner_rules-5w1s-meta_lstm",
         {**rules, "name": "omniglot_inner_rules_meta_lstm-5w1s", "rule": {"name": "meta_lstm"}},
         {"maml": {"0": _acc(21.0, 1.0), "5": _acc(93.0, 1.0)}}, ways=5, shots=1, steps=10,
         steps_per_sec=0.5, train_s=20.0)
    out = tmp_path / "docs" / "results.md"
    md = page.build([runs], out)
    assert out.read_text() == md
    text_part = md.split("## Few-shot text classification")[1].split("## Inner update rules")[0]
    lines = {line.split(" | ")[1]: line for line in text_part.splitlines()
             if line.startswith("| 5-way")}
    assert list(lines) == ["frozen encoder, nearest prototype", "fine-tuning from pretrained",
                           "ProtoNets", "MAML (second order)"]
    assert "**89.00 +- 0.80**" in lines["fine-tuning from pretrained"]
    # Margins against the better baseline (fine-tuning, 89.0 +- 0.8): CI of the difference 1.0.
    assert "+3.00 +- 1.00 (outside CI)" in lines["ProtoNets"]
    assert "**89.50 +- 0.70**" in lines["MAML (second order)"]
    assert "+0.50 +- 1.06 (within CI)" in lines["MAML (second order)"]
    assert "| 2,000 (2,000) |" in lines["ProtoNets"] and "| 1.00 |" in lines["ProtoNets"]
    rules_part = md.split("## Inner update rules")[1]
    rows = [line for line in rules_part.splitlines() if line.startswith("| 5-way")]
    assert [r.split(" | ")[1] for r in rows] == ["SGD (MAML)",
                                                 "LSTM meta-learner (Ravi & Larochelle)"]
    assert "**93.00 +- 1.00** | 21.00 +- 1.00 | +3.00 +- 1.41 (outside CI) |" in rows[1]
    assert "| 20.00 +- 1.00 | - |" in rows[0]
    # The comparison runs are not listed again among the paper reproductions.
    assert "## Few-shot classification" not in md


def test_text_margins_are_paired_when_both_runs_kept_the_same_episodes(page, tmp_path):
    """Per-episode scores of the same episodes give the CI of the differences, far tighter
    than the two CIs in quadrature when the episodes' difficulty dominates the spread."""
    rng = __import__("numpy").random.default_rng(0)
    difficulty = rng.normal(88.0, 8.0, 600)
    base = (difficulty + rng.normal(0.0, 1.0, 600)).tolist()
    ours = (difficulty + 1.0 + rng.normal(0.0, 1.0, 600)).tolist()
    def acc(xs):
        import statistics
        return _acc(statistics.mean(xs), 1.96 * statistics.stdev(xs) / len(xs) ** 0.5)

    runs = tmp_path / "runs"
    _run(runs, "banking77_frozen-5w1s", _text("protonets"),
         {"protonets": {"1": acc(base)}}, ways=5, shots=1,
         per_task={"protonets": {"1": base}}, episodes="e1")
    _run(runs, "banking77_protonets-5w1s", _text("protonets"),
         {"protonets": {"1": acc(ours)}}, ways=5, shots=1, steps=10,
         per_task={"protonets": {"1": ours}}, episodes="e1")
    # Another run on other episodes: no pairing, quadrature.
    _run(runs, "banking77_reptile-5w1s", _text("reptile", inner_steps=1),
         {"reptile": {"1": acc(ours)}}, ways=5, shots=1, steps=10,
         per_task={"reptile": {"1": ours}}, episodes="e2")
    md = page.build([runs], tmp_path / "results.md")
    lines = {line.split(" | ")[1]: line for line in md.splitlines() if line.startswith("| 5-way")}
    paired = lines["ProtoNets"].split(" | ")[4]
    assert paired.endswith("(outside CI, paired)"), paired
    diff, ci = (float(v) for v in paired.split(" (")[0].split(" +- "))
    assert abs(diff - 1.0) < 0.2 and ci < 0.2  # the CI of differences with sd ~1.4
    unpaired = lines["Reptile"].split(" | ")[4]
    assert "paired" not in unpaired and float(unpaired.split(" +- ")[1].split(" ")[0]) > 0.8


def test_a_shrunk_run_never_replaces_the_full_record_of_its_row(page, tmp_path):
    """A RUNLOCAL=1 wiring check (100 test episodes, few meta-steps) read after the full record
    of the same row does not take its place; a second full run does."""
    text = _text("protonets")
    records, runs = tmp_path / "records", tmp_path / "runs"
    _run(records, "banking77_protonets-5w1s", text, {"protonets": {"1": _acc(92.0, 0.6)}},
         ways=5, shots=1, steps=2000)
    _run(runs, "banking77_protonets-5w1s-runlocal", text, {"protonets": {"1": _acc(70.0, 2.0)}},
         ways=5, shots=1, steps=50, num_tasks=100)

    def shown(*roots):
        md = page.build(list(roots), tmp_path / "results.md")
        return [line for line in md.splitlines() if line.startswith("| 5-way")]

    for roots in ((records, runs), (runs, records)):
        (row,) = shown(*roots)
        assert "**92.00 +- 0.60**" in row and "| 600 |" in row
    rerun = tmp_path / "rerun"
    _run(rerun, "banking77_protonets-5w1s", text, {"protonets": {"1": _acc(93.0, 0.5)}},
         ways=5, shots=1, steps=2000)
    (row,) = shown(records, runs, rerun)
    assert "**93.00 +- 0.50**" in row
