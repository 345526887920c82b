"""From a :class:`Config` to the pure pieces of a run: task, model, learner, optimizer, samplers."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable, Iterator

import jax
import numpy as np
import optax

from jmeta import algorithms
from jmeta.core._inner import mse_loss
from jmeta.core._losses import accuracy, cross_entropy_loss
from jmeta.core._meta import MetaLearner
from jmeta.core._types import PRNGKey, TaskBatch
from jmeta.data._dataset import ClassDataset
from jmeta.data._samplers import HostSampler, device_sampler
from jmeta.data._sinusoid import sinusoid_sampler, sinusoid_tasks
from jmeta.inner._rules import from_optax, lslr, sgd
from jmeta.models._functional import Model, with_compute_dtype
from jmeta.models._conv4 import conv4
from jmeta.models._mlp import mlp
from jmeta.train._config import CLASSIFICATION, Config, ConfigError

EVAL_CHUNK = 50  # test tasks gathered at a time (bounds memory for large episodes)


@dataclasses.dataclass(eq=False)
class Task:
    """What a config trains on: the model's input/output sizes, loss, metric and samplers."""

    cfg: Config
    model: Model
    loss_fn: Callable
    metric_fn: Callable | None
    metric: str  # name of the reported test metric
    train_sampler: Callable[[PRNGKey], TaskBatch] | None  # in-graph sampler, or None
    host_sampler: HostSampler | None
    test_tasks: Callable[[PRNGKey, int, str], Iterator[TaskBatch]]

    @property
    def classification(self) -> bool:
        return self.cfg.task in CLASSIFICATION


def queries(cfg: Config) -> int:
    return cfg.k_query or (cfg.k_shot if cfg.task == "sinusoid" else 15)


def eval_queries(cfg: Config) -> int:
    return cfg.eval_k_query or (100 if cfg.task == "sinusoid" else queries(cfg))


def _classifier(cfg: Config, example_shape: tuple) -> Model:
    """The network for a classification config: logits over ``ways`` classes, or embeddings
    for metric-based algorithms (ProtoNets)."""
    embed = cfg.algorithm == "protonets"
    if cfg.model == "conv4":
        if len(example_shape) != 3 or example_shape[0] != example_shape[1]:
            raise ConfigError(f"conv4 needs square images [S, S, C]; the dataset has {example_shape}.")
        return conv4(example_shape[2], None if embed else cfg.ways, filters=cfg.filters,
                     strided=cfg.strided, image_size=example_shape[0])
    in_dim = int(np.prod(example_shape))
    if embed:
        return flatten_inputs(mlp(in_dim, cfg.hidden[-1], hidden=cfg.hidden[:-1]))
    return flatten_inputs(mlp(in_dim, cfg.ways, hidden=cfg.hidden))


def _dtype(cfg: Config, model: Model) -> Model:
    return model if cfg.compute_dtype == "float32" else with_compute_dtype(model, cfg.compute_dtype)


def flatten_inputs(model: Model) -> Model:
    """The same model on inputs flattened to vectors (an MLP on images)."""

    def apply(params, x):
        return model.apply(params, x.reshape(x.shape[0], -1))

    return Model(init=model.init, apply=apply, family=model.family)


@functools.lru_cache(maxsize=16)
def _load(task: str, split: str, protocol: str, data_dir: str, cache_dir: str, image_size: int):
    from jmeta.data import _loaders
    from jmeta.data._omniglot import load_omniglot

    base = Path(data_dir).expanduser() if data_dir else None
    cache = cache_dir or None
    if task == "omniglot":
        return load_omniglot(split, protocol=protocol, root=base / "omniglot" if base else None,
                             image_size=image_size or 28, cache=cache)
    if task == "miniimagenet":
        splits = _loaders.load_miniimagenet(base / "miniimagenet" if base else None,
                                            image_size=image_size or 84, cache=cache)
    elif task in ("cifar_fs", "fc100"):
        root = base / "cifar100" / "cifar-100-python" if base else None
        loader = _loaders.load_cifar_fs if task == "cifar_fs" else _loaders.load_fc100
        splits = loader(root, cache=cache)
    elif task == "tieredimagenet":
        splits = _loaders.load_tieredimagenet(base / "tieredimagenet" if base else None, cache=cache)
    else:
        raise ConfigError(f"task {task!r} has no class splits.")
    return splits[split]


