"""MetaICL on a synthetic family of in-context tasks with a tiny random Llama (MetaICL: Min,
Lewis, Zettlemoyer & Hajishirzi, "MetaICL: Learning to Learn In Context", NAACL 2022).

Paper: none for this protocol (a synthetic check that meta-training teaches a decoder to learn
in context; docs/text.md, "Decoders"). Protocol: data token_mappings (jmeta/data/_token_tasks.py):
a class is an ordered pair of key tokens, its examples the pair itself (2 tokens); the 1,482
pairs over 39 key tokens split 963 / 192 / 327 into train / val / test classes; 3-way 1-shot
episodes, labels renumbered per episode, so the mapping from pair to label is in the support set
only. Model: a random Llama (jmeta.data.TINY_LLAMA: 2 layers, hidden 32, 4 heads, 2 key-value
heads, MLP 64, vocab 64, 22,688 weights N(0, 0.2), arch_seed 0); verbalisers: label c is token 1 + c. MetaICL,
direct: the three demonstrations (shuffled) and the query in one sequence,
x_1 v_1 x_2 v_2 x_3 v_3 x, each class scored by log p(v_c | ...); every weight trained
(model.train_backbone, learner.full; LoRA alone, which needs Adam 1e-3 and 8,000 steps, is
configs/synthetic_llama_metaicl_lora.py); 1 query per class in training, meta-batch 32, Adam 3e-3,
2,000 meta-steps (about 30 s on a 2-core CPU); best of 8 checkpoints on 100 validation
episodes; 1,000 test episodes of the test pairs, 15 queries per class, mean +- 95% CI. The
same config with train.meta_steps=0 is in-context learning without meta-training
(configs/synthetic_llama_icl.py).

Rows:    jmeta train configs/synthetic_llama_metaicl.py:3w1s
Make:    make reproduce-synthetic_llama_metaicl-3w1s       (every method: make reproduce-synthetic-llama)
Channel: jmeta train configs/synthetic_llama_metaicl.py:3w1s learner.scoring=channel
"""

from jmeta.data import TINY_LLAMA, label_ids

ROWS = {"3w1s": dict(ways=3, shots=1)}
PAPER = ""


def get_config(arg="3w1s"):
    arg = arg or "3w1s"
    row = ROWS[arg]
    return dict(
        name=f"synthetic_llama_metaicl-{arg}",
        data=dict(name="token_mappings", queries=1, **row),
        model=dict(name="decoder", arch=TINY_LLAMA, arch_seed=0, labels=label_ids(row["ways"]),
                   lora_targets=(), train_backbone=True),
        learner=dict(name="metaicl", scoring="direct", full=True),
        optimizer=dict(lr=3e-3),
        train=dict(meta_steps=2000, meta_batch_size=32, log_every=100, save_every=250),
        eval=dict(queries=15, val_tasks=100, tasks=1000, steps=(1,)),
    )
