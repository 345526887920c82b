"""Decoder language models: GPT-2 and the Llama family (Llama 2/3, Qwen2/2.5, Mistral).

One architecture covers them all, set by a :class:`DecoderConfig` read from a Hugging Face
``config.json``:

=========  ==========  =========  ========  =========  ============  ==================
family     positions   norm       MLP       attention  biases        output head
=========  ==========  =========  ========  =========  ============  ==================
gpt2       learned     LayerNorm  tanh-GELU multi-head all maps      tied to embeddings
llama      RoPE        RMSNorm    SwiGLU    grouped    none          tied or untied
qwen2      RoPE        RMSNorm    SwiGLU    grouped    q, k, v       tied or untied
mistral    RoPE        RMSNorm    SwiGLU    grouped,   none          untied
                                            sliding
=========  ==========  =========  ========  =========  ============  ==================

The layers are Flax NNX modules (:class:`DecoderLayer`); their parameters are stacked along a
leading layer axis and the network runs them with ``jax.lax.scan``, so that a 36-layer model
compiles like a one-layer one and ``remat=True`` recomputes each layer in the backward pass
(``jax.checkpoint`` around the scanned body). Parameters::

    {"backbone": {"embed": {"embedding": [V, H]},
                  "positions": {"embedding": [P, H]},          # GPT-2 only
                  "layers": {"attn_norm": ..., "q": {"kernel": [L, H, heads*D], "bias"?},
                             "k": ..., "v": ..., "o": ..., "mlp_norm": ...,
                             "gate"?: ..., "up": ..., "down": ...},
                  "final_norm": ...,
                  "lm_head": {"kernel": [H, V]}},              # untied heads only
     "lora": {target: {"a": [N, in, rank], "b": [N, rank, out]}},  # the last N layers
     "head": {"kernel": [H, C], "bias": [C]}}                  # with num_classes

Kernels are ``[in, out]`` as in ``nnx.Linear``; :mod:`jmeta.models._hf` converts the
checkpoints' ``[out, in]`` (and GPT-2's fused ``[in, 3H]`` Conv1D) layouts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jmeta.core._types import Params, PRNGKey
from jmeta.models._functional import Model

MODEL_TYPES = ("gpt2", "llama", "qwen2", "mistral")
"""The ``model_type`` values of ``config.json`` that :class:`DecoderConfig` reads."""

DECODER_LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
"""Maps of a decoder layer that can carry a LoRA adapter: the attention's query, key, value and
output projections, and the MLP's gate (Llama family only), up and down projections."""

OUTPUTS = ("logits", "hidden", "classes")
"""What a decoder :class:`~jmeta.models.Model` returns: next-token logits ``[..., L, V]``, the
last token's final hidden state ``[..., H]`` (an embedding network), or a linear head on it."""

