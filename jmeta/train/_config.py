"""Run configuration: each component's settings nested under it, validated on load.

A config names its components and gives their options: ``data=dict(name="omniglot", ways=5,
...)``, ``model=dict(name="conv4", ...)``, ``learner=dict(name="maml", inner_lr=0.4, ...)``,
``rule=dict(name="lslr")`` (optional: the learner's own inner rule), and the loop's own sections
``optimizer``, ``train``, ``eval`` and ``paper``. A component's options are the keywords of its
registered builder (:mod:`jmeta.algorithms`, :mod:`jmeta.models`, :mod:`jmeta.data`,
:mod:`jmeta.inner`), which checks their values; this module checks the keys, their types and the
loop's settings, and resolves every option the config leaves out to its default.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jmeta.algorithms import ALGORITHMS
from jmeta.core._meta import TASK_MAPS
from jmeta.core._registry import ConfigError, closest
from jmeta.data import DATASETS
from jmeta.inner import RULES
from jmeta.models import MODELS
from jmeta.train._legacy import flat_hint, from_flat, is_flat

SECTIONS = ("data", "model", "learner", "rule", "optimizer", "train", "eval", "paper")
TOP = ("name", "imports") + SECTIONS
COMPONENTS = {"data": DATASETS, "model": MODELS, "learner": ALGORITHMS, "rule": RULES}

# The episode keys of every dataset of a kind (the loop samples the episodes).
EPISODES = {
    "classes": dict(ways=5, shots=1, queries=15, train_shots=0, sampler="device",
                    augment_rotations=False, base_classes=0),
    "tasks": dict(shots=10, queries=0, train_shots=0),
}
MODEL_KEYS = dict(dtype="float32")  # every model: "bfloat16" computes in bf16 from float32 params
LOOP = {
    "optimizer": dict(name="adam", lr=1e-3, schedule="constant", decay_every=2000,
                      decay_rate=0.5, lr_min=0.0, grad_clip=0.0),
    "train": dict(meta_steps=70_000, meta_batch_size=25, seed=0, log_every=1000, save_every=1000,
                  keep_checkpoints=3, task_map="auto", chunk_size=0, mesh_data=0, mesh_model=1,
                  baseline=True, baseline_steps=0),
    "eval": dict(tasks=1000, steps=(1, 10), queries=0, ways=0, split="test", val_tasks=200,
                 chunk_size=0, bn_batches=20,
                 baseline_lrs=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)),
    "paper": dict(result=(), source=""),
}
"""The loop's sections and their defaults (see docs/guide.md, "Configs")."""

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "step", "cosine", "linear")
SAMPLERS = ("device", "host")
SPLITS = ("train", "val", "test")
DTYPES = ("float32", "bfloat16")


def _freeze(value):
    if isinstance(value, Mapping):
        return Section(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value):
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


