"""Reptile over LoRA adapters of a pretrained sentence encoder: few-shot intent classification on
BANKING77 (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms"; LoRA: Hu
et al., ICLR 2022; BANKING77: Casanueva et al. 2020).

Paper: none for this protocol (see configs/banking77_maml.py). Protocol: BANKING77 pooled,
50 / 10 / 17 intents; all-MiniLM-L6-v2 frozen; LoRA rank 8 on query and value of all layers +
linear 5-way head (zero at the start); the inner loop adapts adapters and head only. Training
episodes carry 5 support texts per class at both rows (train_shots=5, as the paper trains its
1-shot Omniglot rows on 10 train shots) and 2 query texts per class (logged metrics only); the
inner loop takes 3 SGD steps (4.0 on the head, 0.25 on the adapters) on minibatches of 10 of
the support texts. Reptile step: plain SGD on meta_params - adapted_params, step size 0.1
annealed linearly to 0, meta-batch 5; best checkpoint on 100 validation episodes (every 250
meta-steps at 1 shot, whose best came early, at step 250; every 500 at 5 shots); 600 test
episodes after 1 and 3 full-batch inner steps on the K-shot support set (15 queries per class),
mean +- 95% CI. Budget: under an hour on a 2-core CPU.
Differences from the paper: plain SGD inner steps, not Adam (Adam's sign-like steps move every
adapter entry by the step size; averaged over tasks they degraded the encoder, 74% after 30
meta-steps against 83% with SGD in a short check), and an outer step of 0.1, not 1.0 (1.0
collapsed to chance within 30 meta-steps). The adapters take 0.25 (body_inner_lr): at 4.0,
like the head, training collapsed to chance by step 200.
Why 5 train shots at 1 shot: with one text per class every support text is its own class, so
the inner steps only push the texts of an episode apart and never pull two texts of one intent
together; averaged over episodes that spreads the encoder's embeddings. Training query accuracy
fell from 0.88 to 0.54 by step 650 (adapter step 0.25) and from 0.87 to 0.85 by step 700 even
at 0.05, whose validation was 85.2 and 84.7 at steps 250 and 500 (docs/text.md). Like MAML at
this inner step size, more test steps than trained diverge.

Rows:    jmeta train configs/banking77_reptile.py:5w1s   (5w5s)
CPU:     jmeta train configs/banking77_reptile.py:5w1s,runlocal
Make:    make reproduce-banking77_reptile-5w1s         (all methods: make reproduce-banking77)
"""

ROWS = {
    "5w1s": dict(shots=1, train_shots=5, meta_steps=2000, save_every=250),
    "5w5s": dict(shots=5, train_shots=0, meta_steps=1200, save_every=500),
}
PAPER = ""


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    return dict(
        name=f"banking77_reptile-{arg}",
        data=dict(name="banking77", max_length=32, ways=5, shots=row.pop("shots"),
                  train_shots=row.pop("train_shots"), queries=2),
        model=dict(name="bert", rank=8, alpha=16.0, targets=("query", "value"), zero_head=True),
        learner=dict(name="reptile", inner_steps=3, inner_lr=4.0, inner_batch=10),
        rule=dict(name="sgd", body_lr=0.25),  # the adapters' step; the head's is inner_lr
        optimizer=dict(name="sgd", lr=0.1, schedule="linear"),
        train={**dict(meta_batch_size=5, log_every=50), **row},
        eval=dict(queries=15, val_tasks=100, tasks=600, steps=(1, 3)),
    )
