"""The tiny-Llama MAML workload shared by both sides of the decoder comparison (numpy only).

``benchmarks/peers/l2l_decoder_maml.py`` (PyTorch, learn2learn) and
``benchmarks/decoder_speed.py`` (jmeta) import this module, so that their shapes, token ids,
labels and the initial adapters and head are one definition. The frozen backbone comes from
transformers' ``LlamaForCausalLM`` built from :data:`LLAMA` with a fixed seed; the PyTorch side
saves it (``--save-backbone DIR``, a Hugging Face folder) and the jmeta side loads that folder
(``--backbone DIR``), so both run the same weights too.
"""

from __future__ import annotations

import numpy as np

LLAMA = {  # config.json keys of transformers' LlamaConfig
    "model_type": "llama", "vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "hidden_act": "silu", "initializer_range": 0.02,
    "attention_bias": False, "mlp_bias": False,
}
BACKBONE_SEED = 0  # torch.manual_seed before LlamaForCausalLM(config)

WAYS, SHOTS, QUERIES = 5, 1, 5  # queries per class
SEQ_LEN = 16
META_BATCH = 8
INNER_STEPS = 1
INNER_LR = 0.1
OUTER_LR = 1e-3  # Adam
LORA_TARGETS = ("q", "v")
LORA_RANK, LORA_ALPHA = 8, 16.0
DATA_SEED, INIT_SEED = 1, 2


def shapes() -> dict:
    """Everything that fixes the computation, for the results files."""
    return {"llama": LLAMA, "ways": WAYS, "shots": SHOTS, "queries_per_class": QUERIES,
            "seq_len": SEQ_LEN, "meta_batch": META_BATCH, "inner_steps": INNER_STEPS,
            "inner_lr": INNER_LR, "outer": f"Adam {OUTER_LR}", "lora_targets": list(LORA_TARGETS),
            "lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA,
            "head": "linear on the last token's final hidden state"}


def task_batch() -> dict:
    """Fixed random token ids and labels, ``[META_BATCH, ways * n, SEQ_LEN]`` (n = shots or
    queries); labels ``0..ways-1`` each repeated n times (as ``np.repeat``)."""
    rng = np.random.default_rng(DATA_SEED)
    v = LLAMA["vocab_size"]
    xs = rng.integers(0, v, (META_BATCH, WAYS * SHOTS, SEQ_LEN), dtype=np.int64)
    xq = rng.integers(0, v, (META_BATCH, WAYS * QUERIES, SEQ_LEN), dtype=np.int64)
    ys = np.tile(np.repeat(np.arange(WAYS), SHOTS), (META_BATCH, 1))
    yq = np.tile(np.repeat(np.arange(WAYS), QUERIES), (META_BATCH, 1))
    return {"xs": xs, "ys": ys, "xq": xq, "yq": yq}


def initial_adapters() -> dict:
    """The starting LoRA and head weights in jmeta's ``[in, out]`` layout (float32):
    ``{"lora": {t: {"a": [L, in, rank], "b": [L, rank, out]}}, "head": {"kernel": [H, C],
    "bias": [C]}}``. ``a`` is uniform(+-1/sqrt(in)) and ``b`` zero (PEFT's and jmeta's LoRA
    initialisation), the head kernel uniform(+-1/sqrt(H)) (``nn.Linear``'s bound), bias zero."""
    rng = np.random.default_rng(INIT_SEED)
    h, layers = LLAMA["hidden_size"], LLAMA["num_hidden_layers"]
    d = h // LLAMA["num_attention_heads"]
    out_dims = {"q": LLAMA["num_attention_heads"] * d, "k": LLAMA["num_key_value_heads"] * d,
                "v": LLAMA["num_key_value_heads"] * d}
    lora = {}
    for t in LORA_TARGETS:
        bound = 1.0 / np.sqrt(h)
        lora[t] = {"a": rng.uniform(-bound, bound, (layers, h, LORA_RANK)).astype(np.float32),
                   "b": np.zeros((layers, LORA_RANK, out_dims[t]), np.float32)}
    bound = 1.0 / np.sqrt(h)
    head = {"kernel": rng.uniform(-bound, bound, (h, WAYS)).astype(np.float32),
            "bias": np.zeros((WAYS,), np.float32)}
    return {"lora": lora, "head": head}