class Section(Mapping):
    """One component's settings: an immutable, hashable mapping with attribute access.

    Example:
      >>> s = Section(name="maml", inner_lr=0.4)
      >>> s.inner_lr, s["name"], s.replace(inner_lr=0.1).inner_lr
      (0.4, 'maml', 0.1)
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping | None = None, **more):
        object.__setattr__(self, "_items", {k: _freeze(v) for k, v in {**(items or {}),
                                                                       **more}.items()})

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self) -> Iterator:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getattr__(self, key):
        try:
            return self._items[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        raise AttributeError("a Section is immutable: use .replace(...)")

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items())))

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return "Section(" + ", ".join(f"{k}={v!r}" for k, v in self._items.items()) + ")"

    def replace(self, **changes) -> Section:
        """The section with ``changes`` applied."""
        return Section({**self._items, **changes})

    def to_dict(self) -> dict:
        """A plain dict (tuples as lists), as JSON writes it."""
        return {k: _thaw(v) for k, v in self._items.items()}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run: its components, each with its options, and the loop's
    settings. Every option can be overridden on the command line as ``section.key=value``.

    Built raw, a config holds what was given; :func:`validate` (which ``load_config``,
    ``replace`` and ``jmeta.train.train`` apply) checks it and fills in every default.

    Example:
      >>> cfg = validate(Config(learner=dict(name="metasgd"), data=dict(name="sinusoid",
      ...                                                               shots=5)))
      >>> cfg.learner.init_lr, cfg.data.shots, cfg.train.meta_steps
      ((0.005, 0.1), 5, 70000)
      >>> cfg.replace(train=dict(meta_steps=100)).train.meta_steps
      100
    """

    name: str = "run"
    imports: tuple = ()
    data: Section = dataclasses.field(default_factory=lambda: Section(name="sinusoid"))
    model: Section = dataclasses.field(default_factory=lambda: Section(name="mlp"))
    learner: Section = dataclasses.field(default_factory=lambda: Section(name="maml"))
    rule: Section = dataclasses.field(default_factory=Section)
    optimizer: Section = dataclasses.field(default_factory=Section)
    train: Section = dataclasses.field(default_factory=Section)
    eval: Section = dataclasses.field(default_factory=Section)
    paper: Section = dataclasses.field(default_factory=Section)

    def __post_init__(self):
        for key in SECTIONS:
            value = getattr(self, key)
            if not isinstance(value, Section):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{key} must be a dict of settings; got {value!r}.")
                object.__setattr__(self, key, Section(value))
        object.__setattr__(self, "imports", tuple(self.imports))

    def replace(self, **changes: Any) -> Config:
        """A validated copy with ``changes``: top-level fields, or sections given as dicts,
        merged into the section (``replace(train=dict(meta_steps=10))``); a changed component
        ``name`` starts that section afresh."""
        values = {}
        for key, value in changes.items():
            if key not in TOP:
                raise ConfigError(f"Unknown config field {key!r}.{closest(key, TOP)}")
            if key in SECTIONS:
                old = getattr(self, key)
                if "name" in value and value["name"] != old.get("name"):
                    old = {}
                value = {**old, **value}
            values[key] = value
        return validate(dataclasses.replace(self, **values))

    def to_dict(self) -> dict:
        """The config as plain JSON-ready data (``config.json`` of a run)."""
        out = {"name": self.name, "imports": list(self.imports)}
        out.update({k: getattr(self, k).to_dict() for k in SECTIONS})
        return out

    def flat(self) -> dict:
        """``{"section.key": value}`` for every option (``name`` and ``imports`` as they are).

        Example:
          >>> validate(Config()).flat()["learner.inner_lr"]
          0.01
        """
        out = {"name": self.name, "imports": self.imports}
        for key in SECTIONS:
            out.update({f"{key}.{k}": v for k, v in getattr(self, key).items()})
        return out


# ---------------------------------------------------------------------------------------------
# Validation


