"""Workloads, their variants and their configs (no JAX backend is touched here)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jmeta.algorithms import ALGORITHMS
from jmeta.core._registry import ConfigError
from jmeta.models import MODELS
from jmeta.train import Config, validate

WORKLOADS_FILE = Path(__file__).resolve().parents[1] / "bench_workloads.json"

# Keys a workload entry (or a variant's override) may set.
SPEC_KEYS = frozenset({
    "algorithm", "model", "filters", "strided", "size", "channels", "hidden", "ways", "shots",
    "queries", "meta_batch", "inner_steps", "inner_lr", "inner_batch", "remat", "task_map",
    "conv_impl", "inner_rule", "inner_beta1", "meta_optimizer", "meta_lr",
})


@dataclasses.dataclass(frozen=True)
class Suite:
    """A named list of workloads and its default measurement budget."""

    doc: str
    reps: int
    min_rep_s: float


SUITES = {
    "core": Suite("every workload of jmeta/bench_workloads.json", reps=5, min_rep_s=1.0),
    "quick": Suite("maml_sinusoid and protonets_omniglot_5w1s, fewer repetitions (smoke tests)",
                   reps=3, min_rep_s=0.2),
    "scaling": Suite("curves over meta-batch, inner steps (with and without remat), ways, shots",
                     reps=3, min_rep_s=0.5),
}
QUICK = ("maml_sinusoid", "protonets_omniglot_5w1s")


def load_workloads(path: str | Path | None = None) -> dict[str, dict]:
    """The ``workloads`` mapping of ``jmeta/bench_workloads.json`` (name -> entry).

    Example:
      >>> load_workloads()["maml_sinusoid"]["meta_batch"]
      25
    """
    path = Path(path) if path else WORKLOADS_FILE
    if not path.is_file():
        raise ConfigError(f"The workload definitions {path} do not exist: run `jmeta bench` "
                          "from a checkout of the repository (they live in benchmarks/).")
    return dict(json.loads(path.read_text())["workloads"])


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def parse_name(name: str) -> tuple[str, dict]:
    """Splits a workload name into its base and its overrides.

    Example:
      >>> parse_name("maml_sinusoid@inner_steps=10,remat=true")
      ('maml_sinusoid', {'inner_steps': 10, 'remat': True})
      >>> parse_name("maml_sinusoid")
      ('maml_sinusoid', {})
    """
    base, sep, rest = name.partition("@")
    overrides = {}
    for item in (rest.split(",") if sep else []):
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"Workload {name!r}: {item!r} is not key=value "
                              "(e.g. maml_sinusoid@meta_batch=64).")
        overrides[key.strip()] = _value(text)
    return base, overrides


def variant_spec(name: str, workloads: dict[str, dict] | None = None) -> dict:
    """The entry of a workload or variant (``base@key=value,...``): the base entry, overridden.

    Example:
      >>> variant_spec("maml_sinusoid@meta_batch=64")["meta_batch"]
      64
    """
    workloads = load_workloads() if workloads is None else workloads
    base, overrides = parse_name(name)
    if base not in workloads:
        raise ConfigError(f"Unknown workload {base!r}; valid workloads: {', '.join(workloads)}.")
    bad = sorted(set(overrides) - SPEC_KEYS)
    if bad:
        raise ConfigError(f"Workload {name!r}: unknown key {bad[0]!r}; valid keys: "
                          f"{', '.join(sorted(SPEC_KEYS))}.")
    return {**workloads[base], **overrides}


IMAGE_TASKS = {1: "omniglot", 3: "miniimagenet"}
"""The dataset a workload's images are shaped like, by channels (its size is the workload's)."""


def _image_task(channels: int) -> str:
    if channels not in IMAGE_TASKS:
        raise ConfigError(f"No image task has {channels} channels; choose 1 (Omniglot-shaped) "
                          "or 3 (miniImageNet-shaped).")
    return IMAGE_TASKS[channels]


def query_size(spec: dict) -> int:
    """Query examples per class (points, for sinusoid) of a workload's synthetic batch.

    A workload without queries (Reptile, ``queries: 0``) gets one per class: every algorithm
    scores the adapted model on a query set, and its forward pass on ``ways`` examples is a few
    percent of a Reptile step.

    Example:
      >>> query_size({"queries": 0}), query_size({"queries": 15})
      (1, 15)
    """
    return max(int(spec.get("queries", 0)), 1)


def workload_config(spec: dict, *, task_map: str = "auto", remat: bool = False) -> Config:
    """The validated :class:`jmeta.train.Config` of a ``workloads.json`` entry.

    An entry with ``size`` and ``channels`` is an image classification task shaped like
    Omniglot (1 channel) or miniImageNet (3 channels); an ``mlp`` entry without them is sinusoid
    regression. ``shots``/``queries`` are per class, ``meta_batch`` is the number of tasks per
    meta-step. ``inner_rule``/``inner_beta1`` choose the inner rule (the Reptile entries: Adam,
    beta1 0, on minibatches of ``inner_batch``), ``meta_optimizer``/``meta_lr`` the outer one
    (default Adam 1e-3; Reptile: an SGD step of 1.0). ``spec`` may also set ``remat`` and
    ``task_map``, which take precedence over the arguments.

    Example:
      >>> cfg = workload_config(load_workloads()["maml_omniglot_5w1s"])
      >>> cfg.data.name, cfg.model.name, cfg.data.ways, cfg.data.shots, cfg.model.strided
      ('omniglot', 'conv4', 5, 1, True)
    """
    bad = sorted(k for k in spec if k not in SPEC_KEYS and not k.startswith("_"))
    if bad:
        raise ConfigError(f"Workload entry has unknown key {bad[0]!r}; valid keys: "
                          f"{', '.join(sorted(SPEC_KEYS))}.")
    missing = [k for k in ("algorithm", "ways", "shots", "meta_batch") if k not in spec]
    if missing:
        raise ConfigError(f"Workload entry lacks {', '.join(missing)}: {spec}.")
    alg = spec["algorithm"]
    options = ALGORITHMS[alg].options
    learner = {k: v for k, v in (("inner_steps", spec.get("inner_steps", 1)),
                                 ("inner_lr", spec.get("inner_lr", 0.01)),
                                 ("remat", spec.get("remat", remat))) if k in options}
    train: dict[str, Any] = dict(meta_batch_size=spec["meta_batch"], baseline=False,
                                 task_map=spec.get("task_map", task_map))
    if "size" in spec or "channels" in spec:
        size, channels = spec.get("size", 28), spec.get("channels", 1)
        data = dict(name=_image_task(channels), image_size=size, ways=spec["ways"],
                    shots=spec["shots"], queries=query_size(spec))
        name = spec.get("model", "conv4")
        model = {k: v for k, v in (("filters", spec.get("filters", 64)),
                                   ("strided", spec.get("strided", False)),
                                   ("conv_impl", spec.get("conv_impl", "auto")))
                 if k in MODELS[name].options}
        model["name"] = name
    else:
        data = dict(name="sinusoid", shots=spec["shots"], queries=query_size(spec))
        model = dict(name=spec.get("model", "mlp"))
    if "hidden" in spec:
        model["hidden"] = tuple(spec["hidden"])
    values = dict(name="bench", data=data, model=model, train=train)
    if "inner_rule" in spec:
        rule = dict(name=spec["inner_rule"])
        if "inner_beta1" in spec:
            rule["b1"] = spec["inner_beta1"]
        values["rule"] = rule
    values["optimizer"] = dict(name=spec.get("meta_optimizer", "adam"),
                               lr=spec.get("meta_lr", 1e-3))
    if "inner_batch" in spec:
        if "inner_batch" not in options:
            raise ConfigError(f"inner_batch (inner-loop minibatches) is not an option of {alg!r}.")
        learner["inner_batch"] = spec["inner_batch"] or None
        data["train_shots"] = spec["shots"]  # minibatches drawn from the training shots
    return validate(Config(**values, learner=dict(name=alg, **learner)))


def scaling_workloads(backend: str | None = "gpu") -> list[str]:
    """The variants of the ``scaling`` suite; convolutional curves are shorter on a CPU.

    Example:
      >>> names = scaling_workloads("cpu")
      >>> names[0], "maml_omniglot_5w1s@meta_batch=64" in names
      ('maml_sinusoid@meta_batch=1', False)
    """
    cpu = backend == "cpu"
    conv_batches = (1, 2, 4, 8, 16, 32) + (() if cpu else (64, 128))
    conv_steps = (1, 5, 10) + (() if cpu else (20, 50))
    names = [f"maml_sinusoid@meta_batch={b}" for b in (1, 2, 4, 8, 16, 32, 64, 128)]
    names += [f"maml_omniglot_5w1s@meta_batch={b}" for b in conv_batches]
    for base, steps in (("maml_sinusoid", (1, 5, 10, 20, 50)), ("maml_omniglot_5w1s", conv_steps)):
        for s in steps:
            names += [f"{base}@inner_steps={s}", f"{base}@inner_steps={s},remat=true"]
    names += [f"protonets_omniglot_5w1s@ways={w}" for w in (5, 10, 20)]
    names += [f"protonets_omniglot_5w1s@shots={k}" for k in (1, 5)]
    return names


def workload_names(suite: str, backend: str | None = None,
                   workloads: dict[str, dict] | None = None) -> list[str]:
    """The workloads of a suite (``backend=None``: the longest list any backend runs).

    Example:
      >>> len(workload_names("core")) == len(load_workloads())
      True
    """
    if suite not in SUITES:
        raise ConfigError(f"Unknown suite {suite!r}; valid suites: {', '.join(SUITES)}.")
    if suite == "quick":
        return list(QUICK)
    if suite == "scaling":
        return scaling_workloads(backend or "gpu")
    return list(load_workloads() if workloads is None else workloads)


def split_names(text: str) -> list[str]:
    """Splits a comma-separated list of workload names, keeping a variant's ``key=value``
    pairs (also comma-separated) with their variant.

    Example:
      >>> split_names("maml_sinusoid@inner_steps=5,remat=true,anil_sinusoid")
      ['maml_sinusoid@inner_steps=5,remat=true', 'anil_sinusoid']
    """
    names: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if names and "@" in names[-1] and "@" not in piece and "=" in piece:
            names[-1] += "," + piece
        elif piece:
            names.append(piece)
    return names


def select(suite: str, only: str | Sequence[str] | None = None) -> list[str]:
    """The suite's workloads, or those named in ``only`` (names, base names or variants).

    A base name selects all of its variants in the suite; a variant ``base@key=value`` that
    the suite lacks is run as given. Every selected workload's config is validated here, so
    a bad name or value fails before anything is compiled.

    Example:
      >>> select("scaling", "protonets_omniglot_5w1s")[:2]
      ['protonets_omniglot_5w1s@ways=5', 'protonets_omniglot_5w1s@ways=10']
    """
    workloads = load_workloads()
    names = workload_names(suite, workloads=workloads)
    if only:
        wanted = split_names(only) if isinstance(only, str) else [w.strip() for w in only]
        chosen = []
        for w in filter(None, wanted):
            hits = [n for n in names if n == w or parse_name(n)[0] == w]
            if not hits and "@" in w:
                hits = [w]
            if not hits:
                valid = sorted({parse_name(n)[0] for n in names}) if suite == "scaling" else names
                raise ConfigError(f"Unknown workload {w!r} for suite {suite!r}; valid "
                                  f"workloads: {', '.join(valid)}.")
            chosen += [h for h in hits if h not in chosen]
        names = chosen
    for n in names:
        workload_config(variant_spec(n, workloads))
    return names


