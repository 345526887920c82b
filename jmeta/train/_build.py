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
from jmeta.core._meta import MetaLearner, default_task_map
from jmeta.core._types import Episode, PRNGKey, TaskBatch
from jmeta.data._class_batches import class_batch_sampler
from jmeta.data._dataset import ClassDataset
from jmeta.data._samplers import HostSampler, device_sampler
from jmeta.data._sinusoid import sinusoid_sampler, sinusoid_tasks
from jmeta.inner._lstm import lstm_optimizer, meta_lstm
from jmeta.inner._rules import from_optax, lslr, sgd
from jmeta.models._batchnorm import estimate_batch_stats
from jmeta.models._conv import default_conv_impl
from jmeta.models._conv4 import conv4
from jmeta.models._functional import Model, with_compute_dtype
from jmeta.models._mlp import mlp
from jmeta.models._resnet12 import resnet12
from jmeta.train._config import (
    CLASSIFICATION,
    METRIC,
    TEXT_TASKS,
    TRANSFER,
    Config,
    ConfigError,
    train_shots,
)

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
    train_episodes: Callable[[PRNGKey, int], Iterator[Episode]] | None = None

    def train_images(self, key: PRNGKey, n: int) -> Iterator[jax.Array]:
        """``n`` batches of training images (the query sets of training episodes)."""
        return (episode.query.x for episode in self.train_episodes(key, n))

    @property
    def classification(self) -> bool:
        return self.cfg.task in CLASSIFICATION


def queries(cfg: Config) -> int:
    return cfg.k_query or (cfg.k_shot if cfg.task == "sinusoid" else 15)


def test_ways(cfg: Config) -> int:
    """Classes per validation / test episode (``eval_ways``, else the training ``ways``)."""
    return cfg.eval_ways or cfg.ways


def test_task(task: Task) -> Task:
    """The task with its model in test mode (:func:`test_mode`) and its test config."""
    return dataclasses.replace(task, cfg=test_config(task.cfg), model=test_mode(task.model))


def test_params(task: Task, meta, key: PRNGKey):
    """Meta-parameters ready for testing: with ``bn_mode="running"``, the BatchNorm population
    statistics estimated from ``bn_batches`` batches of training images."""
    if task.cfg.bn_mode != "running":
        return meta
    if task.cfg.algorithm == "mamlpp" and task.cfg.per_step_bn:
        learner = _per_step_bn_learner(task.cfg, task.model)
        episodes = task.train_episodes(key, task.cfg.bn_batches)
        return dict(meta, model=algorithms.per_step_batch_stats(task.model, learner, meta, episodes))
    stats = estimate_batch_stats(task.model, meta["model"], task.train_images(key, task.cfg.bn_batches))
    return dict(meta, model=stats)


@functools.lru_cache(maxsize=4)
def _per_step_bn_learner(cfg: Config, model: Model) -> MetaLearner:
    """The training-mode MAML++ learner whose adaptation the per-step statistics follow; one
    per (config, model), so their estimation compiles once per run, not at every checkpoint."""
    return build_learner(cfg, dataclasses.replace(model_task(cfg), model=model))


def test_config(cfg: Config) -> Config:
    """The config as seen by validation and meta-testing: ``ways`` set to :func:`test_ways`."""
    return cfg if test_ways(cfg) == cfg.ways else cfg.replace(ways=test_ways(cfg), eval_ways=0)


def eval_queries(cfg: Config) -> int:
    return cfg.eval_k_query or (100 if cfg.task == "sinusoid" else queries(cfg))


def model_conv_impl(cfg: Config) -> str:
    """The convolution implementation of a config's network (``cfg.conv_impl`` resolved).

    ``"auto"``: :func:`jmeta.models.default_conv_impl` (im2col on CPU) for algorithms whose
    tasks adapt their own weights, which run inside a loop over tasks; native convolutions for
    metric-based algorithms and transfer baselines, whose network has one set of weights per
    step (there XLA's convolution was about 14% faster on CPU; docs/performance.md).

    Example:
      >>> model_conv_impl(Config(algorithm="protonets", conv_impl="auto"))
      'xla'
      >>> model_conv_impl(Config(algorithm="maml", conv_impl="xla"))
      'xla'
    """
    if cfg.conv_impl != "auto":
        return cfg.conv_impl
    return "xla" if cfg.algorithm in METRIC + TRANSFER else default_conv_impl()


