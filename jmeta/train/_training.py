"""Meta-training a config into a run directory: checkpoints, resume, preemption, logs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from jmeta.core._meta import init_state, make_meta_step
from jmeta.core._registry import ConfigError
from jmeta.core._types import MetaState
from jmeta.data import HostSampler
from jmeta.distributed import (
    check_batch,
    global_batch_from_local,
    make_mesh,
    process_slice,
    replicated,
    shard_state,
    task_sharding,
)
from jmeta.models import Model
from jmeta.train._build import (
    base_classes,
    build,
    build_optimizer,
    build_task,
    check_config,
    frozen_meta,
    test_config,
    test_params,
    training_batches,
)
from jmeta.train._checkpoint import STEPS_DIR, RunCheckpoints, abstract_state, local_placement, save_tree
from jmeta.train._config import Config, incompatible_fields
from jmeta.train._eval import train_pretrained
from jmeta.train._evaluation import BASELINE_STREAM, BN_STREAM, seed_key, validation_score
from jmeta.train._rundir import (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, RunDir, environment,
                                  records_process)
from jmeta.train._tracking import Tracking


class NonFiniteLossError(FloatingPointError):
    """The meta-training loss became NaN or infinite."""


def _check_finite(window: list, step: int) -> list:
    """Host copies of the window's metrics; raises naming the first step with a non-finite loss."""
    host = jax.device_get(jax.tree.map(_local, window))
    for i, m in enumerate(host):
        if not all(np.isfinite(float(v)) for v in m.values()):
            first = step - len(host) + 1 + i
            raise NonFiniteLossError(
                f"Non-finite meta-training metrics at step {first} "
                f"({ {k: float(v) for k, v in m.items()} }); lower optimizer.lr or learner.inner_lr. The last "
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


def time_left(done: int, elapsed: float, val_times: Sequence[float], step: int, meta_steps: int,
              save_every: int) -> str:
    """The time a run still needs, validations included: the remaining steps at this process's
    rate of training alone, plus the validations still due at their mean duration so far.

    Example (100 of 1000 steps done in 60 s, 20 of them validating once; saves every 250):
      >>> time_left(100, 60.0, [20.0], 100, 1000, 250)
      '07:20'
    """
    train_s = max(elapsed - sum(val_times), 0.0)
    due = meta_steps // save_every - step // save_every + (meta_steps % save_every != 0)
    val_s = (sum(val_times) / len(val_times)) if val_times else 0.0
    total = (meta_steps - step) * train_s / max(done, 1) + due * val_s
    return tqdm.format_interval(total)


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


def _host_batches(host: HostSampler, cfg: Config, mesh, start_step: int):
    """Host-sampled task batches from ``start_step`` on. One process: prefetched and placed with
    the task sharding. Several: each draws its own slice from (seed, process_index, step)."""
    sharding = task_sharding(mesh) if mesh.size > 1 else None
    if jax.process_count() == 1:
        sampler = host
        if sharding is not None:
            sampler = _sampler_with(sampler, sharding=sharding)
        with sampler.iterate(start_step) as it:
            yield from it
        return
    begin, end = process_slice(cfg.train.meta_batch_size, mesh)
    local = _sampler_with(host, num_tasks=end - begin,
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


@records_process  # process.json while it trains: RunDir.status() tells running runs
def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    progress: bool = True,
    step_hook: Callable[[int, MetaState], MetaState] | None = None,
    tracker: Tracking | None = None,
) -> dict:
    """Meta-trains ``cfg`` into ``run_dir`` and returns the final results.

    Writes ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object per
    ``train.log_every`` steps), ``checkpoints/steps`` (Orbax: every ``train.save_every`` steps,
    the last ``train.keep_checkpoints`` and the best by validation score), ``checkpoints/meta``
    (final meta-parameters), ``checkpoints/pretrained`` (the regression baseline) and
    ``results.json`` (see :class:`jmeta.train.RunDir`).

    On a directory that already holds a run, it resumes from the newest readable checkpoint and
    continues exactly as if it had never stopped (same episodes, RNG and optimizer state); a
    config that differs in a field that changes the trajectory is a :class:`ConfigError` naming
    the fields. SIGTERM saves a checkpoint at once and returns with ``results["preempted"] = True``
    (the checkpoint is validated only if its step was due a save: validation can outlast a
    scheduler's grace period; the best checkpoint is chosen among validated steps). A
    non-finite loss raises :class:`NonFiniteLossError` and leaves the last good checkpoint.
    ``step_hook(step, state) -> state`` (optional) sees the state after every step.
    ``tracker`` (optional, e.g. :func:`jmeta.train.open_tracking`; process 0 only) is started
    with the config and the environment and gets every ``metrics.jsonl`` row; the caller logs
    the artifacts and closes it (``jmeta train`` does, after the meta-test).

    Example (a few seconds on a CPU)::

        from jmeta.train import Config, evaluate, format_table, train
        train(Config(train=dict(meta_steps=2000, log_every=500)), "runs/quick")
        print(format_table(evaluate("runs/quick")))
    """
    run_dir = Path(run_dir)
    cfg = check_config(cfg)  # every key, value and component: errors before any data is read
    resuming = (run_dir / CONFIG_FILE).exists()
    if resuming:
        saved = RunDir(run_dir).config
        diff = incompatible_fields(saved, cfg)
        if diff:
            fields = "; ".join(f"{k}: run has {a!r}, requested {b!r}" for k, (a, b) in diff.items())
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({fields}). Nothing was changed; "
                "use the run's own config.json, or another --run-dir."
            )
        if (run_dir / RESULTS_FILE).exists():
            done = json.loads((run_dir / RESULTS_FILE).read_text())
            if done.get("steps") == cfg.train.meta_steps:
                return dict(done, already_complete=True)
    environment()  # the commit this process's code comes from, read before the long part
    task = build_task(cfg)  # loads data and checks the episodes: errors before compiling
    setup = build(cfg, task)
    if setup.learner.class_batches is not None and not cfg.data.base_classes:
        # Recorded, so that the run's head can be rebuilt without its training split.
        n = base_classes(cfg.replace(data=dict(augment_rotations=False)), task)
        cfg = cfg.replace(data=dict(base_classes=n))
        task = dataclasses.replace(task, cfg=cfg)
        setup = build(cfg, task)
    try:
        mesh = make_mesh(cfg.train.mesh_data or None, cfg.train.mesh_model)
        check_batch(cfg.train.meta_batch_size, mesh)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    sharded = mesh.size > 1
    lead = jax.process_index() == 0  # only process 0 writes logs and results
    if tracker is None or not lead:
        tracker = Tracking()  # tracks nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    if lead:
        (run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (run_dir / RESULTS_FILE).unlink(missing_ok=True)

    learner, task_map = setup.learner, setup.task_map
    val_setup = build(test_config(cfg), task, test=True)
    optimizer = build_optimizer(cfg, setup.model)
    frozen = frozen_meta(setup.model)
    state = init_state(learner, optimizer, seed_key(cfg))
    if cfg.train.meta_steps == 0:
        _start_tracking(tracker, cfg, run_dir, 0)
        return _untrained(cfg, run_dir, state, lead, task_map, frozen)
    train_sampler, host = training_batches(task, learner)
    if sharded:
        state = shard_state(state, mesh)
    else:
        # Committed where a restored state is placed: an uncommitted fresh state lowers to
        # another program than a resumed one, which would then compile its step again.
        state = jax.device_put(state, local_placement())
    step_fn = make_meta_step(
        learner, optimizer, task_map=task_map, chunk_size=cfg.train.chunk_size or None,
        sampler=train_sampler, batch_sharding=task_sharding(mesh) if sharded else None,
        state_sharding=jax.tree.map(lambda x: x.sharding, state) if sharded else None,
    )
    ckpts = RunCheckpoints(run_dir / "checkpoints" / STEPS_DIR, keep=cfg.train.keep_checkpoints,
                           frozen=frozen)
    start_step = 0
    history = []
    if resuming:
        restored, meta = ckpts.restore_latest(abstract_state(
            lambda: init_state(learner, optimizer, seed_key(cfg)),
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
    _start_tracking(tracker, cfg, run_dir, start_step)  # its own thread: compiling goes on
    if start_step:
        history.append(start_step)

    batches = _host_batches(host, cfg, mesh, start_step) if host is not None else None
    args = (next(batches),) if batches else ()
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    tracker.wait_ready()  # the trackers opened their runs while this compiled; now steps alone

    def save(step, state, window, validate=True):
        _check_finite(window, step)  # never checkpoint a non-finite state
        if not validate:  # a SIGTERM between scheduled saves: keep the work, score nothing
            ckpts.save(step, state, meta={"resumed_from": history})
            return state, None
        local = jax.tree.map(_local, state.params)
        params = test_params(cfg, task, local, seed_key(cfg, BN_STREAM))
        t_val = time.perf_counter()
        score = validation_score(task, val_setup, params, cfg)
        val_times.append(time.perf_counter() - t_val)
        if params is not local and not sharded:
            # Keep the population statistics in the checkpoint (training ignores them: they get
            # zero gradients), so a saved run predicts without its dataset.
            state = state._replace(params=params)
        ckpts.save(step, state, val_score=score, meta={"resumed_from": history})
        return state, score

    start = time.perf_counter()
    val_times: list[float] = []  # seconds of each validation of this process
    last_val = ""
    window, window_start = [], time.perf_counter()
    preempted = False
    bar = tqdm(total=cfg.train.meta_steps, initial=start_step, disable=not (progress and lead), unit="step",
               dynamic_ncols=True, mininterval=0.5)
    # Simulated CPU devices can deadlock on back-to-back collectives: wait on every step there.
    wait_each_step = sharded and jax.default_backend() == "cpu"
    try:
        with open(run_dir / METRICS_FILE, "a") if lead else _NullLog() as log, _Preemption() as preemption:
            for step in range(start_step + 1, cfg.train.meta_steps + 1):
                if batches:
                    args = (args[0] if step == start_step + 1 else next(batches),)
                state, metrics = compiled(state, *args)
                if wait_each_step:
                    jax.block_until_ready(state)
                if step_hook is not None:
                    state = step_hook(step, state)
                window.append(metrics)
                last = step == cfg.train.meta_steps
                # Read the SIGTERM flag once per step: a signal landing between two reads would
                # otherwise stop the run after a step that was never saved.
                stop = preemption.requested
                scheduled = step % cfg.train.save_every == 0 or last
                # A SIGTERM saves at once; it validates only a step that was due a save anyway
                # (validation can take minutes, more than a scheduler's grace period).
                saving = scheduled or stop
                if saving:
                    state, row_score = save(step, state, window, validate=scheduled)
                if step % cfg.train.log_every == 0 or last or stop:
                    row = _log_row(window, step, window_start, start)
                    if saving and row_score is not None:
                        row["val_score"] = row_score
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    tracker.log_metrics(step, {k: v for k, v in row.items() if k != "step"})
                    if saving and row_score is not None:
                        last_val = (f"{row_score:.2f}" if task.classification
                                    else f"mse {-row_score:.3g}")
                    left = time_left(step - start_step, time.perf_counter() - start, val_times,
                                     step, cfg.train.meta_steps, cfg.train.save_every)
                    bar.set_postfix_str(f"loss={row['loss']:.4f}" + (
                        f", val={last_val}" if last_val else "") + f", left~{left}",
                        refresh=False)
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
    baseline = isinstance(setup.train_model, Model) and train_sampler is not None
    if cfg.train.baseline and baseline and not task.classification and not multi:
        t = time.perf_counter()
        pretrained = train_pretrained(
            setup.train_model, build_optimizer(cfg), train_sampler,
            cfg.train.baseline_steps or cfg.train.meta_steps, seed_key(cfg, BASELINE_STREAM),
        )
        jax.block_until_ready(pretrained)
        baseline_s = time.perf_counter() - t
        pre_dir = run_dir / "checkpoints" / "pretrained"
        if pre_dir.exists():
            shutil.rmtree(pre_dir)
        save_tree(pre_dir, pretrained)

    if not lead:
        return {"process_index": jax.process_index(), "steps": cfg.train.meta_steps}
    rows = [json.loads(line) for line in open(run_dir / METRICS_FILE)]
    rows = [r for r in rows if r["step"] > start_step] or rows
    rates = [r["steps_per_sec"] for r in rows[1:]] or [r["steps_per_sec"] for r in rows]
    results = {
        "name": cfg.name,
        "algorithm": cfg.learner.name,
        "steps": cfg.train.meta_steps,
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


def _start_tracking(tracker: Tracking, cfg: Config, run_dir: Path, start_step: int) -> None:
    tracker.start(run_dir, name=cfg.name, resume_step=start_step)
    tracker.log_params(cfg.flat())
    tracker.set_tags(environment())


def _untrained(cfg: Config, run_dir: Path, state: MetaState, lead: bool, task_map: str,
               frozen) -> dict:
    """``train.meta_steps=0`` (text baselines): no meta-training; the initial meta-parameters
    (the pretrained encoder, LoRA ``B = 0``) are saved as the run's final parameters."""
    final = run_dir / "checkpoints" / "meta"
    if lead and final.exists():
        shutil.rmtree(final)
    _sync("final-meta")
    save_tree(final, state.params, frozen=frozen)
    if not lead:
        return {"process_index": jax.process_index(), "steps": 0}
    results = {
        "name": cfg.name, "algorithm": cfg.learner.name, "steps": 0, "final_loss": None,
        "compile_s": 0.0, "train_s": 0.0, "steps_per_sec": 0.0, "resumed_from": [],
        "best_checkpoint_step": None, "baseline_train_s": None, "task_map": task_map,
        "mesh": {}, "processes": jax.process_count(), "environment": dict(environment()),
        "note": "train.meta_steps=0: no meta-training; the initial meta-parameters are evaluated",
    }
    (run_dir / METRICS_FILE).write_text("")  # no meta-training rows
    (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results
