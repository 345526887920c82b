"""Runs at a glance: a table of the run directories under a folder (``jmeta runs``) and two or
more runs side by side (``jmeta runs compare``): config differences, results, paired
differences of their meta-tests."""

from __future__ import annotations

import os
from pathlib import Path

from jmeta.train._reporting import paired_difference
from jmeta.train._rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    PROCESS_FILE,
    RESULTS_FILE,
    RunDir,
)

_MISSING = "-"


def find_runs(root: str | os.PathLike = "runs") -> list[Path]:
    """The run directories under ``root`` (``root`` itself included), at any depth, sorted by
    their path relative to ``root``. A run directory holds a ``config.json`` and one of
    ``metrics.jsonl``, ``results.json``, ``process.json`` or ``checkpoints/`` (a bare
    ``config.json``, e.g. a model's, is not a run); the folders inside a run are not searched.
    A missing ``root`` is a :class:`FileNotFoundError`.

    Example::

        find_runs("runs")   # [PosixPath('runs/demo'), PosixPath('runs/reproduce/maml-k5'), ...]
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder" if root.exists()
                                else f"{root} does not exist")
    found = []
    for here, dirs, files in os.walk(root):
        if CONFIG_FILE in files and (
                {METRICS_FILE, RESULTS_FILE, PROCESS_FILE} & set(files) or "checkpoints" in dirs):
            found.append(Path(here))
            dirs[:] = []  # checkpoints/, evals/: nothing more to find inside a run
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _classification(cfg) -> bool:
    """Whether a config's dataset is one of classes (accuracy) rather than a task family
    (regression, query MSE)."""
    from jmeta.data import DATASETS

    try:
        return DATASETS[cfg.data.name].attributes.get("kind") != "tasks"
    except Exception:  # noqa: BLE001 - a plugin dataset that is not imported here
        return "ways" in cfg.data


def wall_times(rows: list[dict]) -> list[float]:
    """Seconds of training at each ``metrics.jsonl`` row, over every segment of a resumed run
    (``time`` restarts at each resume; compiling is not counted).

    Example:
      >>> wall_times([{"time": 1.0}, {"time": 2.0}, {"time": 0.5}, {"time": 1.5}])
      [1.0, 2.0, 2.5, 3.5]
    """
    out, offset, last = [], 0.0, 0.0
    for row in rows:
        t = float(row.get("time", last))
        if t < last:
            offset += last
        last = t
        out.append(offset + t)
    return out


def _setting(cfg, classification: bool) -> str:
    if classification:
        return f"{cfg.data.name} {cfg.data.get('ways')}w{cfg.data.get('shots')}s"
    return f"{cfg.data.name} K={cfg.data.get('shots')}"


def _method(ev: dict, cfg) -> str | None:
    """The meta-learner's row of an ``eval.json`` (its other rows are baselines)."""
    results = ev.get("results") or {}
    if cfg is not None and cfg.learner.name in results:
        return cfg.learner.name
    return next((m for m in results if m != "pretrained"), None)


def _reported_step(ev: dict, method: str, cfg) -> str:
    """The inner-step count a test result is shown at: the one the learner trained with when
    it was tested there (MAML's sinusoid protocol: 1), else the largest tested."""
    result = ev["results"][method]
    trained = str(cfg.learner.get("inner_steps")) if cfg is not None else None
    return trained if trained in result else str(max(result, key=int))


