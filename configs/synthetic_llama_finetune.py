"""Per-task LoRA fine-tuning: the tiny random Llama's LoRA adapters fine-tuned on each test
episode's support set, scored by the verbalisers, with no meta-training (LoRA: Hu et al., ICLR
2022).

Paper: none for this protocol (the synthetic family of configs/synthetic_llama_metaicl.py;
docs/text.md, "Decoders"). Protocol: data token_mappings, 3-way 1-shot episodes of unseen key
pairs, the random Llama jmeta.data.TINY_LLAMA (arch_seed 0), verbalisers label c = token 1 + c;
direct verbaliser scores log p(v_c | x) of the LM, LoRA rank 8 (B = 0) fine-tuned
with Adam (lr 1e-2) for 5 and 20 steps on the 3 support examples; train.meta_steps=0. 1,000 test episodes, 15 queries per class, mean +- 95% CI.

Rows:    jmeta train configs/synthetic_llama_finetune.py:3w1s
Make:    make reproduce-synthetic_llama_finetune-3w1s       (every method: make reproduce-synthetic-llama)
"""

from jmeta.data import TINY_LLAMA, label_ids

ROWS = {"3w1s": dict(ways=3, shots=1)}
PAPER = ""


def get_config(arg="3w1s"):
    arg = arg or "3w1s"
    row = ROWS[arg]
    return dict(
        name=f"synthetic_llama_finetune-{arg}",
        data=dict(name="token_mappings", queries=5, **row),
        model=dict(name="decoder", arch=TINY_LLAMA, arch_seed=0, labels=label_ids(row["ways"]),
                   lora_rank=8, lora_alpha=16.0, lora_targets=("q", "k", "v", "o", "gate", "up", "down"), scoring="direct"),
        learner=dict(name="finetune", inner_lr=1e-2, inner_steps=20),
        rule=dict(name="adam"),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=0),
        eval=dict(queries=15, val_tasks=100, tasks=1000, steps=(5, 20)),
    )
