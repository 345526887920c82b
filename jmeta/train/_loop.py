"""The training loop and the meta-test of a run directory."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from jmeta.core._meta import init_state, make_meta_step
from jmeta.core._types import MetaState
from jmeta.core._types import num_tasks as count_tasks
from jmeta.data._samplers import HostSampler
from jmeta.distributed import (
    check_batch,
    global_batch_from_local,
    make_mesh,
    process_slice,
    replicated,
    shard_state,
    task_sharding,
)
from jmeta.train._build import (
    Task,
    base_classes,
    build_learner,
    build_optimizer,
    build_task,
    checkpoint_frozen,
    config_task_map,
    eval_queries,
    test_config,
    test_params,
    test_task,
)
from jmeta.train._checkpoint import (
    STEPS_DIR,
    RunCheckpoints,
    abstract_state,
    local_placement,
    restore_tree,
    save_tree,
)
from jmeta.train._config import (
    METRIC,
    TEXT_TASKS,
    TRANSFER,
    WAYS_FREE,
    Config,
    ConfigError,
    eval_chunk,
    incompatible_fields,
    load_config,
)
from jmeta.train._eval import (
    adaptation_at,
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
_VAL_STREAM, _TEST_STREAM, _BASELINE_STREAM, _BN_STREAM = 1, 2, 3, 4


class NonFiniteLossError(FloatingPointError):
    """The meta-training loss became NaN or infinite."""


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Hardware, software and commit of this process, recorded beside every result. Read once,
    when the process first asks (training asks at its start), so a commit made while a long run
    is going is not credited with that run's result."""
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


def _check_finite(window: list, step: int) -> list:
    """Host copies of the window's metrics; raises naming the first step with a non-finite loss."""
    host = jax.device_get(jax.tree.map(_local, window))
    for i, m in enumerate(host):
        if not all(np.isfinite(float(v)) for v in m.values()):
            first = step - len(host) + 1 + i
            raise NonFiniteLossError(
                f"Non-finite meta-training metrics at step {first} "
                f"({ {k: float(v) for k, v in m.items()} }); lower meta_lr or inner_lr. The last "
                "good checkpoint is kept and was not overwritten."
            )
    return host


def _log_row(window: list, step: int, window_start: float, start: float) -> dict:
    host = _check_finite(window, step)
    now = time.perf_counter()
    row = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    row.update(step=step, steps_per_sec=len(host) / (now - window_start), time=now - start)
    return row


class _Preemption:
    """Turns SIGTERM into a flag the training loop checks after every step."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drops metric rows logged after the checkpoint a run resumes from (atomically)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line)["step"] <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class _NullLog:
    def write(self, text):
        pass

    def flush(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _local(x):
    """A host-usable copy of a replicated (possibly multi-process) array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.addressable_data(0)
    return x


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _host_batches(task: Task, cfg: Config, mesh, start_step: int):
    """Host-sampled task batches from ``start_step`` on. One process: prefetched and placed with
    the task sharding. Several: each draws its own slice from (seed, process_index, step)."""
    sharding = task_sharding(mesh) if mesh.size > 1 else None
    if jax.process_count() == 1:
        sampler = task.host_sampler
        if sharding is not None:
            sampler = _sampler_with(sampler, sharding=sharding)
        with sampler.iterate(start_step) as it:
            yield from it
        return
    begin, end = process_slice(cfg.meta_batch_size, mesh)
    local = _sampler_with(task.host_sampler, num_tasks=end - begin,
                                        process_index=jax.process_index())
    step = start_step
    while True:
        yield global_batch_from_local(local.sample(step), mesh)
        step += 1


def _sampler_with(sampler: HostSampler, **changes) -> HostSampler:
    kwargs = dict(seed=sampler.seed, process_index=sampler.process_index,
                  augment_rotations=sampler.augment_rotations, sharding=sampler.sharding,
                  prefetch=sampler.prefetch, transform=sampler.transform, num_tasks=sampler.num_tasks)
    kwargs.update(changes)
    num_tasks = kwargs.pop("num_tasks")
    return HostSampler(sampler.ds, sampler.ways, sampler.shots, sampler.queries, num_tasks, **kwargs)


def val_steps(cfg: Config, learner) -> int:
    """Inner steps at validation: the training count, or the learner's own (fine-tuning steps of
    a transfer baseline; one for closed-form learners)."""
    if cfg.algorithm in TRANSFER:
        return learner.num_steps
    if cfg.algorithm in METRIC:
        return 1
    return cfg.inner_steps