def run_summary(path: str | os.PathLike, *, name: str | None = None) -> dict:
    """One run directory at a glance, read from its files only (no checkpoint is opened):

    ``name``, ``path``, ``algorithm``, ``dataset`` (with its episode shape), ``steps`` done
    (the last logged step; a finished run's total) of ``planned``, ``status`` (see
    :meth:`RunDir.status`), ``metric`` (``"accuracy"`` for classification, in %, or ``"query
    MSE"``), ``best_val`` and ``best_step`` (the best validation score in that metric, and its
    step; ``None`` before the first validation), ``test`` (the meta-learner's ``eval.json``
    result at its reported inner-step count: ``mean``, ``ci95``, ``n``, ``step``; ``None`` if
    it was never meta-tested), ``tests`` (every step count's), ``wall_s`` (training seconds over
    every resumed segment, compiling excluded), ``config`` (the resolved config as a dict),
    and ``error`` (why the config could not be read; the other fields are then ``None``).

    Example::

        s = run_summary("runs/demo")
        s["status"], s["steps"], s["planned"], s["best_val"], s["test"]["mean"]
    """
    run = RunDir(path)
    out = {"name": name if name is not None else str(path), "path": str(path),
           "algorithm": None, "dataset": None, "steps": 0, "planned": None,
           "status": run.status(), "metric": None, "best_val": None, "best_step": None,
           "test": None, "tests": {}, "episodes": None, "wall_s": 0.0, "config": None,
           "error": None}
    try:
        cfg = run.config
    except Exception as err:  # noqa: BLE001 - one unreadable run never hides the others
        out["error"] = f"config.json unreadable: {err}".splitlines()[0]
        return out
    classification = _classification(cfg)
    rows = run.metrics()
    try:
        results = run.results() or {}
    except ValueError:
        results = {}
    done = results.get("steps") if out["status"] == "finished" else None
    times = wall_times(rows)
    rule = cfg.rule.get("name")
    algorithm = cfg.learner.name + (f" ({rule})" if rule and rule != "sgd" else "")
    out.update(algorithm=algorithm, dataset=_setting(cfg, classification),
               steps=done if done is not None else (rows[-1]["step"] if rows else 0),
               planned=cfg.train.meta_steps, config=cfg.to_dict(),
               metric="accuracy" if classification else "query MSE",
               wall_s=max(times[-1] if times else 0.0, float(results.get("train_s") or 0.0)))
    val = [(r["val_score"], r["step"]) for r in rows if r.get("val_score") is not None]
    if val:
        score, step = max(val, key=lambda v: (v[0], -v[1]))  # the first of equal scores
        out.update(best_val=score if classification else -score, best_step=step)
    try:
        ev = run.evaluation()
    except ValueError:
        ev = None
    method = _method(ev, cfg) if ev else None
    if method is not None:
        per_step = ev["results"][method]
        reported = _reported_step(ev, method, cfg)
        out["tests"] = {s: dict(r, step=int(s)) for s, r in per_step.items()}
        out["test"] = out["tests"][reported]
        out["episodes"] = ev.get("episodes_sha256")
        out["eval"] = ev
        out["method"] = method
    return out


def list_runs(root: str | os.PathLike = "runs") -> list[dict]:
    """:func:`run_summary` of every run directory under ``root`` (:func:`find_runs`), named by
    their path relative to ``root``, in that order. ``[]`` for a folder without runs; a missing
    ``root`` is a :class:`FileNotFoundError`.

    Example::

        from jmeta.train import format_runs, list_runs
        print(format_runs(list_runs("runs")))
        running = [r["name"] for r in list_runs("runs") if r["status"] == "running"]
    """
    root = Path(root)
    return [run_summary(p, name=p.relative_to(root).as_posix() if p != root else p.name
                        or str(p)) for p in find_runs(root)]


def duration(seconds: float) -> str:
    """A wall time for a table.

    Example:
      >>> duration(42.4), duration(754), duration(3 * 3600 + 1800)
      ('42 s', '12.6 min', '3.5 h')
    """
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _score(metric: str | None, value: float) -> str:
    return f"{value:.2f}" if metric == "accuracy" else f"{value:.3f}"


def _metric_name(metric: str | None) -> str:
    return "accuracy" if metric == "accuracy" else "MSE"


def _val_cell(s: dict) -> str:
    if s["best_val"] is None:
        return _MISSING
    return f"{_metric_name(s['metric'])} {_score(s['metric'], s['best_val'])} @ {s['best_step']}"


def _test_cell(s: dict, r: dict | None = None, with_steps: bool = True) -> str:
    r = s["test"] if r is None else r
    if r is None:
        return _MISSING
    if r.get("nonfinite"):
        cell = f"diverged on {r['nonfinite']}/{r['n']}"
    else:
        cell = (f"{_metric_name(s['metric'])} {_score(s['metric'], r['mean'])} +- "
                f"{_score(s['metric'], r['ci95'])}")
    steps = r["step"]
    return cell + (f", {steps} step{'s' if steps != 1 else ''}" if with_steps else "")


def _steps_cell(s: dict) -> str:
    return f"{s['steps']}/{s['planned'] if s['planned'] is not None else '?'}"


def _table(rows: list[list[str]], header: list[str] | None = None) -> str:
    rows = ([header] if header else []) + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


