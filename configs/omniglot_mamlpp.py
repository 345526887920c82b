"""MAML++ on Omniglot (Antoniou, Edwards & Storkey, ICLR 2019, "How to train your MAML",
Table 1).

Paper (MAML++, Omniglot, mean +- 95% CI where given):
    5w1s 99.47    5w5s 99.93    20w1s 97.65 +- 0.05    20w5s 99.33 +- 0.03
Protocol: Vinyals split, 28x28; Conv-4 (64 filters, 3x3 convolutions, max-pooling), BatchNorm with
batch statistics and per-step weights and biases; 5 inner steps with learned per-step, per-layer
rates (initialised 0.1); multi-step loss annealed to the last step over the first 10 epochs (5,000
meta-steps); first-order meta-gradients for the first 50 epochs (25,000 meta-steps); meta-batch 16
(5-way) / 8 (20-way); Adam 1e-3 with cosine annealing to 1e-5 over 150 epochs of 500 meta-steps
(75,000); 15 queries per class; best checkpoint on validation classes; 1000 test tasks, 5 inner
steps at test. Differences: the paper averaged an ensemble of its top-3 validation checkpoints;
here the single best one is tested.

Rows:    jmeta train configs/omniglot_mamlpp.py:5w1s   (5w5s, 20w1s, 20w5s)
CPU:     jmeta train configs/omniglot_mamlpp.py:5w1s,runlocal
Make:    make reproduce-omniglot_mamlpp-5w1s
"""

ROWS = {
    "5w1s": dict(ways=5, shots=1, paper=(99.47,)),
    "5w5s": dict(ways=5, shots=5, paper=(99.93,)),
    "20w1s": dict(ways=20, shots=1, paper=(97.65, 0.05)),
    "20w5s": dict(ways=20, shots=5, paper=(99.33, 0.03)),
}
PAPER = "Antoniou et al. 2019, Table 1"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    five = row["ways"] == 5
    return dict(
        name=f"omniglot_mamlpp-{arg}",
        data=dict(name="omniglot", ways=row["ways"], shots=row["shots"], queries=15),
        model=dict(name="conv4", filters=64, strided=False),
        learner=dict(name="mamlpp", inner_steps=5, inner_lr=0.1, msl_anneal_steps=5_000,
                     first_order_until=25_000, per_step_bn=True),
        optimizer=dict(lr=1e-3, schedule="cosine", lr_min=1e-5),
        train=dict(meta_steps=75_000, meta_batch_size=16 if five else 8, log_every=100,
                   save_every=500),
        eval=dict(val_tasks=200, tasks=1000, steps=(0, 1, 5)),
        paper=dict(result=paper, source=PAPER),
    )