def validation_score(task: Task, learner, params, cfg: Config, task_map: str) -> float:
    """Higher is better: query accuracy (%) on the val split's classes, or minus the query MSE on
    a disjoint stream of sinusoid tasks, after the training number of inner steps."""
    split = "val" if task.classification else cfg.eval_split
    steps = val_steps(cfg, learner)
    curves = _curves(task, learner, params, _seed_key(cfg, _VAL_STREAM), cfg.val_tasks,
                     steps, split, task_map, only=(steps,))
    value = float(np.mean(curves[:, steps]))
    return value if task.classification else -value


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    progress: bool = True,
    step_hook: Callable[[int, MetaState], MetaState] | None = None,
) -> dict:
    """Meta-trains ``cfg`` into ``run_dir`` and returns the final results.

    Writes ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object per
    ``log_every`` steps), ``checkpoints/steps`` (Orbax: every ``save_every`` steps, the last
    ``keep_checkpoints`` and the best by validation score), ``checkpoints/meta`` (final
    meta-parameters), ``checkpoints/pretrained`` (the sinusoid baseline) and ``results.json``.

    On a directory that already holds a run, it resumes from the newest readable checkpoint and
    continues exactly as if it had never stopped (same episodes, RNG and optimizer state); a
    config that differs in a field that changes the trajectory is a :class:`ConfigError` naming
    the fields. SIGTERM saves a checkpoint at once and returns with ``results["preempted"] = True``
    (the checkpoint is validated only if its step was due a save: validation can outlast a
    scheduler's grace period; the best checkpoint is chosen among validated steps). A
    non-finite loss raises :class:`NonFiniteLossError` and leaves the last good checkpoint.
    ``step_hook(step, state) -> state`` (optional) sees the state after every step.

    Example (a few seconds on a CPU)::

        from jmeta.train import Config, evaluate, format_table, train
        train(Config(num_steps=2000, log_every=500), "runs/quick")
        print(format_table(evaluate("runs/quick")))
    """
    run_dir = Path(run_dir)
    resuming = (run_dir / CONFIG_FILE).exists()
    if resuming:
        saved = load_run_config(run_dir)
        diff = incompatible_fields(saved, cfg)
        if diff:
            fields = "; ".join(f"{k}: run has {a!r}, requested {b!r}" for k, (a, b) in diff.items())
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({fields}). Nothing was changed; "
                "use the run's own config.json, or another --run-dir."
            )
        if (run_dir / RESULTS_FILE).exists():
            done = json.loads((run_dir / RESULTS_FILE).read_text())
            if done.get("steps") == cfg.num_steps:
                return dict(done, already_complete=True)
    environment()  # the commit this process's code comes from, read before the long part
    task = build_task(cfg)  # loads data and checks the episodes: errors before compiling
    if cfg.algorithm in TRANSFER and not cfg.base_classes:
        cfg = cfg.replace(base_classes=base_classes(cfg.replace(augment_rotations=False)))
        task = dataclasses.replace(task, cfg=cfg)
    try:
        mesh = make_mesh(cfg.mesh_data or None, cfg.mesh_model)
        check_batch(cfg.meta_batch_size, mesh)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    sharded = mesh.size > 1
    lead = jax.process_index() == 0  # only process 0 writes logs and results
    run_dir.mkdir(parents=True, exist_ok=True)
    if lead:
        (run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (run_dir / RESULTS_FILE).unlink(missing_ok=True)

    learner = build_learner(cfg, task)
    val_learner = build_learner(test_config(cfg), test_task(task))
    optimizer = build_optimizer(cfg)
    task_map = config_task_map(cfg, learner.family)
    state = init_state(learner, optimizer, _seed_key(cfg))
    if cfg.num_steps == 0:
        return _untrained(cfg, run_dir, state, lead, task_map)
    if sharded:
        state = shard_state(state, mesh)
    else:
        # Committed where a restored state is placed: an uncommitted fresh state lowers to
        # another program than a resumed one, which would then compile its step again.
        state = jax.device_put(state, local_placement())
    step_fn = make_meta_step(
        learner, optimizer, task_map=task_map, chunk_size=cfg.chunk_size or None,
        sampler=task.train_sampler, batch_sharding=task_sharding(mesh) if sharded else None,
        state_sharding=jax.tree.map(lambda x: x.sharding, state) if sharded else None,
    )
    frozen = checkpoint_frozen(cfg)
    ckpts = RunCheckpoints(run_dir / "checkpoints" / STEPS_DIR, keep=cfg.keep_checkpoints,
                           frozen=frozen)
    start_step = 0
    history = []
    if resuming:
        restored, meta = ckpts.restore_latest(abstract_state(
            lambda: init_state(learner, optimizer, _seed_key(cfg)),
            replicated(mesh) if sharded else None), frozen_values=state.params)
        if restored is not None:
            state, start_step = restored, int(_local(restored.step))
            if sharded:
                state = shard_state(jax.tree.map(_local, state), mesh)
            history = list(meta.get("resumed_from", []))
            if lead:
                print(f"jmeta: resuming {run_dir} from step {start_step}", file=sys.stderr)
    if lead:
        _truncate_metrics(run_dir / METRICS_FILE, start_step)
    if start_step:
        history.append(start_step)

    batches = _host_batches(task, cfg, mesh, start_step) if task.host_sampler else None
    args = (next(batches),) if batches else ()
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, *args).compile()
    compile_s = time.perf_counter() - t0

    def save(step, state, window, validate=True):
        _check_finite(window, step)  # never checkpoint a non-finite state
        if not validate:  # a SIGTERM between scheduled saves: keep the work, score nothing
            ckpts.save(step, state, meta={"resumed_from": history})
            return state, None
        params = test_params(task, jax.tree.map(_local, state.params), _seed_key(cfg, _BN_STREAM))
        score = validation_score(task, val_learner, params, cfg, task_map)
        if cfg.bn_mode == "running" and not sharded:
            # Keep the population statistics in the checkpoint (training ignores them: they get
            # zero gradients), so a saved run predicts without its dataset.
            state = state._replace(params=params)
        ckpts.save(step, state, val_score=score, meta={"resumed_from": history})
        return state, score

    start = time.perf_counter()
    window, window_start = [], time.perf_counter()
    preempted = False
    bar = tqdm(total=cfg.num_steps, initial=start_step, disable=not (progress and lead), unit="step",
               dynamic_ncols=True, mininterval=0.5)
    # Simulated CPU devices can deadlock on back-to-back collectives: wait on every step there.
    wait_each_step = sharded and jax.default_backend() == "cpu"
    try:
        with open(run_dir / METRICS_FILE, "a") if lead else _NullLog() as log, _Preemption() as preemption:
            for step in range(start_step + 1, cfg.num_steps + 1):
                if batches:
                    args = (args[0] if step == start_step + 1 else next(batches),)
                state, metrics = compiled(state, *args)
                if wait_each_step:
                    jax.block_until_ready(state)
                if step_hook is not None:
                    state = step_hook(step, state)
                window.append(metrics)
                last = step == cfg.num_steps
                # Read the SIGTERM flag once per step: a signal landing between two reads would
                # otherwise stop the run after a step that was never saved.
                stop = preemption.requested
                scheduled = step % cfg.save_every == 0 or last
                # A SIGTERM saves at once; it validates only a step that was due a save anyway
                # (validation can take minutes, more than a scheduler's grace period).
                saving = scheduled or stop
                if saving:
                    state, row_score = save(step, state, window, validate=scheduled)
                if step % cfg.log_every == 0 or last or stop:
                    row = _log_row(window, step, window_start, start)
                    if saving and row_score is not None:
                        row["val_score"] = row_score
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                    bar.update(len(window))
                    window, window_start = [], time.perf_counter()
                if stop:
                    preempted = True
                    break
    finally:
        if batches:
            batches.close()
        ckpts.wait()
        best_step = ckpts.best_step()
        ckpts.close()
        bar.close()
    jax.block_until_ready(state)
    train_s = time.perf_counter() - start
    if preempted and lead:
        print(f"jmeta: SIGTERM: saved step {int(state.step)} in {run_dir}; rerun to resume",
              file=sys.stderr)
    if preempted:
        return {"preempted": True, "step": int(_local(state.step)), "run_dir": str(run_dir)}

    final = run_dir / "checkpoints" / "meta"
    if lead and final.exists():
        shutil.rmtree(final)
    _sync("final-meta")
    save_tree(final, state.params, frozen=frozen)  # collective across processes

    baseline_s = None
    multi = jax.process_count() > 1
    if cfg.baseline and task.train_sampler is not None and not task.classification and not multi:
        t = time.perf_counter()
        pretrained = train_pretrained(
            task.model, build_optimizer(cfg), task.train_sampler,
            cfg.baseline_steps or cfg.num_steps, _seed_key(cfg, _BASELINE_STREAM),
        )
        jax.block_until_ready(pretrained)
        baseline_s = time.perf_counter() - t
        pre_dir = run_dir / "checkpoints" / "pretrained"
        if pre_dir.exists():
            shutil.rmtree(pre_dir)
        save_tree(pre_dir, pretrained)

    if not lead:
        return {"process_index": jax.process_index(), "steps": cfg.num_steps}
    rows = [json.loads(line) for line in open(run_dir / METRICS_FILE)]
    rows = [r for r in rows if r["step"] > start_step] or rows
    rates = [r["steps_per_sec"] for r in rows[1:]] or [r["steps_per_sec"] for r in rows]
    results = {
        "name": cfg.name,
        "algorithm": cfg.algorithm,
        "steps": cfg.num_steps,
        "final_loss": rows[-1]["loss"],
        "compile_s": compile_s,
        "train_s": train_s,
        "steps_per_sec": float(np.median(rates)),
        "resumed_from": history,
        "best_checkpoint_step": best_step,
        "baseline_train_s": baseline_s,
        "task_map": task_map,
        "mesh": dict(mesh.shape),
        "processes": jax.process_count(),
        "environment": dict(environment()),
    }
    (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


def _untrained(cfg: Config, run_dir: Path, state: MetaState, lead: bool, task_map: str) -> dict:
    """``num_steps=0`` (text baselines): no meta-training; the initial meta-parameters (the
    pretrained encoder, LoRA ``B = 0``) are saved as the run's final parameters."""
    final = run_dir / "checkpoints" / "meta"
    if lead and final.exists():
        shutil.rmtree(final)
    _sync("final-meta")
    save_tree(final, state.params, frozen=checkpoint_frozen(cfg))
    if not lead:
        return {"process_index": jax.process_index(), "steps": 0}
    results = {
        "name": cfg.name, "algorithm": cfg.algorithm, "steps": 0, "final_loss": None,
        "compile_s": 0.0, "train_s": 0.0, "steps_per_sec": 0.0, "resumed_from": [],
        "best_checkpoint_step": None, "baseline_train_s": None, "task_map": task_map,
        "mesh": {}, "processes": jax.process_count(), "environment": dict(environment()),
        "note": "num_steps=0: no meta-training; the initial meta-parameters are evaluated",
    }
    (run_dir / METRICS_FILE).write_text("")  # no meta-training rows
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
    return learner, restore_final(run_dir, cfg, learner)


def restore_final(run_dir: str | Path, cfg: Config, learner):
    """The run's final meta-parameters (``checkpoints/meta``); a frozen pretrained encoder, not
    saved with them, is read again by ``learner.init``."""
    key = jax.random.key(0)
    return restore_tree(Path(run_dir) / "checkpoints" / "meta", jax.eval_shape(learner.init, key),
                        frozen=checkpoint_frozen(cfg), frozen_values=lambda: learner.init(key))


def _curves(task: Task, learner, params, key, n: int, max_steps: int, split: str, task_map: str,
            lr: float | None = None, only: tuple | None = None, fingerprint=None) -> np.ndarray:
    """Per-task test metric after 0..max_steps inner steps, over ``n`` tasks of ``split``.

    Text tasks with ``only`` (the step counts reported) evaluate the query set after those
    counts only (:func:`adaptation_at`; the other columns are NaN): through a transformer the
    query set costs far more than an inner step on the support set. ``fingerprint``, a
    ``hashlib`` object, is updated with every test episode's arrays."""
    metric = _metric(task)
    out = []
    for tasks in task.test_tasks(key, n, split):
        if fingerprint is not None:
            for leaf in jax.tree.leaves(tasks):
                fingerprint.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
        size = count_tasks(tasks)
        chunk = eval_chunk(task.cfg, size)
        # Fewer tasks at once than were gathered: one vmapped chunk after another bounds memory.
        mapping = dict(task_map="map", chunk_size=chunk) if chunk < size else {"task_map": task_map}
        if lr is None and only is not None and task.cfg.task in TEXT_TASKS:
            out.append(adaptation_at(learner, params, tasks, only, loss_fn=metric, **mapping))
        elif lr is None:
            out.append(adaptation_curves(learner, params, tasks, max_steps, loss_fn=metric,
                                         **mapping))
        else:
            out.append(finetune_curves(task.model, params, tasks, max_steps, lr, loss_fn=metric,
                                       **mapping))
    return np.concatenate(out)


@functools.lru_cache(maxsize=32)
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
    checkpoint: str | int = "best",
    ways: int | None = None,
    k_shot: int | None = None,
    queries: int | None = None,
    chunk_size: int | None = None,
) -> dict:
    """Meta-tests a run: ``num_tasks`` new tasks (default ``eval_tasks`` of its config), the test
    metric's mean and 95% CI after each count in ``steps``. Sinusoid runs add the pretrained
    baseline (fine-tuned by SGD with a step size tuned on separate validation tasks);
    classification runs draw their tasks from the classes of ``eval_split`` only.

    ``checkpoint="best"`` (default) tests the checkpoint with the best validation score (query
    accuracy on the validation classes, measured at every save), ``"final"`` the final
    meta-parameters, an int that step's checkpoint. ``ways``, ``k_shot`` and ``queries`` (per
    class) change the test episodes, e.g. to test a ProtoNet trained 60-way on 5-way tasks;
    learners with a ``ways``-sized head cannot change ``ways``. ``chunk_size`` (default: the
    config's ``eval_chunk_size``) is how many tasks are adapted together; it bounds memory and
    leaves the scores as they are.

    Writes ``eval.json`` into the run directory (and, for classification, a copy under
    ``evals/<ways>w<k_shot>s.json``) and returns its content.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    trained = cfg
    if data_dir:
        cfg = cfg.replace(data_dir=str(Path(data_dir).expanduser().absolute()))
    changes = {k: v for k, v in (("eval_ways", ways), ("k_shot", k_shot), ("eval_k_query", queries),
                                 ("eval_chunk_size", chunk_size)) if v is not None}
    if changes.get("eval_ways", cfg.ways) != cfg.ways and cfg.algorithm not in WAYS_FREE:
        raise ConfigError(
            f"{cfg.algorithm} has a {cfg.ways}-way classifier head: it cannot be tested "
            f"{changes['eval_ways']}-way. Metric-based learners ({', '.join(sorted(WAYS_FREE))}) "
            "can; train another run for other ways."
        )
    cfg = test_config(cfg.replace(**changes))
    n = num_tasks or cfg.eval_tasks
    steps = tuple(steps or cfg.eval_steps)
    if n < 2 or any(s < 0 for s in steps):
        raise ConfigError(f"evaluate needs >= 2 tasks and step counts >= 0; got {n} and {steps}.")
    max_steps = max(steps)
    task = build_task(cfg, need_train=False)
    learner, meta = load_meta_params(run_dir, cfg, test_task(task))
    ckpt_step, ckpt_score = _pick_checkpoint(run_dir, trained, checkpoint)
    if ckpt_step is not None:
        meta = _checkpoint_params(run_dir, cfg, learner, ckpt_step)
    meta = test_params(task, meta, _seed_key(cfg, _BN_STREAM))
    task_map = config_task_map(cfg, learner.family)
    test_key = _seed_key(cfg, _TEST_STREAM)

    t = time.perf_counter()
    fingerprint = hashlib.sha256()
    curves = _curves(task, learner, meta, test_key, n, max_steps, cfg.eval_split, task_map,
                     only=steps, fingerprint=fingerprint)
    rows = {cfg.algorithm: {str(s): mean_ci95(curves[:, s]) for s in steps}}
    per_task = {cfg.algorithm: {str(s): _scores(curves[:, s]) for s in steps}}
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
            per_task.setdefault("pretrained", {}).update(
                {str(s): _scores(c[:, s]) for s in steps if tuned[s] == lr})
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
        "checkpoint_step": ckpt_step if ckpt_step is not None else _final_step(run_dir),
        "checkpoint": "best" if checkpoint == "best" and ckpt_step is not None else (
            "final" if ckpt_step is None else "step"),
        "val_score": ckpt_score,
        "train_ways": trained.ways if task.classification else None,
        "train_k_shot": trained.k_shot,
        "eval_s": eval_s,
        "environment": dict(environment()),
        # The test episodes' identity and each one's score: two runs tested on the same
        # episodes (the same fingerprint) can be compared pairwise, episode by episode.
        "episodes_sha256": fingerprint.hexdigest(),
        "per_task": per_task,
    }
    text = _compact_lists(json.dumps(out, indent=2)) + "\n"
    (run_dir / EVAL_FILE).write_text(text)
    if task.classification:
        (run_dir / "evals").mkdir(exist_ok=True)
        (run_dir / "evals" / f"{cfg.ways}w{cfg.k_shot}s.json").write_text(text)
    return out


def _scores(values: np.ndarray) -> list:
    """Per-task scores for eval.json: 6 significant digits (NaN kept as NaN)."""
    return [float(f"{v:.6g}") for v in np.asarray(values, np.float64)]


def _compact_lists(text: str) -> str:
    """JSON from ``json.dumps(..., indent=2)`` with every list of numbers on one line."""

    def one_line(match):
        return "[" + ", ".join(v.strip() for v in match.group(1).split(",")) + "]"

    return re.sub(r"\[\s*((?:-?[\d.eE+-]+|NaN|-?Infinity|null)(?:,\s*(?:-?[\d.eE+-]+|NaN|"
                  r"-?Infinity|null))*)\s*\]", one_line, text)


def paired_difference(a: dict, b: dict, method_a: str, method_b: str, step_a: str,
                      step_b: str) -> dict | None:
    """Mean and 95% CI of the per-episode difference ``a - b`` between two ``eval.json``s
    scored on the same test episodes (equal ``episodes_sha256``), or ``None`` when they were
    not (or one keeps no per-task scores). Pairing removes the episodes' shared difficulty
    from the comparison, so its interval is tighter than the two CIs combined.

    Example:
      >>> a = {"episodes_sha256": "x", "per_task": {"m": {"1": [1.0, 2.0, 4.0]}}}
      >>> b = {"episodes_sha256": "x", "per_task": {"b": {"1": [0.0, 2.0, 3.0]}}}
      >>> r = paired_difference(a, b, "m", "b", "1", "1")
      >>> round(r["mean"], 3), r["n"]
      (0.667, 3)
    """
    if not a.get("episodes_sha256") or a.get("episodes_sha256") != b.get("episodes_sha256"):
        return None
    try:
        x = np.asarray(a["per_task"][method_a][step_a], np.float64)
        y = np.asarray(b["per_task"][method_b][step_b], np.float64)
    except (KeyError, TypeError):
        return None
    if x.shape != y.shape:
        return None
    return mean_ci95(x - y)


def _pick_checkpoint(run_dir: Path, cfg: Config, checkpoint) -> tuple[int | None, float | None]:
    """``(step, val_score)`` of the checkpoint to test, or ``(None, None)`` for the final params."""
    if checkpoint == "final":
        return None, None
    directory = run_dir / "checkpoints" / STEPS_DIR
    if not directory.exists():
        if checkpoint == "best":
            return None, None
        raise ConfigError(f"{run_dir} keeps no step checkpoints; use checkpoint='final'.")
    ckpts = RunCheckpoints(directory, keep=cfg.keep_checkpoints, asynchronous=False)
    try:
        if checkpoint == "best":
            step = ckpts.best_step()
        else:
            step = int(checkpoint)
            if step not in ckpts.steps():
                raise ConfigError(f"{run_dir} has no checkpoint at step {step}; it has {ckpts.steps()}.")
        return (step, ckpts.val_score(step)) if step is not None else (None, None)
    finally:
        ckpts.close()


def _checkpoint_params(run_dir: Path, cfg: Config, learner, step: int):
    optimizer = build_optimizer(cfg)
    ckpts = RunCheckpoints(run_dir / "checkpoints" / STEPS_DIR, keep=cfg.keep_checkpoints,
                           asynchronous=False, frozen=checkpoint_frozen(cfg))
    try:
        state, _ = ckpts.restore(step, abstract_state(
            lambda: init_state(learner, optimizer, _seed_key(cfg))),
            frozen_values=lambda: learner.init(jax.random.key(0)))
    finally:
        ckpts.close()
    return state.params


def _final_step(run_dir: Path) -> int | None:
    results = run_dir / RESULTS_FILE
    return json.loads(results.read_text()).get("steps") if results.exists() else None


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
    if ev.get("checkpoint") == "best":
        lines.append(f"\ncheckpoint: step {ev['checkpoint_step']}, the best on the validation "
                     f"classes ({ev['val_score']:.2f})")
    if ev["num_tasks"] < 600:
        lines.append(f"\nnote: {ev['num_tasks']} test tasks; the full protocol uses at least 600.")
    if ev.get("pretrained_lr"):
        lrs = ", ".join(f"{s} steps: {lr:g}" for s, lr in ev["pretrained_lr"].items())
        lines.append(f"\npretrained: SGD fine-tuning, step size tuned on validation tasks ({lrs})")
    return head + "\n".join(lines)
