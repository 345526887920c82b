"""``jmeta bench plan``: will a meta-step of a full-size decoder fit, and how fast could it run?

The meta-step is compiled from abstract shapes only (``jax.eval_shape`` of the initial state,
``jax.ShapeDtypeStruct`` inputs that carry their shardings; no weight is ever created) on a
``data x model`` mesh of simulated CPU devices (``--xla_force_host_platform_device_count``;
the command re-executes itself with the flag when the mesh needs more devices than exist),
exactly as :func:`jmeta.distributed.decoder_meta_step` compiles it for real devices. Per row:

* per-device memory from the compiled executable's ``memory_analysis()``: arguments + outputs
  + temporaries - aliased (the donated state) bytes, each printed;
* FLOPs per step: the matrix-multiply FLOPs of the step's jaxpr with every scan multiplied by
  its length (:func:`jmeta.bench.jaxpr_flops`), and the bytes those matrix multiplies read and
  write (operands + results, every scan multiplied out), both over the whole mesh;
* a roofline time per device on a named accelerator: ``max(flops / devices / peak_flops,
  bytes / devices / bandwidth)`` (collectives and elementwise work not counted).

The memory is XLA:CPU's buffer assignment for the partitioned program, not a GPU's; see
docs/scale.md for how to read it.

Example:
  >>> row = plan_row("llama-3.2-1b", "metaicl", seq=256, meta_batch=8, mesh=(1, 1),
  ...                accelerator="h100")  # doctest: +SKIP
  >>> row["peak_bytes"] < 80e9  # doctest: +SKIP
  True
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# Hugging Face config.json keys of the full-size models (from their hub config.json files).
PRESETS: dict[str, dict] = {
    "gpt2-large": dict(model_type="gpt2", n_embd=1280, n_layer=36, n_head=20, vocab_size=50257,
                       n_positions=1024, activation_function="gelu_new",
                       layer_norm_epsilon=1e-5, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, vocab_size=151936,
                         max_position_embeddings=32768, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
                         use_sliding_window=False),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         intermediate_size=8192, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0,
                         rope_scaling=dict(factor=32.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0,
                                           original_max_position_embeddings=8192,
                                           rope_type="llama3"),
                         rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu"),
}

# name: (peak dense bfloat16 FLOP/s, HBM bandwidth bytes/s, memory bytes); NVIDIA datasheets:
# A100 80GB SXM (312 TFLOPS bf16 dense, 2,039 GB/s, 80 GB), H100 SXM (989 TFLOPS bf16 dense,
# the datasheet's 1,979 being with sparsity; 3.35 TB/s; 80 GB), H200 SXM (989 TFLOPS bf16
# dense, 4.8 TB/s, 141 GB).
ACCELERATORS: dict[str, tuple[float, float, float]] = {
    "a100-80gb": (312e12, 2.039e12, 80e9),
    "h100-sxm": (989e12, 3.35e12, 80e9),
    "h200": (989e12, 4.8e12, 141e9),
}
ALIASES = {"a100": "a100-80gb", "h100": "h100-sxm", "h200-sxm": "h200"}

METHODS = {  # name: (learner, inner steps, first order)
    "metaicl": ("metaicl", 0, False),
    "fomaml-1": ("maml", 1, True),
    "fomaml-5": ("maml", 5, True),
    "maml-1": ("maml", 1, False),
    "maml-5": ("maml", 5, False),
}
WAYS, SHOTS, QUERIES = 5, 1, 1  # 5-way 1-shot, one query per class
LORA = dict(lora_rank=8, lora_alpha=16.0, lora_targets=("q", "v"))
CAPACITIES = {"80GB": 80e9, "141GB": 141e9}

GRID = dict(models=tuple(PRESETS), methods=tuple(METHODS), remat=(False, True),
            seq=(256, 1024), meta_batch=(8, 32), meshes=((1, 1), (1, 8), (8, 1)))


def accelerator(name: str) -> tuple[str, tuple[float, float, float]]:
    """``(canonical name, (peak bf16 FLOP/s, bandwidth B/s, memory B))``.

    Example:
      >>> accelerator("h100")
      ('h100-sxm', (989000000000000.0, 3350000000000.0, 80000000000.0))
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {name!r}; known: {', '.join(ACCELERATORS)} "
                         f"(aliases {', '.join(ALIASES)}).")
    return key, ACCELERATORS[key]


