"""Prototypical Networks on a pretrained sentence encoder with meta-learned LoRA adapters:
few-shot intent classification on BANKING77 (Snell, Swersky & Zemel, NeurIPS 2017; LoRA: Hu et
al., ICLR 2022; BANKING77: Casanueva et al. 2020).

Paper: none for this protocol (see configs/banking77_maml.py). Protocol: BANKING77 pooled,
50 / 10 / 17 intents; all-MiniLM-L6-v2 frozen (mean pooling, unit-norm embeddings), LoRA rank 8
on query and value of all layers learned by backprop of the query loss (no head); cosine
similarity to the class prototypes, scaled by 10; trained with 10-way episodes of K shots and 5
queries per class, one episode per step, Adam 3e-4 on the adapters; best checkpoint on 100
validation episodes; 600 test episodes of 5 ways (15 queries per class), mean +- 95% CI.
The same config with num_steps=0 is the frozen-encoder baseline (configs/banking77_frozen.py).
Budget: about an hour on a 2-core CPU.

Rows:    jmeta train configs/banking77_protonets.py:5w1s   (5w5s)
CPU:     jmeta train configs/banking77_protonets.py:5w1s,runlocal
Make:    make reproduce-banking77_protonets-5w1s         (all methods: make reproduce-banking77)
Test a trained run on other ways:  jmeta eval RUN_DIR --ways 10
"""

ROWS = {
    "5w1s": dict(k_shot=1, num_steps=2000),
    "5w5s": dict(k_shot=5, num_steps=1600),
}
PAPER = ""


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    return dict(
        name=f"banking77_protonets-{arg}",
        task="banking77",
        model="bert_lora",
        algorithm="protonets",
        distance="cosine",
        max_length=32,
        lora_rank=8,
        lora_alpha=16.0,
        lora_targets=("query", "value"),
        ways=10,
        eval_ways=5,
        k_query=5,
        eval_k_query=15,
        meta_batch_size=1,
        meta_lr=3e-4,
        log_every=50,
        save_every=500,
        val_tasks=100,
        eval_tasks=600,
        eval_steps=(1,),
        **ROWS[arg],
    )
