"""Data parallelism over the task axis, on one or several processes.

The recipe (the same program on every process)::

    from jmeta import distributed as dist
    dist.initialize()                     # no-op for one process; reads JAX_* variables otherwise
    mesh = dist.make_mesh()               # ("data", "model") over every device of every process
    dist.check_batch(meta_batch_size, mesh)
    state = dist.shard_state(init_state(learner, tx, key), mesh)
    step = make_meta_step(learner, tx, batch_sharding=dist.task_sharding(mesh))
    start, stop = dist.process_slice(meta_batch_size, mesh)   # this process's tasks
    local = sampler.sample(step_index)                        # stop - start tasks
    state, metrics = step(state, dist.global_batch_from_local(local, mesh))

With an in-graph sampler (``make_meta_step(..., sampler=..., batch_sharding=...)``) no batch is
passed at all: each device draws the whole batch's keys but computes only its tasks.
"""

from jmeta.distributed._mesh import DATA as DATA
from jmeta.distributed._mesh import MODEL as MODEL
from jmeta.distributed._mesh import check_batch as check_batch
from jmeta.distributed._mesh import data_size as data_size
from jmeta.distributed._mesh import make_mesh as make_mesh
from jmeta.distributed._mesh import replicated as replicated
from jmeta.distributed._mesh import shard_state as shard_state
from jmeta.distributed._mesh import task_sharding as task_sharding
from jmeta.distributed._process import global_batch_from_local as global_batch_from_local
from jmeta.distributed._process import initialize as initialize
from jmeta.distributed._process import process_slice as process_slice
from jmeta.distributed._mesh import param_sharding as param_sharding
from jmeta.distributed._decoder import check_decoder_mesh as check_decoder_mesh
from jmeta.distributed._decoder import decoder_meta_step as decoder_meta_step
from jmeta.distributed._decoder import decoder_shardings as decoder_shardings
from jmeta.distributed._decoder import expected_per_device_bytes as expected_per_device_bytes
from jmeta.distributed._decoder import freeze_backbone as freeze_backbone
from jmeta.distributed._decoder import per_device_bytes as per_device_bytes
from jmeta.distributed._decoder import shard_decoder_params as shard_decoder_params
from jmeta.distributed._decoder import shard_decoder_state as shard_decoder_state