def _coerce(where: str, default: Any, value: Any) -> Any:
    """``value`` converted to the type of ``default`` where that is unambiguous."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}.")
        return value
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer; got {value!r}.")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}.")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{where} must be a list such as {default!r}; got {value!r}.")
        return tuple(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string; got {value!r}.")
    return value


def _resolve(section: str, values: Mapping, options: dict, required: Sequence[str] = (),
             what: str = "") -> dict:
    """``values`` with every default of ``options`` filled in; unknown keys are errors."""
    what = what or f"{section!r}"
    given = {k: v for k, v in values.items() if k != "name" or k in options}
    for key in given:
        if key not in options and key not in required:
            valid = sorted({*options, *required})
            raise ConfigError(
                f"Unknown option {section}.{key} of {what}.{closest(key, valid)} Its options: "
                f"{', '.join(valid) or 'none'}.")
    missing = [k for k in required if k not in given]
    if missing:
        raise ConfigError(f"{what} needs {section}.{missing[0]} (it has no default).")
    out = {k: _coerce(f"{section}.{k}", d, given.get(k, d)) for k, d in options.items()}
    out.update({k: given[k] for k in required})
    return out


def _component(cfg: Config, section: str) -> dict:
    values = getattr(cfg, section)
    if section == "rule" and not values.get("name"):
        if len(values) > ("name" in values):
            raise ConfigError("rule options need rule.name (or leave out the rule section: the "
                              "learner's own inner rule).")
        return {}
    registry = COMPONENTS[section]
    if "name" not in values:
        raise ConfigError(f"{section}.name is missing: name the {registry.kind} "
                          f"(registered: {', '.join(registry.names())}).")
    entry = registry[values["name"]]
    options = dict(entry.options)
    if section == "data":
        options.update(EPISODES[entry.attributes["kind"]])
    if section == "model":
        options.update(MODEL_KEYS)
    kind = f"{registry.kind} {entry.name!r}"
    return {"name": entry.name, **_resolve(section, values, options, entry.required, kind)}


def _choice(where: str, value, options: Sequence) -> None:
    if value not in options:
        raise ConfigError(f"{where}={value!r} is not one of {tuple(options)}.")


def _at_least(section: dict, where: str, keys: Sequence[str], low: int) -> None:
    for key in keys:
        if section[key] < low:
            raise ConfigError(f"{where}.{key} must be at least {low}; got {section[key]}.")


def _check_loop(data: dict, kind: str, opt: dict, train: dict, ev: dict) -> None:
    """The loop's own settings, and the rules between sections that need no component built."""
    _choice("optimizer.name", opt["name"], OPTIMIZERS)
    _choice("optimizer.schedule", opt["schedule"], SCHEDULES)
    if not opt["lr"] > 0:
        raise ConfigError(f"optimizer.lr must be positive; got {opt['lr']}.")
    if opt["decay_every"] < 1 or not 0.0 < opt["decay_rate"] <= 1.0 or opt["lr_min"] < 0.0:
        raise ConfigError(
            f"optimizer.decay_every must be >= 1, decay_rate in (0, 1] and lr_min >= 0; got "
            f"{opt['decay_every']}, {opt['decay_rate']}, {opt['lr_min']}.")
    if not opt["grad_clip"] >= 0:
        raise ConfigError(f"optimizer.grad_clip must be >= 0 (0: no clipping); got "
                          f"{opt['grad_clip']}.")
    _choice("train.task_map", train["task_map"], TASK_MAPS + ("auto",))
    _at_least(train, "train", ("meta_batch_size", "log_every", "save_every", "keep_checkpoints",
                               "mesh_model"), 1)
    _at_least(train, "train", ("meta_steps", "seed", "chunk_size", "mesh_data",
                               "baseline_steps"), 0)
    if train["task_map"] == "map" and train["chunk_size"] and (
            train["meta_batch_size"] % train["chunk_size"]):
        raise ConfigError(
            f"train.meta_batch_size ({train['meta_batch_size']}) must be a multiple of "
            f"train.chunk_size ({train['chunk_size']}) for task_map='map'.")
    _choice("eval.split", ev["split"], SPLITS)
    _at_least(ev, "eval", ("tasks", "val_tasks", "bn_batches"), 1)
    _at_least(ev, "eval", ("queries", "ways", "chunk_size"), 0)
    if not ev["steps"] or any(not isinstance(s, int) or isinstance(s, bool) or s < 0
                              for s in ev["steps"]):
        raise ConfigError(f"eval.steps must list inner-step counts >= 0; got {ev['steps']!r}.")
    if not ev["baseline_lrs"] or any(not isinstance(v, (int, float)) or v <= 0
                                     for v in ev["baseline_lrs"]):
        raise ConfigError(f"eval.baseline_lrs must list positive step sizes; got "
                          f"{ev['baseline_lrs']!r}.")
    _at_least(data, "data", ("shots",), 1)
    _at_least(data, "data", ("queries", "train_shots"), 0)
    if kind == "classes":
        _at_least(data, "data", ("ways",), 2)
        _at_least(data, "data", ("base_classes",), 0)
        _choice("data.sampler", data["sampler"], SAMPLERS)
    elif ev["ways"]:
        raise ConfigError(f"data.name={data['name']!r} has no classes: its tasks cannot be "
                          f"tested {ev['ways']}-way; leave eval.ways at 0.")


def validate(cfg: Config) -> Config:
    """Checks every key and the loop's settings, fills in every default; raises
    :class:`ConfigError` naming the key and the fix. Idempotent.

    The components' own checks of their values run when they are built
    (:func:`jmeta.train.check_config` builds them without data), before anything compiles.
    """
    if not isinstance(cfg.name, str) or not cfg.name:
        raise ConfigError(f"name must be a non-empty string; got {cfg.name!r}.")
    imports = tuple(str(Path(i).resolve()) if isinstance(i, str) and i.endswith(".py") else i
                    for i in cfg.imports)  # a run directory's config.json finds them anywhere
    import_plugins(imports)
    data = _component(cfg, "data")
    kind = DATASETS[data["name"]].attributes["kind"]
    model = _component(cfg, "model")
    _choice("model.dtype", model["dtype"], DTYPES)
    if "tokenizer" in data and not data["tokenizer"] and model.get("path"):
        data["tokenizer"] = model["path"]  # a text dataset reads the model's own tokenizer
    learner = _component(cfg, "learner")
    rule = _component(cfg, "rule")
    loop = {k: _resolve(k, getattr(cfg, k), LOOP[k]) for k in LOOP}
    _check_loop(data, kind, loop["optimizer"], loop["train"], loop["eval"])
    return Config(name=cfg.name, imports=imports, data=data, model=model, learner=learner,
                  rule=rule, **loop)


# ---------------------------------------------------------------------------------------------
# Plug-ins: modules that register components of their own


