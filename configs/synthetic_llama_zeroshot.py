"""Zero-shot verbaliser scoring: the random Llama scores each label after the query alone, no
demonstrations, no training (the floor of configs/synthetic_llama_metaicl.py).

Paper: none for this protocol (the synthetic family of configs/synthetic_llama_metaicl.py;
docs/text.md, "Decoders"). Protocol: data token_mappings, 3-way 1-shot episodes of unseen key
pairs, the random Llama jmeta.data.TINY_LLAMA (arch_seed 0), verbalisers label c = token 1 + c;
MetaICL with learner.demonstrations=0 and train.meta_steps=0:
log p(v_c | x). Labels are renumbered per episode, so this is chance by construction (33.3%). 1,000 test episodes, 15 queries per class, mean +- 95% CI.

Rows:    jmeta train configs/synthetic_llama_zeroshot.py:3w1s
Make:    make reproduce-synthetic_llama_zeroshot-3w1s       (every method: make reproduce-synthetic-llama)
"""

from jmeta.data import TINY_LLAMA, label_ids

ROWS = {"3w1s": dict(ways=3, shots=1)}
PAPER = ""


def get_config(arg="3w1s"):
    arg = arg or "3w1s"
    row = ROWS[arg]
    return dict(
        name=f"synthetic_llama_zeroshot-{arg}",
        data=dict(name="token_mappings", queries=1, **row),
        model=dict(name="decoder", arch=TINY_LLAMA, arch_seed=0, labels=label_ids(row["ways"]),
                   lora_targets=(), train_backbone=True),
        learner=dict(name="metaicl", scoring="direct", full=True, demonstrations=0),
        optimizer=dict(lr=3e-3),
        train=dict(meta_steps=0),
        eval=dict(queries=15, val_tasks=100, tasks=1000, steps=(1,)),
    )