def parse_mesh(text: str) -> tuple[int, int]:
    """``"2x4"`` -> ``(2, 4)`` (data x model).

    Example:
      >>> parse_mesh("1x8")
      (1, 8)
    """
    try:
        d, m = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--mesh must be DATAxMODEL such as 1x8; got {text!r}.") from None
    if d < 1 or m < 1:
        raise ValueError(f"--mesh sizes must be positive; got {text!r}.")
    return d, m


def task_shapes(method: str, seq: int) -> dict:
    """The token layout of one task: MAML classifies ``WAYS * SHOTS`` support and
    ``WAYS * QUERIES`` query sequences of ``seq`` tokens; MetaICL puts the support set as
    demonstrations before each query, each example cut to ``(seq - k) // (k + 1)`` tokens so
    that the prompt (k examples, k one-token labels, the query) fits in ``seq``.

    Example:
      >>> task_shapes("maml-1", 256)["example_tokens"], task_shapes("metaicl", 256)
      (256, {'support': 5, 'query': 5, 'example_tokens': 41, 'prompt_tokens': 251})
    """
    k = WAYS * SHOTS
    if METHODS[method][0] == "metaicl":
        e = (seq - k) // (k + 1)
        return dict(support=k, query=WAYS * QUERIES, example_tokens=e, prompt_tokens=k * (e + 1) + e)
    return dict(support=k, query=WAYS * QUERIES, example_tokens=seq, prompt_tokens=seq)


def _dot_bytes(jaxpr) -> float:
    """Bytes the matrix multiplies of ``jaxpr`` read (operands) and write (results), every scan
    multiplied by its length, a cond's costliest branch, a while loop's body once."""
    from jmeta.bench._flops import _sub_jaxprs

    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            for v in (*eqn.invars, *eqn.outvars):
                aval = v.aval
                total += math.prod(aval.shape) * aval.dtype.itemsize
            continue
        subs = [_dot_bytes(j) for val in eqn.params.values() for j in _sub_jaxprs(val)]
        if not subs:
            continue
        if name == "cond":
            total += max(subs)
        elif name == "while":
            total += _dot_bytes(eqn.params["body_jaxpr"].jaxpr)
        else:
            total += (eqn.params["length"] if name == "scan" else 1) * sum(subs)
    return total


def config_of(model: str | dict):
    """The :class:`jmeta.models.DecoderConfig` of a preset name, or of a config.json dict.

    Example:
      >>> config_of("llama-3.2-1b").num_parameters()
      1235814400
    """
    from jmeta.models import DecoderConfig

    if isinstance(model, dict):
        return DecoderConfig.from_dict(model)
    if model not in PRESETS:
        raise ValueError(f"unknown model {model!r}; presets: {', '.join(PRESETS)} (or "
                         "--config config.json).")
    return DecoderConfig.from_dict(PRESETS[model])


def build(model: str | dict, method: str, *, remat: bool, seq: int):
    """``(cfg, learner, optimizer, batch_shapes(meta_batch))`` of one plan row: a bfloat16
    backbone with float32 LoRA (rank 8 on q and v, every layer) and Adam on the adapters and
    the head only (:func:`jmeta.distributed.freeze_backbone`)."""
    import jax
    import jax.numpy as jnp
    import optax

    from jmeta.core import Batch, Episode, cross_entropy_loss
    from jmeta.distributed import freeze_backbone
    from jmeta.models import decoder

    cfg = config_of(model)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}.")
    kind, steps, first_order = METHODS[method]
    shapes = task_shapes(method, seq)
    if shapes["prompt_tokens"] > cfg.max_positions:
        raise ValueError(f"{model}: {shapes['prompt_tokens']} tokens exceed its context of "
                         f"{cfg.max_positions}.")
    common = dict(LORA, dtype="bfloat16", remat=remat)
    if kind == "metaicl":
        from jmeta.algorithms import metaicl

        net = decoder(cfg, output="logits", **common)
        learner = metaicl(net, ways=WAYS, labels=tuple(range(10, 10 + WAYS)), scoring="direct")
    else:
        from jmeta.algorithms import maml

        net = decoder(cfg, output="classes", num_classes=WAYS, **common)
        learner = maml(net, inner_lr=1e-3, inner_steps=steps, first_order=first_order,
                       remat=remat, loss_fn=cross_entropy_loss,
                       adapt_filter=lambda path: not net.frozen(path))
    tx = freeze_backbone(optax.adam(1e-4))
    e = shapes["example_tokens"]

    def batch(meta_batch: int) -> Episode:
        def one(n):
            return Batch(jax.ShapeDtypeStruct((meta_batch, n, e), jnp.int32),
                         jax.ShapeDtypeStruct((meta_batch, n), jnp.int32))
        return Episode(one(shapes["support"]), one(shapes["query"]))

    return cfg, learner, tx, batch


