"""Prototypical Networks on Omniglot (Snell, Swersky & Zemel, NeurIPS 2017, Table 1).

Paper (Omniglot, Vinyals split, 1000 test episodes):
    5w1s 98.8    5w5s 99.7    20w1s 96.0    20w5s 98.9
Protocol: Vinyals split (rotations as classes), 28x28; Conv-4 (64 filters, max-pool) embedding,
squared Euclidean distance; trained with 60-way episodes of K shots and 5 queries per class, tested
with N-way K-shot episodes (15 queries per class); one episode per step; Adam 1e-3, halved every
2000 episodes; 20,000 episodes; best checkpoint on validation classes (tested like the row); 1000
test episodes of the test classes. BatchNorm: batch statistics of each set (transductive); the
paper used running statistics at test.

Rows:    jmeta train configs/omniglot_protonets.py:5w1s   (5w5s, 20w1s, 20w5s)
CPU:     jmeta train configs/omniglot_protonets.py:5w1s,runlocal
Make:    make reproduce-omniglot_protonets-5w1s
Test a trained run on other ways:  jmeta eval RUN_DIR --ways 20
"""

ROWS = {
    "5w1s": dict(eval_ways=5, shots=1, paper=(98.8,)),
    "5w5s": dict(eval_ways=5, shots=5, paper=(99.7,)),
    "20w1s": dict(eval_ways=20, shots=1, paper=(96.0,)),
    "20w5s": dict(eval_ways=20, shots=5, paper=(98.9,)),
}
PAPER = "Snell et al. 2017, Table 1"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    return dict(
        name=f"omniglot_protonets-{arg}",
        data=dict(name="omniglot", ways=60, shots=row["shots"], queries=5),
        model=dict(name="conv4", filters=64),
        learner=dict(name="protonets"),
        optimizer=dict(lr=1e-3, schedule="step", decay_every=2000, decay_rate=0.5),
        train=dict(meta_steps=20_000, meta_batch_size=1, log_every=100, save_every=1000),
        eval=dict(ways=row["eval_ways"], queries=15, val_tasks=200, tasks=1000, steps=(1,)),
        paper=dict(result=paper, source=PAPER),
    )
