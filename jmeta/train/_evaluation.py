"""Validation during training and the meta-test of a run directory."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path

import jax
import numpy as np

from jmeta.core._registry import ConfigError
from jmeta.core._types import num_tasks as count_tasks
from jmeta.train._build import (
    Setup,
    Task,
    build,
    build_task,
    check_config,
    eval_chunk,
    eval_queries,
    test_config,
    test_params,
)
from jmeta.train._checkpoint import restore_tree
from jmeta.train._config import Config
from jmeta.train._eval import (
    EmbeddingCache,
    adaptation_at,
    adaptation_curves,
    finetune_curves,
    mean_ci95,
    tune_finetune_lr,
)
from jmeta.train._reporting import compact_lists, scores
from jmeta.train._rundir import EVAL_FILE, RunDir, environment

# Independent key streams derived from the seed.
VAL_STREAM, TEST_STREAM, BASELINE_STREAM, BN_STREAM = 1, 2, 3, 4


def seed_key(cfg: Config, stream: int = 0):
    """The PRNG key of one of a run's independent streams (0: training)."""
    key = jax.random.key(cfg.train.seed)
    return key if stream == 0 else jax.random.fold_in(key, stream)


@functools.lru_cache(maxsize=32)
def _metric(task: Task):
    if task.classification:
        return lambda logits, y: 100.0 * task.metric_fn(logits, y)["accuracy"]
    return task.loss_fn


def curves(task: Task, learner, params, key, n: int, max_steps: int, split: str, task_map: str,
           *, lr: float | None = None, model=None, only: tuple | None = None,
           fingerprint=None, embed_once: bool = True) -> np.ndarray:
    """Per-task test metric after 0..max_steps inner steps, over ``n`` tasks of ``split``.

    A dataset with ``sparse_eval`` (text), given ``only`` (the step counts reported), evaluates
    the query set after those counts only (:func:`adaptation_at`; the other columns are NaN).
    With ``lr``, plain SGD fine-tuning of ``model`` from ``params`` (the regression baseline).
    ``fingerprint``, a ``hashlib`` object, is updated with every test episode's arrays.
    ``embed_once`` (default) runs a learner with ``embedded`` on embeddings of the distinct test
    inputs (:class:`jmeta.train.EmbeddingCache`); the scores are the same."""
    metric = _metric(task)
    out = []
    # A learner that only embeds its inputs (ProtoNets on BERT) runs on embeddings, each
    # distinct test input embedded once (the same texts recur across episodes).
    cache = (EmbeddingCache(learner, params) if embed_once and lr is None and learner is not None
             and learner.embedded is not None else None)
    if cache is not None:
        learner, params = cache.learner, cache.learner.init(jax.random.key(0))
    for tasks in task.test_tasks(key, n, split):
        if fingerprint is not None:
            for leaf in jax.tree.leaves(tasks):
                fingerprint.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
        if cache is not None:
            tasks = cache.tasks(tasks)
        size = count_tasks(tasks)
        chunk = eval_chunk(task, size)
        # Fewer tasks at once than were gathered: one vmapped chunk after another bounds memory.
        mapping = dict(task_map="map", chunk_size=chunk) if chunk < size else {"task_map": task_map}
        if lr is None and only is not None and getattr(task.data, "sparse_eval", False):
            out.append(adaptation_at(learner, params, tasks, only, loss_fn=metric, **mapping))
        elif lr is None:
            out.append(adaptation_curves(learner, params, tasks, max_steps, loss_fn=metric,
                                         **mapping))
        else:
            out.append(finetune_curves(model, params, tasks, max_steps, lr, loss_fn=metric,
                                       **mapping))
    return np.concatenate(out)