def _with_shardings(tree, shardings):
    import jax

    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        tree, shardings)


def plan_row(model: str | dict, method: str, *, remat: bool = False, seq: int = 256,
             meta_batch: int = 8, mesh: tuple[int, int] = (1, 1),
             accelerator_name: str = "h100-sxm", log=None) -> dict:
    """Compiles one meta-step from shapes and returns its row (see the module docstring).
    A mesh that does not divide the heads, or a meta-batch that does not split over the data
    axis, gives ``status`` ``"does not divide"`` / ``"batch does not split"`` (the checks of
    :func:`jmeta.distributed.decoder_meta_step`), not an exception.

    Example:
      >>> plan_row("qwen2.5-0.5b", "maml-1", mesh=(1, 8))["status"]  # doctest: +SKIP
      'does not divide'
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jmeta.bench._flops import _jaxpr_flops
    from jmeta.core import init_state
    from jmeta.distributed import (check_batch, check_decoder_mesh, decoder_meta_step,
                                   decoder_shardings, expected_per_device_bytes, make_mesh)

    data, model_size = mesh
    acc, (peak, bandwidth, _) = accelerator(accelerator_name)
    kind, steps, first_order = METHODS[method]
    row = dict(model=model if isinstance(model, str) else "config", method=method, learner=kind, inner_steps=steps,
               first_order=first_order, remat=remat, seq=seq, meta_batch=meta_batch,
               mesh=f"{data}x{model_size}", devices=data * model_size, accelerator=acc,
               tokens_per_task=None, status="ok")
    cfg, learner, tx, batch_of = build(model, method, remat=remat, seq=seq)
    shapes = task_shapes(method, seq)
    row["tokens_per_task"] = (shapes["support"] * shapes["example_tokens"] * (kind != "metaicl")
                              + shapes["query"] * shapes["prompt_tokens"])
    row["backbone_parameters"] = cfg.num_parameters()
    n = data * model_size
    try:  # the checks of decoder_meta_step, on the mesh's shape alone (no devices needed)
        check_decoder_mesh(cfg, SimpleNamespace(shape={"data": data, "model": model_size}))
        check_batch(meta_batch, data)
    except ValueError as err:
        text = str(err)
        row["status"] = "does not divide" if "does not divide" in text else "batch does not split"
        row["reason"] = text
        return row
    if n > jax.device_count():
        raise RuntimeError(f"mesh {data}x{model_size} needs {n} devices; this process has "
                           f"{jax.device_count()} (jmeta bench plan re-executes itself with "
                           "--xla_force_host_platform_device_count).")
    mesh_obj = make_mesh(data=data, model=model_size, devices=jax.devices()[:n])
    step = decoder_meta_step(learner, tx, cfg, mesh_obj, meta_batch_size=meta_batch)
    abstract = jax.eval_shape(lambda k: init_state(learner, tx, k), jax.random.key(0))
    state = _with_shardings(abstract, decoder_shardings(abstract, cfg, mesh_obj))
    batch = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh_obj,
                                                                                P("data"))),
        batch_of(meta_batch))
    row["state_bytes_per_device"] = expected_per_device_bytes(abstract, cfg, model_size)
    row["batch_bytes_per_device"] = sum(
        math.prod(s.shape) * s.dtype.itemsize for s in jax.tree.leaves(batch)) // data
    t0 = time.perf_counter()
    traced = step.trace(state, batch)
    flops, exact = _jaxpr_flops(traced.jaxpr.jaxpr)
    dot_bytes = _dot_bytes(traced.jaxpr.jaxpr)
    t1 = time.perf_counter()
    compiled = traced.lower().compile()
    t2 = time.perf_counter()
    ma = compiled.memory_analysis()
    mem = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in
           ("argument", "output", "temp", "alias", "generated_code")}
    peak_bytes = mem["argument"] + mem["output"] + mem["temp"] - mem["alias"]
    t_flops = flops / n / peak
    t_bytes = dot_bytes / n / bandwidth
    row.update(
        trace_s=round(t1 - t0, 2), compile_s=round(t2 - t1, 2),
        **{f"{k}_bytes": v for k, v in mem.items()}, peak_bytes=peak_bytes,
        flops_per_step=flops, flops_exact=exact, flops_per_device=flops / n,
        dot_bytes_per_step=dot_bytes, dot_bytes_per_device=dot_bytes / n,
        roofline_compute_s=t_flops, roofline_memory_s=t_bytes,
        roofline_s=max(t_flops, t_bytes),
        roofline_ms_by_accelerator={
            name: 1e3 * max(flops / n / pk, dot_bytes / n / bw)
            for name, (pk, bw, _) in ACCELERATORS.items()},
        bound="compute" if t_flops >= t_bytes else "memory",
        **{f"fits_{k}": peak_bytes <= v for k, v in CAPACITIES.items()})
    if log:
        log(f"  memory per device: arguments {_gb(mem['argument'])}, outputs "
            f"{_gb(mem['output'])}, temporaries {_gb(mem['temp'])}, aliased "
            f"{_gb(mem['alias'])} -> {_gb(peak_bytes)}")
    del compiled, traced, step
    jax.clear_caches()
    gc.collect()
    return row


def _gb(b) -> str:
    return f"{b / 1e9:.2f} GB"


def grid_rows(subset: str = "all") -> list[dict]:
    """The rows of the full table (3 models x 5 methods x remat x 2 seq x 2 meta-batch x
    3 meshes = 360), each ``{"model", "method", "remat", "seq", "meta_batch", "mesh",
    "run"}``; ``run`` marks the rows of ``subset``: ``"all"``, or ``"core"`` (every model,
    method, remat and mesh at seq 1024 / meta-batch 8, plus seq 256 and meta-batch 32 for
    second-order MAML with 5 steps and remat, on every mesh), or ``"wide"`` (``core`` and
    every method at seq 256 / meta-batch 8).

    Example:
      >>> rows = grid_rows("core")
      >>> len(rows), sum(r["run"] for r in rows)
      (360, 108)
    """
    rows = []
    for model in GRID["models"]:
        for method in GRID["methods"]:
            for remat in GRID["remat"]:
                for seq in GRID["seq"]:
                    for mb in GRID["meta_batch"]:
                        for mesh in GRID["meshes"]:
                            if subset == "all":
                                run = True
                            elif subset == "core":
                                run = ((seq == 1024 and mb == 8)
                                       or (method == "maml-5" and remat
                                           and (seq == 1024 or mb == 8)))
                            elif subset == "wide":  # core + every method at 256 / 8
                                run = ((seq == 1024 and mb == 8) or (seq == 256 and mb == 8)
                                       or (method == "maml-5" and remat and seq == 1024))
                            else:
                                raise ValueError(f"unknown --subset {subset!r}: all, wide or "
                                                 "core.")
                            rows.append(dict(model=model, method=method, remat=remat, seq=seq,
                                             meta_batch=mb, mesh=mesh, run=run))
    return rows


def command_of(row: dict, accelerator_name: str) -> str:
    """The ``jmeta bench plan`` command line of one row.

    Example:
      >>> command_of(dict(model="gpt2-large", method="maml-5", remat=True, seq=1024,
      ...                 meta_batch=8, mesh=(1, 8)), "h100")
      'jmeta bench plan --model gpt2-large --method maml-5 --remat --seq 1024 --meta-batch 8 --mesh 1x8 --accelerator h100'
    """
    d, m = row["mesh"] if isinstance(row["mesh"], tuple) else parse_mesh(row["mesh"])
    return (f"jmeta bench plan --model {row['model']} --method {row['method']}"
            + (" --remat" if row["remat"] else "")
            + f" --seq {row['seq']} --meta-batch {row['meta_batch']} --mesh {d}x{m}"
            + f" --accelerator {accelerator_name}")


def markdown(rows: list[dict], meta: dict, *, skip_not_run: bool = False) -> str:
    """The plan table in Markdown (``skip_not_run``: only the rows compiled or checked)."""
    acc = meta["accelerator"]
    lines = [
        f"Meta-step plan: per-device memory from XLA's compiled memory analysis (XLA:CPU, "
        f"simulated devices), FLOPs from the jaxpr, roofline (bound on {acc}) on A100-80GB / "
        f"H100-SXM / H200 (bf16 dense peak; HBM bandwidth). Last run at commit "
        f"{meta['commit']}, {meta['date']}, jax {meta['jax']}, {meta['host']}; each row names "
        f"the commit it was compiled at.",
        "",
        "| model | method | remat | seq | meta-batch | mesh | GB per device (arg + out + temp "
        "- alias) | fits 80 GB | fits 141 GB | TFLOP / step | roofline ms A100 / H100 / H200 "
        "| bound | compile s | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if skip_not_run and r["status"] in ("not run", "pending"):
            continue
        head = (f"| {r['model']} | {r['method']} | {'yes' if r['remat'] else 'no'} | {r['seq']} "
                f"| {r['meta_batch']} | {r['mesh']} |")
        if r["status"] == "ok":
            mem = (f"{r['peak_bytes'] / 1e9:.1f} ({r['argument_bytes'] / 1e9:.2f} + "
                   f"{r['output_bytes'] / 1e9:.2f} + {r['temp_bytes'] / 1e9:.1f} - "
                   f"{r['alias_bytes'] / 1e9:.2f})")
            by = r.get("roofline_ms_by_accelerator") or {acc: r["roofline_s"] * 1e3}
            times = " / ".join(f"{by[a]:.0f}" if a in by else "-" for a in ACCELERATORS)
            lines.append(f"{head} {mem} | {'yes' if r['fits_80GB'] else 'no'} | "
                         f"{'yes' if r['fits_141GB'] else 'no'} | "
                         f"{r['flops_per_step'] / 1e12:.0f} | {times} | "
                         f"{r['bound']} | {r['compile_s']:.0f} | {r.get('commit', '')} |")
        elif r["status"] in ("not run", "pending"):
            lines.append(f"{head} {r['status']}: `{r.get('command', '')}` | | | | | | | |")
        else:
            m = re.search(r"size (\d+) does not divide the (\d+) attention heads",
                          r.get("reason", ""))
            why = f": {m.group(2)} heads over {m.group(1)}" if m else ""
            lines.append(f"{head} {r['status']}{why} | | | | | | | |")
    return "\n".join(lines) + "\n"


def _meta(acc_name: str) -> dict:
    import jax

    from jmeta.bench._measure import cpu_model
    from jmeta.train import git_commit

    acc, (peak, bw, mem) = accelerator(acc_name)
    return dict(accelerator=acc, peak_flops=peak, bandwidth=bw, memory=mem,
                commit=git_commit(), date=datetime.datetime.now().isoformat(timespec="seconds"),
                jax=jax.__version__, host=f"{cpu_model()}, {os.cpu_count()} cores",
                devices=jax.device_count(), capacities=CAPACITIES, ways=WAYS, shots=SHOTS,
                queries_per_class=QUERIES, lora=dict(LORA, lora_targets=list(LORA["lora_targets"])),
                backbone_dtype="bfloat16", adapter_dtype="float32", optimizer="adam (adapters, head)")


def run_grid(out: Path, *, subset: str, acc_name: str, log=print) -> dict:
    """Runs the grid's selected rows, rewriting ``plan.json`` and ``plan.md`` in ``out``
    after every row (an interrupted grid keeps what it measured); rows already measured in an
    existing ``plan.json`` of the same accelerator are kept, not compiled again."""
    out.mkdir(parents=True, exist_ok=True)
    meta = _meta(acc_name)
    json_path, md_path = out / "plan.json", out / "plan.md"
    done, old_meta = {}, None
    if json_path.is_file():
        old = json.loads(json_path.read_text())
        if old.get("meta", {}).get("accelerator") == meta["accelerator"]:
            old_meta = old["meta"]
            done = {_key(r): r for r in old["rows"]
                    if r["status"] not in ("not run", "error", "pending")}
    todo = grid_rows(subset)
    results: dict = {}
    for spec in todo:
        key = _key(spec)
        if key in done:
            results[key] = done[key]
        elif not spec["run"]:
            results[key] = dict(_label(spec), status="not run",
                                command=command_of(spec, meta["accelerator"]))

    def table() -> list[dict]:
        return [results.get(_key(s), dict(_label(s), status="pending")) for s in todo]

    # Compile order: seq 1024 / meta-batch 8 first (the core of the table), then the rest; the
    # table keeps the grid's order and is rewritten after every row.
    order = sorted((s for s in todo if _key(s) not in results),
                   key=lambda s: (not (s["seq"] == 1024 and s["meta_batch"] == 8),))
    if not order and old_meta:  # nothing to compile: the table again, as it was measured
        meta = old_meta
    for i, spec in enumerate(order):
        log(f"[{i + 1}/{len(order)}] {command_of(spec, meta['accelerator'])}")
        t = time.perf_counter()
        try:
            row = plan_row(spec["model"], spec["method"], remat=spec["remat"], seq=spec["seq"],
                           meta_batch=spec["meta_batch"], mesh=spec["mesh"],
                           accelerator_name=acc_name, log=log)
        except Exception as err:  # noqa: BLE001  (record and go on)
            row = dict(_label(spec), status="error", reason=f"{type(err).__name__}: {err}")
        row["wall_s"] = round(time.perf_counter() - t, 1)
        row["commit"] = meta["commit"]
        log(f"  -> {_summary(row)}")
        results[_key(spec)] = row
        json_path.write_text(json.dumps({"meta": meta, "rows": table()}, indent=1))
        md_path.write_text(markdown(table(), meta))
    rows = table()
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md_path.write_text(markdown(rows, meta))
    return {"meta": meta, "rows": rows, "out": str(out)}


def _label(spec: dict) -> dict:
    d, m = spec["mesh"] if isinstance(spec["mesh"], tuple) else parse_mesh(spec["mesh"])
    return dict(model=spec["model"], method=spec["method"], remat=spec["remat"],
                seq=spec["seq"], meta_batch=spec["meta_batch"], mesh=f"{d}x{m}")


def _key(spec: dict) -> tuple:
    lab = _label(spec)
    return tuple(lab[k] for k in ("model", "method", "remat", "seq", "meta_batch", "mesh"))


def _summary(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('reason', '')}"
    return (f"{row['peak_bytes'] / 1e9:.2f} GB per device, {row['flops_per_step'] / 1e12:.2f} "
            f"TFLOP per step, roofline {row['roofline_s'] * 1e3:.1f} ms ({row['bound']}-bound), "
            f"fits 80 GB: {row['fits_80GB']}, 141 GB: {row['fits_141GB']}; trace "
            f"{row['trace_s']} s, compile {row['compile_s']} s")


def parser() -> argparse.ArgumentParser:
    """The options of ``jmeta bench plan``."""
    p = argparse.ArgumentParser(prog="jmeta bench plan", description=(
        "Compile the meta-step of a full-size decoder from abstract shapes on a simulated "
        "data x model mesh; print per-device memory (compiled memory analysis), FLOPs per "
        "step and a roofline time on an accelerator."))
    p.add_argument("--model", default="llama-3.2-1b", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--config", help="a Hugging Face config.json to plan instead of a preset")
    p.add_argument("--method", default="maml-1", help=f"one of {', '.join(METHODS)}")
    p.add_argument("--inner-steps", type=int,
                   help="MAML inner steps (1 or 5): with --method maml / fomaml")
    p.add_argument("--remat", action="store_true",
                   help="recompute each decoder layer (and each inner step) in the backward pass")
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--meta-batch", type=int, default=8, help="tasks per meta-step (default 8)")
    p.add_argument("--mesh", default="1x1", help="DATAxMODEL devices (default 1x1)")
    p.add_argument("--accelerator", default="h100-sxm",
                   help=f"roofline target: {', '.join(ACCELERATORS)} (default h100-sxm)")
    p.add_argument("--grid", action="store_true",
                   help="the whole table (3 models x 5 methods x remat x seq 256/1024 x "
                        "meta-batch 8/32 x meshes 1x1, 1x8, 8x1) into --out")
    p.add_argument("--subset", default="all",
                   help="with --grid: all (360 rows), wide (180) or core (108); the others are "
                        "listed as not run, with their command. Rows already in --out's "
                        "plan.json are kept, not compiled again")
    p.add_argument("--out", default="benchmarks/results/plan",
                   help="--grid output folder (plan.json, plan.md)")
    p.add_argument("--json", action="store_true", help="print the row as JSON")
    return p


def _needed_devices(args) -> int:
    if args.grid:
        return max(d * m for d, m in GRID["meshes"])
    d, m = parse_mesh(args.mesh)
    return d * m


def main(argv: list[str] | None = None) -> int:
    """``jmeta bench plan ...``: one row, or ``--grid``."""
    args = parser().parse_args(argv)
    try:
        method = args.method
        if args.inner_steps is not None:
            if method not in ("maml", "fomaml"):
                raise ValueError("--inner-steps goes with --method maml or fomaml.")
            method = f"{method}-{args.inner_steps}"
        elif method in ("maml", "fomaml"):
            method = f"{method}-1"
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}.")
        model = args.model
        if args.config:
            model = json.loads(Path(args.config).read_text(encoding="utf-8"))
        if not args.grid:
            config_of(model)
        accelerator(args.accelerator)
        need = _needed_devices(args)
    except (ValueError, OSError) as err:
        print(f"jmeta: error: {err}", file=sys.stderr)
        return 2
    if not os.environ.get(_CHILD):  # always XLA:CPU, with the devices and flags below
        return _reexec(argv if argv is not None else sys.argv[1:], max(need, 1))
    if args.grid:
        res = run_grid(Path(args.out), subset=args.subset, acc_name=args.accelerator)
        print(f"wrote {Path(args.out) / 'plan.json'} and plan.md ({len(res['rows'])} rows)")
        return 0
    print(command_of(dict(model=args.model, method=method, remat=args.remat, seq=args.seq,
                          meta_batch=args.meta_batch, mesh=parse_mesh(args.mesh)),
                     args.accelerator))
    row = plan_row(model, method, remat=args.remat, seq=args.seq,
                   meta_batch=args.meta_batch, mesh=parse_mesh(args.mesh),
                   accelerator_name=args.accelerator, log=print)
    print(_summary(row))
    if args.json:
        print(json.dumps(row))
    return 0 if row["status"] in ("ok", "does not divide", "batch does not split") else 1


_CHILD = "JMETA_PLAN_CHILD"


# LLVM's cheap optimisation level: the memory analysis (XLA's buffer assignment, before LLVM)
# is the same, the compile 30% shorter (Llama-3.2-1B MAML: 218.33 GB per device either way).
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def _reexec(argv: list[str], n: int) -> int:
    """``python -m jmeta.bench plan ...`` again, on XLA:CPU with ``n`` simulated devices (the
    flag must be set before JAX starts) and :data:`FAST_COMPILE`: the plan is the same on
    every machine, whatever accelerator it has."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count=")]
    flags += [f for f in FAST_COMPILE if f not in flags]
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{_CHILD: "1"},
               XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={n}"]),
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    return subprocess.call([sys.executable, "-m", "jmeta.bench", "plan", *argv], env=env)
