"""Text configs (``task="banking77"`` or ``"text"``, ``model="bert_lora"``): model, episodes,
learners and the outer optimizer that leaves the frozen backbone alone.

:mod:`jmeta.train._build` hands text configs to these functions; they mirror what it does for
images (a :class:`Task` with device or host samplers, test tasks of a split, a learner per
algorithm).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jmeta import algorithms
from jmeta.core._losses import accuracy, cross_entropy_loss
from jmeta.core._meta import MetaLearner
from jmeta.core._tree import mask_by_path
from jmeta.data._dataset import ClassDataset, data_dir
from jmeta.data._samplers import HostSampler
from jmeta.data._text import load_banking77, load_text_splits, token_sampler
from jmeta.models._functional import Model, with_compute_dtype
from jmeta.models._lora import lora_filter
from jmeta.train._config import Config, ConfigError, train_shots

BACKBONE = "model/backbone"
"""Path prefix of the frozen encoder inside the meta-parameters."""


def trainable_path(path: str) -> bool:
    """Whether the outer optimizer trains a meta-parameter of a text learner: everything but
    the pretrained encoder (``model/backbone/...``): adapters, head, rule parameters.

    Example:
      >>> trainable_path("model/backbone/layer_0/query/kernel"), trainable_path("model/lora/layer_0/query/b")
      (False, True)
    """
    return not (path + "/").startswith(BACKBONE + "/")


def freeze_backbone(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` on the trainable meta-parameters, nothing on the frozen backbone.

    ``optax.multi_transform`` labels every leaf with :func:`trainable_path`: the backbone gets
    ``optax.set_to_zero()`` (its updates are exactly zero and it keeps no optimizer state, no
    Adam moments for its 22.7M entries, no weight decay), the rest gets ``tx``.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = freeze_backbone(optax.adam(0.1))
      >>> p = {"model": {"backbone": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(2)}}, "rule": ()}
      >>> u, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
      >>> u["model"]["backbone"]["w"].tolist(), [round(v, 3) for v in u["model"]["head"]["w"].tolist()]
      ([0.0, 0.0, 0.0], [-0.1, -0.1])
    """
    def labels(params):
        return jax.tree.map(lambda t: "train" if t else "frozen",
                            mask_by_path(params, trainable_path))

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


@functools.lru_cache(maxsize=8)
def _bert(path: str, num_classes, rank, alpha, targets, top_layers, max_length, pooling,
          dtype) -> Model:
    from jmeta.models._bert import bert_lora

    model = bert_lora(path or None, num_classes=num_classes, rank=rank, alpha=alpha,
                      targets=targets, top_layers=top_layers or None, max_length=max_length,
                      pooling=pooling)
    return model if dtype == "float32" else with_compute_dtype(model, dtype)


def text_model(cfg: Config) -> Model:
    """The network of a text config: sentence embeddings for ProtoNets, else logits over
    ``ways`` classes; one model per distinct setting (the checkpoint is read once)."""
    num_classes = None if cfg.algorithm == "protonets" else cfg.ways
    try:
        return _bert(cfg.bert_path, num_classes, cfg.lora_rank, cfg.lora_alpha,
                     tuple(cfg.lora_targets), cfg.lora_top_layers, cfg.max_length, cfg.pooling,
                     cfg.compute_dtype)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        raise ConfigError(f"model='bert_lora': {err}") from err


@functools.lru_cache(maxsize=8)
def _splits(task: str, data: str, text_file: str, text_split: str, max_length: int,
            bert_path: str, cache: str) -> dict[str, ClassDataset]:
    if task == "banking77":
        root = data_dir(data or None) / "banking77"
        return load_banking77(root, max_length=max_length, bert_path=bert_path or None,
                              cache=cache or None)
    files = [f.strip() for f in text_file.split(",") if f.strip()]
    return load_text_splits(files, split=text_split or None, max_length=max_length,
                            bert_path=bert_path or None, cache=cache or None)


def text_split(cfg: Config, split: str) -> ClassDataset:
    """One split of a text config's dataset as token ids (loaded and tokenized once)."""
    try:
        return _splits(cfg.task, cfg.data_dir, cfg.text_file, cfg.text_split, cfg.max_length,
                       cfg.bert_path, cfg.cache_dir)[split]
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        raise ConfigError(f"{cfg.task}: {err}") from err


