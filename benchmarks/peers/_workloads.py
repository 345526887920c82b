"""The PyTorch peers' view of ``jmeta/bench_workloads.json``: which library runs which workload.

Torch-free on purpose: ``tests/test_peers_spec.py`` imports this module in jmeta's own test
environment (no torch) to check that every workload is either implemented or explicitly listed
as unsupported for every peer library.

Libraries:

* ``learn2learn``: ``l2l.algorithms.MAML`` (``clone()`` / ``adapt()``), Python loop over tasks.
* ``higher``: ``higher.innerloop_ctx``, Python loop over tasks.
* ``torchfunc``: ``torch.func`` (``functional_call`` + ``grad`` + ``vmap`` over tasks).
* ``torch``: plain PyTorch autograd; only ProtoNets, whose "inner loop" is a closed form, so the
  three meta-learning libraries would all run the same code.
"""

from __future__ import annotations

import json
from pathlib import Path

WORKLOADS_FILE = Path(__file__).resolve().parents[2] / "jmeta" / "bench_workloads.json"

LIBRARIES = ("learn2learn", "higher", "torchfunc", "torch")
ALGORITHMS = ("maml", "fomaml", "anil", "reptile", "protonets")
MODELS = ("conv4", "mlp")

_PROTO = ("ProtoNets has no inner loop to differentiate through: the same plain-PyTorch code "
          "would run in every library, so it runs once, as library 'torch'.")
_TORCH_ONLY_PROTO = ("library 'torch' is plain PyTorch autograd and runs only ProtoNets; the "
                     "gradient-based algorithms run in learn2learn, higher and torchfunc.")

# SUPPORT[algorithm][library]: None when implemented, else the reason it is not. Every
# (algorithm, library) pair must be listed (tests/test_peers_spec.py checks it).
SUPPORT: dict[str, dict[str, str | None]] = {
    "maml": {"learn2learn": None, "higher": None, "torchfunc": None, "torch": _TORCH_ONLY_PROTO},
    "fomaml": {"learn2learn": None, "higher": None, "torchfunc": None, "torch": _TORCH_ONLY_PROTO},
    "anil": {"learn2learn": None, "higher": None, "torchfunc": None, "torch": _TORCH_ONLY_PROTO},
    # learn2learn has no Reptile class; its Reptile example (examples/vision/reptile_miniimagenet.py)
    # deep-copies the model and adapts it with torch.optim.Adam(betas=(0, 0.999)): that is what runs.
    "reptile": {"learn2learn": None, "higher": None, "torchfunc": None, "torch": _TORCH_ONLY_PROTO},
    "protonets": {"learn2learn": _PROTO, "higher": _PROTO, "torchfunc": _PROTO, "torch": None},
}

# Exceptions for single workloads: UNSUPPORTED_WORKLOADS[(library, workload)] = reason.
UNSUPPORTED_WORKLOADS: dict[tuple[str, str], str] = {}

# Models each library's implementation handles (all of them today).
MODEL_SUPPORT: dict[str, tuple[str, ...]] = {lib: MODELS for lib in LIBRARIES}


def load_workloads(path: str | Path = WORKLOADS_FILE) -> dict[str, dict]:
    """The ``workloads`` table of ``jmeta/bench_workloads.json`` (name -> spec)."""
    with open(path) as f:
        return json.load(f)["workloads"]


def support(library: str, name: str, spec: dict) -> str | None:
    """None when ``library`` runs workload ``name`` (spec ``spec``), else the reason it does not."""
    if library not in LIBRARIES:
        return f"unknown library {library!r}; choose one of {LIBRARIES}."
    if (library, name) in UNSUPPORTED_WORKLOADS:
        return UNSUPPORTED_WORKLOADS[(library, name)]
    algorithm, model = spec.get("algorithm"), spec.get("model")
    if algorithm not in SUPPORT:
        return f"algorithm {algorithm!r} is not implemented by the PyTorch peers."
    if model not in MODEL_SUPPORT[library]:
        return f"model {model!r} is not implemented by the PyTorch peers."
    return SUPPORT[algorithm][library]


def pairs(workloads: dict[str, dict] | None = None) -> list[tuple[str, str, str | None]]:
    """Every (library, workload, reason-or-None), in library then file order."""
    workloads = load_workloads() if workloads is None else workloads
    return [(lib, name, support(lib, name, spec)) for lib in LIBRARIES
            for name, spec in workloads.items()]
