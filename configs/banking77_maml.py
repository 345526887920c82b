"""MAML over LoRA adapters of a pretrained sentence encoder: few-shot intent classification on
BANKING77 (MAML: Finn, Abbeel & Levine, ICML 2017; LoRA: Hu et al., ICLR 2022; BANKING77:
Casanueva et al., "Efficient Intent Detection with Dual Sentence Encoders", 2020).

Paper: none for this protocol. Published few-shot BANKING77 results use other class splits and
encoders, so there is no number to reproduce; `make reproduce-banking77` measures this one.
Protocol (docs/text.md): BANKING77's train.csv and test.csv pooled per intent, split 50 / 10 /
17 intents (jmeta/data/splits/banking77, fixed seed); all-MiniLM-L6-v2 (6 layers, hidden 384,
mean pooling, unit-norm embeddings) frozen; LoRA rank 8, alpha 16 on the query and value maps
of all 6 layers plus a linear 5-way head starting at zero: the inner loop adapts adapters and
head only (2 SGD steps at 8.0; the embeddings have unit norm, so the head needs large steps),
second-order meta-gradient through the whole encoder; texts tokenized to 32 tokens; 5 query
texts per class in training, 15 at validation and test; meta-batch 4 (2 at 5 shots, whose
second-order inner loop on 25 texts costs 3x more per task); Adam 3e-4 on adapters and head (no
optimizer state for the frozen encoder); best checkpoint on 100 validation episodes of the val
intents; 600 test episodes of the 17 test intents after 1 and 2 inner steps, mean +- 95% CI (at
this step size more test steps than trained diverge). Budget: about an hour on a 2-core CPU
(measured 2.4 s per meta-step at 1 shot, 3.7 s at 5 shots; docs/text.md, "Speed").

Rows:    jmeta train configs/banking77_maml.py:5w1s   (5w5s)
CPU:     jmeta train configs/banking77_maml.py:5w1s,runlocal
Make:    make reproduce-banking77_maml-5w1s          (all methods: make reproduce-banking77)
"""

ROWS = {
    "5w1s": dict(shots=1, meta_steps=1000),
    "5w5s": dict(shots=5, meta_steps=700, meta_batch_size=2),
}
PAPER = ""


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])  # the row's shots, budget and (5 shots) meta-batch
    return dict(
        name=f"banking77_maml-{arg}",
        data=dict(name="banking77", max_length=32, ways=5, shots=row.pop("shots"), queries=5),
        model=dict(name="bert", rank=8, alpha=16.0, targets=("query", "value"), zero_head=True),
        learner=dict(name="maml", inner_steps=2, inner_lr=8.0),
        optimizer=dict(lr=3e-4),
        train={**dict(meta_batch_size=4, log_every=25, save_every=250), **row},
        eval=dict(queries=15, val_tasks=100, tasks=600, steps=(1, 2)),
    )
