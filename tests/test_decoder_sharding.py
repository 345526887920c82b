"""Decoders on a (data x model) mesh: the backbone split over ``model`` (tensor parallel), the
meta-batch over ``data``; 8 simulated CPU devices.

The main pytest process has one CPU device, so the multi-device work runs in child processes
(``tests/_decoder_sharding_worker.py`` with ``--xla_force_host_platform_device_count=8``),
started together (XLA compiles on one core): the MAML meshes, the MetaICL meshes, and the
one-device references with the checkpoint loads. Each child has a timeout.

"Equal" is ``rtol=1e-5`` (float32: the row-split maps sum partial products over devices, the
data axis sums tasks, in another order), with ``atol`` 1e-6 of the largest entry of a leaf for
entries that are zero up to rounding (a LoRA ``a`` matrix's meta-gradient when ``b`` starts at
zero). The comparison is of the loss, the step's meta-gradient (kept in the optimizer state by
the worker) and the new meta-parameters.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).resolve().parent / "_decoder_sharding_worker.py"
MESHES = ("1x8", "2x4", "4x2", "8x1")
RTOL = 1e-5
TIMEOUT = 300
# 8 simulated devices; and LLVM's cheaper optimisation level, which halves these small programs'
# compile time (the values are compared between runs under the same flags).
FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
         "--xla_llvm_disable_expensive_passes=true")
JOBS = ("maml-meshes", "metaicl-meshes", "maml-ref,metaicl-ref,load")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("decoder-sharding")
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_COORDINATOR_ADDRESS")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(FLAGS),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out), job], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for job in JOBS]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for job, p, log in zip(JOBS, procs, logs):
        assert p.returncode == 0, f"worker {job} failed:\n{log[-6000:]}"
    return out


def _report(out, job):
    return json.loads((out / f"{job}.json").read_text())


def _arrays(out, job, prefix):
    with np.load(out / f"{job}.npz") as f:
        n = len([k for k in f.files if k.startswith(prefix + "/")])
        assert n, f"no arrays {prefix!r} in {job}"
        return [f[f"{prefix}/{i}"] for i in range(n)]


def _assert_equal(got, want, what):
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        atol = 1e-6 * float(np.max(np.abs(w))) if w.size else 0.0
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=atol, err_msg=f"{what}, leaf {i}")


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("method", ["maml", "metaicl"])
def test_meta_step_on_mesh_equals_one_device(runs, method, mesh):
    """One meta-step (second-order MAML with 1 inner step and LoRA on q, v plus a head; MetaICL
    with direct scoring) on a data x model mesh == the same step on one device."""
    ref, got = _report(runs, f"{method}-ref"), _report(runs, f"{method}-meshes")
    assert got["device_count"] == 8 and got[mesh]["devices"] == 8
    data, model = map(int, mesh.split("x"))
    assert got[mesh]["mesh"] == {"data": data, "model": model}
    np.testing.assert_allclose(got[mesh]["loss"], ref["loss"], rtol=RTOL)
    grads = _arrays(runs, f"{method}-ref", "grad")
    assert max(float(np.max(np.abs(g))) for g in grads) > 1e-3  # a real gradient
    _assert_equal(_arrays(runs, f"{method}-meshes", f"{mesh}/grad"), grads,
                  f"{method} {mesh}: meta-gradient")
    _assert_equal(_arrays(runs, f"{method}-meshes", f"{mesh}/params"),
                  _arrays(runs, f"{method}-ref", "params"), f"{method} {mesh}: new parameters")


@pytest.mark.parametrize("method", ["maml", "metaicl"])
def test_backbone_bytes_per_device_fall_with_the_model_axis(runs, method):
    """Per-device bytes of the backbone, summed over the arrays' first shards, are exactly what
    partition_spec predicts, and lie between total / model and total / model + the bytes of the
    leaves left whole (norms; k and v when the model axis does not divide their heads)."""
    got = _report(runs, f"{method}-meshes")
    total = _report(runs, f"{method}-ref")["backbone_total_bytes"]
    sizes = []
    for mesh in MESHES:
        model = int(mesh.split("x")[1])
        row = got[mesh]
        assert row["backbone_bytes"] == row["backbone_bytes_expected"]
        assert row["input_backbone_bytes"] == row["backbone_bytes"]  # the step keeps the layout
        assert total / model <= row["backbone_bytes"] < total / model + 0.1 * total
        sizes.append((model, row["backbone_bytes"]))
    sizes.sort()
    assert [b for _, b in sizes] == sorted((b for _, b in sizes), reverse=True)
    assert dict(sizes)[1] == total
    # The tiny Llama: whole-head splits of q (8 heads) at every size; k, v (2 heads) only at 2.
    assert dict(sizes)[8] < total / 5


@pytest.mark.parametrize("method", ["maml", "metaicl"])
def test_layouts(runs, method):
    """Megatron's split: q, k, v, up, lm_head by output columns, o and down by input rows, the
    embedding by its hidden dimension; adapters, head, optimizer state and step replicated."""
    got = _report(runs, f"{method}-meshes")
    col, row, whole = "(None, None, 'model')", "(None, 'model', None)", "(None, None, None)"
    for mesh in ("1x8", "2x4", "4x2"):
        specs = got[mesh]["specs"]
        kv = col if mesh == "4x2" else whole  # 2 key/value heads split over 2, not over 4 or 8
        assert specs == {"q": col, "k": kv, "v": kv, "o": row, "up": col, "down": row,
                         "embed": "(None, 'model')", "lm_head": "(None, 'model')",
                         "attn_norm": "(None, None)"}
        model = int(mesh.split("x")[1])
        assert got[mesh]["q_shard_shape"] == [1, 64, 64 // model]
    assert set(got["8x1"]["specs"].values()) <= {whole, "(None, None)"}
    for mesh in MESHES:
        assert all(got[mesh]["replicated"].values()), got[mesh]["replicated"]


def _weight_shapes():
    """Every backbone matrix's shape, whole (stacked layers) and of one layer."""
    from jmeta.models import init_backbone

    leaves = jax.tree.leaves(jax.eval_shape(lambda: init_backbone(_tiny_worker(),
                                                                  jax.random.key(0))))
    return {s for leaf in leaves for s in (tuple(leaf.shape), tuple(leaf.shape[1:]))
            if len(s) >= 2}


