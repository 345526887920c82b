"""In-context learning without meta-training: the random Llama given the demonstrations and the
query in MetaICL's format, never trained (the baseline of configs/synthetic_llama_metaicl.py).

Paper: none for this protocol (the synthetic family of configs/synthetic_llama_metaicl.py;
docs/text.md, "Decoders"). Protocol: data token_mappings, 3-way 1-shot episodes of unseen key
pairs, the random Llama jmeta.data.TINY_LLAMA (arch_seed 0), verbalisers label c = token 1 + c;
MetaICL, direct, with train.meta_steps=0: the initial weights
score log p(v_c | x_1 v_1 x_2 v_2 x_3 v_3 x) (demonstrations shuffled per episode). Seconds on
a CPU. 1,000 test episodes, 15 queries per class, mean +- 95% CI.

Rows:    jmeta train configs/synthetic_llama_icl.py:3w1s
Make:    make reproduce-synthetic_llama_icl-3w1s       (every method: make reproduce-synthetic-llama)
"""

from jmeta.data import TINY_LLAMA, label_ids

ROWS = {"3w1s": dict(ways=3, shots=1)}
PAPER = ""


def get_config(arg="3w1s"):
    arg = arg or "3w1s"
    row = ROWS[arg]
    return dict(
        name=f"synthetic_llama_icl-{arg}",
        data=dict(name="token_mappings", queries=1, **row),
        model=dict(name="decoder", arch=TINY_LLAMA, arch_seed=0, labels=label_ids(row["ways"]),
                   lora_targets=(), train_backbone=True),
        learner=dict(name="metaicl", scoring="direct", full=True),
        optimizer=dict(lr=3e-3),
        train=dict(meta_steps=0),
        eval=dict(queries=15, val_tasks=100, tasks=1000, steps=(1,)),
    )
