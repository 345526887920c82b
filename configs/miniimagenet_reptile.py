"""Reptile on miniImageNet (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning
Algorithms", Table 2).

Paper (Reptile + Transduction, miniImageNet 5-way, mean +- 95% CI):
    5w1s 49.97 +- 0.32    5w5s 65.99 +- 0.58
Protocol: Ravi & Larochelle split, 84x84 RGB; Conv-4 with 32 filters, max-pool, BatchNorm with
batch statistics; inner Adam (lr 1e-3, beta1 0) for 8 steps in training, 50 at test; outer step
size 1.0 annealed linearly to 0 over 100,000 meta-steps, meta-batch 5; best checkpoint on
validation classes; 1000 test tasks. Differences: full-batch inner steps on the K-shot support set
(the paper draws minibatches of 10 from 15 "train shots").

Rows:    jmeta train configs/miniimagenet_reptile.py:5w1s   (5w5s)
CPU:     jmeta train configs/miniimagenet_reptile.py:5w1s,runlocal
Make:    make reproduce-miniimagenet_reptile-5w1s
"""

ROWS = {
    "5w1s": dict(ways=5, shots=1, paper=(49.97, 0.32)),
    "5w5s": dict(ways=5, shots=5, paper=(65.99, 0.58)),
}
PAPER = "Nichol et al. 2018, Table 2"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    return dict(
        name=f"miniimagenet_reptile-{arg}",
        data=dict(name="miniimagenet", ways=row["ways"], shots=row["shots"], queries=15),
        model=dict(name="conv4", filters=32),
        learner=dict(name="reptile", inner_lr=1e-3, inner_steps=8),
        rule=dict(name="adam"),
        optimizer=dict(name="sgd", lr=1.0, schedule="linear"),
        train=dict(meta_steps=100_000, meta_batch_size=5, log_every=100, save_every=2000),
        eval=dict(val_tasks=200, tasks=1000, steps=(0, 8, 50)),
        paper=dict(result=paper, source=PAPER),
    )
