"""Prototypical Networks on miniImageNet (Snell, Swersky & Zemel, NeurIPS 2017, Table 2).

Paper (miniImageNet 5-way, mean +- 95% CI over 600 test episodes):
    5w1s 49.42 +- 0.78    5w5s 68.20 +- 0.66
Protocol: Ravi & Larochelle split, 84x84 RGB; Conv-4 (64 filters, max-pool) embedding, squared
Euclidean distance; trained with 30-way (1-shot) / 20-way (5-shot) episodes and 15 queries per
class, tested 5-way with 15 queries; Adam 1e-3 halved every 2000 episodes; 30,000 episodes; best
checkpoint on validation classes; 1000 test episodes. BatchNorm: batch statistics of each set.

Rows:    jmeta train configs/miniimagenet_protonets.py:5w1s   (5w5s)
CPU:     jmeta train configs/miniimagenet_protonets.py:5w1s,runlocal
Make:    make reproduce-miniimagenet_protonets-5w1s
"""

ROWS = {
    "5w1s": dict(ways=30, shots=1, paper=(49.42, 0.78)),
    "5w5s": dict(ways=20, shots=5, paper=(68.20, 0.66)),
}
PAPER = "Snell et al. 2017, Table 2"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    return dict(
        name=f"miniimagenet_protonets-{arg}",
        data=dict(name="miniimagenet", ways=row["ways"], shots=row["shots"], queries=15),
        model=dict(name="conv4", filters=64),
        learner=dict(name="protonets"),
        optimizer=dict(lr=1e-3, schedule="step", decay_every=2000),
        train=dict(meta_steps=30_000, meta_batch_size=1, log_every=100, save_every=1000),
        eval=dict(ways=5, val_tasks=200, tasks=1000, steps=(1,)),
        paper=dict(result=paper, source=PAPER),
    )