def load_split(cfg: Config, split: str) -> ClassDataset:
    """One split of the config's dataset (cached in memory per process)."""
    return _load(cfg.task, split, cfg.omniglot_protocol, cfg.data_dir, cfg.cache_dir, cfg.image_size)


def build_task(cfg: Config, *, need_train: bool = True) -> Task:
    """Loads the datasets a config names and checks its episodes are possible (before compiling)."""
    if cfg.task == "sinusoid":
        def sinusoid_test(key, n, split):
            del split
            yield sinusoid_tasks(key, n, cfg.k_shot, eval_queries(cfg))

        return Task(cfg, _dtype(cfg, mlp(1, 1, hidden=cfg.hidden)), mse_loss, None, "query MSE",
                    sinusoid_sampler(cfg.meta_batch_size, cfg.k_shot, queries(cfg)), None, sinusoid_test)

    try:
        train = load_split(cfg, "train") if need_train else None
        test = load_split(cfg, cfg.eval_split)
        for ds, q in ((train, queries(cfg)), (test, eval_queries(cfg))):
            if ds is not None:
                ds.check_episode(cfg.ways, cfg.k_shot, q)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"{cfg.task}: {err}") from err
    model = _dtype(cfg, _classifier(cfg, test.example_shape))
    device, host = None, None
    if need_train and cfg.sampler == "device":
        device = device_sampler(train, cfg.ways, cfg.k_shot, queries(cfg), cfg.meta_batch_size,
                                augment_rotations=cfg.augment_rotations)
    elif need_train:
        host = HostSampler(train, cfg.ways, cfg.k_shot, queries(cfg), cfg.meta_batch_size,
                           seed=cfg.seed, augment_rotations=cfg.augment_rotations)

    def test_tasks(key, n, split):
        ds = test if split == cfg.eval_split else load_split(cfg, split)
        for i in range(math.ceil(n / EVAL_CHUNK)):
            size = min(EVAL_CHUNK, n - i * EVAL_CHUNK)
            sample = _eval_sampler(ds, cfg.ways, cfg.k_shot, eval_queries(cfg), size)
            yield sample(jax.random.fold_in(key, i))

    return Task(cfg, model, cross_entropy_loss, accuracy, "query accuracy (%)", device, host, test_tasks)


@functools.lru_cache(maxsize=8)
def _eval_sampler(ds, ways, shots, q, size):
    return jax.jit(device_sampler(ds, ways, shots, q, size))


def _rule(cfg: Config):
    if cfg.inner_rule == "lslr":
        return lslr(cfg.inner_lr, cfg.inner_steps)
    if cfg.inner_rule == "adam":
        return from_optax(optax.adam(cfg.inner_lr))
    return sgd(cfg.inner_lr)


def build_learner(cfg: Config, task: Task) -> MetaLearner:
    model = task.model
    common = dict(remat=cfg.remat, loss_fn=task.loss_fn, metric_fn=task.metric_fn)
    if cfg.algorithm == "metasgd":
        lr = cfg.metasgd_init_lr[0] if len(cfg.metasgd_init_lr) == 1 else tuple(cfg.metasgd_init_lr)
        return algorithms.metasgd(model, lr, cfg.inner_steps, first_order=cfg.first_order, **common)
    if cfg.algorithm == "protonets":
        return algorithms.protonets(model, ways=cfg.ways, distance=cfg.distance,
                                    metric_fn=task.metric_fn)
    if cfg.algorithm == "reptile":
        return algorithms.reptile(model, cfg.inner_lr, cfg.inner_steps, rule=_rule(cfg),
                                  loss_fn=task.loss_fn, metric_fn=task.metric_fn)
    factory = {"maml": algorithms.maml, "fomaml": algorithms.fomaml, "anil": algorithms.anil}[
        cfg.algorithm
    ]
    kwargs = dict(rule=_rule(cfg), **common)
    if cfg.algorithm != "fomaml":
        kwargs["first_order"] = cfg.first_order
    return factory(model, cfg.inner_lr, cfg.inner_steps, **kwargs)


def build_optimizer(cfg: Config) -> optax.GradientTransformation:
    if cfg.meta_optimizer == "sgd":
        return optax.sgd(cfg.meta_lr)
    return optax.adam(cfg.meta_lr)
