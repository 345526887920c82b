"""The flat config layout of earlier run directories (one dict of 86 keys), read into the nested
layout: every ``config.json`` written before the components' settings were nested still loads,
and builds the same task, model, learner and optimizer it built then."""

from __future__ import annotations

from collections.abc import Mapping

from jmeta.core._registry import ConfigError, closest

FLAT_DEFAULTS = dict(
    name="run", task="sinusoid", algorithm="maml", inner_rule="default", k_shot=10, k_query=0,
    train_shots=0, ways=5, model="mlp", hidden=(40, 40), filters=64, strided=False,
    widths=(64, 160, 320, 640), conv_impl="auto", bn_mode="transductive", bn_batches=20,
    distance="sqeuclidean", proto_scale=1.0, data_dir="", cache_dir="", sampler="device",
    image_size=0, omniglot_protocol="vinyals", augment_rotations=False, text_file="",
    text_split="", max_length=32, bert_path="", lora_rank=8, lora_alpha=16.0,
    lora_targets=("query", "value"), lora_top_layers=0, pooling="mean", inner_steps=1,
    inner_lr=0.01, body_inner_lr=0.0, metasgd_init_lr=(0.005, 0.1), first_order=False,
    inner_batch=0, inner_beta1=0.9, inner_truncate=0, lstm_hidden=20, lstm_output_scale=0.1,
    msl_anneal_steps=5000, first_order_until=0, per_step_bn=True, imaml_lam=1.0, cg_steps=5,
    cg_damping=0.0, num_context=100, film_layer=2, pretrain_batch=16, finetune_steps=100,
    finetune_lr=0.01, base_classes=0, remat=False, compute_dtype="float32", num_steps=70_000,
    meta_batch_size=25, meta_optimizer="adam", meta_lr=1e-3, meta_grad_clip=0.0,
    lr_schedule="constant", lr_decay_every=2000, lr_decay_rate=0.5, lr_min=0.0, task_map="auto",
    mesh_data=0, mesh_model=1, chunk_size=0, seed=0, log_every=1000, save_every=1000,
    keep_checkpoints=3, baseline=True, baseline_steps=0,
    baseline_lrs=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1), eval_tasks=1000,
    eval_steps=(1, 10), eval_k_query=0, eval_ways=0, eval_split="test", val_tasks=200,
    eval_chunk_size=0, paper_result=(), paper_source="",
)
"""Every key of the flat layout with its default there."""

NESTED = {
    "task": "data.name", "k_shot": "data.shots", "k_query": "data.queries",
    "train_shots": "data.train_shots", "ways": "data.ways", "sampler": "data.sampler",
    "augment_rotations": "data.augment_rotations", "data_dir": "data.data_dir",
    "cache_dir": "data.cache_dir", "image_size": "data.image_size",
    "omniglot_protocol": "data.protocol", "text_file": "data.files", "text_split":
    "data.class_split", "max_length": "data.max_length", "base_classes": "data.base_classes",
    "model": "model.name", "hidden": "model.hidden", "filters": "model.filters",
    "strided": "model.strided", "widths": "model.widths", "conv_impl": "model.conv_impl",
    "bn_mode": "model.bn_mode", "bert_path": "model.path", "lora_rank": "model.rank",
    "lora_alpha": "model.alpha", "lora_targets": "model.targets",
    "lora_top_layers": "model.top_layers", "pooling": "model.pooling",
    "compute_dtype": "model.dtype", "num_context": "model.num_context",
    "film_layer": "model.film_layer", "algorithm": "learner.name",
    "inner_steps": "learner.inner_steps", "inner_lr": "learner.inner_lr",
    "first_order": "learner.first_order", "remat": "learner.remat",
    "inner_truncate": "learner.truncate", "inner_batch": "learner.inner_batch",
    "metasgd_init_lr": "learner.init_lr", "distance": "learner.distance",
    "proto_scale": "learner.scale", "msl_anneal_steps": "learner.msl_anneal_steps",
    "first_order_until": "learner.first_order_until", "per_step_bn": "learner.per_step_bn",
    "imaml_lam": "learner.lam", "cg_steps": "learner.cg_steps",
    "cg_damping": "learner.cg_damping", "pretrain_batch": "learner.pretrain_batch",
    "finetune_steps": "learner.finetune_steps", "finetune_lr": "learner.finetune_lr",
    "inner_rule": "rule.name", "body_inner_lr": "rule.body_lr", "inner_beta1": "rule.b1",
    "lstm_hidden": "rule.hidden", "lstm_output_scale": "rule.output_scale",
    "meta_optimizer": "optimizer.name", "meta_lr": "optimizer.lr",
    "meta_grad_clip": "optimizer.grad_clip", "lr_schedule": "optimizer.schedule",
    "lr_decay_every": "optimizer.decay_every", "lr_decay_rate": "optimizer.decay_rate",
    "lr_min": "optimizer.lr_min", "num_steps": "train.meta_steps",
    "meta_batch_size": "train.meta_batch_size", "seed": "train.seed",
    "log_every": "train.log_every", "save_every": "train.save_every",
    "keep_checkpoints": "train.keep_checkpoints", "task_map": "train.task_map",
    "chunk_size": "train.chunk_size", "mesh_data": "train.mesh_data",
    "mesh_model": "train.mesh_model", "baseline": "train.baseline",
    "baseline_steps": "train.baseline_steps", "eval_tasks": "eval.tasks",
    "eval_steps": "eval.steps", "eval_k_query": "eval.queries", "eval_ways": "eval.ways",
    "eval_split": "eval.split", "val_tasks": "eval.val_tasks",
    "eval_chunk_size": "eval.chunk_size", "bn_batches": "eval.bn_batches",
    "baseline_lrs": "eval.baseline_lrs", "paper_result": "paper.result",
    "paper_source": "paper.source",
}
"""Where each flat key went (for messages; which learner options apply depends on the
algorithm, see :func:`from_flat`)."""

