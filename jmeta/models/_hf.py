"""Hugging Face checkpoint folders: ``config.json``, safetensors weights (one file, or shards with
their ``model.safetensors.index.json``), ``tokenizer.json``; and :func:`from_pretrained`.

Decoder weights are read one tensor at a time, straight into the device arrays of their
sharding (``jax.make_array_from_callback``): each device's shard is filled from the tensors it
needs, so a checkpoint larger than host memory never lies whole in it. Every tensor's presence
and shape is checked from the files' headers before any weight is read.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.core._types import Params
from jmeta.data._pretrained import pretrained_file, pretrained_folder, require
from jmeta.models._decoder import (SCORINGS, DecoderConfig, decoder, init_backbone, label_tokens,
                                   partition_spec, verbalizer)
from jmeta.models._functional import Model
from jmeta.models._registry import ModelSpec, register

INDEX_FILE = "model.safetensors.index.json"


class Checkpoint:
    """The tensors of a checkpoint folder, by name, opened lazily (headers only until read).

    Example:
      >>> import tempfile
      >>> Checkpoint(tempfile.mkdtemp())  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      FileNotFoundError: .../model.safetensors is missing: a Hugging Face checkpoint folder has model.safetensors (or model-0000k-of-0000n.safetensors shards with model.safetensors.index.json).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self.files = {name: self.folder / f for name, f in weight_map.items()}
            for f in sorted(set(self.files.values())):
                if not f.is_file():
                    raise FileNotFoundError(f"{f} is missing: {index} lists it.")
        else:
            single = self.folder / "model.safetensors"
            if not single.is_file():
                raise FileNotFoundError(
                    f"{single} is missing: a Hugging Face checkpoint folder has model.safetensors "
                    f"(or model-0000k-of-0000n.safetensors shards with {INDEX_FILE}).")
            self.files = None
            self._single = single
        self._open: dict[Path, object] = {}
        if self.files is None:
            self.files = {name: single for name in self._handle(single).keys()}

    def _handle(self, file: Path):
        if file not in self._open:
            self._open[file] = require("safetensors").safe_open(str(file), framework="numpy")
        return self._open[file]

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def names(self) -> list[str]:
        return sorted(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of ``name``, from the file's header."""
        return tuple(self._handle(self.files[name]).get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        """One tensor as a NumPy array."""
        return self._handle(self.files[name]).get_tensor(name)


# ---------------------------------------------------------------------------------------------
# Decoder tensor names: our leaf path -> how to read it.


class Leaf(NamedTuple):
    """How one of our parameters is read: ``source(layer)`` gives the checkpoint tensor's name
    (``layer`` is None for unstacked leaves), ``take`` turns that tensor into our layout, and
    ``stored`` is the tensor's shape in the checkpoint."""

    shape: tuple[int, ...]
    stacked: bool
    source: Callable[[int | None], str]
    stored: tuple[int, ...]
    take: Callable[[np.ndarray], np.ndarray]


def _t(a: np.ndarray) -> np.ndarray:
    return a.T


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _cols(lo: int, hi: int):
    return lambda a: a[..., lo:hi]


def decoder_leaves(cfg: DecoderConfig, names: Sequence[str]) -> dict[tuple[str, ...], Leaf]:
    """``{path under "backbone": Leaf}`` for ``cfg``'s architecture; ``names`` (the checkpoint's
    tensor names) pick the prefix (``transformer.``/``model.`` or none)."""
    h, v, n = cfg.hidden_size, cfg.vocab_size, cfg.num_layers
    shapes = cfg.shapes()
    leaves: dict[tuple[str, ...], Leaf] = {}

    def unstacked(path, name, stored, take=_same):
        shape = tuple(take(np.empty(stored, np.int8)).shape)
        leaves[path] = Leaf(shape, False, lambda _, name=name: name, stored, take)

    def stacked(path, fmt, stored, take=_same):
        shape = tuple(take(np.empty(stored, np.int8)).shape)
        leaves[("layers", *path)] = Leaf((n, *shape), True, lambda i, fmt=fmt: fmt.format(i),
                                         stored, take)

    if cfg.family == "gpt2":
        p = "transformer." if any(s.startswith("transformer.") for s in names) else ""
        unstacked(("embed", "embedding"), p + "wte.weight", (v, h))
        unstacked(("positions", "embedding"), p + "wpe.weight", (cfg.max_positions, h))
        layer = p + "h.{}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            stacked((ours, "scale"), layer + theirs + ".weight", (h,))
            stacked((ours, "bias"), layer + theirs + ".bias", (h,))
        for j, name in enumerate("qkv"):  # the fused Conv1D c_attn: [in, 3H], columns q|k|v
            stacked((name, "kernel"), layer + "attn.c_attn.weight", (h, 3 * h),
                    _cols(j * h, (j + 1) * h))
            stacked((name, "bias"), layer + "attn.c_attn.bias", (3 * h,),
                    _cols(j * h, (j + 1) * h))
        for ours, theirs in (("o", "attn.c_proj"), ("up", "mlp.c_fc"), ("down", "mlp.c_proj")):
            fan_in, fan_out = shapes[ours]
            stacked((ours, "kernel"), layer + theirs + ".weight", (fan_in, fan_out))  # Conv1D
            stacked((ours, "bias"), layer + theirs + ".bias", (fan_out,))
        unstacked(("final_norm", "scale"), p + "ln_f.weight", (h,))
        unstacked(("final_norm", "bias"), p + "ln_f.bias", (h,))
    else:
        p = "model." if any(s.startswith("model.") for s in names) else ""
        unstacked(("embed", "embedding"), p + "embed_tokens.weight", (v, h))
        layer = p + "layers.{}."
        stacked(("attn_norm", "scale"), layer + "input_layernorm.weight", (h,))
        stacked(("mlp_norm", "scale"), layer + "post_attention_layernorm.weight", (h,))
        where = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                 "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
                 "down": "mlp.down_proj"}
        for ours, theirs in where.items():
            fan_in, fan_out = shapes[ours]
            stacked((ours, "kernel"), layer + theirs + ".weight", (fan_out, fan_in), _t)
            if cfg.bias(ours):
                stacked((ours, "bias"), layer + theirs + ".bias", (fan_out,))
        unstacked(("final_norm", "scale"), p + "norm.weight", (h,))
        if not cfg.tie_embeddings:
            unstacked(("lm_head", "kernel"), "lm_head.weight", (v, h), _t)
    return leaves


def check_tensors(ckpt: Checkpoint, leaves: dict[tuple[str, ...], Leaf], cfg: DecoderConfig,
                  source: str) -> None:
    """A ``ValueError`` naming the first missing or mis-shaped tensor and the shape expected."""
    for leaf in leaves.values():
        for i in range(cfg.num_layers) if leaf.stacked else (None,):
            name = leaf.source(i)
            if name not in ckpt:
                raise ValueError(f"{source}: tensor {name!r} is missing (expected shape "
                                 f"{leaf.stored} for a {cfg.model_type} model with "
                                 f"hidden_size={cfg.hidden_size}).")
            got = ckpt.shape(name)
            if got != leaf.stored:
                raise ValueError(
                    f"{source}: tensor {name!r} has shape {got}, expected {leaf.stored} from "
                    f"config.json (hidden_size={cfg.hidden_size}, intermediate_size="
                    f"{cfg.intermediate_size}, heads={cfg.num_heads}, kv heads={cfg.kv_heads}, "
                    f"vocab_size={cfg.vocab_size}).")


def read_leaf(ckpt: Checkpoint, leaf: Leaf, sharding: jax.sharding.Sharding,
              dtype) -> jax.Array:
    """One parameter, placed on ``sharding``: each device's shard is read from the tensors it
    covers (one tensor in host memory at a time, besides the shard being filled)."""

    def shard(index: tuple[slice, ...]) -> np.ndarray:
        if not leaf.stacked:
            return np.asarray(leaf.take(ckpt.read(leaf.source(None)))[index], dtype)
        layers = range(leaf.shape[0])[index[0]]
        return np.stack([np.asarray(leaf.take(ckpt.read(leaf.source(i)))[index[1:]], dtype)
                         for i in layers])

    return jax.make_array_from_callback(leaf.shape, sharding, shard)


def load_decoder(folder: str | os.PathLike, cfg: DecoderConfig | None = None, *,
                 dtype: str = "float32", mesh: jax.sharding.Mesh | None = None,
                 model_axis: str = "model") -> tuple[DecoderConfig, Params]:
    """The config and backbone parameters of a decoder checkpoint folder.

    With ``mesh``, each weight is split over ``model_axis`` as
    :func:`jmeta.models.partition_spec` says (and replicated over the other axes); without, it
    lies on the first device.

    Example:
      >>> cfg, params = load_decoder("tests/fixtures/decoders/llama")  # doctest: +SKIP
      >>> params["layers"]["q"]["kernel"].shape  # doctest: +SKIP
      (2, 32, 32)
    """
    folder = Path(folder)
    if cfg is None:
        cfg = DecoderConfig.from_dict(read_config(folder))
    ckpt = Checkpoint(folder)
    leaves = decoder_leaves(cfg, ckpt.names())
    check_tensors(ckpt, leaves, cfg, str(folder))
    np_dtype = jnp.dtype(dtype)
    params: dict = {}
    for path, leaf in leaves.items():
        if mesh is None:
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        else:
            spec = partition_spec(cfg, ("backbone", *path), leaf.shape, mesh.shape[model_axis],
                                  model_axis)
            sharding = jax.sharding.NamedSharding(mesh, spec)
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = read_leaf(ckpt, leaf, sharding, np_dtype)
    return cfg, params


def read_config(folder: str | os.PathLike) -> dict:
    """``config.json`` of a checkpoint folder as a dict."""
    return json.loads(pretrained_file(Path(folder), "config.json").read_text(encoding="utf-8"))


def check_tokenizer(folder: Path, vocab_size: int) -> None:
    """A ``ValueError`` when ``tokenizer.json`` has ids the embedding has no row for. (A smaller
    tokenizer is normal: checkpoints pad the embedding to a round size.)"""
    file = folder / "tokenizer.json"
    if not file.is_file():
        return
    size = require("tokenizers").Tokenizer.from_file(str(file)).get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise ValueError(f"{file}: the tokenizer has {size} tokens but the model's embedding "
                         f"has {vocab_size} rows (config.json vocab_size); the tokenizer belongs "
                         "to another model.")


_ENCODER_OPTIONS = {"lora_rank": "rank", "lora_alpha": "alpha", "lora_targets": "targets",
                    "lora_layers": "top_layers", "num_classes": "num_classes",
                    "max_length": "max_length", "zero_head": "zero_head"}


def from_pretrained(path: str | os.PathLike, *, key: jax.Array | None = None,
                    mesh: jax.sharding.Mesh | None = None, model_axis: str = "model",
                    **options) -> tuple[Model, Params]:
    """A pretrained Hugging Face checkpoint as ``(model, params)``: ``model.apply(params,
    token_ids)``.

    Decoders (``model_type`` gpt2, llama, qwen2, mistral) give next-token logits
    ``[batch, length, vocab]`` by default; ``output="hidden"`` the last token's hidden state,
    ``num_classes=C`` a linear head on it. BERT encoders (``model_type`` bert) give
    :func:`jmeta.models.bert_lora`'s pooled embeddings, or a head with ``num_classes``.

    Options (keywords; see :func:`jmeta.models.decoder`): ``lora_rank``, ``lora_alpha``,
    ``lora_targets`` (among ``q, k, v, o, gate, up, down`` for decoders; BERT's names for
    encoders), ``lora_layers`` (the last N layers), ``dtype`` (``"bfloat16"`` runs the backbone
    in bfloat16 under float32 adapters), ``remat`` (recompute each layer in the backward pass),
    ``num_classes``, ``output``, ``pad_token_id`` (default None: every token is real),
    ``max_length``.
    ``key`` draws the adapters and the head (default ``jax.random.key(0)``); ``mesh`` splits
    the decoder's weights over its ``model_axis`` as they are read.

    Example:
      >>> import jax.numpy as jnp
      >>> model, params = from_pretrained("tests/fixtures/decoders/qwen2",
      ...                                 lora_targets=("q", "v"), lora_rank=4)  # doctest: +SKIP
      >>> model.apply(params, jnp.array([[5, 7, 9]])).shape  # doctest: +SKIP
      (1, 3, 96)
    """
    folder = pretrained_folder(path)
    raw = read_config(folder)
    key = jax.random.key(0) if key is None else key
    if raw.get("model_type") == "bert":
        from jmeta.models._bert import bert_lora

        unknown = set(options) - set(_ENCODER_OPTIONS)
        if unknown or mesh is not None:
            raise TypeError(f"from_pretrained: option(s) {sorted(unknown) or ['mesh']} do not "
                            f"apply to a BERT encoder; it takes {sorted(_ENCODER_OPTIONS)}.")
        model = bert_lora(folder, **{_ENCODER_OPTIONS[k]: v for k, v in options.items()})
        return model, model.init(key)
    cfg = DecoderConfig.from_dict(raw)
    check_tokenizer(folder, cfg.vocab_size)
    if mesh is not None:
        check_mesh(cfg, mesh, model_axis)
    # Build the model (which checks every option) before reading a single weight.
    probe = decoder(cfg, lambda: None, **options)
    del probe
    dtype = options.get("dtype", "float32")
    _, backbone = load_decoder(folder, cfg, dtype=dtype, mesh=mesh, model_axis=model_axis)
    model = decoder(cfg, lambda: backbone, **options)
    params = model.init(key)
    params["backbone"] = backbone  # the arrays as read and placed, not a copy
    return model, params


def check_mesh(cfg: DecoderConfig, mesh: jax.sharding.Mesh, model_axis: str = "model") -> None:
    """A ``ValueError`` for a mesh without ``model_axis`` or whose size there does not divide
    the attention heads.

    Example:
      >>> import jax
      >>> cfg = DecoderConfig("llama", 96, 32, 2, 4, 64, num_kv_heads=2)
      >>> check_mesh(cfg, jax.sharding.AbstractMesh((2, 2), ("data", "model")))
      >>> check_mesh(cfg, jax.sharding.AbstractMesh((1, 8), ("data", "model")))
      Traceback (most recent call last):
        ...
      ValueError: a model axis of size 8 does not divide the 4 attention heads of this llama model; choose a model axis among the divisors of 4.
    """
    if model_axis not in mesh.shape:
        raise ValueError(f"mesh axes {tuple(mesh.shape)} have no {model_axis!r} axis to split "
                         "the model over.")
    m = mesh.shape[model_axis]
    if cfg.num_heads % m:
        raise ValueError(f"a model axis of size {m} does not divide the {cfg.num_heads} "
                         f"attention heads of this {cfg.model_type} model; choose a model axis "
                         f"among the divisors of {cfg.num_heads}.")


@functools.lru_cache(maxsize=4)
def _pretrained_backbone(folder: str, dtype: str) -> tuple[DecoderConfig, Params]:
    return load_decoder(folder, dtype=dtype)


@functools.lru_cache(maxsize=4)
def _random_backbone(cfg: DecoderConfig, seed: int, dtype: str) -> Params:
    # Concrete arrays even when first asked for inside a trace (jax.eval_shape of an init):
    # the cache must never keep tracers.
    with jax.ensure_compile_time_eval():
        return init_backbone(cfg, jax.random.key(seed), jnp.dtype(dtype))


@register("decoder", language_model=True)
def _from_config(spec: ModelSpec, *, path: str = "", arch: dict | None = None, arch_seed: int = 0,
                 scoring: str = "head", labels: Sequence = (), lora_rank: int = 8,
                 lora_alpha: float = 16.0, lora_targets: Sequence[str] = ("q", "v"),
                 lora_layers: int | None = None, dtype: str = "float32", remat: bool = False,
                 pad_token_id: int | None = None, zero_head: bool = False,
                 train_backbone: bool = False) -> Model:
    """``model=dict(name="decoder", ...)``: a decoder on the dataset's token ids.

    ``path``: a Hugging Face checkpoint folder; or ``arch``: the keys of a ``config.json``
    (``model_type``, ``hidden_size``, ...) for a decoder with random weights drawn from
    ``arch_seed`` (synthetic experiments). A classifier is a linear head on the last token's
    hidden state (``scoring="head"``) or the language model's scores of the verbalisers
    ``labels`` (token ids, one or a sequence per class): ``"direct"`` ``log p(label | x)`` or
    ``"channel"`` ``log p(x | label)``. An embedding network is the last hidden state; an
    in-context learner (MetaICL) gets the next-token logits. ``train_backbone=True`` trains
    every weight of the decoder (full-parameter MetaICL; ``lora_targets=()`` then adds none).
    """
    if spec.inputs != "tokens" or len(spec.input_shape) != 1:
        raise ValueError(f"model 'decoder' reads token ids [length]; the dataset gives "
                         f"{spec.inputs} of shape {tuple(spec.input_shape)}: use a text dataset.")
    if bool(path) == bool(arch):
        raise ValueError("model 'decoder' needs exactly one of path= (a checkpoint folder) and "
                         "arch= (a config.json dict for random weights).")
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}; got {scoring!r}.")
    if path:
        folder = pretrained_folder(path)
        cfg = DecoderConfig.from_dict(read_config(folder))
        check_tokenizer(folder, cfg.vocab_size)
        # Check the options on the architecture before reading a weight.
        decoder(cfg, lambda: None, lora_rank=lora_rank, lora_alpha=lora_alpha,
                lora_targets=lora_targets, lora_layers=lora_layers, dtype=dtype)
        backbone = lambda: _pretrained_backbone(str(folder.resolve()), dtype)[1]  # noqa: E731
    else:
        cfg = DecoderConfig.from_dict(dict(arch))
        backbone = lambda: _random_backbone(cfg, int(arch_seed), dtype)  # noqa: E731
    common = dict(lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=tuple(lora_targets),
                  lora_layers=lora_layers, dtype=dtype, remat=remat,
                  pad_token_id=pad_token_id, train_backbone=train_backbone)
    length = spec.input_shape[0]
    if spec.next_tokens or spec.outputs is None or scoring == "head":
        if length > cfg.max_positions:
            raise ValueError(f"sequences of {length} tokens exceed the model's context of "
                             f"{cfg.max_positions} tokens.")
    if spec.next_tokens:
        return decoder(cfg, backbone, output="logits", **common)
    if spec.outputs is None:
        return decoder(cfg, backbone, output="hidden", **common)
    if scoring == "head":
        return decoder(cfg, backbone, output="classes", num_classes=spec.outputs,
                       zero_head=zero_head, **common)
    verbalisers = label_tokens(labels, cfg.vocab_size, spec.outputs)
    if length + verbalisers.shape[1] > cfg.max_positions:
        raise ValueError(f"sequences of {length} tokens and labels of {verbalisers.shape[1]} "
                         f"exceed the model's context of {cfg.max_positions} tokens.")
    return verbalizer(decoder(cfg, backbone, output="logits", **common), verbalisers, scoring,
                      pad_token_id)