@pytest.mark.parametrize("method", ["maml", "metaicl"])
def test_weights_never_move(runs, method):
    """Tensor parallelism, not FSDP: in the compiled 1x8, 2x4 and 4x2 programs no collective
    gathers (or sums) a whole backbone matrix; they move activations ([tasks, examples,
    tokens, hidden] and the like) and adapter-sized tensors."""
    got = _report(runs, f"{method}-meshes")
    weights = _weight_shapes()
    for mesh in ("1x8", "2x4", "4x2"):
        coll = got[mesh]["collectives"]
        assert coll.get("all-reduce"), coll  # the row-split maps' partial sums
        moved = [s for shapes in coll.values() for s in shapes if tuple(s) in weights]
        assert not moved, f"{mesh}: collectives of weight shapes {moved}"


def test_from_pretrained_on_a_mesh_places_the_unsharded_values(runs):
    """from_pretrained(folder, mesh=...) of a Llama checkpoint: every shard equals the slice of
    the unsharded load, bytes per device are as predicted, the logits agree."""
    rep = _report(runs, "load")
    assert rep["model_sizes"], rep
    for m in rep["model_sizes"]:
        row = rep[f"model{m}"]
        assert row["mismatched"] == [] and row["split_leaves"] > 0
        assert row["bytes"] == row["bytes_expected"] < rep["total_bytes"]
        assert row["q_spec"] == "(None, None, 'model')"
        assert row["logits_max_abs_diff"] < 1e-4


def test_bad_meshes_fail_before_compiling(runs):
    rep = _report(runs, "load")
    for key in ("heads_error", "shard_heads_error"):
        assert "model axis of size 8 does not divide the 4 attention heads" in rep[key]
    assert rep["heads_error_s"] < 1.0  # raised before tracing anything
    assert "meta_batch_size=6 is not divisible by the data-axis size 4" in rep["batch_error"]


# ---------------------------------------------------------------------------------------------
# In-process (one device): shardings and byte counts from shapes alone.


def _tiny_worker():
    sys.path.insert(0, str(WORKER.parent))
    try:
        import _decoder_sharding_worker as worker
    finally:
        sys.path.remove(str(WORKER.parent))
    return worker.tiny()


def _tiny():
    from jmeta.models import DecoderConfig

    return DecoderConfig("llama", 64, 64, 2, 8, 128, num_kv_heads=2)


def test_shardings_of_an_abstract_state_and_expected_bytes():
    from jmeta import distributed as dist
    from jmeta.algorithms import maml
    from jmeta.core import cross_entropy_loss, init_state
    from jmeta.models import decoder

    cfg = _tiny()
    model = decoder(cfg, output="classes", num_classes=4, lora_targets=("q", "v"))
    learner = maml(model, loss_fn=cross_entropy_loss, adapt_filter=lambda p: not model.frozen(p))
    tx = dist.freeze_backbone(optax.adam(1e-3))
    state = jax.eval_shape(lambda k: init_state(learner, tx, k), jax.random.key(0))
    mesh = dist.make_mesh()
    shardings = dist.decoder_shardings(state, cfg, mesh)
    assert jax.tree.structure(shardings) == jax.tree.structure(state)
    assert all(s.is_fully_replicated for s in jax.tree.leaves(shardings))
    # No optimizer state for the frozen backbone.
    assert not any("backbone" in jax.tree_util.keystr(p)
                   for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0])
    body = {"backbone": state.params["model"]["backbone"]}
    total = dist.expected_per_device_bytes(body, cfg, 1)
    assert total == 4 * cfg.num_parameters()
    q = 2 * 64 * 64 * 4  # [2, 64, 64] float32
    assert dist.expected_per_device_bytes({"backbone": {"layers": {"q": {"kernel":
        jax.ShapeDtypeStruct((2, 64, 64), np.float32)}}}}, cfg, 4) == q // 4
    assert total // 8 < dist.expected_per_device_bytes(body, cfg, 8) < total // 4
