"""Shared by the benchmark scripts: where results go and what produced them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import jax

RESULTS = Path(__file__).parent / "results"


def hardware_name() -> str:
    """``cpu-<cores>core`` on a CPU, else the accelerator's kind (e.g. ``nvidia-h200``)."""
    if jax.default_backend() == "cpu":
        return f"cpu-{os.cpu_count()}core"
    return jax.devices()[0].device_kind.lower().replace(" ", "-")


def results_dir() -> Path:
    out = RESULTS / hardware_name()
    out.mkdir(parents=True, exist_ok=True)
    return out


def commit() -> str:
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=root).stdout.strip() or "unknown"
