"""From a :class:`Config` to the pure pieces of a run: the task (what the data gives), the model,
the learner and the outer optimizer. Every component comes from its registry; the rules between
components live here and in :class:`BuildEnv`, nowhere else."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import optax

from jmeta.algorithms import ALGORITHMS, per_step_batch_stats
from jmeta.core._checks import check_rate
from jmeta.core._inner import mse_loss
from jmeta.core._losses import accuracy, cross_entropy_loss
from jmeta.core._meta import MetaLearner, default_task_map
from jmeta.core._registry import ConfigError
from jmeta.core._tree import mask_by_path
from jmeta.core._types import Episode, PRNGKey, TaskBatch
from jmeta.data import DATASETS, ClassSplits, HostSampler, TaskFamily, class_batch_sampler
from jmeta.inner import RULES
from jmeta.models import MODELS, ModelSpec, default_conv_impl, estimate_batch_stats
from jmeta.models import with_compute_dtype
from jmeta.train._config import Config, Section, train_shots, validate

EVAL_CHUNK = 50  # test tasks gathered at a time (bounds memory for large episodes)


@dataclasses.dataclass(eq=False)
class Task:
    """What a config trains and tests on: the dataset's side of a run.

    Attributes:
      cfg: the (validated) config.
      data: the dataset's :class:`jmeta.data.ClassSplits` or :class:`jmeta.data.TaskFamily`.
      loss_fn, metric_fn, metric: the loss, the extra metric and the name of the reported one.
      test_tasks: ``(key, n, split) -> iterator of task batches`` (at most :data:`EVAL_CHUNK`
        tasks each).
      train_episodes: ``(key, n) -> iterator of single training episodes`` (BatchNorm
        statistics), or ``None`` for generated tasks.
      train: the training split (``None`` when not loaded, or for generated tasks).
    """

    cfg: Config
    data: ClassSplits | TaskFamily
    loss_fn: Callable
    metric_fn: Callable | None
    metric: str
    test_tasks: Callable[[PRNGKey, int, str], Iterator[TaskBatch]]
    train_episodes: Callable[[PRNGKey, int], Iterator[Episode]] | None = None
    train: object = None

    @property
    def classification(self) -> bool:
        return isinstance(self.data, ClassSplits)

    @property
    def example_shape(self) -> tuple:
        return tuple(self.data.example_shape)

    def train_images(self, key: PRNGKey, n: int) -> Iterator[jax.Array]:
        """``n`` batches of training images (the query sets of training episodes)."""
        return (episode.query.x for episode in self.train_episodes(key, n))


def queries(cfg: Config) -> int:
    """Query examples per class (points, for regression) of the training episodes: 0 means
    15 for a classification dataset, as many as the shots for a task family."""
    tasks = DATASETS[cfg.data.name].attributes["kind"] == "tasks"
    return cfg.data.queries or (cfg.data.shots if tasks else 15)


def test_ways(cfg: Config) -> int:
    """Classes per validation / test episode (``eval.ways``, else the training ``data.ways``)."""
    return cfg.eval.ways or cfg.data.ways


def test_config(cfg: Config) -> Config:
    """The config as seen by validation and meta-testing: ``data.ways`` set to
    :func:`test_ways`."""
    if "ways" not in cfg.data or test_ways(cfg) == cfg.data.ways:
        return cfg
    return cfg.replace(data=dict(ways=test_ways(cfg)), eval=dict(ways=0))


def eval_queries(cfg: Config, data: ClassSplits | TaskFamily | None = None) -> int:
    """Query examples per class of the test episodes: ``eval.queries``, else the dataset's
    default for generated tasks (100 sinusoid points), else the training queries."""
    if cfg.eval.queries:
        return cfg.eval.queries
    data = data if data is not None else dataset(cfg)
    return data.eval_queries if isinstance(data, TaskFamily) else queries(cfg)


def eval_chunk(task: Task, num_tasks: int) -> int:
    """Tasks adapted together when ``num_tasks`` test or validation tasks are evaluated at once:
    ``eval.chunk_size`` (0: the dataset's default, all tasks for images, 5 for text), lowered
    to a divisor of ``num_tasks`` so that every chunk has the same shape."""
    default = getattr(task.data, "eval_chunk", 0) or num_tasks
    chunk = max(1, min(task.cfg.eval.chunk_size or default, num_tasks))
    while num_tasks % chunk:
        chunk -= 1
    return chunk


# ---------------------------------------------------------------------------------------------
# The data


@functools.lru_cache(maxsize=16)
def _dataset(name: str, options: Section):
    entry = DATASETS[name]
    kind = entry.attributes["kind"]
    given = {k: options[k] for k in entry.options if k in options}
    given.update({k: options[k] for k in entry.required})
    try:
        data = entry.builder(**given)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        raise ConfigError(f"data {name!r}: {err}") from err
    expected = ClassSplits if kind == "classes" else TaskFamily
    if not isinstance(data, expected):
        raise ConfigError(f"data {name!r} is registered with kind={kind!r} but its builder "
                          f"returned {type(data).__name__}, not {expected.__name__}.")
    return data


def dataset(cfg: Config) -> ClassSplits | TaskFamily:
    """The config's dataset (built once per process; splits are loaded when asked for)."""
    return _dataset(cfg.data.name, cfg.data)


def _split(cfg: Config, data: ClassSplits, split: str):
    try:
        return data.split(split)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        raise ConfigError(f"{cfg.data.name}: {err}") from err


@functools.lru_cache(maxsize=8)
def _eval_sampler(sampler, ds, ways, shots, q, size):
    return jax.jit(sampler(ds, ways, shots, q, size))


def build_task(cfg: Config, *, need_train: bool = True) -> Task:
    """Loads the datasets a config names and checks its episodes are possible (before compiling)."""
    cfg = validate(cfg)
    data = dataset(cfg)
    if isinstance(data, TaskFamily):
        def family_test(key, n, split):
            del split
            yield data.sample(key, n, cfg.data.shots, eval_queries(cfg, data))

        return Task(cfg, data, mse_loss, None, "query MSE", family_test)

    train = _split(cfg, data, "train") if need_train else None
    test = _split(cfg, data, cfg.eval.split)
    try:
        for ds, w, k, q in ((train, cfg.data.ways, train_shots(cfg), queries(cfg)),
                            (test, test_ways(cfg), cfg.data.shots, eval_queries(cfg, data))):
            if ds is not None:
                ds.check_episode(w, k, q)
    except ValueError as err:
        raise ConfigError(f"{cfg.data.name}: {err}") from err

    def load(split):
        return test if split == cfg.eval.split else (
            train if split == "train" and train is not None else _split(cfg, data, split))

    def test_tasks(key, n, split):
        ds = load(split)
        for i in range(math.ceil(n / EVAL_CHUNK)):
            size = min(EVAL_CHUNK, n - i * EVAL_CHUNK)
            sample = _eval_sampler(data.sampler, ds, test_ways(cfg), cfg.data.shots,
                                   eval_queries(cfg, data), size)
            yield sample(jax.random.fold_in(key, i))

    def train_episodes(key, n):
        sample = _eval_sampler(data.sampler, load("train"), cfg.data.ways, cfg.data.shots,
                               queries(cfg), 1)
        for i in range(n):
            yield jax.tree.map(lambda a: a[0], sample(jax.random.fold_in(key, i)))

    return Task(cfg, data, cross_entropy_loss, accuracy, "query accuracy (%)", test_tasks,
                train_episodes, train)


def model_task(cfg: Config) -> Task:
    """The task of a config without loading any data: enough to build its model and learner
    (for adapting a trained learner to a user's own examples, or checking a config)."""
    cfg = validate(cfg)
    data = dataset(cfg)
    if isinstance(data, TaskFamily):
        return build_task(cfg)

    def no_tasks(key, n, split):
        raise ConfigError("model_task has no dataset; use build_task for test episodes.")

    return Task(cfg, data, cross_entropy_loss, accuracy, "query accuracy (%)", no_tasks)


def training_batches(task: Task, learner: MetaLearner):
    """``(in-graph sampler, host sampler)`` of meta-training, one of them ``None``: episodes of
    the config's shape, or class batches for a learner that pre-trains on them."""
    cfg, data = task.cfg, task.data
    size = cfg.train.meta_batch_size
    if isinstance(data, TaskFamily):
        shots, q = train_shots(cfg), queries(cfg)
        return (lambda key: data.sample(key, size, shots, q)), None
    train = task.train if task.train is not None else _split(cfg, data, "train")
    if learner.class_batches is not None:
        if cfg.data.sampler == "host":
            raise ConfigError(f"learner {cfg.learner.name!r} pre-trains on class batches drawn "
                              "on the device: use data.sampler='device'.")
        return class_batch_sampler(train, learner.class_batches, num_tasks=size,
                                   augment_rotations=cfg.data.augment_rotations), None
    episode = (cfg.data.ways, train_shots(cfg), queries(cfg), size)
    rotate = {"augment_rotations": True} if cfg.data.augment_rotations else {}
    if cfg.data.sampler == "device":
        return data.sampler(train, *episode, **rotate), None
    extra = {} if data.host_transform is None else {"transform": data.host_transform}
    return None, HostSampler(train, *episode, seed=cfg.train.seed, **rotate, **extra)


def base_classes(cfg: Config, task: Task | None = None) -> int:
    """Classes of the pre-training head of a transfer baseline: all base classes (four times
    as many with ``data.augment_rotations``: each quarter turn a class of its own)."""
    n = cfg.data.base_classes
    if not n:
        data = task.data if task is not None else dataset(cfg)
        train = task.train if task is not None and task.train is not None else None
        n = (train if train is not None else _split(cfg, data, "train")).num_classes
    return n * (4 if cfg.data.augment_rotations else 1)


# ---------------------------------------------------------------------------------------------
# The model and the learner


def test_mode(model):
    """The model as used at test time: BatchNorm with the stored population statistics in
    ``bn_mode="running"``; the model itself otherwise."""
    eval_apply = getattr(model, "eval_apply", None)
    # Its features would be the training mode's: drop them (the learner runs the whole model).
    return model if eval_apply is None else model._replace(apply=eval_apply, features=None)


@functools.lru_cache(maxsize=32)
def _model(options: Section, spec: ModelSpec):
    entry = MODELS[options.name]
    given = {k: options[k] for k in (*entry.options, *entry.required) if k in options}
    try:
        model = entry.builder(spec, **given)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        raise ConfigError(f"model {options.name!r}: {err}") from err
    if options.dtype != "float32" and "dtype" not in entry.options:  # else the model's own
        if not hasattr(model, "eval_apply"):
            raise ConfigError(f"model {options.name!r} computes in float32 only: leave "
                              "model.dtype='float32'.")
        model = with_compute_dtype(model, options.dtype)
    return model


def trainable(model) -> Callable[[str], bool] | None:
    """``path -> bool``: the parameters of ``model`` that are not frozen, or ``None`` (all)."""
    frozen = getattr(model, "frozen", None)
    return None if frozen is None else (lambda path: not frozen(path))


class BuildEnv:
    """What an algorithm's registration knows of the other components of a config (see
    :mod:`jmeta.algorithms` for the contract). One per built learner."""

    def __init__(self, cfg: Config, task: Task, *, test: bool = False):
        self.cfg, self.task, self.test = cfg, task, test
        self.network = None
        self.model_built = None
        self.train_model = None
        self.conv_impl = None
        self.rule_used = False

    # Cross-component values.
    @property
    def ways(self) -> int:
        if not self.task.classification:
            raise ConfigError(f"learner {self.cfg.learner.name!r} classifies episodes of classes, "
                              f"but data {self.cfg.data.name!r} is regression: use a "
                              "classification dataset, or a gradient-based learner.")
        return test_ways(self.cfg) if self.test else self.cfg.data.ways

    @property
    def loss_fn(self):
        return self.task.loss_fn

    @property
    def metric_fn(self):
        return self.task.metric_fn

    @property
    def input_shape(self) -> tuple:
        return self.task.example_shape

    @property
    def support_size(self) -> int:
        shots = train_shots(self.cfg)
        return shots * self.cfg.data.ways if self.task.classification else shots

    @property
    def meta_steps(self) -> int:
        return self.cfg.train.meta_steps

    def base_classes(self) -> int:
        return base_classes(self.cfg, self.task)

    def rule(self, lr, inner_steps):
        """The configured inner rule (``None``: the learner's own)."""
        if not self.cfg.rule:
            return None
        self.rule_used = True
        entry = RULES[self.cfg.rule.name]
        options = {k: v for k, v in self.cfg.rule.items() if k != "name"}
        try:
            return entry.builder(lr, inner_steps, **options)
        except ValueError as err:
            raise ConfigError(f"rule {entry.name!r}: {err}") from err

    def model(self, network: str = "classifier"):
        """The configured model: a ``"classifier"`` (a head of the episode's classes, or of
        the regression target) or an ``"embedding"`` network."""
        shared = network in ("embedding", "lm")
        if shared:
            outputs = None
        else:
            outputs = self.ways if self.task.classification else self.task.data.outputs
        options = self.cfg.model
        if network == "lm" and not MODELS[options.name].attributes.get("language_model"):
            lms = [n for n in MODELS.names() if MODELS[n].attributes.get("language_model")]
            raise ConfigError(f"learner {self.cfg.learner.name!r} reads a language model's "
                              f"next-token logits; model {options.name!r} is not one: use "
                              f"model name {' or '.join(map(repr, lms))}.")
        if options.get("conv_impl") == "auto":  # native convolutions for shared weights
            options = options.replace(conv_impl="xla" if shared else default_conv_impl())
        self.conv_impl = options.get("conv_impl")
        spec = ModelSpec(self.input_shape, self.task.data.inputs, outputs, shared,
                         next_tokens=network == "lm")
        self.network = network
        self.train_model = _model(options, spec)
        self.model_built = test_mode(self.train_model) if self.test else self.train_model
        return self.model_built

    def build(self, factory: Callable, options: dict, *, network: str = "classifier"):
        """``factory(model, **options)``, with what the other components supply."""
        model = self.model(network)
        params = inspect.signature(factory).parameters
        kwargs = dict(options)

        def default(key):
            return kwargs.get(key, params[key].default if key in params else None)

        supply = {
            "ways": lambda: self.ways,
            "loss_fn": lambda: self.loss_fn,
            "metric_fn": lambda: self.metric_fn,
            "rule": lambda: self.rule(default("inner_lr"), default("inner_steps")),
            "adapt_filter": lambda: trainable(model),
            "num_classes": self.base_classes,
            "input_shape": lambda: self.input_shape,
            "embed_dim": lambda: self._embed_dim(model),
        }
        for key, value in supply.items():
            if key in params and key not in kwargs:
                value = value()
                if value is not None:
                    kwargs[key] = value
        if "inner_lr" in kwargs:
            check_rate("learner.inner_lr", kwargs["inner_lr"])
        return factory(model, **kwargs)

    def _embed_dim(self, model) -> int:
        dtype = "int32" if self.task.data.inputs == "tokens" else "float32"
        x = jax.ShapeDtypeStruct((2,) + self.input_shape, dtype)
        params = jax.eval_shape(model.init, jax.random.key(0))
        return int(jax.eval_shape(model.apply, params, x).shape[-1])


class Setup(NamedTuple):
    """A built learner and what the loop needs beside it.

    Attributes:
      learner: the :class:`jmeta.core.MetaLearner`.
      model: the model it was built on (in test mode for a test setup).
      train_model: the same model in training mode (BatchNorm statistics are estimated on it).
      task_map: the resolved task-mapping strategy.
      conv_impl: the resolved convolution implementation of the model, or ``None``.
    """

    learner: MetaLearner
    model: object
    train_model: object
    task_map: str
    conv_impl: str | None = None


@functools.lru_cache(maxsize=16)
def build(cfg: Config, task: Task, *, test: bool = False) -> Setup:
    """The learner of a config on its task (``test=True``: as validation and meta-testing use
    it, with the test ways and the model in test mode). Built once per (config, task)."""
    cfg = validate(cfg)
    entry = ALGORITHMS[cfg.learner.name]
    env = BuildEnv(cfg, task, test=test)
    options = {k: v for k, v in cfg.learner.items() if k != "name"}
    try:
        learner = entry.builder(env, **options)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"learner {entry.name!r}: {err}") from err
    if not isinstance(learner, MetaLearner):
        raise ConfigError(f"learner {entry.name!r}: its builder returned "
                          f"{type(learner).__name__}, not a jmeta.core.MetaLearner.")
    if cfg.rule and not env.rule_used:
        raise ConfigError(f"learner {entry.name!r} takes no inner rule (rule.name="
                          f"{cfg.rule.name!r}): leave out the rule section.")
    if cfg.rule.get("body_lr") is not None:  # the rule checks the adapted parameters at init
        try:
            jax.eval_shape(learner.init, jax.random.key(0))
        except ValueError as err:
            raise ConfigError(f"rule {cfg.rule.name!r} of learner {entry.name!r}: {err}") from err
    if task.classification and test_ways(cfg) != cfg.data.ways and not learner.any_ways:
        raise ConfigError(
            f"eval.ways={test_ways(cfg)} differs from data.ways={cfg.data.ways}, but "
            f"{entry.name!r} has a ways-sized head; only learners whose classifier is built from "
            "the support set (their MetaLearner.any_ways, e.g. protonets) test on other ways.")
    task_map = cfg.train.task_map
    if task_map == "auto":
        shared_native = env.network == "embedding" and env.conv_impl == "xla"
        task_map = "vmap" if learner.family == "conv" and shared_native else default_task_map(
            learner.family)
    return Setup(learner, env.model_built, env.train_model, task_map, env.conv_impl)


