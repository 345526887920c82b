"""The PyTorch peers (benchmarks/peers/) cover every benchmark workload, or say why not.

Pure Python and torch-free: parses the static support table of benchmarks/peers/_workloads.py.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"


@pytest.fixture(scope="module")
def peers():
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location("_jmeta_peer_workloads", PEERS / "_workloads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not {m for m in set(sys.modules) - before if m == "torch" or m.startswith("torch.")}, \
        "benchmarks/peers/_workloads.py must not import torch"
    return module


@pytest.fixture(scope="module")
def workloads():
    return json.loads((ROOT / "jmeta" / "bench_workloads.json").read_text())["workloads"]


def test_libraries_and_table_are_complete(peers):
    assert set(peers.LIBRARIES) == {"learn2learn", "higher", "torchfunc", "torch"}
    for algorithm in peers.ALGORITHMS:
        row = peers.SUPPORT[algorithm]
        assert set(row) == set(peers.LIBRARIES), f"SUPPORT[{algorithm!r}] must list every library"
        for library, reason in row.items():
            assert reason is None or (isinstance(reason, str) and reason.strip()), (
                library, algorithm)
    for (library, name), reason in peers.UNSUPPORTED_WORKLOADS.items():
        assert library in peers.LIBRARIES and isinstance(reason, str) and reason.strip()


def test_every_workload_is_implemented_or_explained(peers, workloads):
    assert peers.load_workloads() == workloads
    for name, spec in workloads.items():
        assert spec["algorithm"] in peers.SUPPORT, (
            f"{name}: algorithm {spec['algorithm']!r} not in the table")
        assert spec["model"] in peers.MODELS, f"{name}: model {spec['model']!r} not handled"
        verdicts = {lib: peers.support(lib, name, spec) for lib in peers.LIBRARIES}
        assert any(v is None for v in verdicts.values()), f"{name}: no peer library runs it"
        for lib, reason in verdicts.items():
            assert reason is None or reason.strip(), (lib, name)


def test_expected_coverage(peers, workloads):
    supported = {(lib, name) for lib, name, why in peers.pairs(workloads) if why is None}
    for name, spec in workloads.items():
        if spec["algorithm"] == "protonets":
            assert {lib for lib, n in supported if n == name} == {"torch"}
        else:
            assert {lib for lib, n in supported if n == name} == {
                "learn2learn", "higher", "torchfunc"}
    assert len(peers.pairs(workloads)) == len(workloads) * len(peers.LIBRARIES)


def test_workload_fields_the_peers_read(workloads):
    for name, spec in workloads.items():
        need = {"algorithm", "model", "ways", "shots", "queries", "meta_batch"}
        if spec["model"] == "conv4":
            need |= {"filters", "strided", "size", "channels"}
        else:
            need |= {"hidden"}
        if spec["algorithm"] in ("maml", "fomaml", "anil", "reptile"):
            need |= {"inner_steps", "inner_lr"}
        if spec["algorithm"] == "reptile":
            need |= {"inner_batch"}
            assert spec["inner_batch"] <= spec["ways"] * spec["shots"], name
        assert need <= set(spec), f"{name} lacks {sorted(need - set(spec))}"
