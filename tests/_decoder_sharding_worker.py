"""Child process of tests/test_decoder_sharding.py, run with 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set before JAX is imported).

``python tests/_decoder_sharding_worker.py OUT JOB[,JOB...]`` with JOB one of:

``maml-ref``        one second-order MAML meta-step (1 inner step, LoRA on q and v, a class
                    head) of a tiny Llama on one device, without a mesh;
``maml-meshes``     the same meta-step on the meshes 1x8, 2x4, 4x2 and 8x1;
``metaicl-ref``, ``metaicl-meshes``  the same for a MetaICL meta-step (direct scoring);
``load``            from_pretrained(..., mesh=...) of a Llama checkpoint folder against the
                    unsharded load, and the errors raised before compiling.

Writes ``OUT/JOB.json`` (report) and, for meta-steps, ``OUT/JOB.npz`` (arrays). The test starts
several workers at once (XLA compiles on one core). Each mesh compiles once; every call is
waited on (FINDINGS: back-to-back collectives on simulated CPU devices can deadlock). The outer
optimizer keeps the step's meta-gradient in its state (:func:`keep_gradient`), so that the
comparison is of the gradients themselves, not only of parameters that one step barely moves.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmeta import distributed as dist
from jmeta.core import Batch, Episode, cross_entropy_loss, init_state, meta_step_fn
from jmeta.models import DecoderConfig, decoder

MESHES = ((1, 8), (2, 4), (4, 2), (8, 1))
WAYS, SHOTS, SEQ, META_BATCH = 4, 1, 8, 8
# The tiny Llama: 8 heads of 8, 2 key/value heads (so a model axis of 4 or 8 leaves k and v
# whole, one of 2 splits them), untied LM head, vocabulary 64.
ARCH = dict(model_type="llama", vocab_size=64, hidden_size=64, num_hidden_layers=1,
            num_attention_heads=8, num_key_value_heads=2, intermediate_size=128,
            max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=False)


def tiny() -> DecoderConfig:
    return DecoderConfig.from_dict(ARCH)


def episodes(key, vocab: int) -> Episode:
    k1, k2 = jax.random.split(key)
    n = WAYS * SHOTS
    labels = jnp.tile(jnp.arange(WAYS, dtype=jnp.int32), (META_BATCH, SHOTS))
    return Episode(Batch(jax.random.randint(k1, (META_BATCH, n, SEQ), 4, vocab), labels),
                   Batch(jax.random.randint(k2, (META_BATCH, n, SEQ), 4, vocab), labels))


def learner_of(part: str, cfg: DecoderConfig):
    if part == "maml":
        from jmeta.algorithms import maml

        model = decoder(cfg, output="classes", num_classes=WAYS, lora_targets=("q", "v"),
                        lora_rank=4)
        return maml(model, inner_lr=0.5, inner_steps=1, loss_fn=cross_entropy_loss,
                    adapt_filter=lambda path: not model.frozen(path))
    from jmeta.algorithms import metaicl

    model = decoder(cfg, output="logits", lora_targets=("q", "v"), lora_rank=4)
    return metaicl(model, ways=WAYS, labels=(0, 1, 2, 3), scoring="direct")


def keep_gradient() -> optax.GradientTransformation:
    """Passes the updates on and keeps them in its state: the new state's optimizer state then
    holds the step's meta-gradient itself, to compare across meshes."""
    return optax.GradientTransformation(lambda params: jax.tree.map(jnp.zeros_like, params),
                                        lambda updates, state, params=None: (updates, updates))


