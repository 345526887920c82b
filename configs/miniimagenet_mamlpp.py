"""MAML++ on miniImageNet (Antoniou, Edwards & Storkey, ICLR 2019, "How to train your MAML",
Table 2).

Paper (MAML++, miniImageNet 5-way, mean +- 95% CI):
    5w1s 52.15 +- 0.26    5w5s 68.32 +- 0.44
Protocol: Ravi & Larochelle split, 84x84 RGB; Conv-4 with 48 filters, max-pool, BatchNorm with
batch statistics and per-step weights and biases; 5 inner steps with learned per-step, per-layer
rates (initialised 0.01); multi-step loss annealed over the first 10 epochs (5,000 meta-steps);
first-order meta-gradients for the first 50 epochs (25,000 meta-steps); meta-batch 2; Adam 1e-3
with cosine annealing to 1e-5 over 100 epochs of 500 meta-steps; 15 queries per class; best
checkpoint on validation classes; 1000 test tasks. Difference: no ensemble of the top-3
checkpoints.

Rows:    jmeta train configs/miniimagenet_mamlpp.py:5w1s   (5w5s)
CPU:     jmeta train configs/miniimagenet_mamlpp.py:5w1s,runlocal
Make:    make reproduce-miniimagenet_mamlpp-5w1s
"""

ROWS = {
    "5w1s": dict(ways=5, shots=1, paper=(52.15, 0.26)),
    "5w5s": dict(ways=5, shots=5, paper=(68.32, 0.44)),
}
PAPER = "Antoniou et al. 2019, Table 2"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    return dict(
        name=f"miniimagenet_mamlpp-{arg}",
        data=dict(name="miniimagenet", ways=row["ways"], shots=row["shots"], queries=15),
        model=dict(name="conv4", filters=48),
        learner=dict(name="mamlpp", inner_steps=5, inner_lr=0.01, msl_anneal_steps=5_000,
                     first_order_until=25_000, per_step_bn=True),
        optimizer=dict(lr=1e-3, schedule="cosine", lr_min=1e-5),
        train=dict(meta_steps=50_000, meta_batch_size=2, log_every=100, save_every=500),
        eval=dict(val_tasks=200, tasks=1000, steps=(0, 1, 5)),
        paper=dict(result=paper, source=PAPER),
    )
