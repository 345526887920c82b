"""`jmeta bench`: workload configs, one in-process measurement, FLOP counting, CLI errors and
the subprocess runner on a tiny suite. Small shapes only: this runs on a loaded CPU."""

import json

import jax
import jax.numpy as jnp
import pytest

from jmeta import bench
from jmeta.cli import main
from jmeta.train import Config


@pytest.mark.parametrize("name", sorted(bench.load_workloads()))
def test_every_workload_maps_to_a_valid_config(name):
    spec = bench.load_workloads()[name]
    cfg = bench.workload_config(spec)
    assert isinstance(cfg, Config) and cfg.replace() == cfg
    assert (cfg.learner.name, cfg.data.get("ways", 1), cfg.train.meta_batch_size) == (
        spec["algorithm"], spec["ways"], spec["meta_batch"])
    assert cfg.data.name == ("sinusoid" if spec["model"] == "mlp" else
                        "omniglot" if spec["channels"] == 1 else "miniimagenet")
    batch = jax.eval_shape(lambda k: bench.synthetic_batch(cfg, spec, k), jax.random.key(0))
    shots = spec["shots"]
    if cfg.data.name != "sinusoid":
        image = (spec["size"], spec["size"], spec["channels"])
        assert batch.support.x.shape == (spec["meta_batch"], spec["ways"] * shots) + image
        assert batch.query.y.shape == (spec["meta_batch"], spec["ways"] * bench.query_size(spec))
    if spec["algorithm"] == "reptile":
        assert (cfg.rule.name, cfg.rule.b1, cfg.optimizer.name, cfg.optimizer.lr) == (
            "adam", 0.0, "sgd", 1.0)
        assert cfg.data.train_shots == shots and cfg.learner.inner_batch == spec["inner_batch"]


def test_variants_and_suites():
    assert bench.parse_name("maml_sinusoid@meta_batch=64,remat=true") == (
        "maml_sinusoid", {"meta_batch": 64, "remat": True})
    assert bench.variant_spec("maml_sinusoid@inner_steps=20")["inner_steps"] == 20
    assert bench.workload_config(bench.variant_spec("maml_sinusoid@remat=true")).learner.remat
    cpu, gpu = bench.scaling_workloads("cpu"), bench.scaling_workloads("gpu")
    assert set(cpu) < set(gpu) and "maml_omniglot_5w1s@meta_batch=128" in gpu
    assert "maml_omniglot_5w1s@inner_steps=10,remat=true" in cpu
    assert "maml_omniglot_5w1s@inner_steps=20" not in cpu
    assert bench.select("quick") == ["maml_sinusoid", "protonets_omniglot_5w1s"]
    with pytest.raises(ValueError, match="unknown key 'metabatch'"):
        bench.select("core", "maml_sinusoid@metabatch=4")
    with pytest.raises(ValueError, match="meta_batch_size must be at least 1"):
        bench.select("core", "maml_sinusoid@meta_batch=0")


def test_run_workload_in_process():
    spec = dict(bench.load_workloads()["maml_sinusoid"], meta_batch=2)
    row = bench.run_workload("maml_sinusoid@meta_batch=2", spec, reps=2, min_rep_s=0.02)
    assert row["compile_s"] > 0 and row["flops_per_step"] > 0
    assert 0 < row["steps_per_sec_min"] <= row["steps_per_sec_median"] <= row["steps_per_sec_max"]
    assert row["tasks_per_sec"] == pytest.approx(2 * row["steps_per_sec_median"])
    assert row["achieved_flops_per_sec"] == pytest.approx(
        row["flops_per_step"] * row["steps_per_sec_median"])
    # The 5-step inner loop stays a rolled scan on an MLP: XLA's cost analysis counts its body
    # once, the jaxpr count five times.
    assert row["xla_cost_lower_bound"] and not row["flops_lower_bound"]
    assert row["flops_per_step"] > 2 * row["xla_cost_flops"]
    assert row["peak_host_rss_mb"] > 50 and row["backend"] == jax.default_backend()
    assert row["peak_device_bytes"] is None or row["peak_device_bytes"] > 0
    assert row["task_map"] in ("vmap", "map", "unroll") and row["meta_batch"] == 2
    assert row["loss"] == row["loss"]  # finite, not NaN
    assert {"device_kind", "jax", "reps", "steps_per_rep"} <= set(row)


