"""Child process of tests/test_distributed.py: sharded vs unsharded meta-steps on fake devices.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu``; writes
``params.npz`` (final meta-parameters of every case, sharded and not) and ``report.json``
(shard layout, error messages) into the folder given as the only argument.
"""

import json
import pathlib
import sys

import jax
import numpy as np
import optax

from jmeta import distributed as dist
from jmeta.algorithms import fomaml, maml, reptile
from jmeta.core import init_state, make_meta_step
from jmeta.data import sinusoid_sampler, sinusoid_tasks
from jmeta.models import mlp

META_BATCH, K_SHOT, STEPS = 16, 5, 3


def learners():
    model = mlp(1, 1, hidden=(8, 8))
    return {
        "maml": (maml(model, inner_lr=0.01, inner_steps=2), optax.adam(1e-2)),
        "fomaml": (fomaml(model, inner_lr=0.01, inner_steps=2), optax.adam(1e-2)),
        "reptile": (reptile(model, inner_lr=0.02, inner_steps=3), optax.sgd(1.0)),
    }


def flat(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def main(out: pathlib.Path) -> None:
    report = {"device_count": jax.device_count()}
    mesh = dist.make_mesh()
    report["mesh_shape"] = dict(mesh.shape)
    ts = dist.task_sharding(mesh)
    batches = [sinusoid_tasks(jax.random.key(100 + s), META_BATCH, K_SHOT) for s in range(STEPS)]
    arrays = {}

    for name, (learner, tx) in learners().items():
        init = init_state(learner, tx, jax.random.key(0))
        arrays[f"{name}/init"] = flat(init.params)
        jax.block_until_ready(init)

        # -- a given batch ------------------------------------------------------------------
        plain = make_meta_step(learner, tx, donate=False)
        state = init
        for b in batches:
            state, _ = plain(state, b)
            jax.block_until_ready(state)
        arrays[f"{name}/batch/unsharded"] = flat(state.params)

        sharded = make_meta_step(learner, tx, donate=False, batch_sharding=ts)
        state = dist.shard_state(init, mesh)
        for b in batches:
            gb = dist.global_batch_from_local(b, mesh)
            state, _ = sharded(state, gb)
            jax.block_until_ready(state)  # FINDINGS: back-to-back all-reduces can deadlock on CPU
        arrays[f"{name}/batch/sharded"] = flat(state.params)
        leaf = jax.tree.leaves(state.params)[0]
        report[f"{name}/batch/params_devices"] = len(leaf.sharding.device_set)
        report[f"{name}/batch/params_replicated"] = bool(leaf.sharding.is_fully_replicated)

        # -- the in-graph sampler -----------------------------------------------------------
        sampler = sinusoid_sampler(META_BATCH, K_SHOT)
        plain = make_meta_step(learner, tx, sampler=sampler, donate=False)
        state = init
        for _ in range(STEPS):
            state, _ = plain(state)
            jax.block_until_ready(state)
        arrays[f"{name}/sampler/unsharded"] = flat(state.params)

        sharded = make_meta_step(learner, tx, sampler=sampler, donate=False, batch_sharding=ts)
        state = dist.shard_state(init, mesh)
        hlo = sharded.lower(state).compile().as_text()
        report[f"{name}/sampler/all_reduce_in_hlo"] = "all-reduce" in hlo
        for _ in range(STEPS):
            state, _ = sharded(state)
            jax.block_until_ready(state)
        arrays[f"{name}/sampler/sharded"] = flat(state.params)
        report[f"{name}/sampler/params_devices"] = len(
            jax.tree.leaves(state.params)[0].sharding.device_set
        )

    # -- the layout of a sharded batch --------------------------------------------------------
    gb = dist.global_batch_from_local(batches[0], mesh)
    x = gb.support.x
    report["batch_shape"] = list(x.shape)
    report["shard_shapes"] = [list(s.data.shape) for s in x.addressable_shards]
    report["shard_rows"] = sorted(
        [s.index[0].start, s.index[0].stop] for s in x.addressable_shards
    )
    report["shard_devices"] = len({s.device for s in x.addressable_shards})
    report["shards_match_rows"] = all(
        np.array_equal(np.asarray(s.data), np.asarray(batches[0].support.x)[s.index])
        for s in x.addressable_shards
    )
    report["process_slice"] = list(dist.process_slice(META_BATCH, mesh))

    # -- clear errors ----------------------------------------------------------------------
    def error(fn):
        try:
            fn()
        except ValueError as e:
            return str(e)
        return None

    report["check_batch_10"] = error(lambda: dist.check_batch(10, mesh))
    report["make_mesh_3"] = error(lambda: dist.make_mesh(data=3))
    report["make_mesh_model_3"] = error(lambda: dist.make_mesh(model=3))
    report["make_mesh_4x2"] = dict(dist.make_mesh(data=4, model=2).shape)
    report["global_batch_10"] = error(
        lambda: dist.global_batch_from_local(sinusoid_tasks(jax.random.key(0), 10, K_SHOT), mesh)
    )

    np.savez(out / "params.npz",
             **{f"{k}/{i}": a for k, v in arrays.items() for i, a in enumerate(v)})
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
