"""Where a meta-step's time goes, op by op: XLA's own profile of the compiled step.

Runs one workload of ``jmeta/bench_workloads.json`` (jmeta's defaults for the backend, as in
``jmeta bench``) on a fixed synthetic batch, records ``--steps`` calls of the compiled step under
``jax.profiler.trace`` after a warm-up, and sums the time of every XLA op (fusion, matmul,
convolution, copy) from the trace. Ops are grouped into classes by the kind of their HLO
instruction and by the name XLA gives the fusion:

* ``matmul``: ``dot`` and the YNNPACK / oneDNN custom fusions that wrap one (``ynn_fusion``);
* ``convolution``: XLA's native convolutions, also when a YNNPACK fusion runs them;
* ``patch gather``: the pads, slices and concatenations that build im2col patches
  (``pad_slice_fusion``, ``concatenate``);
* ``col2im + elementwise``: fusions that add shifted slices back into an input gradient, with
  the BatchNorm / ReLU backward that XLA fuses into them (``slice_select_fusion`` and kin);
* ``transpose / copy``: layout changes;
* ``elementwise``: every other loop fusion (BatchNorm, ReLU, pooling, the optimizer), and the
  library fusions that reduce (BatchNorm's sums).

The table gives each class's milliseconds per step and share of the ops' summed time; the op
list gives the largest single ops with their output shape and the JAX operation that produced
them. On a multi-threaded CPU two ops may run at once, so the summed op time can differ from the
wall time per step, which is reported beside it.

    python benchmarks/profile_ops.py --workload maml_omniglot_5w1s
    # writes benchmarks/results/<hardware>/profile_ops_<workload>.{json,md}
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import commit, hardware_name, results_dir  # noqa: E402
from jmeta.bench import build_workload, cpu_model, load_workloads  # noqa: E402

CLASSES = ("matmul", "convolution", "patch gather", "col2im + elementwise", "transpose / copy",
           "elementwise")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (\w[\w-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_ops(hlo_text: str) -> dict[str, dict]:
    """Every instruction of an HLO module text: ``name -> {shape, opcode, op_name, line}``.

    Example:
      >>> ops = hlo_ops('  %dot.1 = f32[2,3]{1,0} dot(%a, %b), metadata={op_name="jit(f)/dot"}')
      >>> ops["dot.1"]["opcode"], ops["dot.1"]["shape"], ops["dot.1"]["op_name"]
      ('dot', 'f32[2,3]{1,0}', 'jit(f)/dot')
    """
    ops = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if m:
            name = _OP_NAME.search(line)
            ops[m.group(1)] = dict(shape=m.group(2), opcode=m.group(3),
                                   op_name=name.group(1) if name else "", line=line.strip())
    return ops


def op_class(name: str, instr: dict | None) -> str:
    """The class (one of :data:`CLASSES`) of an executed op, from its name and HLO instruction.

    Example:
      >>> op_class("ynn_fusion.3", None), op_class("concatenate.7", None)
      ('matmul', 'patch gather')
      >>> op_class("fusion.2", {"opcode": "fusion", "line": "... convolution(...)"})
      'elementwise'
    """
    opcode = instr["opcode"] if instr else ""
    origin = instr.get("op_name", "") if instr else ""
    base = re.sub(r"\.\d+$", "", name)
    if base in ("ynn_fusion", "onednn_fusion", "xnn_fusion"):
        # A library fusion: what it computes is the JAX operation it came from.
        if origin.endswith("conv_general_dilated"):
            return "convolution"
        if origin.endswith(("reduce_sum", "reduce_max", "add", "mul", "sub")):
            return "elementwise"
        return "matmul"
    if opcode == "dot" or base == "dot":
        return "matmul"
    if opcode == "convolution" or base == "convolution":
        return "convolution"
    if base in ("concatenate", "pad_slice_fusion", "slice_slice_fusion", "pad"):
        return "patch gather"
    if base.startswith(("slice_select", "select_pad", "pad_add", "slice_add")):
        return "col2im + elementwise"
    if base.startswith(("copy", "transpose", "wrapped_copy")) or opcode in ("copy", "transpose"):
        return "transpose / copy"
    return "elementwise"


def _trace_events(folder: Path) -> list[dict]:
    files = sorted(folder.rglob("*.trace.json.gz"))
    if not files:
        raise RuntimeError(f"jax.profiler.trace wrote no *.trace.json.gz under {folder}.")
    events = json.load(gzip.open(files[-1]))["traceEvents"]
    return [e for e in events if e.get("ph") == "X"]


def profile(workload: str, steps: int = 5) -> dict:
    """The op profile of one workload's compiled meta-step (see the module docstring)."""
    spec = load_workloads()[workload]
    w = build_workload(spec, donate=False)  # the same state is passed to every call
    state, batch = w.state, w.batch
    compiled = w.step.lower(state, batch).compile()
    ops = hlo_ops(compiled.as_text())
    for _ in range(2):
        jax.block_until_ready(compiled(state, batch))
    t = time.perf_counter()
    for _ in range(steps):
        out = compiled(state, batch)
    jax.block_until_ready(out)
    wall_ms = 1000 * (time.perf_counter() - t) / steps
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(steps):
                out = compiled(state, batch)
            jax.block_until_ready(out)
        events = _trace_events(Path(tmp))
    per_op = collections.defaultdict(float)
    calls = collections.Counter()
    for e in events:
        # A library fusion (YNNPACK) may show as two events, "name" and "end: name": one op.
        name = e["name"].removeprefix("end: ")
        if name in ops:
            per_op[name] += e["dur"] / 1000 / steps
            calls[name] += not e["name"].startswith("end: ")
    classes = dict.fromkeys(CLASSES, 0.0)
    for name, ms in per_op.items():
        classes[op_class(name, ops.get(name))] += ms
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:20]
    return dict(
        workload=workload, spec=spec, task_map=w.task_map,
        conv_impl=w.conv_impl if w.cfg.model.name != "mlp" else None, steps=steps,
        wall_ms_per_step=wall_ms, op_ms_per_step=sum(per_op.values()), classes=classes,
        top_ops=[dict(name=n, ms_per_step=ms, calls_per_step=calls[n] / steps,
                      cls=op_class(n, ops.get(n)), shape=ops.get(n, {}).get("shape", ""),
                      op_name=ops.get(n, {}).get("op_name", "")) for n, ms in top])