def test_jaxpr_flops_counts_loops_branches_and_convolutions():
    m, k, n = 24, 16, 8
    a, b = jnp.ones((m, k)), jnp.ones((k, n))
    mm = 2 * m * k * n
    assert bench.jaxpr_flops(jnp.matmul, a, b) == (mm, True)
    scan = lambda a: jax.lax.scan(lambda c, _: (c, c @ b), a, None, length=7)[1]
    assert bench.jaxpr_flops(scan, a) == (7 * mm, True)
    fori = lambda a: jax.lax.fori_loop(0, 3, lambda i, c: c @ jnp.eye(k), a)  # static: a scan
    assert bench.jaxpr_flops(fori, a) == (3 * 2 * m * k * k, True)
    until = lambda a: jax.lax.while_loop(lambda c: c.sum() < 1e9, lambda c: c @ jnp.eye(k), a)
    assert bench.jaxpr_flops(until, a) == (2 * m * k * k, False)  # the body once, not exact
    branch = lambda p, a: jax.lax.cond(p, lambda: (a @ b).sum(), lambda: (a @ b @ b.T).sum())
    assert bench.jaxpr_flops(branch, True, a)[0] == mm + 2 * m * n * k
    x, w = jnp.ones((2, 9, 9, 6)), jnp.ones((3, 3, 3, 4))  # NHWC, HWIO, 2 feature groups
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
    flops, exact = bench.jaxpr_flops(conv, x, w)
    assert exact and flops == 2 * (2 * 7 * 7 * 4) * (3 * 3 * 3)
    # Without padding or loops, XLA's cost analysis counts the same multiply-adds.
    xla = bench.cost_flops(jax.jit(conv).lower(x, w).compile())
    assert xla is None or xla == pytest.approx(flops, rel=0.05)


def test_jaxpr_flops_of_a_meta_step_do_not_depend_on_the_task_map():
    spec = dict(bench.load_workloads()["maml_omniglot_5w1s"], filters=8, size=16, meta_batch=3,
                queries=2)
    counts = {}
    for task_map in ("vmap", "map"):
        w = bench.build_workload(spec, task_map=task_map, donate=False)
        counts[task_map] = bench.jaxpr_flops(w.step, w.state, w.batch)
    # A loop over 3 tasks counts its body 3 times: the same total as the vmapped step.
    assert counts["map"] == pytest.approx(counts["vmap"], rel=1e-9)
    assert counts["map"][1] and counts["map"][0] > 0


def test_cost_analysis_counts_a_matmul():
    m, k, n = 96, 80, 64
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert bench.cost_flops(compiled) == pytest.approx(2 * m * n * k, rel=0.03)
    assert not bench.has_loops(compiled)

    class Listed:  # older JAX: a list with one dict per program; backends without "flops"
        def __init__(self, cost):
            self.cost = cost

        def cost_analysis(self):
            return self.cost

    assert bench.cost_flops(Listed([{"flops": 10.0}])) == 10.0
    assert bench.cost_flops(Listed([{}])) is None and bench.cost_flops(Listed(None)) is None
    assert bench.matmul_peak_flops(n=64, reps=1, min_rep_s=0.001) > 0


