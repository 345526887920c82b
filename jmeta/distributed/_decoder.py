"""Decoders over a ``("data", "model")`` mesh: the frozen backbone split over ``"model"``
(Megatron-style tensor parallelism, :func:`jmeta.models.partition_spec`), the meta-batch over
``"data"``.

Everything that is not the backbone (LoRA adapters, the head, the inner rule's pieces, the outer
optimizer's state, the step counter and the PRNG key) is replicated: it is small, and every
device needs all of it at every step. The backbone's weights are replicated over ``"data"`` and
split over ``"model"``: the maps that widen the hidden state (``q, k, v, gate, up``, an untied
LM head) by output columns, the maps that narrow it back (``o, down``) by input rows, the
embedding by its hidden dimension. ``jit`` with these input and output shardings is enough:
XLA's SPMD partitioner (GSPMD) propagates them through the layers, so that each device computes
its heads and its slice of the MLP for its tasks, and sums the row-split maps' partial outputs
with one all-reduce over ``"model"`` per map; the meta-gradient of the replicated adapters is
averaged over ``"data"``.

Example (one device: a 1 x 1 mesh; tests/test_decoder_sharding.py runs 1x8 ... 8x1)::

    mesh = make_mesh(data=2, model=4)
    learner = maml(decoder(cfg, output="classes", num_classes=5, lora_targets=("q", "v")),
                   loss_fn=cross_entropy_loss, adapt_filter=lambda p: not p.startswith("backbone"))
    tx = freeze_backbone(optax.adam(1e-3))
    step = decoder_meta_step(learner, tx, cfg, mesh, meta_batch_size=8)
    state = shard_decoder_state(init_state(learner, tx, key), cfg, mesh)
    state, metrics = step(state, batch)          # batch: 8 tasks, split 4 per data row
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jmeta.core._meta import MetaLearner, init_state, meta_step_fn
from jmeta.core._types import MetaState, PyTree, TaskBatch
from jmeta.distributed._mesh import DATA, MODEL, check_batch

BACKBONE = "backbone"


def _keys(path) -> tuple[str, ...]:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)


def check_decoder_mesh(cfg, mesh: Mesh, *, model_axis: str = MODEL,
                       data_axis: str = DATA) -> None:
    """A ``ValueError`` before anything compiles: a mesh without ``data_axis`` or
    ``model_axis``, or a model axis that does not divide the attention heads
    (:func:`jmeta.models.check_mesh`).

    Example:
      >>> from jmeta.distributed import make_mesh
      >>> from jmeta.models import DecoderConfig
      >>> check_decoder_mesh(DecoderConfig("llama", 96, 32, 2, 4, 64), make_mesh())
      >>> check_decoder_mesh(DecoderConfig("llama", 96, 32, 2, 4, 64), make_mesh(),
      ...                    data_axis="batch")
      Traceback (most recent call last):
        ...
      ValueError: mesh axes ('data', 'model') have no 'batch' axis to split the meta-batch over; build it with jmeta.distributed.make_mesh.
    """
    from jmeta.models import check_mesh

    if data_axis not in mesh.shape:
        raise ValueError(f"mesh axes {tuple(mesh.shape)} have no {data_axis!r} axis to split "
                         "the meta-batch over; build it with jmeta.distributed.make_mesh.")
    check_mesh(cfg, mesh, model_axis)


def decoder_shardings(tree: PyTree, cfg, mesh: Mesh, *, model_axis: str = MODEL) -> PyTree:
    """A :class:`~jax.sharding.NamedSharding` for every leaf of ``tree``: a decoder's
    parameters, a whole :class:`~jmeta.core.MetaState`, or their abstract shapes
    (``jax.eval_shape``).

    A leaf below a ``"backbone"`` key (``params["model"]["backbone"]...``, and an optimizer's
    moments of it, if it keeps any) is split as :func:`jmeta.models.partition_spec` says for
    its path from ``"backbone"`` on; every other leaf is replicated.

    Example:
      >>> import jax
      >>> from jmeta.distributed import make_mesh
      >>> from jmeta.models import DecoderConfig, init_backbone
      >>> cfg = DecoderConfig("llama", 96, 32, 2, 4, 64, num_kv_heads=2)
      >>> tree = {"backbone": jax.eval_shape(lambda: init_backbone(cfg, jax.random.key(0)))}
      >>> decoder_shardings(tree, cfg, make_mesh())["backbone"]["layers"]["q"]["kernel"].spec
      P(None, None, None)
    """
    from jmeta.models import partition_spec

    size = int(mesh.shape[model_axis])

    def one(path, leaf):
        keys = _keys(path)
        shape = tuple(getattr(leaf, "shape", ()))
        if BACKBONE in keys and shape:
            sub = keys[keys.index(BACKBONE):]
            return NamedSharding(mesh, partition_spec(cfg, sub, shape, size, model_axis))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(one, tree)


def _place(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(_place(jax.random.key_data(x), sharding), impl=impl)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_decoder_params(params: PyTree, cfg, mesh: Mesh, *, model_axis: str = MODEL) -> PyTree:
    """``params`` (a decoder's, or a tree holding them) placed on ``mesh`` by
    :func:`decoder_shardings`. Checks the mesh first (:func:`jmeta.models.check_mesh`).

    Example:
      >>> import jax
      >>> from jmeta.distributed import make_mesh
      >>> from jmeta.models import DecoderConfig, decoder
      >>> cfg = DecoderConfig("llama", 96, 32, 2, 4, 64, num_kv_heads=2)
      >>> params = shard_decoder_params(decoder(cfg).init(jax.random.key(0)), cfg, make_mesh())
      >>> params["backbone"]["layers"]["q"]["kernel"].sharding.spec
      P(None, None, None)
    """
    from jmeta.models import check_mesh

    check_mesh(cfg, mesh, model_axis)
    return jax.tree.map(_place, params, decoder_shardings(params, cfg, mesh,
                                                          model_axis=model_axis))


def shard_decoder_state(state: MetaState, cfg, mesh: Mesh, *, model_axis: str = MODEL,
                        data_axis: str = DATA) -> MetaState:
    """A :class:`~jmeta.core.MetaState` placed on ``mesh``: the backbone split over
    ``model_axis``, the rest replicated (:func:`decoder_shardings`). In a multi-process run
    every process passes the same state.

    Example:
      >>> import jax, optax
      >>> from jmeta.algorithms import metaicl
      >>> from jmeta.core import init_state
      >>> from jmeta.distributed import make_mesh
      >>> from jmeta.models import DecoderConfig, decoder
      >>> cfg = DecoderConfig("llama", 96, 32, 2, 4, 64, num_kv_heads=2)
      >>> learner = metaicl(decoder(cfg, lora_targets=("q", "v")), ways=2, labels=(5, 6))
      >>> tx = freeze_backbone(optax.adam(1e-3))
      >>> state = shard_decoder_state(init_state(learner, tx, jax.random.key(0)), cfg,
      ...                             make_mesh())
      >>> state.params["model"]["lora"]["q"]["a"].sharding.is_fully_replicated
      True
    """
    check_decoder_mesh(cfg, mesh, model_axis=model_axis, data_axis=data_axis)
    return jax.tree.map(_place, state, decoder_shardings(state, cfg, mesh,
                                                         model_axis=model_axis))


def freeze_backbone(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer`` for every parameter outside ``"backbone"``; the backbone gets no update
    and no optimizer state (as ``jmeta train`` does for frozen parameters).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = freeze_backbone(optax.adam(1e-3))
      >>> p = {"model": {"backbone": {"w": jnp.ones(1000)}, "lora": {"a": jnp.ones(3)}}}
      >>> sum(x.size for x in jax.tree.leaves(tx.init(p)))  # adam's moments of the adapter
      7
    """
    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: "frozen" if BACKBONE in _keys(p) else "train", params)

    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def decoder_meta_step(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    cfg,
    mesh: Mesh,
    *,
    model_axis: str = MODEL,
    data_axis: str = DATA,
    meta_batch_size: int | None = None,
    task_map: str = "auto",
    chunk_size: int | None = None,
    donate: bool = True,
) -> Callable[[MetaState, TaskBatch], tuple[MetaState, dict]]:
    """The jitted meta-step ``(state, batch) -> (state, metrics)`` of a decoder learner on a
    ``(data, model)`` mesh: :func:`jmeta.core.meta_step_fn` under ``jit`` with the state's
    shardings (:func:`decoder_shardings`) in and out, the batch's task axis over
    ``data_axis``, and replicated metrics.

    The mesh (and ``meta_batch_size``, when given) is checked before anything is traced:
    a model axis that does not divide the attention heads, or a meta-batch that does not split
    over the data axis, is a ``ValueError``. Pass a state from :func:`shard_decoder_state` (or
    ``jax.ShapeDtypeStruct`` leaves with these shardings to ``.lower`` it: no weights needed).

    Returns the ``jax.jit`` object itself (``.lower(state, batch).compile()`` works).

    Example (a 2-way 1-shot MetaICL step on a 1 x 1 mesh; 8 devices work alike):
      >>> import jax, jax.numpy as jnp, optax
      >>> from jmeta.algorithms import metaicl
      >>> from jmeta.core import Batch, Episode, init_state
      >>> from jmeta.distributed import make_mesh
      >>> from jmeta.models import DecoderConfig, decoder
      >>> cfg = DecoderConfig("llama", 16, 8, 1, 2, 16)
      >>> learner = metaicl(decoder(cfg, lora_targets=("q", "v")), ways=2, labels=(1, 2))
      >>> tx, mesh = freeze_backbone(optax.adam(1e-3)), make_mesh()
      >>> step = decoder_meta_step(learner, tx, cfg, mesh, meta_batch_size=2)
      >>> state = shard_decoder_state(init_state(learner, tx, jax.random.key(0)), cfg, mesh)
      >>> sets = Batch(jnp.full((2, 2, 3), 5), jnp.array([[0, 1], [1, 0]]))
      >>> state, metrics = step(state, Episode(sets, sets))
      >>> int(state.step)
      1
    """
    check_decoder_mesh(cfg, mesh, model_axis=model_axis, data_axis=data_axis)
    if meta_batch_size is not None:
        check_batch(meta_batch_size, int(mesh.shape[data_axis]))
    abstract = jax.eval_shape(lambda k: init_state(learner, optimizer, k), jax.random.key(0))
    state_sharding = decoder_shardings(abstract, cfg, mesh, model_axis=model_axis)
    batch_sharding = NamedSharding(mesh, P(data_axis))
    replicated = NamedSharding(mesh, P())
    step = _step_fn(learner, optimizer, task_map, chunk_size)
    return jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated),
                   donate_argnums=(0,) if donate else ())