def import_plugins(imports: Sequence[str]) -> None:
    """Imports the modules a config names in ``imports`` (module names, or paths of ``.py``
    files), so that the components they register are known.

    Example:
      >>> import_plugins(["json"])
    """
    for item in imports:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"imports must list module names or .py files; got {item!r}.")
        try:
            if item.endswith(".py"):
                path = Path(item)
                if not path.is_file():
                    raise ConfigError(f"imports: the plug-in file {item} does not exist.")
                name = f"_jmeta_plugin_{path.stem}"
                if name not in sys.modules:
                    spec = importlib.util.spec_from_file_location(name, path)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[name] = module
                    spec.loader.exec_module(module)
            else:
                importlib.import_module(item)
        except ImportError as err:
            raise ConfigError(f"imports: cannot import {item!r} ({err}); is it on the Python "
                              "path?") from err


# ---------------------------------------------------------------------------------------------
# Loading: files, overrides, rows


def train_shots(cfg: Config) -> int:
    """Support shots per class (points, for regression) of the training episodes."""
    return cfg.data.train_shots or cfg.data.shots


# Options a resumed run may change: they do not alter the trajectory of meta-training (task map,
# chunk sizes and the convolution implementation change how the same values are computed).
RESUMABLE = frozenset({
    "learner.unroll", "learner.head_features",
    "name", "imports", "train.task_map", "train.chunk_size", "eval.chunk_size",
    "model.conv_impl", "train.meta_steps", "train.log_every", "train.save_every",
    "train.keep_checkpoints", "eval.tasks", "eval.steps", "eval.queries", "eval.split",
    "eval.val_tasks", "data.data_dir", "data.cache_dir", "train.baseline",
    "train.baseline_steps", "eval.baseline_lrs", "paper.result", "paper.source",
    "data.base_classes", "eval.bn_batches",
})