COLUMNS = ["run", "algorithm", "dataset", "steps", "best validation", "test (95% CI)",
           "wall time", "status"]


def format_runs(runs: list[dict]) -> str:
    """The table of :func:`list_runs`: one line per run, columns :data:`COLUMNS`. Validation
    and test scores name their metric: ``accuracy`` (%, classification) or ``MSE`` (the query
    MSE, regression); ``@ STEP`` is the best validation's step; the test result is the mean
    +- the 95% CI after the inner-step count shown.

    Example:
      >>> row = dict(name="demo", algorithm="maml", dataset="sinusoid K=10", steps=30,
      ...            planned=100, status="interrupted", metric="query MSE", best_val=0.512,
      ...            best_step=20, test=None, wall_s=75.0, error=None)
      >>> print(format_runs([row]))
      run   algorithm  dataset        steps   best validation  test (95% CI)  wall time  status
      demo  maml       sinusoid K=10  30/100  MSE 0.512 @ 20   -              75 s       interrupted
    """
    lines = []
    for s in runs:
        if s.get("error"):
            lines.append([s["name"], _MISSING, _MISSING, _MISSING, _MISSING, _MISSING, _MISSING,
                          f"{s['status']} ({s['error']})"])
            continue
        lines.append([s["name"], s["algorithm"], s["dataset"], _steps_cell(s), _val_cell(s),
                      _test_cell(s), duration(s["wall_s"]), s["status"]])
    return _table(lines, COLUMNS)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def config_differences(configs: list[dict]) -> dict[str, list]:
    """The dotted keys (``learner.inner_lr``) whose values differ between configs (as dicts:
    ``Config.to_dict()``), with each config's value (``None`` where a config lacks the key).

    Example:
      >>> config_differences([{"learner": {"name": "maml", "inner_lr": 0.01}},
      ...                     {"learner": {"name": "maml", "inner_lr": 0.02}}])
      {'learner.inner_lr': [0.01, 0.02]}
    """
    flat = [_flat(c) for c in configs]
    keys = sorted(set().union(*flat))
    return {k: [f.get(k) for f in flat] for k in keys if len({repr(f.get(k)) for f in flat}) > 1}


def _difference(a: dict, b: dict, step: str) -> dict:
    """``b - a`` of two summaries' test results after ``step`` inner steps: paired over the
    test episodes when both kept per-episode scores of the same episodes, else the difference
    of the means with the two CIs combined in quadrature."""
    ra, rb = a["tests"][step], b["tests"][step]
    out = {"step": int(step), "run": b["name"], "against": a["name"]}
    paired = paired_difference(b["eval"], a["eval"], b["method"], a["method"], step, step)
    if paired is not None:
        return dict(out, paired=True, mean=paired["mean"], ci95=paired["ci95"], n=paired["n"],
                    nonfinite=paired["nonfinite"])
    if not a["episodes"] or a["episodes"] != b["episodes"]:
        why = "tested on other episodes: seed, episode count or shape differ"
    else:
        why = "no per-episode scores kept"
    return dict(out, paired=False, why=why, mean=rb["mean"] - ra["mean"],
                ci95=(ra["ci95"] ** 2 + rb["ci95"] ** 2) ** 0.5, n=min(ra["n"], rb["n"]),
                nonfinite=int(bool(ra.get("nonfinite") or rb.get("nonfinite"))))