def config_task_map(cfg: Config, family: str) -> str:
    """The task map of a config: ``cfg.task_map``, or for ``"auto"`` the backend's default for
    the model family (:func:`jmeta.core.default_task_map`), except that a convolutional network
    with native convolutions and one set of weights per step (metric-based algorithms, transfer
    baselines) is vmapped: its tasks fold into the batch, while inside a loop XLA:CPU's
    convolution gradients are slow.

    Example:
      >>> config_task_map(Config(task_map="unroll"), "conv")
      'unroll'
      >>> config_task_map(Config(algorithm="protonets", model="conv4"), "conv")
      'vmap'
    """
    if cfg.task_map != "auto":
        return cfg.task_map
    if family == "conv" and model_conv_impl(cfg) == "xla" and cfg.algorithm in METRIC + TRANSFER:
        return "vmap"
    return default_task_map(family)


def _classifier(cfg: Config, example_shape: tuple) -> Model:
    """The network for a classification config: logits over ``ways`` classes, or embeddings
    for metric-based algorithms and transfer baselines (their heads are built from the support
    set), or a context network for CAVIA."""
    embed = cfg.algorithm in METRIC + TRANSFER
    out = None if embed else cfg.ways
    conv_impl = model_conv_impl(cfg)
    if cfg.model in ("conv4", "resnet12"):
        if len(example_shape) != 3 or example_shape[0] != example_shape[1]:
            raise ConfigError(f"{cfg.model} needs square images [S, S, C]; the dataset has {example_shape}.")
        size, channels = example_shape[0], example_shape[2]
        if cfg.algorithm == "cavia":
            return algorithms.context_conv4(channels, out, num_context=cfg.num_context,
                                            filters=cfg.filters, film_layer=cfg.film_layer,
                                            strided=cfg.strided, image_size=size,
                                            conv_impl=conv_impl)
        if cfg.model == "resnet12":
            return resnet12(channels, out, widths=cfg.widths, image_size=size, bn_mode=cfg.bn_mode,
                            conv_impl=conv_impl)
        return conv4(channels, out, filters=cfg.filters, strided=cfg.strided, image_size=size,
                     bn_mode=cfg.bn_mode, conv_impl=conv_impl)
    in_dim = int(np.prod(example_shape))
    if cfg.algorithm == "cavia":
        return _flatten_context(algorithms.context_mlp(in_dim, cfg.ways, hidden=cfg.hidden,
                                                       num_context=cfg.num_context))
    if embed:
        return flatten_inputs(mlp(in_dim, cfg.hidden[-1], hidden=cfg.hidden[:-1]))
    return flatten_inputs(mlp(in_dim, cfg.ways, hidden=cfg.hidden))


def _flatten_context(model):
    return model._replace(apply=lambda p, x, c: model.apply(p, x.reshape(x.shape[0], -1), c))


def _dtype(cfg: Config, model: Model) -> Model:
    return model if cfg.compute_dtype == "float32" else with_compute_dtype(model, cfg.compute_dtype)


def flatten_inputs(model: Model) -> Model:
    """The same model on inputs flattened to vectors (an MLP on images)."""

    def apply(params, x):
        return model.apply(params, x.reshape(x.shape[0], -1))

    def features(params, x):
        return model.features(params, x.reshape(x.shape[0], -1))

    return model._replace(apply=apply, features=features if model.features else None)


def test_mode(model: Model) -> Model:
    """The model as used at test time: BatchNorm with the stored population statistics in
    ``bn_mode="running"``; the model itself otherwise."""
    # Its features would be the training mode's: drop them (the learner runs the whole model).
    return model if model.eval_apply is None else model._replace(apply=model.eval_apply,
                                                                 features=None)


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
    if cfg.task in TEXT_TASKS:  # token ids (jmeta/train/_text.py)
        from jmeta.train._text import text_split

        return text_split(cfg, split)
    return _load(cfg.task, split, cfg.omniglot_protocol, cfg.data_dir, cfg.cache_dir, cfg.image_size)