def incompatible_fields(saved: Config, requested: Config) -> dict:
    """``{option: (saved, requested)}`` for every difference that a resumed run cannot accept.

    Example:
      >>> a = validate(Config())
      >>> incompatible_fields(a, a.replace(train=dict(meta_steps=5, seed=1)))
      {'train.seed': (0, 1)}
    """
    a, b = saved.flat(), requested.flat()
    keys = [k for k in {**a, **b} if k not in RESUMABLE]
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def parse_overrides(items: Sequence[str]) -> dict:
    """Parses ``["learner.inner_lr=0.4", "model.hidden=(40,40)"]``; values are Python literals,
    else strings. Keys are ``section.key`` (or ``name``, ``imports``).

    Example:
      >>> parse_overrides(["data.shots=5", "learner.name=metasgd", "eval.steps=1,10"])
      {'data.shots': 5, 'learner.name': 'metasgd', 'eval.steps': (1, 10)}
    """
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"Override {item!r} is not of the form key=value "
                              "(e.g. learner.inner_lr=0.4).")
        section = key.split(".", 1)[0]
        if section not in TOP or (section in SECTIONS) != ("." in key):
            valid = [f"{s}.<option>" for s in SECTIONS] + ["name", "imports"]
            hint = flat_hint(key) or closest(key, [*SECTIONS, "name", "imports"])
            raise ConfigError(f"Unknown config key {key!r}.{hint} Keys are "
                              f"{', '.join(valid)}.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        out[key] = value
    return out


def apply_overrides(values: dict, overrides: Mapping) -> dict:
    """``values`` (a nested config dict) with dotted overrides applied; overriding a
    component's ``name`` keeps the options the file gave it (they must suit the new one)."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in values.items()}
    for key, value in overrides.items():
        if "." in key:
            section, option = key.split(".", 1)
            out.setdefault(section, {})
            out[section] = {**out[section], option: value}
        else:
            out[key] = value
    return out


def from_dict(values: Mapping, source: str = "config") -> Config:
    """A validated :class:`Config` from a nested dict, or from the flat layout of earlier run
    directories (converted: see ``jmeta/train/_legacy.py``)."""
    values = dict(values)
    if is_flat(values):
        values = from_flat(values, source)
    unknown = [k for k in values if k not in TOP]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"Unknown config key {k!r} in {source}.{closest(k, TOP)} A config "
                          f"has {', '.join(TOP)}.")
    try:
        return validate(Config(**values))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def split_config_arg(path: str | Path) -> tuple[Path, str]:
    """``"configs/x.py:5w1s,runlocal"`` -> ``(Path("configs/x.py"), "5w1s,runlocal")``."""
    text = str(path)
    head, sep, arg = text.rpartition(":")
    if sep and head.endswith(".py") and "/" not in arg:
        return Path(head), arg
    return Path(text), ""


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Loads a config file and applies ``section.key=value`` overrides.

    A config file is Python defining ``get_config(arg="") -> dict`` (its docstring carries the
    paper, the reported numbers and the command), or a JSON object such as a run's
    ``config.json``. ``path:arg`` passes ``arg`` to ``get_config``: comma-separated tokens that
    choose a published row (``"5w1s"``) and ``"runlocal"``, which shrinks the run to a few
    minutes on a CPU (see :func:`runlocal`). ``imports`` entries that are ``.py`` paths are
    taken relative to the config file.

    Example (from the repository root):
      >>> load_config("configs/sinusoid_demo.py", ["data.shots=5"]).data.shots
      5
      >>> cfg = load_config("configs/omniglot_maml.py:20w1s,runlocal")
      >>> cfg.data.ways, cfg.train.meta_steps <= 200
      (20, True)
    """
    path, arg = split_config_arg(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist (configs live in configs/).")
    if path.suffix == ".json":
        if arg:
            raise ConfigError(f"{path}: a JSON config takes no ':{arg}' argument.")
        values = json.loads(path.read_text())
    elif path.suffix == ".py":
        module = _config_module(path)
        tokens = [t for t in arg.split(",") if t]
        local = "runlocal" in tokens
        row = ",".join(t for t in tokens if t != "runlocal")
        try:
            params = inspect.signature(module.get_config).parameters
        except (TypeError, ValueError):
            params = {}
        if row and not params:
            raise ConfigError(f"{path}: get_config() takes no argument, so ':{row}' cannot apply.")
        try:
            values = dict(module.get_config(row) if params else module.get_config())
        except KeyError as err:
            rows = ", ".join(getattr(module, "ROWS", {})) or "none"
            raise ConfigError(f"{path}: unknown row {row!r}; its rows are: {rows}.") from err
        if is_flat(values):
            values = from_flat(values, str(path))
        values.setdefault("name", path.stem)
        if local:
            values = runlocal(values)
    else:
        raise ConfigError(f"Config {str(path)!r}: expected a .py or .json file.")
    if is_flat(values):
        values = from_flat(values, str(path))
    values.setdefault("name", path.stem)
    values["imports"] = [str((path.parent / i).resolve()) if str(i).endswith(".py")
                         and not Path(i).is_absolute() else i for i in values.get("imports", ())]
    values = apply_overrides(values, parse_overrides(overrides))
    return from_dict(values, source=str(path))


def _config_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_jmeta_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} must define get_config() returning a dict of config keys.")
    return module


RUNLOCAL = dict(train=dict(meta_steps=100, log_every=10, save_every=50, baseline_steps=100),
                eval=dict(tasks=100, val_tasks=20))


def runlocal(values: dict) -> dict:
    """A config shrunk to minutes on a CPU: 100 meta-steps, meta-batch <= 4, 100 test tasks.

    The model, algorithm and protocol stay as published; only the budget shrinks, so a
    ``runlocal`` run checks that a configuration works end to end, not its accuracy.

    Example:
      >>> runlocal({"train": {"meta_steps": 60000, "meta_batch_size": 32}})["train"]
      {'meta_steps': 100, 'meta_batch_size': 4, 'log_every': 10, 'save_every': 50, 'baseline_steps': 100}
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in values.items()}
    train = dict(out.get("train", {}))
    steps = train.get("meta_steps")
    train.update(RUNLOCAL["train"])
    train["meta_batch_size"] = min(int(values.get("train", {}).get("meta_batch_size", 4)), 4)
    if steps == 0:  # no meta-training (text baselines) stays none
        train["meta_steps"] = 0
    out["train"] = {"meta_steps": train.pop("meta_steps"),
                    "meta_batch_size": train.pop("meta_batch_size"), **train}
    out["eval"] = {**out.get("eval", {}), **RUNLOCAL["eval"]}
    out["name"] = str(values.get("name", "run")) + "-runlocal"
    return out


def config_rows(folder: str | Path = "configs") -> list[dict]:
    """The published rows of every config in ``folder`` that defines ``ROWS``:
    ``{"config", "row", "paper", "source"}`` (``paper`` is ``(mean, ci95)``, ``(mean,)`` or ``()``).

    Example (from the repository root):
      >>> rows = config_rows("configs")
      >>> [r["paper"] for r in rows if r["config"] == "omniglot_maml" and r["row"] == "5w1s"]
      [(98.7, 0.4)]
    """
    out = []
    for path in sorted(Path(folder).glob("*.py")):
        if "ROWS" not in path.read_text() or "def get_config" not in path.read_text():
            continue
        module = _config_module(path)
        for row, values in getattr(module, "ROWS", {}).items():
            out.append({"config": path.stem, "row": row, "paper": tuple(values.get("paper", ())),
                        "source": getattr(module, "PAPER", "") if values.get("paper") else ""})
    return out
