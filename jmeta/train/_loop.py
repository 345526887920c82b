"""The training loop and the meta-test of a run directory."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from jmeta.core._meta import default_task_map, init_state, make_meta_step
from jmeta.train._build import Task, build_learner, build_optimizer, build_task, eval_queries
from jmeta.train._checkpoint import restore_tree, save_tree
from jmeta.train._config import Config, ConfigError, load_config
from jmeta.train._eval import (
    adaptation_curves,
    finetune_curves,
    mean_ci95,
    train_pretrained,
    tune_finetune_lr,
)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
EVAL_FILE = "eval.json"

# Independent key streams derived from the seed.
_VAL_STREAM, _TEST_STREAM, _BASELINE_STREAM = 1, 2, 3


class NonFiniteLossError(FloatingPointError):
    """The meta-training loss became NaN or infinite."""


def environment() -> dict:
    """Hardware, software and commit of this process, recorded beside every result."""
    dev = jax.devices()[0]
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
            text=True, timeout=5,
        ).stdout.strip()
        commit = (commit + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "backend": jax.default_backend(),
        "device": dev.device_kind,
        "num_devices": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "commit": commit,
    }


def _seed_key(cfg: Config, stream: int = 0):
    key = jax.random.key(cfg.seed)
    return key if stream == 0 else jax.random.fold_in(key, stream)


def _prepare_run_dir(run_dir: Path) -> None:
    if (run_dir / CONFIG_FILE).exists():
        raise FileExistsError(
            f"{run_dir} already holds a run ({CONFIG_FILE} exists); nothing was changed. "
            "Choose another --run-dir, or delete that directory to start over."
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def _log_row(window: list, step: int, window_start: float, start: float) -> dict:
    host = jax.device_get(window)
    now = time.perf_counter()
    row = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    if not all(np.isfinite(v) for v in row.values()):
        bad = [i for i, m in enumerate(host) if not np.isfinite(float(m["loss"]))]
        first = step - len(host) + 1 + (bad[0] if bad else 0)
        raise NonFiniteLossError(
            f"Non-finite meta-training loss at step {first} ({row}); lower meta_lr or "
            "inner_lr. No checkpoint was written for this run."
        )
    row.update(step=step, steps_per_sec=len(host) / (now - window_start), time=now - start)
    return row


def train(cfg: Config, run_dir: str | Path, *, progress: bool = True) -> dict:
    """Meta-trains ``cfg`` into ``run_dir`` and returns the final results.

    Writes ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object per
    ``log_every`` steps), ``checkpoints/meta`` (final meta-parameters), ``checkpoints/pretrained``
    (the baseline, if enabled) and ``results.json``.

    Example (a few seconds on a CPU)::

        from jmeta.train import Config, evaluate, format_table, train
        train(Config(num_steps=2000, log_every=500), "runs/quick")
        print(format_table(evaluate("runs/quick")))
    """
    run_dir = Path(run_dir)
    if (run_dir / CONFIG_FILE).exists():
        _prepare_run_dir(run_dir)  # raises before any loading or compiling
    task = build_task(cfg)  # loads data and checks the episodes: errors before compiling
    _prepare_run_dir(run_dir)
    (run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    learner = build_learner(cfg, task)
    optimizer = build_optimizer(cfg)
    task_map = default_task_map(learner.family) if cfg.task_map == "auto" else cfg.task_map
    step_fn = make_meta_step(
        learner, optimizer, task_map=task_map, chunk_size=cfg.chunk_size or None,
        sampler=task.train_sampler,
    )
    state = init_state(learner, optimizer, _seed_key(cfg))

    batches = task.host_sampler.iterate(0) if task.host_sampler else None
    args = (next(batches),) if batches else ()
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, *args).compile()
    compile_s = time.perf_counter() - t0

    start = time.perf_counter()
    window, window_start = [], time.perf_counter()
    bar = tqdm(total=cfg.num_steps, disable=not progress, unit="step", dynamic_ncols=True, mininterval=0.5)
    try:
        with open(run_dir / METRICS_FILE, "w") as log:
            for step in range(1, cfg.num_steps + 1):
                if batches:
                    args = (args[0] if step == 1 else next(batches),)
                state, metrics = compiled(state, *args)
                window.append(metrics)
                if step % cfg.log_every == 0 or step == cfg.num_steps:
                    row = _log_row(window, step, window_start, start)
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                    bar.update(len(window))
                    window, window_start = [], time.perf_counter()
    finally:
        if batches:
            batches.close()
    jax.block_until_ready(state)
    train_s = time.perf_counter() - start
    bar.close()
    save_tree(run_dir / "checkpoints" / "meta", state.params)

    baseline_s = None
    if cfg.baseline and task.train_sampler is not None and not task.classification:
        t = time.perf_counter()
        pretrained = train_pretrained(
            task.model, build_optimizer(cfg), task.train_sampler,
            cfg.baseline_steps or cfg.num_steps, _seed_key(cfg, _BASELINE_STREAM),
        )
        jax.block_until_ready(pretrained)
        baseline_s = time.perf_counter() - t
        save_tree(run_dir / "checkpoints" / "pretrained", pretrained)

    steady = [json.loads(line) for line in open(run_dir / METRICS_FILE)]
    rates = [r["steps_per_sec"] for r in steady[1:]] or [r["steps_per_sec"] for r in steady]
    results = {
        "name": cfg.name,
        "algorithm": cfg.algorithm,
        "steps": cfg.num_steps,
        "final_loss": steady[-1]["loss"],
        "compile_s": compile_s,
        "train_s": train_s,
        "steps_per_sec": float(np.median(rates)),
        "baseline_train_s": baseline_s,
        "task_map": task_map,
        "environment": environment(),
    }
    (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


def load_run_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing.")
    return load_config(path)


def load_meta_params(run_dir: str | Path, cfg: Config | None = None, task: Task | None = None):
    cfg = cfg or load_run_config(run_dir)
    task = task or build_task(cfg, need_train=False)
    learner = build_learner(cfg, task)
    abstract = jax.eval_shape(learner.init, jax.random.key(0))
    return learner, restore_tree(Path(run_dir) / "checkpoints" / "meta", abstract)


def _curves(task: Task, learner, params, key, n: int, max_steps: int, split: str, task_map: str,
            lr: float | None = None) -> np.ndarray:
    """Per-task test metric after 0..max_steps inner steps, over ``n`` tasks of ``split``."""
    metric = _metric(task)
    out = []
    for tasks in task.test_tasks(key, n, split):
        if lr is None:
            out.append(adaptation_curves(learner, params, tasks, max_steps, loss_fn=metric,
                                         task_map=task_map))
        else:
            out.append(finetune_curves(task.model, params, tasks, max_steps, lr, loss_fn=metric,
                                       task_map=task_map))
    return np.concatenate(out)


def _metric(task: Task):
    if task.classification:
        return lambda logits, y: 100.0 * task.metric_fn(logits, y)["accuracy"]
    return task.loss_fn


def evaluate(
    run_dir: str | Path,
    *,
    num_tasks: int | None = None,
    steps: tuple | None = None,
    baseline: bool = True,
    data_dir: str | None = None,
) -> dict:
    """Meta-tests a run: ``num_tasks`` new tasks (default ``eval_tasks`` of its config), the test
    metric's mean and 95% CI after each count in ``steps``. Sinusoid runs add the pretrained
    baseline (fine-tuned by SGD with a step size tuned on separate validation tasks);
    classification runs draw their tasks from the classes of ``eval_split`` only.

    Writes ``eval.json`` into the run directory and returns its content.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if data_dir:
        cfg = cfg.replace(data_dir=str(Path(data_dir).expanduser().absolute()))
    n = num_tasks or cfg.eval_tasks
    steps = tuple(steps or cfg.eval_steps)
    if n < 2 or any(s < 0 for s in steps):
        raise ConfigError(f"evaluate needs >= 2 tasks and step counts >= 0; got {n} and {steps}.")
    max_steps = max(steps)
    task = build_task(cfg, need_train=False)
    learner, meta = load_meta_params(run_dir, cfg, task)
    task_map = default_task_map(learner.family) if cfg.task_map == "auto" else cfg.task_map
    test_key = _seed_key(cfg, _TEST_STREAM)

    t = time.perf_counter()
    curves = _curves(task, learner, meta, test_key, n, max_steps, cfg.eval_split, task_map)
    rows = {cfg.algorithm: {str(s): mean_ci95(curves[:, s]) for s in steps}}
    eval_s = time.perf_counter() - t

    tuned = None
    pre_dir = run_dir / "checkpoints" / "pretrained"
    if baseline and pre_dir.exists():
        model = task.model
        pre = restore_tree(pre_dir, jax.eval_shape(model.init, jax.random.key(0)))
        val = next(task.test_tasks(_seed_key(cfg, _VAL_STREAM), cfg.val_tasks, cfg.eval_split))
        tuned = tune_finetune_lr(model, pre, val, max_steps, cfg.baseline_lrs, steps, task_map=task_map)
        row = {}
        for lr in sorted(set(tuned.values())):
            c = _curves(task, None, pre, test_key, n, max_steps, cfg.eval_split, task_map, lr=lr)
            row.update({str(s): mean_ci95(c[:, s]) for s in steps if tuned[s] == lr})
        rows["pretrained"] = {str(s): row[str(s)] for s in steps}

    out = {
        "name": cfg.name,
        "task": cfg.task,
        "k_shot": cfg.k_shot,
        "num_tasks": n,
        "query_points": eval_queries(cfg),
        "ways": cfg.ways if task.classification else None,
        "split": cfg.eval_split if task.classification else None,
        "steps": list(steps),
        "metric": task.metric,
        "results": rows,
        "pretrained_lr": {str(k): v for k, v in tuned.items()} if tuned else None,
        "eval_s": eval_s,
        "environment": environment(),
    }
    (run_dir / EVAL_FILE).write_text(json.dumps(out, indent=2) + "\n")
    return out