def build_task(cfg: Config, *, need_train: bool = True) -> Task:
    """Loads the datasets a config names and checks its episodes are possible (before compiling)."""
    if cfg.task in TEXT_TASKS:  # token ids, BERT + LoRA (jmeta/train/_text.py)
        from jmeta.train._text import build_text_task

        return build_text_task(cfg, need_train=need_train)
    if cfg.task == "sinusoid":
        def sinusoid_test(key, n, split):
            del split
            yield sinusoid_tasks(key, n, cfg.k_shot, eval_queries(cfg))

        return Task(cfg, _dtype(cfg, mlp(1, 1, hidden=cfg.hidden)), mse_loss, None, "query MSE",
                    sinusoid_sampler(cfg.meta_batch_size, train_shots(cfg), queries(cfg)), None,
                    sinusoid_test)

    try:
        train = load_split(cfg, "train") if need_train else None
        test = load_split(cfg, cfg.eval_split)
        for ds, w, k, q in ((train, cfg.ways, train_shots(cfg), queries(cfg)),
                            (test, test_ways(cfg), cfg.k_shot, eval_queries(cfg))):
            if ds is not None:
                ds.check_episode(w, k, q)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"{cfg.task}: {err}") from err
    model = _dtype(cfg, _classifier(cfg, test.example_shape))
    device, host = None, None
    if need_train and cfg.algorithm in TRANSFER:
        device = class_batch_sampler(train, cfg.pretrain_batch, num_tasks=cfg.meta_batch_size,
                                     augment_rotations=cfg.augment_rotations)
    elif need_train and cfg.sampler == "device":
        device = device_sampler(train, cfg.ways, train_shots(cfg), queries(cfg), cfg.meta_batch_size,
                                augment_rotations=cfg.augment_rotations)
    elif need_train:
        host = HostSampler(train, cfg.ways, train_shots(cfg), queries(cfg), cfg.meta_batch_size,
                           seed=cfg.seed, augment_rotations=cfg.augment_rotations)

    test_tasks, train_episodes = episode_sources(cfg, train, test, lambda s: load_split(cfg, s),
                                                 _eval_sampler)
    return Task(cfg, model, cross_entropy_loss, accuracy, "query accuracy (%)", device, host,
                test_tasks, train_episodes)


def episode_sources(cfg: Config, train, test, load, sampler):
    """The ``test_tasks(key, n, split)`` and ``train_episodes(key, n)`` generators of a Task.

    ``train``/``test`` are the loaded splits (``train`` may be None), ``load(split)`` loads
    another split, ``sampler(ds, ways, shots, queries, size)`` is a jitted episode sampler.
    Test tasks come in chunks of at most :data:`EVAL_CHUNK`; training episodes one at a time,
    with test-time shots and training ways and queries.
    """

    def test_tasks(key, n, split):
        ds = test if split == cfg.eval_split else load(split)
        for i in range(math.ceil(n / EVAL_CHUNK)):
            size = min(EVAL_CHUNK, n - i * EVAL_CHUNK)
            sample = sampler(ds, test_ways(cfg), cfg.k_shot, eval_queries(cfg), size)
            yield sample(jax.random.fold_in(key, i))

    def train_episodes(key, n):
        ds = train if train is not None else load("train")
        sample = sampler(ds, cfg.ways, cfg.k_shot, queries(cfg), 1)
        for i in range(n):
            yield jax.tree.map(lambda a: a[0], sample(jax.random.fold_in(key, i)))

    return test_tasks, train_episodes


IMAGE_FORMATS = {
    # task: (default size, channels, PIL mode, invert, resampling) of the training images.
    "omniglot": (28, 1, "L", True, "lanczos"),
    "miniimagenet": (84, 3, "RGB", False, "bicubic"),
    "tieredimagenet": (84, 3, "RGB", False, "bicubic"),
    "cifar_fs": (32, 3, "RGB", False, "bicubic"),
    "fc100": (32, 3, "RGB", False, "bicubic"),
}


def image_format(cfg: Config) -> dict:
    """How the training images of a classification config were made from image files:
    ``{"size", "channels", "mode", "invert", "resampling"}`` (for preprocessing new images)."""
    if cfg.task not in IMAGE_FORMATS:
        raise ConfigError(f"task {cfg.task!r} is not an image classification task.")
    size, channels, mode, invert, resampling = IMAGE_FORMATS[cfg.task]
    return dict(size=cfg.image_size or size, channels=channels, mode=mode, invert=invert,
                resampling=resampling)