def compare_runs(paths: list[str | os.PathLike]) -> dict:
    """Two or more runs side by side: ``runs`` (their :func:`run_summary`, named as given),
    ``config`` (:func:`config_differences`: only the keys that differ) and ``differences``:
    for every other run against the first, at each inner-step count both were meta-tested
    after, the difference of the test metric (other minus first) with its 95% CI, ``paired``
    over the test episodes when both runs kept the same ones (the same ``episodes_sha256`` in
    ``eval.json``: same seed, episode count and shape) and their per-episode scores, else the
    difference of the means with the CIs in quadrature (wider).

    Example::

        from jmeta.train import compare_runs, format_comparison
        c = compare_runs(["runs/maml-k5", "runs/metasgd-k5"])
        c["config"]          # {'learner.name': ['maml', 'metasgd'], ...}
        c["differences"][0]  # {'step': 1, 'paired': True, 'mean': -0.2, 'ci95': 0.04, ...}
        print(format_comparison(c))
    """
    if len(paths) < 2:
        raise ValueError("compare_runs needs two or more run directories.")
    runs = []
    for p in paths:
        if not RunDir(p).exists():
            raise FileNotFoundError(f"{p} is not a run directory: {CONFIG_FILE} is missing.")
        runs.append(run_summary(p))
    unreadable = [r for r in runs if r["error"]]
    if unreadable:
        raise ValueError(f"{unreadable[0]['path']}: {unreadable[0]['error']}")
    first = runs[0]
    diffs = []
    for other in runs[1:]:
        if other["metric"] != first["metric"]:
            continue  # accuracy against an MSE: nothing to subtract
        for step in sorted(set(first["tests"]) & set(other["tests"]), key=int):
            diffs.append(_difference(first, other, step))
    return {"runs": runs, "config": config_differences([r["config"] for r in runs]),
            "differences": diffs}


def _value(v) -> str:
    if v is None:
        return _MISSING
    if isinstance(v, tuple):
        return "(" + ", ".join(_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return f"{v:g}" if isinstance(v, float) else str(v)


def format_comparison(comparison: dict) -> str:
    """The text of :func:`compare_runs`: the differing config keys, the results side by side
    (one column per run), then each difference against the first run with its 95% CI, and
    which run is better where the CI excludes zero (higher accuracy, lower query MSE).

    Example::

        print(format_comparison(compare_runs(["runs/a", "runs/b"])))
    """
    runs = comparison["runs"]
    letters = [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(len(runs))]
    names = "\n".join(f"{x}: {r['name']}" for x, r in zip(letters, runs))
    head = [""] + letters
    body = [["config (differing keys)"] + [""] * len(runs)]
    if comparison["config"]:
        body += [[f"  {k}"] + [_value(v) for v in values]
                 for k, values in comparison["config"].items()]
    else:
        body.append(["  (none: the same config)"] + [""] * len(runs))
    body.append(["results"] + [""] * len(runs))
    body.append(["  status"] + [r["status"] for r in runs])
    body.append(["  steps"] + [_steps_cell(r) for r in runs])
    body.append(["  best validation"] + [_val_cell(r) for r in runs])
    steps = sorted(set().union(*(r["tests"] for r in runs)), key=int)
    for s in steps:
        label = f"  test, {s} step{'s' if s != '1' else ''} (95% CI)"
        body.append([label] + [_test_cell(r, r["tests"].get(s), with_steps=False)
                               if s in r["tests"] else _MISSING for r in runs])
    if steps:
        body.append(["  test tasks"] + [str(r["test"]["n"]) if r["test"] else _MISSING
                                        for r in runs])
    body.append(["  wall time"] + [duration(r["wall_s"]) for r in runs])
    text = names + "\n\n" + _table(body, head)
    by_name = {r["name"]: x for x, r in zip(letters, runs)}
    lines = []
    for d in comparison["differences"]:
        a, b = by_name[d["against"]], by_name[d["run"]]
        metric = runs[0]["metric"]
        unit = _metric_name(metric)
        steps_txt = f"{d['step']} step{'s' if d['step'] != 1 else ''}"
        if d["nonfinite"]:
            lines.append(f"  {b} - {a}, {unit} after {steps_txt}: a run diverged on some tasks")
            continue
        diff = (f"{d['mean']:+.4f} +- {d['ci95']:.4f}" if metric != "accuracy"
                else f"{d['mean']:+.2f} +- {d['ci95']:.2f}")
        if abs(d["mean"]) <= d["ci95"]:
            verdict = "no clear difference (the CI holds 0)"
        else:
            higher = d["mean"] > 0
            better = b if higher == (metric == "accuracy") else a
            verdict = f"{better} is better"
        how = (f"paired over the same {d['n']} test tasks" if d["paired"]
               else f"not paired: {d['why']}; CIs in quadrature")
        lines.append(f"  {b} - {a}, {unit} after {steps_txt}: {diff} ({how}); {verdict}")
    if lines:
        text += "\n\ndifferences of the test results (95% CI)\n" + "\n".join(lines)
    elif len(runs) > 1:
        text += ("\n\nno test result to compare: `jmeta eval RUN` meta-tests a run (the same "
                 "seed and --tasks give the same episodes, compared pairwise).")
    return text