def _cell(r: dict) -> str:
    if r.get("nonfinite"):
        return f"diverged on {r['nonfinite']}/{r['n']} tasks"
    return f"{r['mean']:.3f} +- {r['ci95']:.3f}"


def format_table(ev: dict) -> str:
    """A Markdown table of an ``eval.json``: one row per method, one column per step count."""
    steps = ev["steps"]
    if ev.get("ways"):
        head = (
            f"{ev['task']} {ev['ways']}-way {ev['k_shot']}-shot, {ev['split']} classes: {ev['metric']} "
            f"on {ev['num_tasks']} tasks ({ev['query_points']} queries per class), mean +- 95% CI\n\n"
        )
    else:
        head = (
            f"{ev['task']} K={ev['k_shot']}: {ev['metric']} on {ev['num_tasks']} new tasks "
            f"({ev['query_points']} query points each), mean +- 95% CI\n\n"
        )
    cols = ["method"] + [f"{s} step{'s' if s != 1 else ''}" for s in steps]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for method, res in ev["results"].items():
        cells = [_cell(res[str(s)]) for s in steps]
        lines.append("| " + " | ".join([method] + cells) + " |")
    if ev["num_tasks"] < 600:
        lines.append(f"\nnote: {ev['num_tasks']} test tasks; the full protocol uses at least 600.")
    if ev.get("pretrained_lr"):
        lrs = ", ".join(f"{s} steps: {lr:g}" for s, lr in ev["pretrained_lr"].items())
        lines.append(f"\npretrained: SGD fine-tuning, step size tuned on validation tasks ({lrs})")
    return head + "\n".join(lines)