def model_task(cfg: Config) -> Task:
    """The model, loss and metric of a classification config, without loading any data
    (for adapting a trained learner to a user's own examples)."""
    if cfg.task in TEXT_TASKS:
        from jmeta.train._text import text_model_task

        return text_model_task(cfg)
    fmt = image_format(cfg)
    model = _dtype(cfg, _classifier(cfg, (fmt["size"], fmt["size"], fmt["channels"])))

    def no_tasks(key, n, split):
        raise ConfigError("model_task has no dataset; use build_task for test episodes.")

    return Task(cfg, model, cross_entropy_loss, accuracy, "query accuracy (%)", None, None, no_tasks)


@functools.lru_cache(maxsize=8)
def _eval_sampler(ds, ways, shots, q, size):
    return jax.jit(device_sampler(ds, ways, shots, q, size))


def _rule(cfg: Config):
    if cfg.inner_rule == "lslr":
        return lslr(cfg.inner_lr, cfg.inner_steps)
    if cfg.inner_rule == "adam":
        return from_optax(optax.adam(cfg.inner_lr, b1=cfg.inner_beta1))
    if cfg.inner_rule == "meta_lstm":
        # The input gate (the step size) starts near inner_lr, so that the rule starts as the SGD
        # it is compared with: bias ~ U(logit(lr) - 0.5, logit(lr) + 0.5). At the default 0.01
        # that is U(-5.1, -4.1), the paper's U(-5, -4).
        centre = math.log(cfg.inner_lr / (1.0 - cfg.inner_lr))
        return meta_lstm(cfg.lstm_hidden, input_bias=(centre - 0.5, centre + 0.5))
    if cfg.inner_rule == "lstm_optimizer":
        return lstm_optimizer(cfg.lstm_hidden, output_scale=cfg.lstm_output_scale)
    if cfg.body_inner_lr:  # the head keeps inner_lr; everything else adapted takes body_inner_lr
        return sgd(cfg.inner_lr, path_lr=functools.partial(_body_rate, cfg.body_inner_lr))
    return sgd(cfg.inner_lr)


def _body_rate(rate: float, path: str) -> float | None:
    return None if path.startswith("head/") else rate


def _embed_dim(cfg: Config, model: Model) -> int:
    fmt = image_format(cfg)
    x = jax.ShapeDtypeStruct((2, fmt["size"], fmt["size"], fmt["channels"]), jax.numpy.float32)
    params = jax.eval_shape(model.init, jax.random.key(0))
    return int(jax.eval_shape(model.apply, params, x).shape[-1])


def base_classes(cfg: Config) -> int:
    """Classes of the pre-training head of a transfer baseline (all base classes)."""
    n = cfg.base_classes or load_split(cfg, "train").num_classes
    return n * (4 if cfg.augment_rotations else 1)


