"""Tasks per second of the sharded meta-step over 1, 2, 4, 8 devices.

    python benchmarks/scaling.py

On a CPU the devices are simulated (``--xla_force_host_platform_device_count``) and share the
same cores, so throughput is expected flat: the point there is that the sharded step runs and
scales without loss; on a GPU host run it with real devices. Workload: sinusoid MAML, 5 inner
steps, meta-batch 32, task axis sharded over the mesh's data axis. Each device count runs in its
own process; median of 5 x 200 steps after warm-up, every step waited on (simulated devices can
deadlock on back-to-back collectives otherwise).
Writes benchmarks/results/<hardware>/scaling.{json,md}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import commit as git_commit
from _common import hardware_name

CHILD = """
import json, statistics, time, jax, optax
from jmeta.algorithms import maml
from jmeta.core import init_state, make_meta_step
from jmeta.data import sinusoid_sampler
from jmeta.distributed import make_mesh, shard_state, task_sharding
from jmeta.models import mlp
mesh = make_mesh()
learner, tx = maml(mlp(), 0.01, 5), optax.adam(1e-3)
step = make_meta_step(learner, tx, sampler=sinusoid_sampler(32, 10),
                      batch_sharding=task_sharding(mesh))
state = shard_state(init_state(learner, tx, jax.random.key(0)), mesh)
t = time.perf_counter(); compiled = step.lower(state).compile(); compile_s = time.perf_counter() - t
state, _ = compiled(state); jax.block_until_ready(state)
rates = []
for _ in range(5):
    t = time.perf_counter()
    for _ in range(200):
        state, _ = compiled(state); jax.block_until_ready(state)
    rates.append(200 / (time.perf_counter() - t))
r = statistics.median(rates)
print(json.dumps({"devices": jax.device_count(), "compile_s": compile_s, "steps_per_sec": r,
                  "tasks_per_sec": 32 * r, "min": 32 * min(rates), "max": 32 * max(rates)}))
"""


def main():
    rows = []
    for n in (1, 2, 4, 8):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                             text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    import jax

    hw = hardware_name()
    out_dir = Path(__file__).parent / "results" / hw
    out_dir.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    meta = {"hardware": hw, "jax": jax.__version__, "commit": commit,
            "date": time.strftime("%Y-%m-%d")}
    (out_dir / "scaling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"Sharded sinusoid MAML (5 inner steps, meta-batch 32) on {hw}, simulated devices "
             f"(jax {jax.__version__}, commit {commit}, {meta['date']}).", "",
             "| devices | tasks/s (min..max) | compile (s) |", "|---|---|---|"]
    lines += [f"| {r['devices']} | {r['tasks_per_sec']:.0f} ({r['min']:.0f}..{r['max']:.0f}) "
              f"| {r['compile_s']:.2f} |" for r in rows]
    (out_dir / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
