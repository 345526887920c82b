"""benchmarks/compare_peers.py: the summary and the tables it writes after every run."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cp():
    spec = importlib.util.spec_from_file_location("compare_peers",
                                                  ROOT / "benchmarks" / "compare_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "torch" not in sys.modules, "compare_peers.py must not import torch"
    return module


def test_summary_takes_medians_and_the_fastest_peer(cp):
    table = cp.load_workloads()
    runs = {"maml_omniglot_5w1s": {
        "jmeta": [{"steps_per_sec": 3.0, "compile_s": 4.0, "task_map": "map",
                   "conv_impl": "im2col"}, {"steps_per_sec": 5.0, "compile_s": 6.0}],
        "learn2learn": [{"steps_per_sec": 1.0}, {"error": "timed out"}],
        "torchfunc": [{"steps_per_sec": 2.0}, {"steps_per_sec": 1.0}]},
        "maml_sinusoid": {"jmeta": [{"steps_per_sec": 900.0}]},  # no peer measured yet
        "anil_sinusoid": {}}  # not reached: left out
    rows = {r["workload"]: r for r in cp.summarize(runs, table)}
    assert set(rows) == {"maml_omniglot_5w1s", "maml_sinusoid"}
    row = rows["maml_omniglot_5w1s"]
    assert row["steps_per_sec"] == {"jmeta": 4.0, "learn2learn": 1.0, "torchfunc": 1.5}
    assert row["fastest_peer"] == "torchfunc" and row["ratio_vs_fastest_peer"] == 4.0 / 1.5
    assert row["jmeta_compile_s"] == 5.0 and row["jmeta_task_map"] == "map, im2col"
    assert rows["maml_sinusoid"]["ratio_vs_fastest_peer"] is None


def test_tables_name_the_device_and_rounds(cp, tmp_path):
    l2l = [{"steps_per_sec": 2.0, "device": "NVIDIA H200"}]
    runs = {"maml_omniglot_5w1s": {"jmeta": [{"steps_per_sec": 30.0}], "learn2learn": l2l}}
    meta = {"date": "2026-12-01", "commit": "abc1234", "threads": 16, "rounds": 2, "reps": 3,
            "cpu_count": 16, "cpu_model": "x86", "device": "cuda"}
    text = cp.write(tmp_path, meta, cp.summarize(runs, cp.load_workloads()), runs,
                    ["learn2learn"], rounds=1)
    assert "on NVIDIA H200" in text and "median over 1 alternating rounds" in text
    assert "| maml_omniglot_5w1s | 30 | 2 | 15.00x (learn2learn) |" in text
    saved = json.loads((tmp_path / "peers.json").read_text())
    assert saved["meta"]["gpu"] == "NVIDIA H200" and saved["meta"]["rounds_done"] == 1
    assert (tmp_path / "peers.md").read_text() == text


def test_cpu_runs_keep_jax_on_the_cpu(cp, monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    assert cp._env(2, "cpu")["JAX_PLATFORMS"] == "cpu"
    cuda = cp._env(2, "cuda")
    assert "JAX_PLATFORMS" not in cuda and cuda["OMP_NUM_THREADS"] == "2"