def build_learner(cfg: Config, task: Task, *, test: bool = False) -> MetaLearner:
    """The :class:`jmeta.core.MetaLearner` of a config (see :func:`build`)."""
    return build(cfg, task, test=test).learner


def check_config(cfg: Config) -> Config:
    """``cfg`` validated, with its model and learner built on shapes alone (no data read,
    nothing compiled): every mistake a config can hold, raised as a :class:`ConfigError`.

    Example:
      >>> cfg = check_config(Config(learner=dict(name="maml", inner_lr=0.4)))
      >>> cfg.learner.inner_lr
      0.4
    """
    cfg = validate(cfg)
    task = model_task(cfg)
    build(cfg, task)
    if task.classification:
        build(cfg, task, test=True)
    return cfg


def test_params(cfg: Config, task: Task, meta, key: PRNGKey):
    """Meta-parameters ready for testing: with BatchNorm running statistics
    (``bn_mode="running"``), the population statistics estimated from ``eval.bn_batches``
    batches of training images."""
    setup = build(cfg, task)
    model = setup.train_model
    if getattr(model, "stats_apply", None) is None:
        return meta
    shapes = jax.eval_shape(setup.learner.init, jax.random.key(0))["model"]
    base = jax.eval_shape(model.init, jax.random.key(0))
    if jax.tree.map(lambda s: s.shape, shapes) != jax.tree.map(lambda s: s.shape, base):
        # Per-step statistics (MAML++): the network adapted k steps uses slice k.
        episodes = task.train_episodes(key, cfg.eval.bn_batches)
        return dict(meta, model=per_step_batch_stats(model, setup.learner, meta, episodes))
    stats = estimate_batch_stats(model, meta["model"], task.train_images(key, cfg.eval.bn_batches))
    return dict(meta, model=stats)


