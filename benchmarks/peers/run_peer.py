#!/usr/bin/env python3
"""Time one benchmark workload (``jmeta/bench_workloads.json``) in a PyTorch peer library.

    .venv-peers/bin/python benchmarks/peers/run_peer.py --library learn2learn \\
        --workload maml_omniglot_5w1s [--threads 2] [--warmup 2] [--reps 5] \\
        [--steps-per-rep N] [--device cpu|cuda] [--json OUT]
    .venv-peers/bin/python benchmarks/peers/run_peer.py --list
    .venv-peers/bin/python benchmarks/peers/run_peer.py --versions

Prints one JSON object (and writes it to ``--json OUT`` if given). An unsupported (library,
workload) pair prints ``{"supported": false, "reason": ...}`` and exits 0. See README.md.
``--device cuda`` runs the model and the fixed task batch on the GPU (each timed repetition ends
with ``torch.cuda.synchronize()``, so no step's work is left queued) and reports the peak GPU
memory that PyTorch allocated.

learn2learn 0.2.0 imports torchvision at import time, and no torchvision wheel works with the
torch 2.13 CPU build of ``.venv-peers``: :func:`stub_torchvision` puts an empty stand-in
``torchvision`` package into ``sys.modules`` before learn2learn is imported. learn2learn's
algorithms (MAML, clone/adapt) never touch torchvision; only its datasets, transforms and
vision models would, and the peers use none of them.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import math
import os
import resource
import statistics
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _workloads import LIBRARIES, load_workloads, pairs, support  # torch-free

TARGET_REP_SECONDS = 2.0


# --------------------------------------------------------------------------------------------
# torchvision stand-in (for learn2learn's import-time imports)


class _StubModule(types.ModuleType):
    """A module whose every public attribute is a placeholder class that cannot be instantiated."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise ImportError(f"{self.__name__}.{name} is a stub: torchvision is not installed in "
                              "the peers' environment (see benchmarks/peers/README.md).")

        placeholder = type(name, (), {"__init__": unavailable, "__module__": self.__name__})
        setattr(self, name, placeholder)
        return placeholder


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``torchvision`` and every ``torchvision.*`` submodule to a :class:`_StubModule`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []  # a package: submodule imports come back here
        module.__version__ = "0.0.0+stub"
        return module

    def exec_module(self, module):
        pass


def stub_torchvision() -> None:
    """Make ``import torchvision`` (and its submodules) load empty stand-ins. Idempotent."""
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _StubFinder())


def import_library(library: str):
    """Import the peer library; returns ``(module or None, version string)``."""
    import torch

    if library == "learn2learn":
        stub_torchvision()
        import learn2learn

        return learn2learn, learn2learn.__version__
    if library == "higher":
        from importlib import metadata

        import higher

        return higher, metadata.version("higher")
    return None, torch.__version__  # torchfunc / torch: torch itself


# --------------------------------------------------------------------------------------------


def set_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def device_of(name: str):
    """The ``torch.device`` for ``--device``; a clear error when CUDA is asked for and absent."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"run_peer.py: --device cuda, but torch {torch.__version__} sees no GPU "
                         f"(torch.version.cuda={torch.version.cuda}); use --device cpu.")
    return torch.device(name)


def run(library: str, name: str, spec: dict, *, threads: int, warmup: int, reps: int,
        steps_per_rep: int | None, seed: int = 0, device: str = "cpu") -> dict:
    import torch

    torch.set_num_threads(threads)
    dev = device_of(device)
    _, version = import_library(library)
    from _algorithms import make_step, needs_composite_bn
    from _models import Tasks, build_model

    tasks = Tasks(spec, device=dev)
    model = build_model(spec, seed=seed, embedding=spec["algorithm"] == "protonets",
                        composite_bn=needs_composite_bn(library, spec)).to(dev)
    step = make_step(library, spec, tasks, model)
    cuda = dev.type == "cuda"

    losses = []

    def sync() -> None:  # a step may leave its last updates queued on the GPU
        if cuda:
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        losses.append(step())
    sync()
    if steps_per_rep is None:
        t0 = time.perf_counter()
        losses.append(step())
        sync()
        dt = time.perf_counter() - t0
        steps_per_rep = max(1, round(TARGET_REP_SECONDS / max(dt, 1e-9)))
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps_per_rep):
            losses.append(step())
        sync()
        rates.append(steps_per_rep / (time.perf_counter() - t0))
    median = statistics.median(rates) if rates else float("nan")
    return {
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "peak_device_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if cuda else None,
        "library": library,
        "library_version": version,
        "torch_version": torch.__version__,
        "workload": name,
        "algorithm": spec["algorithm"],
        "threads": threads,
        "warmup": warmup,
        "reps": reps,
        "steps_per_rep": steps_per_rep,
        "steps_per_sec": median,
        "steps_per_sec_min": min(rates) if rates else float("nan"),
        "steps_per_sec_max": max(rates) if rates else float("nan"),
        "tasks_per_sec": median * spec["meta_batch"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "losses_finite": all(math.isfinite(v) for v in losses),
        "batchnorm": "composite" if needs_composite_bn(library, spec) else
                     ("native" if spec["model"] == "conv4" else None),
        "supported": True,
    }


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", choices=LIBRARIES)
    ap.add_argument("--workload")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps-per-rep", type=int, default=None,
                    help=f"meta-steps per repetition (default: ~{TARGET_REP_SECONDS:g} s worth, "
                         "from one timed step after warm-up)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where the model and the task batch live (default cpu)")
    ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed before building the model")
    ap.add_argument("--json", dest="json_out", help="also write the JSON object to this file")
    ap.add_argument("--list", action="store_true", help="print the supported (library, workload) pairs")
    ap.add_argument("--versions", action="store_true", help="import every peer library, print versions")
    args = ap.parse_args(argv)

    if args.list:
        table = pairs()
        emit({"supported": [[lib, wl] for lib, wl, why in table if why is None],
              "unsupported": [[lib, wl, why] for lib, wl, why in table if why is not None]},
             args.json_out)
        return 0
    set_threads(args.threads)  # before torch is imported
    if args.versions:
        import torch

        versions = {"python": sys.version.split()[0], "torch": torch.__version__}
        for lib in ("learn2learn", "higher"):
            versions[lib] = import_library(lib)[1]
        emit(versions, args.json_out)
        return 0
    if not args.library or not args.workload:
        ap.error("--library and --workload are required (or --list / --versions)")
    workloads = load_workloads()
    if args.workload not in workloads:
        ap.error(f"unknown workload {args.workload!r}; one of {sorted(workloads)}")
    if args.threads < 1 or args.reps < 0 or args.warmup < 0 or (
            args.steps_per_rep is not None and args.steps_per_rep < 1):
        ap.error("--threads and --steps-per-rep must be >= 1, --reps and --warmup >= 0")
    spec = workloads[args.workload]
    reason = support(args.library, args.workload, spec)
    if reason is not None:
        emit({"library": args.library, "workload": args.workload, "supported": False,
              "reason": reason}, args.json_out)
        return 0
    emit(run(args.library, args.workload, spec, threads=args.threads, warmup=args.warmup,
             reps=args.reps, steps_per_rep=args.steps_per_rep, seed=args.seed,
             device=args.device), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