def flat(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def spec_text(x) -> str:
    return str(tuple(x.sharding.spec))


def setup(part: str):
    cfg = tiny()
    learner = learner_of(part, cfg)
    tx = dist.freeze_backbone(optax.chain(keep_gradient(), optax.sgd(0.5)))
    batch = episodes(jax.random.key(1), cfg.vocab_size)
    return cfg, learner, tx, batch, init_state(learner, tx, jax.random.key(0))


def reference(part: str, out: pathlib.Path) -> None:
    """The meta-step on one device, without any mesh: ``jit(meta_step_fn(...))``."""
    cfg, learner, tx, batch, init = setup(part)
    t = time.perf_counter()
    ref, metrics = jax.jit(meta_step_fn(learner, tx))(init, batch)
    jax.block_until_ready(ref)
    report = {"loss": float(metrics["loss"]), "compile_run_s": time.perf_counter() - t,
              "backbone_total_bytes": dist.per_device_bytes(
                  {"backbone": init.params["model"]["backbone"]}),
              "opt_state_bytes": int(sum(x.nbytes for x in jax.tree.leaves(init.opt_state)))}
    save(out, f"{part}-ref", report, {"init": flat(init.params), "params": flat(ref.params),
                                      "grad": flat(ref.opt_state)})


def meshes(part: str, out: pathlib.Path) -> None:
    """The same meta-step on each mesh of :data:`MESHES` (one compile each)."""
    cfg, learner, tx, batch, init = setup(part)
    report: dict = {"device_count": jax.device_count()}
    arrays: dict = {}
    for data, model in MESHES:
        name = f"{data}x{model}"
        mesh = dist.make_mesh(data=data, model=model)
        state = dist.shard_decoder_state(init, cfg, mesh)
        step = dist.decoder_meta_step(learner, tx, cfg, mesh, meta_batch_size=META_BATCH,
                                      donate=False)
        t = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        new, metrics = compiled(state, batch)
        jax.block_until_ready(new)
        elapsed = time.perf_counter() - t
        backbone = new.params["model"]["backbone"]
        layers = backbone["layers"]
        body = {"backbone": backbone}
        report[name] = {
            "mesh": dict(mesh.shape), "loss": float(metrics["loss"]), "compile_run_s": elapsed,
            "backbone_bytes": dist.per_device_bytes(body),
            "backbone_bytes_expected": dist.expected_per_device_bytes(body, cfg, model),
            "input_backbone_bytes": dist.per_device_bytes(
                {"backbone": state.params["model"]["backbone"]}),
            "specs": {k: spec_text(layers[k]["kernel"]) for k in ("q", "k", "v", "o", "up",
                                                                   "down")}
            | {"embed": spec_text(backbone["embed"]["embedding"]),
               "lm_head": spec_text(backbone["lm_head"]["kernel"]),
               "attn_norm": spec_text(layers["attn_norm"]["scale"])},
            "q_shard_shape": list(layers["q"]["kernel"].addressable_shards[0].data.shape),
            "replicated": {k: all(x.sharding.is_fully_replicated for x in jax.tree.leaves(v))
                           for k, v in (("lora", new.params["model"]["lora"]),
                                        ("head", new.params["model"].get("head", {})),
                                        ("opt_state", new.opt_state),
                                        ("step", new.step))},
            "devices": len(layers["q"]["kernel"].sharding.device_set),
            "collectives": collectives(compiled.as_text()),
        }
        arrays[f"{name}/params"] = flat(new.params)
        arrays[f"{name}/grad"] = flat(new.opt_state)
    save(out, f"{part}-meshes", report, arrays)


def collectives(hlo: str) -> dict[str, list[list[int]]]:
    """The result shapes of each kind of collective in a compiled program's HLO text."""
    found: dict[str, list[list[int]]] = {}
    kinds = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
    for line in hlo.splitlines():
        for kind in kinds:
            at = line.find(f" {kind}(")
            if at < 0 or "= " not in line[:at]:
                continue
            result = line[line.index("= ") + 2:at]  # the result type: one shape or a tuple
            for dims in re.findall(r"\[([\d,]*)\]", result):
                found.setdefault(kind, []).append([int(d) for d in dims.split(",") if d])
    return found


def save(out: pathlib.Path, job: str, report: dict, arrays: dict) -> None:
    np.savez(out / f"{job}.npz",
             **{f"{k}/{i}": a for k, v in arrays.items() for i, a in enumerate(v)})
    (out / f"{job}.json").write_text(json.dumps(report, indent=1))


def write_checkpoint(folder: pathlib.Path, cfg_dict: dict, seed: int = 0) -> pathlib.Path:
    """A random Llama checkpoint in Hugging Face naming (``[out, in]`` weights)."""
    from safetensors.numpy import save_file

    cfg = DecoderConfig.from_dict(cfg_dict)
    rng = np.random.default_rng(seed)
    h, v = cfg.hidden_size, cfg.vocab_size
    w = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    tensors = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": 1 + w(h),
               "lm_head.weight": w(v, h)}
    where = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
             "down": "mlp.down_proj"}
    for i in range(cfg.num_layers):
        tensors[f"model.layers.{i}.input_layernorm.weight"] = 1 + w(h)
        tensors[f"model.layers.{i}.post_attention_layernorm.weight"] = 1 + w(h)
        for ours, theirs in where.items():
            fan_in, fan_out = cfg.shapes()[ours]
            tensors[f"model.layers.{i}.{theirs}.weight"] = w(fan_out, fan_in)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg_dict))
    return folder


