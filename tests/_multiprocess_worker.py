"""Child process of tests/test_distributed.py: one of several JAX processes over loopback.

Usage: ``python tests/_multiprocess_worker.py PROCESS_ID NUM_PROCESSES COORDINATOR OUT_DIR``
(local device count from ``XLA_FLAGS``). Every process runs 3 MAML meta-steps on a global batch of
8 sinusoid tasks, supplying only its own slice of each batch, then 3 steps with the in-graph
sampler; process 0 alone writes ``params.npz`` and ``report.json`` into OUT_DIR.
"""

import json
import pathlib
import sys

from jmeta import distributed as dist

GLOBAL_BATCH, K_SHOT, STEPS = 8, 5, 3


def main(process_id: int, num_processes: int, coordinator: str, out: pathlib.Path) -> None:
    started = dist.initialize(num_processes, process_id, coordinator, timeout=120)

    import jax
    import numpy as np
    import optax

    from jmeta.algorithms import maml
    from jmeta.core import init_state, make_meta_step
    from jmeta.data import sinusoid_sampler, sinusoid_tasks
    from jmeta.models import mlp

    report = {
        "started": started,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
    }
    mesh = dist.make_mesh()
    dist.check_batch(GLOBAL_BATCH, mesh)
    start, stop = dist.process_slice(GLOBAL_BATCH, mesh)
    report["process_slice"] = [start, stop]

    learner, tx = maml(mlp(1, 1, hidden=(8, 8)), inner_lr=0.01, inner_steps=2), optax.adam(1e-2)
    init = init_state(learner, tx, jax.random.key(0))
    ts = dist.task_sharding(mesh)

    step = make_meta_step(learner, tx, batch_sharding=ts)
    state = dist.shard_state(init, mesh)
    for s in range(STEPS):
        # Every process could draw only its own tasks (e.g. HostSampler(process_index=...));
        # here the global batch is drawn from a shared key so the single-process run sees it too.
        full = sinusoid_tasks(jax.random.key(100 + s), GLOBAL_BATCH, K_SHOT)
        local = jax.tree.map(lambda x: np.asarray(x)[start:stop], full)
        state, _ = step(state, dist.global_batch_from_local(local, mesh))
        jax.block_until_ready(state)
    batch_params = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params)]
    report["batch_shards_local"] = len(
        dist.global_batch_from_local(local, mesh).support.x.addressable_shards
    )

    sampled = make_meta_step(learner, tx, sampler=sinusoid_sampler(GLOBAL_BATCH, K_SHOT),
                             batch_sharding=ts)
    state = dist.shard_state(init, mesh)
    for _ in range(STEPS):
        state, _ = sampled(state)
        jax.block_until_ready(state)
    sampler_params = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params)]

    try:
        dist.process_slice(GLOBAL_BATCH - 2, mesh)
        report["process_slice_error"] = None
    except ValueError as e:
        report["process_slice_error"] = str(e)
    try:
        dist.process_slice(GLOBAL_BATCH + 1)
        report["process_slice_error_nomesh"] = None
    except ValueError as e:
        report["process_slice_error_nomesh"] = str(e)

    if jax.process_index() == 0:
        arrays = {f"batch/{i}": a for i, a in enumerate(batch_params)}
        arrays.update({f"sampler/{i}": a for i, a in enumerate(sampler_params)})
        np.savez(out / "params.npz", **arrays)
        (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], pathlib.Path(sys.argv[4]))
