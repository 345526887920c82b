"""Prototypical Networks on a pretrained sentence encoder with meta-learned LoRA adapters: few-shot
intent classification on BANKING77 (Snell, Swersky & Zemel, NeurIPS 2017; LoRA: Hu et al., ICLR
2022; BANKING77: Casanueva et al. 2020).

Paper: none for this protocol (see configs/banking77_maml.py). Protocol: BANKING77 pooled, 50 /
10 / 17 intents; all-MiniLM-L6-v2 frozen (mean pooling, unit-norm embeddings), LoRA rank 8 on
query and value of all layers learned by backprop of the query loss (no head); cosine similarity
to the class prototypes, scaled by 10; trained with 10-way episodes of K shots and 5 queries per
class, one episode per step, Adam 3e-4 on the adapters; best checkpoint on 100 validation
episodes; 600 test episodes of 5 ways (15 queries per class), mean +- 95% CI. The same config
with train.meta_steps=0 is the frozen-encoder baseline (configs/banking77_frozen.py). Budget:
about an hour on a 2-core CPU.

Rows:    jmeta train configs/banking77_protonets.py:5w1s   (5w5s)
CPU:     jmeta train configs/banking77_protonets.py:5w1s,runlocal
Make:    make reproduce-banking77_protonets-5w1s         (all methods: make reproduce-banking77)
Test a trained run on other ways:  jmeta eval RUN_DIR --ways 10
"""

ROWS = {
    "5w1s": dict(shots=1, meta_steps=2000),
    "5w5s": dict(shots=5, meta_steps=1600),
}
PAPER = ""


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    return dict(
        name=f"banking77_protonets-{arg}",
        data=dict(name="banking77", max_length=32, ways=10, shots=row.pop("shots"), queries=5),
        model=dict(name="bert", rank=8, alpha=16.0, targets=("query", "value")),
        learner=dict(name="protonets", distance="cosine"),
        optimizer=dict(lr=3e-4),
        train={**dict(meta_batch_size=1, log_every=50, save_every=500), **row},
        eval=dict(ways=5, queries=15, val_tasks=100, tasks=600, steps=(1,)),
    )