def markdown(result: dict, meta: dict) -> str:
    total = result["op_ms_per_step"] or 1.0
    lines = [f"# Where a meta-step's time goes, op by op ({result['workload']})", "",
             f"{meta['hardware']} ({meta['cpu_model']}), jax {meta['jax']}, commit "
             f"{meta['commit']}, {meta['date']}; task map `{result['task_map']}`, convolutions "
             f"`{result['conv_impl'] or '-'}`; {result['steps']} steps under "
             f"`jax.profiler.trace` after a warm-up. Wall time per step without the profiler: "
             f"{result['wall_ms_per_step']:.3g} ms; XLA ops' summed time per step: "
             f"{result['op_ms_per_step']:.3g} ms.", "",
             "| class | ms per step | share |", "|---|---|---|"]
    for cls, ms in result["classes"].items():
        lines.append(f"| {cls} | {ms:.3g} | {100 * ms / total:.1f}% |")
    lines += ["", "Largest single ops (per step, summed over the task loop's iterations):", "",
              "| op | class | ms per step | calls per step | output | from |",
              "|---|---|---|---|---|---|"]
    for r in result["top_ops"]:
        origin = r["op_name"].split("/")[-2:]
        lines.append(f"| `{r['name']}` | {r['cls']} | {r['ms_per_step']:.3g} | "
                     f"{r['calls_per_step']:.0f} | `{r['shape'].split('{')[0]}` | "
                     f"`{'/'.join(origin)}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="maml_omniglot_5w1s")
    ap.add_argument("--steps", type=int, default=5, help="profiled steps (default 5)")
    ap.add_argument("--out", help="results folder (default benchmarks/results/<hardware>)")
    args = ap.parse_args(argv)
    if args.workload not in load_workloads():
        ap.error(f"unknown workload {args.workload!r}; valid: {', '.join(load_workloads())}")
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    result = profile(args.workload, args.steps)
    meta = dict(hardware=hardware_name(), cpu_model=cpu_model(), commit=commit(),
                jax=jax.__version__, date=time.strftime("%Y-%m-%d"))
    out = Path(args.out) if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    stem = f"profile_ops_{args.workload}"
    (out / f"{stem}.json").write_text(json.dumps(dict(meta=meta, **result), indent=2))
    (out / f"{stem}.md").write_text(markdown(result, meta))
    print(markdown(result, meta))
    print(f"wrote {out / stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