TEXT_TASKS = ("banking77", "text")
_RULE_TAKERS = ("maml", "fomaml", "anil", "boil", "protomaml", "reptile", "finetune")
_GRADIENT = ("maml", "fomaml", "anil", "boil", "finetune")


def is_flat(values: dict) -> bool:
    """Whether ``values`` is a config in the flat layout (a key other than ``name`` of it).

    Example:
      >>> is_flat({"name": "x", "k_shot": 5}), is_flat({"name": "x", "data": {}})
      (True, False)
    """
    return any(k in FLAT_DEFAULTS and k != "name" and not (k == "model" and isinstance(v, Mapping))
               for k, v in values.items())


def flat_hint(key: str) -> str:
    """`` In the nested layout it is 'data.shots'.`` for a flat key, else ``""``.

    Example:
      >>> flat_hint("k_shot")
      " It is 'data.shots' in the nested layout (docs/guide.md, Configs)."
    """
    if key in NESTED:
        return f" It is {NESTED[key]!r} in the nested layout (docs/guide.md, Configs)."
    return ""


def _rule(v: dict) -> dict:
    rule = v["inner_rule"]
    if rule == "sgd" or (rule == "default" and v["body_inner_lr"]):
        return dict(name="sgd", body_lr=v["body_inner_lr"]) if v["body_inner_lr"] else {"name": "sgd"}
    if rule == "default":
        return {}
    if rule == "adam":
        return dict(name="adam", b1=v["inner_beta1"])
    if rule == "meta_lstm":
        return dict(name="meta_lstm", hidden=v["lstm_hidden"])
    if rule == "lstm_optimizer":
        return dict(name="lstm_optimizer", hidden=v["lstm_hidden"],
                    output_scale=v["lstm_output_scale"])
    return dict(name=rule)


def _learner(v: dict) -> dict:
    alg = v["algorithm"]
    steps, lr = v["inner_steps"], v["inner_lr"]
    truncate = v["inner_truncate"] or None
    if alg in _GRADIENT or alg == "protomaml":
        out = dict(inner_lr=lr, inner_steps=steps, remat=v["remat"], truncate=truncate)
        if alg != "fomaml":
            out["first_order"] = v["first_order"]
        if alg == "protomaml":
            out["scale"] = v["proto_scale"]
        return out
    if alg == "metasgd":
        return dict(init_lr=tuple(v["metasgd_init_lr"]), inner_steps=steps,
                    first_order=v["first_order"], remat=v["remat"], truncate=truncate)
    if alg == "reptile":
        return dict(inner_lr=lr, inner_steps=steps, inner_batch=v["inner_batch"] or None)
    if alg == "mamlpp":
        return dict(inner_steps=steps, inner_lr=lr, msl_anneal_steps=v["msl_anneal_steps"],
                    first_order_until=v["first_order_until"],
                    per_step_bn=bool(v["per_step_bn"] and v["model"] != "mlp"), remat=v["remat"])
    if alg == "cavia":
        return dict(inner_lr=lr, inner_steps=steps, first_order=v["first_order"])
    if alg == "imaml":
        return dict(inner_lr=lr, inner_steps=steps, lam=v["imaml_lam"], cg_steps=v["cg_steps"],
                    cg_damping=v["cg_damping"])
    if alg == "protonets":
        return dict(distance=v["distance"])
    if alg in ("baseline", "baseline++"):
        return dict(finetune_steps=v["finetune_steps"], finetune_lr=v["finetune_lr"],
                    pretrain_batch=v["pretrain_batch"])
    return {}