def build_text_task(cfg: Config, *, need_train: bool = True):
    """The :class:`jmeta.train._build.Task` of a text config (see ``build_task``)."""
    from jmeta.train._build import Task, episode_sources, eval_queries, queries, test_ways

    train = text_split(cfg, "train") if need_train else None
    test = text_split(cfg, cfg.eval_split)
    try:
        for ds, w, k, q in ((train, cfg.ways, train_shots(cfg), queries(cfg)),
                            (test, test_ways(cfg), cfg.k_shot, eval_queries(cfg))):
            if ds is not None:
                ds.check_episode(w, k, q)
    except ValueError as err:
        raise ConfigError(f"{cfg.task}: {err}") from err
    model = text_model(cfg)
    device, host = None, None
    if need_train and cfg.sampler == "device":
        device = token_sampler(train, cfg.ways, train_shots(cfg), queries(cfg), cfg.meta_batch_size)
    elif need_train:
        host = HostSampler(train, cfg.ways, train_shots(cfg), queries(cfg), cfg.meta_batch_size,
                           seed=cfg.seed, transform=lambda ids: ids)

    test_tasks, train_episodes = episode_sources(cfg, train, test, lambda s: text_split(cfg, s),
                                                 _eval_sampler)
    return Task(cfg, model, cross_entropy_loss, accuracy, "query accuracy (%)", device, host,
                test_tasks, train_episodes)


def text_model_task(cfg: Config):
    """The model, loss and metric of a text config without any dataset (``jmeta.load``)."""
    from jmeta.train._build import Task

    def no_tasks(key, n, split):
        raise ConfigError("model_task has no dataset; use build_task for test episodes.")

    return Task(cfg, text_model(cfg), cross_entropy_loss, accuracy, "query accuracy (%)", None,
                None, no_tasks)


@functools.lru_cache(maxsize=8)
def _eval_sampler(ds, ways, shots, q, size):
    return jax.jit(token_sampler(ds, ways, shots, q, size))


def _zero_head(learner: MetaLearner) -> MetaLearner:
    """The learner with its classifier head initialised to zero (fine-tuning from scratch)."""

    def init(key):
        meta = learner.init(key)
        model = dict(meta["model"], head=jax.tree.map(jnp.zeros_like, meta["model"]["head"]))
        return dict(meta, model=model)

    return learner._replace(init=init)


def text_learner(cfg: Config, task) -> MetaLearner:
    """The learner of a text config. Gradient-based algorithms adapt only the LoRA adapters and
    the head (``adapt_filter=lora_filter``; ANIL the head only): the backbone is never part of
    the inner loop's carry, so it is not copied per task. Their head starts at zero (LoRA
    starts at ``B = 0``), so the initial learner is the pretrained encoder with an unbiased
    classifier: with labels permuted across episodes a random head is only noise that
    meta-training has to remove first (the "zeroing trick" of Kao et al., ICLR 2022).
    ``finetune`` is the inner loop alone from those initial values, never meta-trained."""
    from jmeta.train._build import _rule

    model = task.model
    common = dict(loss_fn=task.loss_fn, metric_fn=task.metric_fn)
    if cfg.algorithm == "protonets":
        return algorithms.protonets(model, ways=cfg.ways, distance=cfg.distance,
                                    metric_fn=task.metric_fn)
    if cfg.algorithm == "reptile":
        return _zero_head(algorithms.reptile(model, cfg.inner_lr, cfg.inner_steps,
                                             rule=_rule(cfg), inner_batch=cfg.inner_batch or None,
                                             adapt_filter=lora_filter, **common))
    if cfg.algorithm == "metasgd":
        lr = cfg.metasgd_init_lr[0] if len(cfg.metasgd_init_lr) == 1 else tuple(cfg.metasgd_init_lr)
        from jmeta.inner._rules import meta_sgd

        rule = meta_sgd(lr)
    else:
        rule = _rule(cfg)
    adapt_filter = (lambda p: p.startswith("head/")) if cfg.algorithm == "anil" else lora_filter
    if cfg.algorithm == "protomaml":  # the head starts each task at the support's prototypes
        return algorithms.protomaml(
            model, cfg.inner_lr, cfg.inner_steps, ways=cfg.ways, scale=cfg.proto_scale,
            first_order=cfg.first_order, remat=cfg.remat, adapt_filter=adapt_filter,
            truncate=cfg.inner_truncate or None, rule=rule, **common)
    learner = algorithms.gradient_learner(
        model, rule, cfg.inner_steps, first_order=cfg.first_order or cfg.algorithm == "fomaml",
        remat=cfg.remat, adapt_filter=adapt_filter, truncate=cfg.inner_truncate or None,
        name=cfg.algorithm, **common)
    return _zero_head(learner)
