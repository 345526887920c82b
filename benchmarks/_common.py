"""Shared by the benchmark scripts: where results go and what produced them."""

from __future__ import annotations

from pathlib import Path

from jmeta.bench import hardware_name
from jmeta.train import git_commit

RESULTS = Path(__file__).parent / "results"


def results_dir() -> Path:
    out = RESULTS / hardware_name()
    out.mkdir(parents=True, exist_ok=True)
    return out


def commit() -> str:
    """The short commit of this checkout (``+dirty`` with uncommitted changes), or
    ``"unknown"``."""
    return git_commit(Path(__file__).resolve().parents[1])