def _model(v: dict) -> dict:
    name, alg = v["model"], v["algorithm"]
    if name == "bert_lora":
        return dict(name="bert", path=v["bert_path"], rank=v["lora_rank"], alpha=v["lora_alpha"],
                    targets=tuple(v["lora_targets"]), top_layers=v["lora_top_layers"] or None,
                    pooling=v["pooling"], dtype=v["compute_dtype"],
                    zero_head=alg not in ("protomaml", "protonets"))
    if alg == "cavia":
        if name == "mlp":
            return dict(name="context_mlp", hidden=tuple(v["hidden"]),
                        num_context=v["num_context"])
        return dict(name="context_conv4", filters=v["filters"], strided=v["strided"],
                    film_layer=v["film_layer"], num_context=v["num_context"],
                    conv_impl=v["conv_impl"])
    dtype = dict(dtype=v["compute_dtype"])
    if name == "mlp":
        return dict(name="mlp", hidden=tuple(v["hidden"]), **dtype)
    if name == "resnet12":
        return dict(name="resnet12", widths=tuple(v["widths"]), bn_mode=v["bn_mode"],
                    conv_impl=v["conv_impl"], **dtype)
    return dict(name=name, filters=v["filters"], strided=v["strided"], bn_mode=v["bn_mode"],
                conv_impl=v["conv_impl"], **dtype)


def _data(v: dict) -> dict:
    task = v["task"]
    if task == "sinusoid":
        return dict(name="sinusoid", shots=v["k_shot"], queries=v["k_query"],
                    train_shots=v["train_shots"])
    data = dict(name=task, ways=v["ways"], shots=v["k_shot"], queries=v["k_query"] or 15,
                train_shots=v["train_shots"], sampler=v["sampler"],
                augment_rotations=v["augment_rotations"], base_classes=v["base_classes"],
                data_dir=v["data_dir"], cache_dir=v["cache_dir"])
    if task == "omniglot":
        data.update(protocol=v["omniglot_protocol"], image_size=v["image_size"] or 28)
    elif task == "miniimagenet":
        data.update(image_size=v["image_size"] or 84)
    elif task in TEXT_TASKS:
        data.update(max_length=v["max_length"], tokenizer=v["bert_path"])
        if task == "text":
            data.update(files=v["text_file"], class_split=v["text_split"])
    return data


def from_flat(flat: dict, source: str = "config") -> dict:
    """The nested config of a flat one: ``{"name", "data", "model", "learner", "rule",
    "optimizer", "train", "eval", "paper"}``, the learner's options those its algorithm took.

    Example:
      >>> nested = from_flat({"task": "omniglot", "algorithm": "protonets", "model": "conv4",
      ...                     "ways": 60, "k_shot": 1, "num_steps": 20000})
      >>> nested["data"]["ways"], nested["learner"], nested["train"]["meta_steps"]
      (60, {'name': 'protonets', 'distance': 'sqeuclidean'}, 20000)
    """
    unknown = [k for k in flat if k not in FLAT_DEFAULTS]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"Unknown config key {k!r} in {source} (a config in the flat "
                          f"layout).{closest(k, FLAT_DEFAULTS)}")
    v = {**FLAT_DEFAULTS, **flat}
    alg = v["algorithm"]
    rule = _rule(v) if alg in _RULE_TAKERS else {}
    return dict(
        name=v["name"],
        data=_data(v),
        model=_model(v),
        learner=dict(name=alg, **_learner(v)),
        rule=rule,
        optimizer=dict(name=v["meta_optimizer"], lr=v["meta_lr"], grad_clip=v["meta_grad_clip"],
                       schedule=v["lr_schedule"], decay_every=v["lr_decay_every"],
                       decay_rate=v["lr_decay_rate"], lr_min=v["lr_min"]),
        train=dict(meta_steps=v["num_steps"], meta_batch_size=v["meta_batch_size"],
                   seed=v["seed"], log_every=v["log_every"], save_every=v["save_every"],
                   keep_checkpoints=v["keep_checkpoints"], task_map=v["task_map"],
                   chunk_size=v["chunk_size"], mesh_data=v["mesh_data"],
                   mesh_model=v["mesh_model"], baseline=v["baseline"],
                   baseline_steps=v["baseline_steps"]),
        eval=dict(tasks=v["eval_tasks"], steps=tuple(v["eval_steps"]),
                  queries=v["eval_k_query"], ways=v["eval_ways"], split=v["eval_split"],
                  val_tasks=v["val_tasks"], chunk_size=v["eval_chunk_size"],
                  bn_batches=v["bn_batches"], baseline_lrs=tuple(v["baseline_lrs"])),
        paper=dict(result=tuple(v["paper_result"]), source=v["paper_source"]),
    )
