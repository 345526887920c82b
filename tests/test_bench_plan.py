"""`jmeta bench plan`: a meta-step compiled from shapes only, its memory analysis, FLOPs and
roofline; the grid's rows; the re-exec onto simulated devices. Tiny configs only."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from jmeta.bench import _plan as plan
from jmeta.bench import jaxpr_flops

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(model_type="llama", vocab_size=64, hidden_size=64, num_hidden_layers=1,
            num_attention_heads=8, num_key_value_heads=2, intermediate_size=128,
            max_position_embeddings=64, tie_word_embeddings=True)


def test_presets_are_the_published_architectures():
    sizes = {name: plan.config_of(name).num_parameters() for name in plan.PRESETS}
    assert sizes == {"gpt2-large": 774030080, "qwen2.5-0.5b": 494032768,
                     "llama-3.2-1b": 1235814400}
    llama = plan.config_of("llama-3.2-1b")
    assert dict(llama.rope_scaling)["rope_type"] == "llama3" and llama.rope_theta == 500000.0
    assert plan.accelerator("a100")[1] == (312e12, 2.039e12, 80e9)
    assert plan.accelerator("h200")[1] == (989e12, 4.8e12, 141e9)
    with pytest.raises(ValueError, match="unknown accelerator 'tpu'"):
        plan.accelerator("tpu")


def test_grid_rows_and_subsets():
    rows = plan.grid_rows("all")
    assert len(rows) == 3 * 5 * 2 * 2 * 2 * 3 and all(r["run"] for r in rows)
    core = [r for r in plan.grid_rows("core") if r["run"]]
    assert len(core) == 108
    assert {(r["method"], r["remat"]) for r in core if r["seq"] == 256} == {("maml-5", True)}
    assert plan.parse_mesh("8x1") == (8, 1)
    with pytest.raises(ValueError, match="DATAxMODEL"):
        plan.parse_mesh("8")


def test_heads_and_batch_checks_give_a_row_not_a_crash():
    row = plan.plan_row("qwen2.5-0.5b", "maml-1", mesh=(1, 8))  # 14 heads over 8: no
    assert row["status"] == "does not divide" and "14 attention heads" in row["reason"]
    row = plan.plan_row(TINY, "metaicl", seq=16, meta_batch=6, mesh=(4, 1))
    assert row["status"] == "batch does not split" and "meta_batch_size=6" in row["reason"]


def test_plan_row_of_a_tiny_decoder_on_one_device():
    method = "fomaml-5"
    row = plan.plan_row(TINY, method, remat=True, seq=16, meta_batch=2, mesh=(1, 1),
                        accelerator_name="h100")
    assert row["status"] == "ok" and row["devices"] == 1
    assert row["peak_bytes"] == (row["argument_bytes"] + row["output_bytes"] + row["temp_bytes"]
                                 - row["alias_bytes"])
    # Arguments are the state and the batch; the donated state is aliased to the new one.
    assert row["argument_bytes"] == row["state_bytes_per_device"] + row["batch_bytes_per_device"]
    assert row["alias_bytes"] > 0
    assert row["flops_per_step"] > 0 and row["flops_exact"]
    peak, bw, _ = plan.ACCELERATORS["h100-sxm"]
    assert row["roofline_s"] == max(row["flops_per_step"] / peak, row["dot_bytes_per_step"] / bw)
    assert row["fits_80GB"] and row["fits_141GB"]
    # The FLOPs are the jaxpr count of the very step that was compiled.
    cfg, learner, tx, batch_of = plan.build(TINY, method, remat=True, seq=16)
    from jmeta.core import init_state, meta_step_fn

    state = jax.eval_shape(lambda k: init_state(learner, tx, k), jax.random.key(0))
    assert jaxpr_flops(meta_step_fn(learner, tx), state, batch_of(2))[0] == row["flops_per_step"]


def test_markdown_lists_every_kind_of_row():
    meta = dict(accelerator="h100-sxm", peak_flops=989e12, bandwidth=3.35e12, commit="abc",
                date="2026-01-01", jax="0.10", host="cpu")
    ok = dict(model="m", method="maml-1", remat=False, seq=8, meta_batch=8, mesh="1x1",
              status="ok", peak_bytes=2e9, argument_bytes=1e9, output_bytes=1e9, temp_bytes=1e9,
              alias_bytes=1e9, fits_80GB=True, fits_141GB=True, flops_per_step=1e12,
              roofline_s=0.01, bound="compute", compile_s=3.0, commit="abc1234")
    text = plan.markdown([ok, dict(ok, status="not run", command="jmeta bench plan ..."),
                          dict(ok, status="does not divide", reason=(
                              "a model axis of size 8 does not divide the 14 attention heads"))], meta)
    assert "| 2.0 (1.00 + 1.00 + 1.0 - 1.00) | yes | yes | 1 | - / 10 / - | compute | 3 | abc1234 |" in text
    assert "not run: `jmeta bench plan ...`" in text
    assert "does not divide: 14 heads over 8" in text
    assert "not run" not in plan.markdown([ok, dict(ok, status="not run")], meta,
                                          skip_not_run=True)


@pytest.mark.slow  # a whole CLI process compiling on 8 simulated devices (~30 s)
def test_cli_reexecs_onto_simulated_devices(tmp_path):
    """`jmeta bench plan --mesh 2x4` from a one-device process: it re-executes itself with 8
    CPU devices; per-device arguments are the state split over 4 (the backbone's share) and
    half the batch (data 2), as the shardings say."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-m", "jmeta.cli", "bench", "plan", "--config",
                          str(config), "--method", "metaicl", "--seq", "16",
                          "--meta-batch", "4", "--mesh", "2x4", "--json"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "memory per device: arguments" in out.stdout
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["status"] == "ok" and row["devices"] == 8 and row["mesh"] == "2x4"
    assert row["argument_bytes"] == row["state_bytes_per_device"] + row["batch_bytes_per_device"]
    from jmeta.core import init_state
    from jmeta.distributed import expected_per_device_bytes

    cfg, learner, tx, _ = plan.build(TINY, "metaicl", remat=False, seq=16)
    state = jax.eval_shape(lambda k: init_state(learner, tx, k), jax.random.key(0))
    whole = expected_per_device_bytes(state, cfg, 1)
    assert row["state_bytes_per_device"] == expected_per_device_bytes(state, cfg, 4) < whole / 2


def test_cli_errors():
    from jmeta.bench import main

    assert main(["plan", "--model", "gpt5"]) == 2
    assert main(["plan", "--method", "metaicl", "--inner-steps", "5"]) == 2
    assert main(["plan", "--accelerator", "tpu-v9"]) == 2