def validation_score(task: Task, setup: Setup, params, cfg: Config) -> float:
    """Higher is better: query accuracy (%) on the val split's classes, or minus the query MSE on
    a disjoint stream of generated tasks, after the training number of inner steps (one for a
    closed-form learner)."""
    split = "val" if task.classification else cfg.eval.split
    steps = max(setup.learner.inner_steps, 1)
    c = curves(task, setup.learner, params, seed_key(cfg, VAL_STREAM), cfg.eval.val_tasks,
               steps, split, setup.task_map, only=(steps,))
    value = float(np.mean(c[:, steps]))
    return value if task.classification else -value


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
    embed_once: bool = True,
) -> dict:
    """Meta-tests a run: ``num_tasks`` new tasks (default ``eval.tasks`` of its config), the test
    metric's mean and 95% CI after each count in ``steps``. Regression runs add the pretrained
    baseline (fine-tuned by SGD with a step size tuned on separate validation tasks);
    classification runs draw their tasks from the classes of ``eval.split`` only.

    ``checkpoint="best"`` (default) tests the checkpoint with the best validation score (query
    accuracy on the validation classes, measured at every save), ``"final"`` the final
    meta-parameters, an int that step's checkpoint. ``ways``, ``k_shot`` and ``queries`` (per
    class) change the test episodes, e.g. to test a ProtoNet trained 60-way on 5-way tasks;
    learners with a ``ways``-sized head cannot change ``ways``. ``chunk_size`` (default: the
    config's ``eval.chunk_size``) is how many tasks are adapted together; it bounds memory and
    leaves the scores as they are. ``embed_once=False`` embeds every episode's inputs anew even
    for a learner that could embed each distinct input once (ProtoNets on the BERT encoder;
    :class:`jmeta.train.EmbeddingCache`): the same scores, slower; for measuring the two.

    Writes ``eval.json`` into the run directory (and, for classification, a copy under
    ``evals/<ways>w<k_shot>s.json``) and returns its content.
    """
    run = RunDir(run_dir)
    cfg = trained = run.config
    changes = {"eval": {k: v for k, v in (("ways", ways), ("queries", queries),
                                          ("chunk_size", chunk_size)) if v is not None},
               "data": {"shots": k_shot} if k_shot is not None else {}}
    if data_dir and "data_dir" in cfg.data:  # a task family reads no files
        changes["data"]["data_dir"] = str(Path(data_dir).expanduser().absolute())
    cfg = check_config(cfg.replace(**{k: v for k, v in changes.items() if v}))
    cfg = test_config(cfg)
    n = num_tasks or cfg.eval.tasks
    steps = tuple(steps or cfg.eval.steps)
    if n < 2 or any(s < 0 for s in steps):
        raise ConfigError(f"evaluate needs >= 2 tasks and step counts >= 0; got {n} and {steps}.")
    max_steps = max(steps)
    task = build_task(cfg, need_train=False)
    setup = build(cfg, task, test=True)
    picked, ckpt_score = run.pick(checkpoint)
    meta, ckpt_step = run.params(checkpoint, cfg=cfg, task=task)
    meta = test_params(cfg, task, meta, seed_key(cfg, BN_STREAM))
    test_key = seed_key(cfg, TEST_STREAM)
    name = cfg.learner.name

    t = time.perf_counter()
    fingerprint = hashlib.sha256()
    c = curves(task, setup.learner, meta, test_key, n, max_steps, cfg.eval.split,
               setup.task_map, only=steps, fingerprint=fingerprint, embed_once=embed_once)
    rows = {name: {str(s): mean_ci95(c[:, s]) for s in steps}}
    per_task = {name: {str(s): scores(c[:, s]) for s in steps}}
    eval_s = time.perf_counter() - t

    tuned = None
    pre_dir = run.checkpoints / "pretrained"
    if baseline and pre_dir.exists():
        model = setup.train_model
        pre = restore_tree(pre_dir, jax.eval_shape(model.init, jax.random.key(0)))
        val = next(task.test_tasks(seed_key(cfg, VAL_STREAM), cfg.eval.val_tasks, cfg.eval.split))
        tuned = tune_finetune_lr(model, pre, val, max_steps, cfg.eval.baseline_lrs, steps,
                                 task_map=setup.task_map)
        row = {}
        for lr in sorted(set(tuned.values())):
            b = curves(task, None, pre, test_key, n, max_steps, cfg.eval.split, setup.task_map,
                       lr=lr, model=model)
            row.update({str(s): mean_ci95(b[:, s]) for s in steps if tuned[s] == lr})
            per_task.setdefault("pretrained", {}).update(
                {str(s): scores(b[:, s]) for s in steps if tuned[s] == lr})
        rows["pretrained"] = {str(s): row[str(s)] for s in steps}

    classification = task.classification
    out = {
        "name": cfg.name,
        "task": cfg.data.name,
        "k_shot": cfg.data.shots,
        "num_tasks": n,
        "query_points": eval_queries(cfg, task.data),
        "ways": cfg.data.ways if classification else None,
        "split": cfg.eval.split if classification else None,
        "steps": list(steps),
        "metric": task.metric,
        "results": rows,
        "pretrained_lr": {str(k): v for k, v in tuned.items()} if tuned else None,
        "checkpoint_step": ckpt_step,
        "checkpoint": "best" if checkpoint == "best" and picked is not None else (
            "final" if picked is None else "step"),
        "val_score": ckpt_score,
        "train_ways": trained.data.ways if classification else None,
        "train_k_shot": trained.data.shots,
        "eval_s": eval_s,
        "environment": dict(environment()),
        # The test episodes' identity and each one's score: two runs tested on the same
        # episodes (the same fingerprint) can be compared pairwise, episode by episode.
        "episodes_sha256": fingerprint.hexdigest(),
        "per_task": per_task,
    }
    text = compact_lists(json.dumps(out, indent=2)) + "\n"
    (run.path / EVAL_FILE).write_text(text)
    if classification:
        (run.path / "evals").mkdir(exist_ok=True)
        (run.path / "evals" / f"{cfg.data.ways}w{cfg.data.shots}s.json").write_text(text)
    return out