_GELU = functools.partial(jax.nn.gelu, approximate=True)
_ACTIVATIONS = {"gelu_new": _GELU, "gelu_pytorch_tanh": _GELU, "gelu_fast": _GELU,
                "gelu": functools.partial(jax.nn.gelu, approximate=False),
                "silu": jax.nn.silu, "swish": jax.nn.silu, "relu": jax.nn.relu}
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """The architecture of a decoder, read from a Hugging Face ``config.json``
    (:meth:`from_dict`).

    Example:
      >>> cfg = DecoderConfig(model_type="llama", vocab_size=96, hidden_size=32, num_layers=2,
      ...                     num_heads=4, num_kv_heads=2, intermediate_size=64)
      >>> cfg.head_dim, cfg.gated, cfg.norm
      (8, True, 'rms')
      >>> DecoderConfig.from_dict({"model_type": "bloom"})
      Traceback (most recent call last):
        ...
      ValueError: config.json: model_type 'bloom' is not supported; supported decoders: gpt2, llama, qwen2, mistral (and 'bert' encoders through jmeta.models.from_pretrained).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    num_kv_heads: int | None = None
    head_dim_: int | None = None
    max_positions: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()  # sorted (key, value) pairs of config.json's rope_scaling
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    activation: str = "silu"
    sliding_window: int | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"DecoderConfig: model_type {self.model_type!r} is not supported; "
                             f"supported: {', '.join(MODEL_TYPES)}.")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"DecoderConfig: activation {self.activation!r} is not supported; "
                             f"supported: {tuple(_ACTIVATIONS)}.")
        kv = self.kv_heads
        if self.num_heads % kv:
            raise ValueError(f"DecoderConfig: num_attention_heads={self.num_heads} is not a "
                             f"multiple of num_key_value_heads={kv}.")
        if self.head_dim_ is None and self.hidden_size % self.num_heads:
            raise ValueError(f"DecoderConfig: hidden_size={self.hidden_size} is not a multiple "
                             f"of num_attention_heads={self.num_heads}; give head_dim.")
        kind = dict(self.rope_scaling).get("rope_type", dict(self.rope_scaling).get("type"))
        if kind is not None and kind not in _ROPE_TYPES:
            raise ValueError(f"DecoderConfig: rope_scaling type {kind!r} is not supported; "
                             f"supported: {_ROPE_TYPES}.")

    @property
    def family(self) -> str:
        """``"gpt2"`` or ``"llama"`` (Llama, Qwen2 and Mistral share one layer)."""
        return "gpt2" if self.model_type == "gpt2" else "llama"

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else int(self.num_kv_heads)

    @property
    def head_dim(self) -> int:
        return self.head_dim_ or self.hidden_size // self.num_heads

    @property
    def gated(self) -> bool:
        """A SwiGLU MLP (``down(act(gate x) * up x)``) rather than GPT-2's ``down(act(up x))``."""
        return self.family == "llama"

    @property
    def norm(self) -> str:
        return "layer" if self.family == "gpt2" else "rms"

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """The maps of this architecture that LoRA can adapt."""
        return DECODER_LORA_TARGETS if self.gated else ("q", "k", "v", "o", "up", "down")

    def shapes(self) -> dict[str, tuple[int, int]]:
        """``{map: (in_features, out_features)}`` of one layer's linear maps.

        Example:
          >>> DecoderConfig("gpt2", 96, 32, 2, 4, 128, activation="gelu_new").shapes()["up"]
          (32, 128)
        """
        h, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        out = {"q": (h, self.num_heads * d), "k": (h, self.kv_heads * d),
               "v": (h, self.kv_heads * d), "o": (self.num_heads * d, h)}
        if self.gated:
            out["gate"] = (h, i)
        out.update(up=(h, i), down=(i, h))
        return out

    def bias(self, name: str) -> bool:
        """Whether the map ``name`` has a bias."""
        if self.family == "gpt2":
            return True
        if name in ("q", "k", "v"):
            return self.qkv_bias
        return self.o_bias if name == "o" else self.mlp_bias

    def num_parameters(self) -> int:
        """Parameters of the backbone (embeddings counted once when tied).

        Example:
          >>> DecoderConfig("gpt2", 50257, 1280, 36, 20, 5120, max_positions=1024,
          ...               tie_embeddings=True, activation="gelu_new").num_parameters()
          774030080
        """
        h, n = self.hidden_size, self.num_layers
        per = sum(a * b + (b if self.bias(k) else 0) for k, (a, b) in self.shapes().items())
        norm = 2 * h if self.norm == "layer" else h
        total = self.vocab_size * h + n * (per + 2 * norm) + norm
        if self.family == "gpt2":
            total += self.max_positions * h
        return total + (0 if self.tie_embeddings else h * self.vocab_size)

    @classmethod
    def from_dict(cls, d: dict) -> DecoderConfig:
        """A :class:`DecoderConfig` from the keys of a Hugging Face ``config.json``."""
        kind = d.get("model_type")
        if kind not in MODEL_TYPES:
            raise ValueError(f"config.json: model_type {kind!r} is not supported; supported "
                             f"decoders: {', '.join(MODEL_TYPES)} (and 'bert' encoders through "
                             "jmeta.models.from_pretrained).")
        try:
            return cls._from_dict(kind, d)
        except KeyError as e:
            raise ValueError(f"config.json of a {kind} model lacks the key {e.args[0]!r}.") from None

    @classmethod
    def _from_dict(cls, kind: str, d: dict) -> DecoderConfig:
        pad = d.get("pad_token_id")
        if kind == "gpt2":
            h = d["n_embd"]
            return cls(model_type=kind, vocab_size=d["vocab_size"], hidden_size=h,
                       num_layers=d["n_layer"], num_heads=d["n_head"],
                       intermediate_size=d.get("n_inner") or 4 * h,
                       max_positions=d.get("n_positions", 1024),
                       norm_eps=d.get("layer_norm_epsilon", 1e-5),
                       tie_embeddings=d.get("tie_word_embeddings", True),
                       activation=d.get("activation_function", "gelu_new"), pad_token_id=pad,
                       initializer_range=d.get("initializer_range", 0.02))
        rope = dict(d.get("rope_parameters") or {})  # transformers 5 keeps rope_theta there
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = dict(d.get("rope_scaling") or {}) or {
            k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling.get("rope_type", scaling.get("type")) == "default":
            scaling = {}
        window = d.get("sliding_window") if d.get("use_sliding_window", kind == "mistral") else None
        return cls(model_type=kind, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                   num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
                   intermediate_size=d["intermediate_size"],
                   num_kv_heads=d.get("num_key_value_heads"), head_dim_=d.get("head_dim"),
                   max_positions=d.get("max_position_embeddings", 2048),
                   norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
                   rope_scaling=tuple(sorted((k, v) for k, v in scaling.items()
                                             if not isinstance(v, (list, dict)))),
                   tie_embeddings=d.get("tie_word_embeddings", False),
                   qkv_bias=d.get("attention_bias", kind == "qwen2"),
                   o_bias=d.get("attention_bias", False) and kind != "qwen2",
                   mlp_bias=d.get("mlp_bias", False), activation=d.get("hidden_act", "silu"),
                   sliding_window=window, pad_token_id=pad,
                   initializer_range=d.get("initializer_range", 0.02))


# ---------------------------------------------------------------------------------------------
# Modules.


class RMSNorm(nnx.Module):
    """``scale * x / sqrt(mean(x^2) + eps)``, normalised in float32 and cast back, as in Llama."""

    def __init__(self, size: int, eps: float, *, rngs: nnx.Rngs | None = None):
        del rngs
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((size,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with two-pass variance in float32, cast back to the input's dtype."""

    def __init__(self, size: int, eps: float, *, rngs: nnx.Rngs | None = None):
        del rngs
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((size,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((size,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
        y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
        return y * self.scale[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


def _norm(cfg: DecoderConfig) -> nnx.Module:
    return (LayerNorm if cfg.norm == "layer" else RMSNorm)(cfg.hidden_size, cfg.norm_eps)


def rope_frequencies(cfg: DecoderConfig) -> np.ndarray:
    """The rotary inverse frequencies ``[head_dim / 2]``, with Llama 3's or linear scaling.

    Example:
      >>> cfg = DecoderConfig("llama", 96, 32, 2, 4, 64, rope_theta=10000.0)
      >>> [round(float(f), 4) for f in rope_frequencies(cfg)]
      [1.0, 0.1, 0.01, 0.001]
    """
    d = cfg.head_dim
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    s = dict(cfg.rope_scaling)
    kind = s.get("rope_type", s.get("type"))
    if kind == "linear":
        inv = inv / s["factor"]
    elif kind == "llama3":
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates ``x [..., L, heads, D]`` by ``positions [..., L]`` (the half-split layout of
    Hugging Face checkpoints: ``x * cos + rotate_half(x) * sin``)."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [..., L, D/2]
    cos = jnp.cos(jnp.concatenate([angles, angles], -1))[..., None, :]
    sin = jnp.sin(jnp.concatenate([angles, angles], -1))[..., None, :]
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], -1)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


class DecoderLayer(nnx.Module):
    """One pre-norm decoder layer; its linear maps are named as in :data:`DECODER_LORA_TARGETS`.

    ``__call__(x, positions, mask, lora)``: ``x [..., L, H]``, ``positions [..., L]`` (for
    RoPE), ``mask [..., L]`` true at real tokens, ``lora`` ``{target: (a, b, scale)}``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> cfg = DecoderConfig("llama", 96, 32, 2, 4, 64, num_kv_heads=2)
      >>> layer = DecoderLayer(cfg, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((1, 5, 32)), jnp.arange(5)[None], jnp.ones((1, 5), bool)).shape
      (1, 5, 32)
    """

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.initializers.normal(cfg.initializer_range)
        self.attn_norm = _norm(cfg)
        self.mlp_norm = _norm(cfg)
        for name, (fan_in, fan_out) in cfg.shapes().items():
            setattr(self, name, nnx.Linear(fan_in, fan_out, use_bias=cfg.bias(name),
                                           kernel_init=init, rngs=rngs))

    def __call__(self, x, positions, mask, lora=None):
        cfg, lora = self.cfg, lora or {}

        def linear(name, inputs):
            dense = getattr(self, name)
            y = inputs @ dense.kernel[...].astype(inputs.dtype)
            if dense.bias is not None:
                y = y + dense.bias[...].astype(inputs.dtype)
            if name in lora:
                a, b, scale = lora[name]
                y = y + scale * ((inputs @ a.astype(inputs.dtype)) @ b.astype(inputs.dtype))
            return y

        *lead, length, _ = x.shape
        d, heads, kv = cfg.head_dim, cfg.num_heads, cfg.kv_heads
        h = self.attn_norm(x)
        q = linear("q", h).reshape(*lead, length, kv, heads // kv, d)
        k = linear("k", h).reshape(*lead, length, kv, d)
        v = linear("v", h).reshape(*lead, length, kv, d)
        if cfg.family != "gpt2":
            inv_freq = rope_frequencies(cfg)
            q = apply_rope(q.reshape(*lead, length, heads, d), positions, inv_freq)
            q = q.reshape(*lead, length, kv, heads // kv, d)
            k = apply_rope(k, positions, inv_freq)
        scores = jnp.einsum("...qhgd,...khd->...hgqk", q, k,
                            preferred_element_type=jnp.float32) / math.sqrt(d)
        qi, ki = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
        allowed = ki <= qi
        if cfg.sliding_window is not None:
            allowed = allowed & (qi - ki < cfg.sliding_window)
        allowed = allowed & mask[..., None, None, None, :]
        # Finite fill: a row with no allowed key (a padding query) gives uniform weights, not NaN.
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        context = jnp.einsum("...hgqk,...khd->...qhgd", weights, v)
        x = x + linear("o", context.reshape(*lead, length, heads * d))
        h = self.mlp_norm(x)
        act = _ACTIVATIONS[cfg.activation]
        if cfg.gated:
            hidden = act(linear("gate", h)) * linear("up", h)
        else:
            hidden = act(linear("up", h))
        return x + linear("down", hidden)


class DecoderEmbeddings(nnx.Module):
    """Token embeddings (and GPT-2's learned positions); ``attend`` gives tied-head logits."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.initializer_range)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, rngs=rngs)
        self.positions = (nnx.Embed(cfg.max_positions, cfg.hidden_size, embedding_init=init,
                                    rngs=rngs) if cfg.family == "gpt2" else None)


# ---------------------------------------------------------------------------------------------
# The functional network.


def init_backbone(cfg: DecoderConfig, key: PRNGKey, dtype=jnp.float32) -> Params:
    """Random backbone parameters (normal(initializer_range) kernels, unit norms), stacked
    layers; for synthetic experiments and for abstract shapes (``jax.eval_shape``).

    Example:
      >>> import jax
      >>> cfg = DecoderConfig("llama", 96, 32, 2, 4, 64, num_kv_heads=2)
      >>> p = init_backbone(cfg, jax.random.key(0))
      >>> p["layers"]["k"]["kernel"].shape, sorted(p)
      ((2, 32, 16), ['embed', 'final_norm', 'layers', 'lm_head'])
    """
    k_emb, k_layers, k_head = jax.random.split(key, 3)
    emb = nnx.to_pure_dict(nnx.state(DecoderEmbeddings(cfg, rngs=nnx.Rngs(k_emb)), nnx.Param))
    params = {"embed": emb["embed"]}
    if "positions" in emb:
        params["positions"] = emb["positions"]

    def one(k):
        return nnx.to_pure_dict(nnx.state(DecoderLayer(cfg, rngs=nnx.Rngs(k)), nnx.Param))

    params["layers"] = jax.vmap(one)(jax.random.split(k_layers, cfg.num_layers))
    params["final_norm"] = nnx.to_pure_dict(nnx.state(_norm(cfg), nnx.Param))
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": cfg.initializer_range * jax.random.normal(
            k_head, (cfg.hidden_size, cfg.vocab_size))}
    return jax.tree.map(lambda a: a.astype(dtype), params)


def init_lora(cfg: DecoderConfig, key: PRNGKey, *, targets: Sequence[str], rank: int,
              layers: int) -> Params:
    """LoRA adapters for the last ``layers`` layers: ``a`` uniform(+-1/sqrt(fan_in)) as PyTorch's
    ``nn.Linear`` (and PEFT) draw it, ``b`` zero, so fresh adapters change nothing."""
    shapes = cfg.shapes()
    out = {}
    for t, k in zip(targets, jax.random.split(key, len(targets))):
        fan_in, fan_out = shapes[t]
        bound = 1.0 / math.sqrt(fan_in)
        out[t] = {"a": jax.random.uniform(k, (layers, fan_in, rank), jnp.float32, -bound, bound),
                  "b": jnp.zeros((layers, rank, fan_out), jnp.float32)}
    return out


@functools.lru_cache(maxsize=32)
def _layer_graphdef(cfg: DecoderConfig):
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: DecoderLayer(cfg, rngs=nnx.Rngs(0))))
    return graphdef


def hidden_states(cfg: DecoderConfig, backbone: Params, ids: jax.Array, *,
                  lora: Params | None = None, lora_scale: float = 1.0,
                  mask: jax.Array | None = None, remat: bool = False,
                  dtype=None) -> jax.Array:
    """The final hidden states ``[..., L, H]`` (after the final norm) of token ids ``[..., L]``.

    ``mask`` (true at real tokens; right padding) hides padding from attention and restarts
    nothing: positions count real tokens. ``lora`` holds adapters for the last ``N`` layers
    (``N`` = their leading axis). ``dtype`` is the compute dtype (default: the backbone's).
    """
    graphdef = _layer_graphdef(cfg)
    dtype = dtype or backbone["embed"]["embedding"].dtype
    ids = ids.astype(jnp.int32)
    mask = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
    positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
    x = jnp.take(backbone["embed"]["embedding"], ids, axis=0).astype(dtype)
    if "positions" in backbone:
        x = x + jnp.take(backbone["positions"]["embedding"], positions, axis=0).astype(dtype)

    def body(x, layer):
        params, adapters = layer
        module = nnx.merge(graphdef, params, copy=True)
        lo = None if adapters is None else {t: (ab["a"], ab["b"], lora_scale)
                                            for t, ab in adapters.items()}
        return module(x, positions, mask, lo), None

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)
    layers = backbone["layers"]
    n = cfg.num_layers
    tuned = 0 if not lora else next(iter(lora.values()))["a"].shape[0]
    if tuned < n:
        frozen = jax.tree.map(lambda a: a[: n - tuned], layers)
        x, _ = jax.lax.scan(body, x, (frozen, None))
    if tuned:
        top = jax.tree.map(lambda a: a[n - tuned:], layers)
        x, _ = jax.lax.scan(body, x, (top, lora))
    return nnx.merge(nnx.split(nnx.eval_shape(lambda: _norm(cfg)))[0], backbone["final_norm"],
                     copy=True)(x)


def lm_logits(cfg: DecoderConfig, backbone: Params, hidden: jax.Array) -> jax.Array:
    """Next-token logits ``[..., V]`` (float32) of final hidden states ``[..., H]``."""
    if cfg.tie_embeddings:
        w = backbone["embed"]["embedding"]
        return jnp.einsum("...h,vh->...v", hidden, w.astype(hidden.dtype),
                          preferred_element_type=jnp.float32)
    w = backbone["lm_head"]["kernel"]
    return jnp.einsum("...h,hv->...v", hidden, w.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)


def last_token(hidden: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``hidden [..., L, H]`` at each sequence's last real token (``mask`` true; padding on
    either side, or inside).

    Example:
      >>> import jax.numpy as jnp
      >>> h = jnp.arange(4.0).reshape(1, 4, 1)
      >>> last_token(h, jnp.array([[True, True, False, False]]))[..., 0].tolist()
      [1.0]
    """
    if mask is None:
        return hidden[..., -1, :]
    length = mask.shape[-1]
    last = length - 1 - jnp.argmax(mask[..., ::-1], axis=-1)
    return jnp.take_along_axis(hidden, last[..., None, None], axis=-2)[..., 0, :]


def _backbone(path: str) -> bool:
    """The pretrained decoder's parameters (``"backbone/..."``): fixed under the adapters."""
    return path.split("/", 1)[0] == "backbone"


def check_lora(cfg: DecoderConfig, *, rank, alpha, targets, layers) -> tuple[str, ...]:
    """The LoRA targets as a tuple, after checking every option against the architecture.

    Example:
      >>> cfg = DecoderConfig("gpt2", 96, 32, 2, 4, 128, activation="gelu_new")
      >>> check_lora(cfg, rank=4, alpha=8.0, targets=("q", "gate"), layers=None)
      Traceback (most recent call last):
        ...
      ValueError: LoRA: a gpt2 layer has no map 'gate'; it has ('q', 'k', 'v', 'o', 'up', 'down').
    """
    if isinstance(targets, str):
        raise TypeError(f"LoRA: targets must be a sequence of names, not the string {targets!r}.")
    targets = tuple(targets)
    for t in targets:
        if t not in cfg.lora_targets:
            raise ValueError(f"LoRA: a {cfg.model_type} layer has no map {t!r}; it has "
                             f"{cfg.lora_targets}.")
    if len(set(targets)) != len(targets):
        raise ValueError(f"LoRA: targets repeat a name: {targets}.")
    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
        raise ValueError(f"LoRA: rank must be an int >= 1; got rank={rank!r}.")
    if not alpha > 0:
        raise ValueError(f"LoRA: alpha must be positive; got alpha={alpha!r}.")
    n = cfg.num_layers
    if layers is not None and (int(layers) != layers or not 1 <= layers <= n):
        raise ValueError(f"LoRA: layers (the last N layers adapted) must be None or an int in "
                         f"[1, {n}]; got {layers!r}.")
    return targets


def decoder(
    cfg: DecoderConfig,
    backbone: Params | Callable[[], Params] | None = None,
    *,
    output: str = "logits",
    num_classes: int | None = None,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_targets: Sequence[str] = (),
    lora_layers: int | None = None,
    dtype: str = "float32",
    remat: bool = False,
    max_length: int | None = None,
    pad_token_id: int | None = None,
    zero_head: bool = False,
    train_backbone: bool = False,
) -> Model:
    """A decoder as a functional :class:`~jmeta.models.Model` (``"dense"``) over token ids.

    ``apply(params, ids [..., L])`` returns, by ``output``: ``"logits"``, next-token logits
    ``[..., L, vocab]`` (float32), or with ``positions [..., n]`` (int) only the rows at those
    positions, ``[..., n, vocab]``: the hidden states are gathered before the vocabulary
    projection, so scoring a few tokens never holds ``L x vocab`` logits; ``"hidden"``, the last real token's final hidden state
    ``[..., H]`` (the embedding network of ProtoNets); ``"classes"``, a linear head of
    ``num_classes`` on it (MAML, Proto-MAML; ``features`` then gives the hidden state).
    Padding (``pad_token_id``, right-padded) is masked out of attention; without a pad id every
    token is real.

    The backbone is frozen (``frozen`` selects ``"backbone/..."``) and wrapped in
    ``stop_gradient``; a learner adapts the LoRA adapters (``lora_targets`` of the last
    ``lora_layers`` layers, float32 whatever ``dtype`` the backbone computes in) and the head.
    ``backbone`` is the parameters (from :func:`jmeta.models.from_pretrained`), a function
    returning them, or None for random weights (:func:`init_backbone`).
    ``train_backbone=True`` trains the whole decoder instead (full-parameter MetaICL): no
    ``stop_gradient``, and ``frozen`` is None, so optimizers and checkpoints include it.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> cfg = DecoderConfig("llama", 96, 32, 2, 4, 64, num_kv_heads=2)
      >>> model = decoder(cfg, lora_targets=("q", "v"), lora_rank=2)
      >>> params = model.init(jax.random.key(0))
      >>> model.apply(params, jnp.zeros((3, 7), jnp.int32)).shape
      (3, 7, 96)
      >>> model.apply(params, jnp.zeros((3, 7), jnp.int32), positions=jnp.full((3, 1), 6)).shape
      (3, 1, 96)
      >>> sorted(params["lora"]), params["lora"]["q"]["a"].shape
      (['q', 'v'], (2, 32, 2))
    """
    if output not in OUTPUTS:
        raise ValueError(f"decoder: unknown output={output!r}; choose one of {OUTPUTS}.")
    if output == "classes" and not (isinstance(num_classes, int) and num_classes >= 1):
        raise ValueError(f"decoder: output='classes' needs num_classes >= 1; got {num_classes!r}.")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"decoder: dtype must be 'float32' or 'bfloat16'; got {dtype!r}.")
    targets = check_lora(cfg, rank=lora_rank, alpha=lora_alpha, targets=lora_targets,
                         layers=lora_layers)
    tuned = cfg.num_layers if lora_layers is None else int(lora_layers)
    limit = cfg.max_positions
    if max_length is not None and max_length > limit:
        raise ValueError(f"decoder: max_length={max_length} exceeds the model's context of "
                         f"{limit} tokens (max_position_embeddings).")
    max_length = max_length or limit
    compute = jnp.dtype(dtype)
    scale = float(lora_alpha) / int(lora_rank)

    def get_backbone(key):
        if backbone is None:
            return init_backbone(cfg, key, compute)
        tree = backbone() if callable(backbone) else backbone
        # A fresh copy per call: a meta-step that donates its state never deletes the arrays
        # a later init returns.
        return jax.tree.map(lambda a: jnp.array(a, compute), tree)

    def init(key: PRNGKey) -> Params:
        k_body, k_lora, k_head = jax.random.split(key, 3)
        params = {"backbone": get_backbone(k_body)}
        if targets:
            params["lora"] = init_lora(cfg, k_lora, targets=targets, rank=int(lora_rank),
                                       layers=tuned)
        if output == "classes":
            head = nnx.Linear(cfg.hidden_size, int(num_classes), rngs=nnx.Rngs(k_head))
            params["head"] = nnx.to_pure_dict(nnx.state(head, nnx.Param))
            if zero_head:
                params["head"] = jax.tree.map(jnp.zeros_like, params["head"])
        return params

    def run(params: Params, ids: jax.Array):
        if max_length is not None and ids.shape[-1] > max_length:
            raise ValueError(f"decoder: sequences of {ids.shape[-1]} tokens exceed the context "
                             f"of {max_length} tokens.")
        body = params["backbone"] if train_backbone else jax.lax.stop_gradient(params["backbone"])
        mask = None if pad_token_id is None else ids != pad_token_id
        hidden = hidden_states(cfg, body, ids, lora=params.get("lora"), lora_scale=scale,
                               mask=mask, remat=remat, dtype=compute)
        return body, hidden, mask

    def features(params: Params, ids: jax.Array) -> jax.Array:
        _, hidden, mask = run(params, ids)
        return last_token(hidden, mask).astype(jnp.float32)

    def apply(params: Params, ids: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        if output == "logits":
            body, hidden, _ = run(params, ids)
            if positions is not None:  # project only the rows asked for: [..., n, H] -> vocab
                hidden = jnp.take_along_axis(hidden, positions[..., None], axis=-2)
            return lm_logits(cfg, body, hidden)
        if positions is not None:
            raise ValueError(f"decoder: positions= selects rows of next-token logits; this "
                             f"model's output is {output!r}.")
        f = features(params, ids)
        if output == "hidden":
            return f
        return f @ params["head"]["kernel"] + params["head"]["bias"]

    return Model(init=init, apply=apply, family="dense",
                 features=features if output == "classes" else None,
                 frozen=None if train_backbone else _backbone)


# Tensor parallelism (Megatron's split): the maps that widen the hidden state (q, k, v, gate, up
# and the untied LM head) are split by output columns, the maps that narrow it back (o, down) by
# input rows, so that each device holds whole heads and whole slices of the MLP.
_COLUMNS = ("q", "k", "v", "gate", "up", "lm_head")
_ROWS = ("o", "down")


def partition_spec(cfg: DecoderConfig, path: Sequence[str], shape: Sequence[int],
                   model_size: int, model_axis: str = "model") -> jax.sharding.PartitionSpec:
    """Where a parameter lies on a ``model`` axis of ``model_size`` devices.

    ``path`` is the parameter's path (``("backbone", "layers", "q", "kernel")``); stacked layer
    parameters keep the layer axis whole. Column-split maps (``q, k, v, gate, up``, untied
    ``lm_head``) split their output dimension, row-split maps (``o, down``) their input
    dimension, the embedding its hidden dimension; norms, biases of row-split maps, adapters and
    heads are replicated. A dimension that ``model_size`` does not divide (the key/value heads of
    grouped-query attention on a wide model axis) stays whole.

    Example:
      >>> cfg = DecoderConfig("llama", 96, 32, 2, 4, 64, num_kv_heads=2)
      >>> partition_spec(cfg, ("backbone", "layers", "q", "kernel"), (2, 32, 32), 4)
      P(None, None, 'model')
      >>> partition_spec(cfg, ("backbone", "layers", "k", "kernel"), (2, 32, 16), 4)
      P(None, None, None)
      >>> partition_spec(cfg, ("backbone", "layers", "down", "kernel"), (2, 64, 32), 4)
      P(None, 'model', None)
    """
    P = jax.sharding.PartitionSpec
    path = tuple(path)
    whole = P(*([None] * len(shape)))
    if model_size == 1 or path[0] != "backbone":
        return whole
    name, leaf = path[-2], path[-1]
    dim = None
    if name == "embed":
        dim = len(shape) - 1
    elif name in _COLUMNS:
        dim = len(shape) - 1
    elif name in _ROWS and leaf == "kernel":
        dim = len(shape) - 2
    if dim is None or shape[dim] % model_size:
        return whole
    # Whole heads per device: a split of q/k/v columns must fall between heads.
    if name in ("q", "k", "v") and (shape[dim] // cfg.head_dim) % model_size:
        return whole
    spec = [None] * len(shape)
    spec[dim] = model_axis
    return P(*spec)


# ---------------------------------------------------------------------------------------------
# Scoring continuations: label verbalisers, direct and channel.

SCORINGS = ("head", "direct", "channel")
"""How a decoder classifies: a linear ``head`` on the last hidden state, ``direct``
``log p(label | x)``, or ``channel`` ``log p(x | label)`` (Min et al. 2022), with the labels'
verbaliser tokens scored by the language model."""


def pack(ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Moves each row's real tokens (``mask`` true) to its front, in order; padding goes last.

    Example:
      >>> import jax.numpy as jnp
      >>> ids, mask = pack(jnp.array([[5, 0, 6, 0, 7]]), jnp.array([[1, 0, 1, 0, 1]], bool))
      >>> ids.tolist(), mask.tolist()
      ([[5, 6, 7, 0, 0]], [[True, True, True, False, False]])
    """
    order = jnp.argsort(~mask, axis=-1, stable=True)
    return (jnp.take_along_axis(ids, order, axis=-1), jnp.take_along_axis(mask, order, axis=-1))


def continuation_logprob(logits_fn: Callable[[jax.Array, jax.Array], jax.Array],
                         prefix: jax.Array, prefix_mask: jax.Array, cont: jax.Array,
                         cont_mask: jax.Array) -> jax.Array:
    """``log p(cont | prefix)`` summed over the continuation's real tokens, ``[...]``.

    ``prefix [..., Lp]`` and ``cont [..., Lc]`` broadcast against each other in their leading
    axes; masks are true at real tokens (padding may lie anywhere). The two are concatenated and
    packed (:func:`pack`), so padding lies after every real token and a causal model never
    attends to it. ``logits_fn(ids [..., Lp + Lc], positions [..., Lc]) -> [..., Lc, vocab]``
    needs no mask and returns the next-token logits at ``positions`` only (a decoder's
    ``apply(params, ids, positions=positions)``): the ``Lc`` rows that predict the
    continuation, never the whole ``[..., Lp + Lc, vocab]``.

    Example (a "model" whose next token is always token 1):
      >>> import jax, jax.numpy as jnp
      >>> fn = lambda ids, at: jnp.where(jnp.arange(3) == 1, 0.0, -1e9) * jnp.ones(at.shape + (3,))
      >>> p, c = jnp.array([[2, 2]]), jnp.array([[1], [2]])
      >>> lp = continuation_logprob(fn, p, p > 0, c, c > 0)
      >>> [round(float(v)) for v in lp]
      [0, -1000000000]
    """
    lead = jnp.broadcast_shapes(prefix.shape[:-1], cont.shape[:-1])
    lp, lc = prefix.shape[-1], cont.shape[-1]
    prefix = jnp.broadcast_to(prefix, (*lead, lp))
    prefix_mask = jnp.broadcast_to(prefix_mask, (*lead, lp))
    cont, cont_mask = pack(jnp.broadcast_to(cont, (*lead, lc)),
                           jnp.broadcast_to(cont_mask, (*lead, lc)))
    ids, mask = pack(jnp.concatenate([prefix, cont], -1),
                     jnp.concatenate([prefix_mask, cont_mask], -1))
    total, n_cont = mask.sum(-1), cont_mask.sum(-1)
    j = jnp.arange(lc)
    # Token j of the continuation sits at total - n_cont + j; the logits before it predict it.
    where = jnp.clip(total[..., None] - n_cont[..., None] + j - 1, 0, ids.shape[-1] - 1)
    rows = logits_fn(ids, where)  # [..., Lc, V]
    logp = jax.nn.log_softmax(rows.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, cont[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(cont_mask, picked, 0.0), axis=-1)


def label_tokens(labels: Sequence, vocab_size: int, classes: int | None = None) -> np.ndarray:
    """The verbalisers ``labels`` (one token id, or a sequence of ids, per class) as
    ``int32 [classes, longest]`` padded with -1.

    Example:
      >>> label_tokens([7, (8, 9)], 96).tolist()
      [[7, -1], [8, 9]]
      >>> label_tokens([7, 8], 96, classes=3)
      Traceback (most recent call last):
        ...
      ValueError: labels: 2 verbalisers for 3 classes; give one per class.
    """
    rows = [list(v) if isinstance(v, (list, tuple)) else [v] for v in labels]
    if classes is not None and len(rows) != classes:
        raise ValueError(f"labels: {len(rows)} verbalisers for {classes} classes; give one per "
                         "class.")
    if not rows or any(not r for r in rows):
        raise ValueError("labels: each class needs at least one token id.")
    for r in rows:
        for t in r:
            if isinstance(t, bool) or int(t) != t or not 0 <= t < vocab_size:
                raise ValueError(f"labels: token id {t!r} is not in [0, {vocab_size}) (the "
                                 "model's vocabulary).")
    width = max(map(len, rows))
    return np.asarray([r + [-1] * (width - len(r)) for r in rows], np.int32)


def verbalizer(lm: Model, labels: np.ndarray, scoring: str = "direct",
               pad_token_id: int | None = None) -> Model:
    """A classifier from a language model ``lm`` (``apply(params, ids, positions=None) ->
    [..., L, vocab]``, as :func:`decoder` with ``output="logits"``) whose class
    scores are ``log p(label_c | x)`` (``"direct"``) or ``log p(x | label_c)`` (``"channel"``).

    ``labels`` is :func:`label_tokens`' array; ``x``'s tokens equal to ``pad_token_id`` are
    padding. ``apply(params, x [..., L]) -> [..., classes]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> cfg = DecoderConfig("llama", 96, 32, 2, 4, 64, num_kv_heads=2)
      >>> clf = verbalizer(decoder(cfg), label_tokens([5, 6, 7], 96), "channel", pad_token_id=0)
      >>> params = clf.init(jax.random.key(0))
      >>> clf.apply(params, jnp.array([[3, 4, 0], [8, 0, 0]])).shape
      (2, 3)
    """
    if scoring not in ("direct", "channel"):
        raise ValueError(f"verbalizer: scoring must be 'direct' or 'channel'; got {scoring!r}.")
    labels = jnp.asarray(labels)
    label_mask = labels >= 0
    labels = jnp.maximum(labels, 0)

    def apply(params: Params, x: jax.Array) -> jax.Array:
        mask = jnp.ones(x.shape, bool) if pad_token_id is None else x != pad_token_id
        fn = lambda ids, at: lm.apply(params, ids, positions=at)  # noqa: E731
        x, mask = x[..., None, :], mask[..., None, :]
        if scoring == "direct":
            return continuation_logprob(fn, x, mask, labels, label_mask)
        return continuation_logprob(fn, labels, label_mask, x, mask)

    return lm._replace(apply=apply, features=None)