@pytest.mark.parametrize("argv, named", [
    (["bench", "nosuch"], "core, quick, scaling"),
    (["bench", "core", "--workloads", "maml_sinusoid,nosuch"], "maml_omniglot_5w1s"),
])
def test_cli_rejects_unknown_names(argv, named, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "jmeta: error: Unknown" in err and "nosuch" in err and named in err
    assert not list(tmp_path.iterdir())


def test_suite_runner_writes_json_and_markdown(tmp_path):
    code = main(["bench", "quick", "--workloads", "maml_sinusoid", "--reps", "2",
                 "--min-rep-s", "0.02", "--peak-n", "128", "--out", str(tmp_path)])
    assert code == 0
    res = json.loads((tmp_path / "bench-quick.json").read_text())
    assert res["meta"]["suite"] == "quick" and res["meta"]["matmul_peak_flops"] > 0
    assert {"commit", "date", "cpu_count", "threads", "hardware", "jax"} <= set(res["meta"])
    (row,) = res["rows"]
    assert "error" not in row, row
    assert row["workload"] == "maml_sinusoid" and row["steps_per_sec_median"] > 0
    assert row["pct_matmul_peak"] > 0
    table = (tmp_path / "bench-quick.md").read_text()
    assert "| maml_sinusoid | vmap |" in table and "% of matmul peak" in table


def test_scaling_plots_and_failed_rows(tmp_path):
    pytest.importorskip("matplotlib")

    def row(name, rate, remat=False):
        return {"workload": name, "remat": remat, "task_map": "vmap", "compile_s": 1.0,
                "steps_per_sec_median": rate, "steps_per_sec_min": rate,
                "steps_per_sec_max": rate, "tasks_per_sec": 25 * rate, "flops_per_step": 1e6,
                "flops_lower_bound": True, "pct_matmul_peak": 1.0, "peak_host_rss_mb": 400.0,
                "peak_device_bytes": None}

    rows = [row(f"maml_sinusoid@inner_steps={s}", 100 / s) for s in (1, 5)]
    rows += [row(f"maml_sinusoid@inner_steps={s},remat=true", 90 / s, True) for s in (1, 5)]
    rows += [{"workload": "maml_sinusoid@meta_batch=2", "error": "timed out after 2 s"}]
    (path,) = bench.plot_scaling(rows, tmp_path, log=lambda *a: None)
    assert path.name == "scaling-maml_sinusoid-inner_steps.png" and path.stat().st_size > 1000
    meta = {"suite": "scaling", "hardware": "cpu-2core", "device_kind": "cpu", "cpu_count": 2,
            "threads": {}, "jax": jax.__version__, "commit": "unknown", "date": "today",
            "reps": 1, "min_rep_s": 0.1, "matmul_peak_flops": None}
    table = bench.markdown_table(meta, rows)
    assert "failed: timed out" in table and "| vmap + remat |" in table and ">=0.001" in table


def test_op_profile_groups_the_traced_ops_of_a_step(monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import profile_ops

    tiny = dict(bench.load_workloads()["maml_sinusoid"], meta_batch=2, inner_steps=1)
    monkeypatch.setattr(profile_ops, "load_workloads", lambda: {"tiny": tiny})
    result = profile_ops.profile("tiny", steps=2)
    assert set(result["classes"]) == set(profile_ops.CLASSES)
    # Every traced op is counted once: the classes add up to the summed op time.
    assert sum(result["classes"].values()) == pytest.approx(result["op_ms_per_step"])
    assert result["op_ms_per_step"] > 0 and result["wall_ms_per_step"] > 0
    # An MLP's step is matmuls and elementwise fusions; no convolution, no im2col patches.
    assert result["classes"]["matmul"] > 0
    assert result["classes"]["convolution"] == result["classes"]["patch gather"] == 0
    top = result["top_ops"][0]
    assert top["shape"] and top["calls_per_step"] >= 1
    md = profile_ops.markdown(result, dict(hardware="h", cpu_model="c", commit="x", jax="j",
                                           date="d"))
    assert "| matmul |" in md and top["name"] in md


def test_op_classes_of_hlo_instructions():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.profile_ops import hlo_ops, op_class

    text = "\n".join([
        '  %dot.4 = f32[9,64]{1,0} dot(%a, %b), metadata={op_name="jit(s)/dot_general"}',
        '  ROOT %convolution.2 = f32[1,4,4,8]{3,2,1,0} convolution(%x, %w), window={size=3x3}',
        '  %copy.1 = f32[64,9]{0,1} copy(%dot.4)',
        '  %fusion.7 = f32[5]{0} fusion(%p), kind=kLoop, calls=%fused_computation.7',
        '  %ynn_fusion.3 = f32[3,3,8,8]{3,2,1,0} fusion(%x), kind=kCustom, '
        'metadata={op_name="jit(s)/transpose(jvp())/conv_general_dilated"}',
        '  %ynn_fusion.4 = f32[8]{0} fusion(%x), kind=kCustom, '
        'metadata={op_name="jit(s)/transpose(jvp())/reduce_sum"}'])
    ops = hlo_ops(text)
    assert ops["dot.4"]["op_name"] == "jit(s)/dot_general" and ops["copy.1"]["opcode"] == "copy"
    assert [op_class(n, ops[n]) for n in ("dot.4", "convolution.2", "copy.1", "fusion.7",
                                          "ynn_fusion.3", "ynn_fusion.4")] == [
        "matmul", "convolution", "transpose / copy", "elementwise", "convolution", "elementwise"]
    assert [op_class(n, None) for n in ("ynn_fusion.47", "concatenate.1", "pad_slice_fusion.3",
                                        "slice_select_fusion.3", "copy_bitcast_fusion.2")] == [
        "matmul", "patch gather", "patch gather", "col2im + elementwise", "transpose / copy"]
