"""MetaICL over LoRA adapters of the tiny random Llama (the backbone frozen): the LoRA variant of
configs/synthetic_llama_metaicl.py (MetaICL: Min et al., NAACL 2022; LoRA: Hu et al., ICLR 2022).

Paper: none for this protocol (the synthetic family of configs/synthetic_llama_metaicl.py;
docs/text.md, "Decoders"). Protocol: data token_mappings, 3-way 1-shot episodes of unseen key
pairs, the random Llama jmeta.data.TINY_LLAMA (arch_seed 0), verbalisers label c = token 1 + c;
MetaICL, direct, LoRA rank 8 (alpha 16) on q, k, v, o, gate, up, down of both
layers (B = 0 at the start), meta-batch 32, 1 query per class, Adam 1e-3, 8,000 meta-steps;
best of 8 checkpoints on 100 validation episodes. At Adam 3e-3 or more the adapters stay at
chance; at 1e-3 they leave it after about 3,000 steps (docs/text.md). 1,000 test episodes, 15 queries per class, mean +- 95% CI.

Rows:    jmeta train configs/synthetic_llama_metaicl_lora.py:3w1s
Make:    make reproduce-synthetic_llama_metaicl_lora-3w1s       (every method: make reproduce-synthetic-llama)
"""

from jmeta.data import TINY_LLAMA, label_ids

ROWS = {"3w1s": dict(ways=3, shots=1)}
PAPER = ""


def get_config(arg="3w1s"):
    arg = arg or "3w1s"
    row = ROWS[arg]
    return dict(
        name=f"synthetic_llama_metaicl_lora-{arg}",
        data=dict(name="token_mappings", queries=1, **row),
        model=dict(name="decoder", arch=TINY_LLAMA, arch_seed=0, labels=label_ids(row["ways"]),
                   lora_rank=8, lora_alpha=16.0, lora_targets=("q", "k", "v", "o", "gate", "up", "down")),
        learner=dict(name="metaicl", scoring="direct"),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=8000, meta_batch_size=32, log_every=100, save_every=1000),
        eval=dict(queries=15, val_tasks=100, tasks=1000, steps=(1,)),
    )