def error_text(fn) -> str | None:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return None


def load(out: pathlib.Path) -> None:
    from jmeta.models import from_pretrained

    fixture = pathlib.Path(__file__).resolve().parent / "fixtures" / "decoders" / "llama"
    if (fixture / "config.json").is_file():
        folder, source = fixture, "fixture"
    else:
        folder = write_checkpoint(out / "llama", dict(ARCH, num_hidden_layers=2), seed=3)
        source = "random checkpoint"
    report: dict = {"source": source, "folder": str(folder)}
    opts = dict(lora_targets=("q", "v"), lora_rank=4)
    model, plain = from_pretrained(folder, **opts)
    cfg = DecoderConfig.from_dict(json.loads((folder / "config.json").read_text()))
    ids = jax.random.randint(jax.random.key(5), (2, 6), 4, cfg.vocab_size)
    want = np.asarray(jax.jit(model.apply)(plain, ids))
    divisors = [m for m in (2, 4, 8) if cfg.num_heads % m == 0]
    report["model_sizes"] = divisors
    for m in divisors:
        mesh = dist.make_mesh(data=8 // m, model=m)
        model_m, sharded = from_pretrained(folder, mesh=mesh, **opts)
        mismatched, split = [], 0
        flat_plain = jax.tree_util.tree_flatten_with_path(plain["backbone"])[0]
        flat_sharded = jax.tree.leaves(sharded["backbone"])
        for (path, a), b in zip(flat_plain, flat_sharded):
            full = np.asarray(a)
            split += int(not b.sharding.is_fully_replicated)
            for shard in b.addressable_shards:
                if not np.array_equal(np.asarray(shard.data), full[shard.index]):
                    mismatched.append(jax.tree_util.keystr(path))
        got = np.asarray(jax.jit(model_m.apply)(sharded, ids))
        jax.block_until_ready(got)
        body = {"backbone": sharded["backbone"]}
        report[f"model{m}"] = {
            "mismatched": sorted(set(mismatched)), "split_leaves": split,
            "leaves": len(flat_sharded),
            "bytes": dist.per_device_bytes(body),
            "bytes_expected": dist.expected_per_device_bytes(body, cfg, m),
            "logits_max_abs_diff": float(np.max(np.abs(got - want))),
            "q_spec": spec_text(sharded["backbone"]["layers"]["q"]["kernel"])}
    report["total_bytes"] = dist.per_device_bytes({"backbone": plain["backbone"]})

    # Bad input, raised before anything compiles.
    small = DecoderConfig.from_dict(dict(ARCH, num_attention_heads=4, num_key_value_heads=2))
    learner = learner_of("maml", small)
    tx = dist.freeze_backbone(optax.adam(1e-2))
    mesh18 = dist.make_mesh(data=1, model=8)
    t = time.perf_counter()
    report["heads_error"] = error_text(lambda: dist.decoder_meta_step(learner, tx, small, mesh18))
    report["heads_error_s"] = time.perf_counter() - t
    report["shard_heads_error"] = error_text(lambda: dist.shard_decoder_state(
        init_state(learner, tx, jax.random.key(0)), small, mesh18))
    report["batch_error"] = error_text(lambda: dist.decoder_meta_step(
        learner, tx, small, dist.make_mesh(data=4, model=2), meta_batch_size=6))
    (out / "load.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    out_dir = pathlib.Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for job in sys.argv[2].split(","):  # e.g. maml-ref,metaicl-ref,load
        if job == "load":
            load(out_dir)
        else:
            part, which = job.split("-")
            {"ref": reference, "meshes": meshes}[which](part, out_dir)
