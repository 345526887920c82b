"""The suite runner: one subprocess per workload, JSON + Markdown + plots."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from jmeta.bench._workloads import SUITES, parse_name, scaling_workloads, select
from jmeta.core._registry import ConfigError
from jmeta.train import git_commit

_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT_S = 1800.0


def _child(args: list[str], timeout: float) -> tuple[dict | None, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "jmeta.bench", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1]), ""
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
    return None, f"exit code {proc.returncode}: " + " | ".join(tail)[-500:]


def run_suite(suite: str = "core", *, workloads: str | Sequence[str] | None = None,
              reps: int | None = None, min_rep_s: float | None = None,
              timeout: float | None = None, out: str | Path | None = None,
              peak_n: int | None = None, log=print) -> dict:
    """Runs a suite, one subprocess per workload, and writes ``bench-<suite>.json`` and ``.md``
    (and, for ``scaling``, PNG curves) into ``out`` (default
    ``benchmarks/results/<hardware>``). A failed or timed-out workload is recorded with its
    error and the suite goes on. Returns ``{"meta": ..., "rows": [...], "out": folder}``.

    Example (a smoke run: one workload, tiny repetitions, no matmul peak):
      >>> import tempfile
      >>> res = run_suite("quick", workloads="maml_sinusoid", reps=1, min_rep_s=0.01,
      ...                 peak_n=0, out=tempfile.mkdtemp())  # doctest: +SKIP
      >>> res["rows"][0]["steps_per_sec_median"] > 0  # doctest: +SKIP
      True
    """
    names = select(suite, workloads)
    cfg = SUITES[suite]
    reps = cfg.reps if reps is None else reps
    min_rep_s = cfg.min_rep_s if min_rep_s is None else min_rep_s
    timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
    if reps < 1 or min_rep_s < 0 or timeout <= 0:
        raise ConfigError(f"--reps must be >= 1, --min-rep-s >= 0 and --timeout > 0; got "
                          f"{reps}, {min_rep_s}, {timeout}.")
    info, err = _child(["_info", "--peak-n", str(-1 if peak_n is None else peak_n)],
                       max(timeout, 600.0))
    if info is None:
        raise RuntimeError(f"jmeta bench: could not start JAX in a subprocess ({err}).")
    if not workloads and suite == "scaling":
        names = scaling_workloads(info["backend"])
    peak = info["matmul_peak_flops"]
    log(f"jmeta bench {suite}: {len(names)} workloads on {info['hardware']} "
        f"({info['device_kind']}, jax {info['jax']})"
        + (f"; matmul peak {peak / 1e9:.0f} GFLOP/s" if peak else ""))
    meta = dict(info, suite=suite, commit=git_commit(), reps=reps, min_rep_s=min_rep_s,
                timeout_s=timeout, date=datetime.datetime.now().isoformat(timespec="seconds"))
    folder = Path(out) if out else _default_out(info["hardware"])
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"bench-{suite}.json", folder / f"bench-{suite}.md"
    rows: list[dict] = []
    for name in names:
        row, err = _child(["_one", name, "--reps", str(reps), "--min-rep-s", str(min_rep_s)],
                          timeout)
        if row is None:
            row = {"workload": name, "error": err}
            log(f"  {name:48s} FAILED: {err}")
        else:
            achieved = row.get("achieved_flops_per_sec")
            row["pct_matmul_peak"] = 100 * achieved / peak if achieved and peak else None
            log(f"  {name:48s} compile {row['compile_s']:6.2f} s  "
                f"{_num(row['steps_per_sec_median']):>8s} steps/s  "
                f"{_num(row['tasks_per_sec']):>8s} tasks/s  RSS {row['peak_host_rss_mb']:.0f} MB")
        rows.append(row)
        # Rewritten after every workload, so a suite stopped midway leaves what it measured.
        json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        md_path.write_text(markdown_table(meta, rows))
        if suite == "scaling":  # the curves so far, also kept if the suite is stopped
            plot_scaling(rows, folder, log=_quiet)
    log(f"wrote {json_path} and {md_path.name}")
    if suite == "scaling":
        plots = plot_scaling(rows, folder, log=log)
        log(f"wrote {len(plots)} plots: " + ", ".join(p.name for p in plots))
    return {"meta": meta, "rows": rows, "out": str(folder)}


def _quiet(*args) -> None:
    del args


def _default_out(hardware: str) -> Path:
    base = _ROOT / "benchmarks" if (_ROOT / "benchmarks").is_dir() else Path("benchmarks")
    return base / "results" / hardware


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if x >= 0.1 else f"{x:.3g}"


def markdown_table(meta: dict, rows: list[dict]) -> str:
    """The Markdown page of a suite's results: provenance, then one row per workload.

    Example:
      >>> meta = dict(suite="core", hardware="cpu-2core", device_kind="cpu", cpu_count=2,
      ...             threads={}, jax="0.10.2", commit="abc1234", date="2026-01-01", reps=5,
      ...             min_rep_s=1.0, matmul_peak_flops=None)
      >>> markdown_table(meta, [{"workload": "w", "error": "timed out"}]).splitlines()[-1]
      '| w | failed: timed out |  |  |  |  |  |  |  |'
    """
    peak = meta.get("matmul_peak_flops")
    threads = ", ".join(f"{k}={v}" for k, v in meta.get("threads", {}).items()) or "defaults"
    lines = [
        f"# jmeta bench {meta['suite']}", "",
        (f"{meta['hardware']} ({meta['device_kind']}, {meta['cpu_count']} CPUs, threads: "
         f"{threads}), jax {meta['jax']}, commit {meta['commit']}, {meta['date']}."),
        f"Synthetic task batches; one process per workload; compile = lower + compile; "
        f"steps/s = median (min..max) of {meta['reps']} repetitions of >= {meta['min_rep_s']} s "
        "after warm-up." + (f" Matmul peak ({meta['matmul_n']}^2 float32): "
                            f"{peak / 1e9:,.0f} GFLOP/s." if peak else ""),
        ("GFLOP/step: matrix multiplies and convolutions of the step's jaxpr, each loop "
         "counted with its trip count (`jmeta.bench.jaxpr_flops`); `>=`: a while loop whose "
         "trip count is known only at run time, counted once."), "",
        ("| workload | task map, conv | compile (s) | steps/s (min..max) | tasks/s | GFLOP/step "
         "| % of matmul peak | peak RSS (MB) | peak device (MB) |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | failed: {r['error'][:120]} |  |  |  |  |  |  |  |")
            continue
        tm = r["task_map"] + (f", {r['conv_impl']}" if r.get("conv_impl") else "") + (
            " + remat" if r.get("remat") else "")
        flops = r.get("flops_per_step")
        pct = r.get("pct_matmul_peak")
        ge = ">=" if r.get("flops_lower_bound") else ""
        dev = r.get("peak_device_bytes")
        lines.append(
            f"| {r['workload']} | {tm} | {r['compile_s']:.2f} | "
            f"{_num(r['steps_per_sec_median'])} ({_num(r['steps_per_sec_min'])}.."
            f"{_num(r['steps_per_sec_max'])}) | {_num(r['tasks_per_sec'])} | "
            f"{'-' if flops is None else f'{ge}{flops / 1e9:.3g}'} | "
            f"{'-' if pct is None else f'{ge}{pct:.2g}'} | {r['peak_host_rss_mb']:.0f} | "
            f"{'-' if dev is None else f'{dev / 2**20:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


def plot_scaling(rows: list[dict], folder: str | Path, log=print) -> list[Path]:
    """PNG curves of the ``scaling`` suite, one per (base workload, varied key): throughput and
    peak memory (device, else host RSS), with and without remat. Needs matplotlib (the
    ``plots`` extra); without it, logs a message and returns ``[]``. Returns the PNG paths.

    Example:
      >>> import tempfile
      >>> plot_scaling([], tempfile.mkdtemp(), log=lambda *a: None)
      []
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plots (pip install 'jmeta[plots]').")
        return []
    curves: dict[tuple[str, str], dict[bool, list]] = {}
    for r in rows:
        if "error" in r:
            continue
        base, over = parse_name(r["workload"])
        keys = [k for k in over if k != "remat"]
        if len(keys) != 1:
            continue
        key = keys[0]
        curves.setdefault((base, key), {}).setdefault(bool(over.get("remat")), []).append(
            (over[key], r))
    paths = []
    for (base, key), lines in curves.items():
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
        per_task = key == "meta_batch"
        for remat, points in sorted(lines.items()):
            points.sort(key=lambda p: p[0])
            xs = [p[0] for p in points]
            label = "remat" if remat else "no remat"
            ax_t.plot(xs, [p[1]["tasks_per_sec" if per_task else "steps_per_sec_median"]
                           for p in points], "o-", label=label)
            dev = [p[1].get("peak_device_bytes") for p in points]
            mem = ([d / 2**20 for d in dev] if all(d is not None for d in dev)
                   else [p[1]["peak_host_rss_mb"] for p in points])
            ax_m.plot(xs, mem, "o-", label=label)
            ax_m.set_ylabel("peak device memory (MB)" if all(d is not None for d in dev)
                            else "peak host RSS (MB)")
        ax_t.set_ylabel("tasks / s" if per_task else "meta-steps / s")
        for ax in (ax_t, ax_m):
            ax.set_xlabel(key)
            if key in ("meta_batch", "inner_steps"):
                ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"{base}: {key}")
        fig.tight_layout()
        path = Path(folder) / f"scaling-{base}-{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