@functools.lru_cache(maxsize=8)
def _step_fn(learner, optimizer, task_map, chunk_size):
    # One function object per learner and optimizer: JAX then traces the meta-step once for
    # every mesh it is compiled for (its trace cache is keyed by function and shapes).
    return meta_step_fn(learner, optimizer, task_map=task_map, chunk_size=chunk_size)


def per_device_bytes(tree: PyTree) -> int:
    """Bytes one device holds of ``tree``'s arrays: the first addressable shard of each leaf
    (all shards of a leaf have one size under a :class:`~jax.sharding.NamedSharding` that
    splits evenly).

    Example:
      >>> import jax.numpy as jnp
      >>> per_device_bytes({"w": jnp.zeros((4, 8), jnp.float32)})
      128
    """
    return int(sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree)))


def expected_per_device_bytes(tree: PyTree, cfg, model_size: int, *,
                              model_axis: str = MODEL) -> int:
    """What :func:`per_device_bytes` should be for ``tree`` (arrays or abstract shapes) split
    by :func:`decoder_shardings` over a model axis of ``model_size``: each leaf's bytes, divided
    by ``model_size`` where its spec names ``model_axis``.

    Example (Llama-3.2-1B's query maps, 16 layers of [2048, 2048] in bfloat16, over 8):
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.models import DecoderConfig
      >>> cfg = DecoderConfig("llama", 128256, 2048, 16, 32, 8192, num_kv_heads=8)
      >>> q = jax.ShapeDtypeStruct((16, 2048, 2048), jnp.bfloat16)
      >>> expected_per_device_bytes({"backbone": {"layers": {"q": {"kernel": q}}}}, cfg, 8)
      16777216
    """
    from jmeta.models import partition_spec

    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys, shape = _keys(path), tuple(leaf.shape)
        raw = leaf
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # its raw uint32 words
            raw = jax.eval_shape(jax.random.key_data, leaf)
        nbytes = np.dtype(raw.dtype).itemsize * math.prod(raw.shape)
        if BACKBONE in keys and shape:
            spec = partition_spec(cfg, keys[keys.index(BACKBONE):], shape, model_size,
                                  model_axis)
            if model_axis in tuple(spec):
                nbytes //= model_size
        total += nbytes
    return total
