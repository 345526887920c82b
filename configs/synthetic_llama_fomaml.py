"""First-order MAML over LoRA adapters and a head of the tiny random Llama (Finn et al., ICML 2017).

Paper: none for this protocol (the synthetic family of configs/synthetic_llama_metaicl.py;
docs/text.md, "Decoders"). Protocol: data token_mappings, 3-way 1-shot episodes of unseen key
pairs, the random Llama jmeta.data.TINY_LLAMA (arch_seed 0), verbalisers label c = token 1 + c;
first-order MAML, 2 SGD steps at 0.5 on LoRA rank 8 and a zero 3-way head; 5
queries per class in training, meta-batch 16, Adam 1e-3, 500 meta-steps; best of 5
checkpoints on 100 validation episodes; tested after 2 steps. 1,000 test episodes, 15 queries per class, mean +- 95% CI.

Rows:    jmeta train configs/synthetic_llama_fomaml.py:3w1s
Make:    make reproduce-synthetic_llama_fomaml-3w1s       (every method: make reproduce-synthetic-llama)
"""

from jmeta.data import TINY_LLAMA, label_ids

ROWS = {"3w1s": dict(ways=3, shots=1)}
PAPER = ""


def get_config(arg="3w1s"):
    arg = arg or "3w1s"
    row = ROWS[arg]
    return dict(
        name=f"synthetic_llama_fomaml-{arg}",
        data=dict(name="token_mappings", queries=5, **row),
        model=dict(name="decoder", arch=TINY_LLAMA, arch_seed=0, labels=label_ids(row["ways"]),
                   lora_rank=8, lora_alpha=16.0, lora_targets=("q", "k", "v", "o", "gate", "up", "down"), zero_head=True),
        learner=dict(name="fomaml", inner_steps=2, inner_lr=0.5),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=500, meta_batch_size=16, log_every=100, save_every=100),
        eval=dict(queries=15, val_tasks=100, tasks=1000, steps=(2,)),
    )