def build_learner(cfg: Config, task: Task) -> MetaLearner:
    if cfg.model == "bert_lora":  # adapters + head only (jmeta/train/_text.py)
        from jmeta.train._text import text_learner

        return text_learner(cfg, task)
    model = task.model
    common = dict(remat=cfg.remat, loss_fn=task.loss_fn, metric_fn=task.metric_fn)
    plain = dict(loss_fn=task.loss_fn, metric_fn=task.metric_fn)
    if cfg.algorithm in TRANSFER:
        shape = (image_format(cfg)["size"],) * 2 + (image_format(cfg)["channels"],)
        return algorithms.transfer_baseline(
            model, num_classes=base_classes(cfg), ways=cfg.ways,
            head="linear" if cfg.algorithm == "baseline" else "cosine", input_shape=shape,
            finetune_steps=cfg.finetune_steps, finetune_lr=cfg.finetune_lr,
            metric_fn=task.metric_fn)
    if cfg.algorithm == "cavia":
        return algorithms.cavia(model, num_context=cfg.num_context, inner_lr=cfg.inner_lr,
                                num_steps=cfg.inner_steps, first_order=cfg.first_order, **plain)
    if cfg.algorithm == "imaml":
        return algorithms.imaml(model, inner_lr=cfg.inner_lr, num_steps=cfg.inner_steps,
                                lam=cfg.imaml_lam, cg_steps=cfg.cg_steps,
                                cg_damping=cfg.cg_damping, **plain)
    if cfg.algorithm in ("matching", "matching_fce"):
        fce = cfg.algorithm == "matching_fce"
        return algorithms.matching_networks(model, ways=cfg.ways, fce=fce,
                                            embed_dim=_embed_dim(cfg, model) if fce else None,
                                            metric_fn=task.metric_fn)
    if cfg.algorithm == "r2d2":
        return algorithms.r2d2(model, ways=cfg.ways, metric_fn=task.metric_fn)
    if cfg.algorithm == "metasgd":
        lr = cfg.metasgd_init_lr[0] if len(cfg.metasgd_init_lr) == 1 else tuple(cfg.metasgd_init_lr)
        return algorithms.metasgd(model, lr, cfg.inner_steps, first_order=cfg.first_order,
                                  truncate=cfg.inner_truncate or None, **common)
    if cfg.algorithm == "protonets":
        return algorithms.protonets(model, ways=cfg.ways, distance=cfg.distance,
                                    metric_fn=task.metric_fn)
    if cfg.algorithm == "reptile":
        return algorithms.reptile(model, cfg.inner_lr, cfg.inner_steps, rule=_rule(cfg),
                                  loss_fn=task.loss_fn, metric_fn=task.metric_fn,
                                  inner_batch=cfg.inner_batch or None)
    if cfg.algorithm == "mamlpp":
        return algorithms.mamlpp(
            model, num_steps=cfg.inner_steps, inner_lr=cfg.inner_lr,
            msl_anneal_steps=cfg.msl_anneal_steps, first_order_until=cfg.first_order_until,
            per_step_bn=cfg.per_step_bn and cfg.model != "mlp", **common)
    if cfg.algorithm == "protomaml":
        return algorithms.protomaml(model, cfg.inner_lr, cfg.inner_steps, ways=cfg.ways,
                                    scale=cfg.proto_scale, first_order=cfg.first_order,
                                    rule=_rule(cfg), truncate=cfg.inner_truncate or None,
                                    **common)
    factory = {"maml": algorithms.maml, "fomaml": algorithms.fomaml, "anil": algorithms.anil,
               "boil": algorithms.boil}[cfg.algorithm]
    kwargs = dict(rule=_rule(cfg), truncate=cfg.inner_truncate or None, **common)
    if cfg.algorithm != "fomaml":
        kwargs["first_order"] = cfg.first_order
    return factory(model, cfg.inner_lr, cfg.inner_steps, **kwargs)


def build_schedule(cfg: Config):
    """The meta learning rate as a float (constant) or an optax schedule of the step."""
    if cfg.lr_schedule == "step":
        return optax.exponential_decay(cfg.meta_lr, cfg.lr_decay_every, cfg.lr_decay_rate,
                                       staircase=True)
    if cfg.lr_schedule == "linear":
        return optax.linear_schedule(cfg.meta_lr, cfg.lr_min, cfg.num_steps)
    if cfg.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(cfg.meta_lr, cfg.num_steps,
                                           alpha=cfg.lr_min / cfg.meta_lr if cfg.meta_lr else 0.0)
    return cfg.meta_lr


def checkpoint_frozen(cfg: Config):
    """The parameters a run's checkpoints leave out, as a predicate on their paths (the
    pretrained encoder of ``bert_lora``: restores read it again from the pretrained weights),
    or ``None`` (everything is saved)."""
    if cfg.model == "bert_lora":
        from jmeta.train._text import trainable_path

        return lambda path: not trainable_path(path)
    return None


def build_optimizer(cfg: Config) -> optax.GradientTransformation:
    """The outer optimizer of a config: SGD or Adam on ``build_schedule``'s step sizes, after
    clipping the meta-gradient's global norm at ``meta_grad_clip`` when it is positive.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = build_optimizer(Config(meta_optimizer="sgd", meta_lr=1.0, meta_grad_clip=0.25))
      >>> updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"].tolist()  # the gradient's norm 5 scaled to 0.25, then the SGD step
      [-0.15000000596046448, -0.20000000298023224]
    """
    lr = build_schedule(cfg)
    tx = optax.sgd(lr) if cfg.meta_optimizer == "sgd" else optax.adam(lr)
    if cfg.meta_grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.meta_grad_clip), tx)
    if cfg.model == "bert_lora":  # no optimizer state for the frozen encoder, no update of it
        from jmeta.train._text import freeze_backbone

        return freeze_backbone(tx)
    return tx