def frozen_meta(model) -> Callable[[str], bool] | None:
    """The meta-parameters a run never changes, as a predicate on their paths
    (``"model/backbone/..."``, from the model's ``frozen``), or ``None``: run checkpoints leave
    them out (restores read them again from the pretrained weights), the outer optimizer keeps
    no state for them."""
    frozen = getattr(model, "frozen", None)
    if frozen is None:
        return None
    return lambda path: path.startswith("model/") and frozen(path[len("model/"):])


def build_schedule(cfg: Config):
    """The meta learning rate as a float (constant) or an optax schedule of the step."""
    opt, steps = cfg.optimizer, cfg.train.meta_steps
    if opt.schedule == "step":
        return optax.exponential_decay(opt.lr, opt.decay_every, opt.decay_rate, staircase=True)
    if opt.schedule == "linear":
        return optax.linear_schedule(opt.lr, opt.lr_min, steps)
    if opt.schedule == "cosine":
        return optax.cosine_decay_schedule(opt.lr, steps, alpha=opt.lr_min / opt.lr)
    return opt.lr


def build_optimizer(cfg: Config, model=None) -> optax.GradientTransformation:
    """The outer optimizer of a config: SGD or Adam on :func:`build_schedule`'s step sizes,
    after clipping the meta-gradient's global norm at ``optimizer.grad_clip`` when positive;
    the frozen parameters of ``model`` (:func:`frozen_meta`) get no update and no state.

    Example:
      >>> import jax.numpy as jnp
      >>> cfg = Config(optimizer=dict(name="sgd", lr=1.0, grad_clip=0.25))
      >>> tx = build_optimizer(validate(cfg))
      >>> updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"].tolist()  # the gradient's norm 5 scaled to 0.25, then the SGD step
      [-0.15000000596046448, -0.20000000298023224]
    """
    cfg = validate(cfg)
    lr = build_schedule(cfg)
    tx = optax.sgd(lr) if cfg.optimizer.name == "sgd" else optax.adam(lr)
    if cfg.optimizer.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.optimizer.grad_clip), tx)
    frozen = frozen_meta(model)
    if frozen is None:
        return tx

    def labels(params):
        return jax.tree.map(lambda f: "frozen" if f else "train", mask_by_path(params, frozen))

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
