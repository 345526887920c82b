"""MAML on Omniglot with the strided Conv-4 (Finn, Abbeel & Levine, ICML 2017, Table 1).

Paper (Omniglot, 5-way / 20-way, 1 / 5-shot, mean +- 95% CI over test tasks):
    5w1s 98.7 +- 0.4    5w5s 99.9 +- 0.1    20w1s 95.8 +- 0.3    20w5s 98.9 +- 0.2
Protocol: Vinyals split (1028 / 172 / 423 characters; rotations by multiples of 90 degrees are new
classes), 28x28 LANCZOS, inverted. Conv-4 with 64 filters, 3x3 stride-2 convolutions (no pooling),
BatchNorm with the batch statistics of each set (transductive, as MAML did), ReLU, linear head.
Second order; inner SGD at 0.4, 1 step (5-way) or 5 steps at 0.1 (20-way) in training, 3 (5-way) or
5 (20-way) at test; meta-batch 32 (5-way) / 16 (20-way); Adam 1e-3; 60,000 meta-steps; 15 queries
per class; best checkpoint on the validation classes; 1000 test tasks of the test classes.

Rows:    jmeta train configs/omniglot_maml.py:5w1s   (5w5s, 20w1s, 20w5s)
CPU:     jmeta train configs/omniglot_maml.py:5w1s,runlocal
Make:    make reproduce-omniglot_maml-5w1s
"""

ROWS = {
    "5w1s": dict(ways=5, shots=1, paper=(98.7, 0.4)),
    "5w5s": dict(ways=5, shots=5, paper=(99.9, 0.1)),
    "20w1s": dict(ways=20, shots=1, paper=(95.8, 0.3)),
    "20w5s": dict(ways=20, shots=5, paper=(98.9, 0.2)),
}
PAPER = "Finn et al. 2017, Table 1"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    five = row["ways"] == 5
    return dict(
        name=f"omniglot_maml-{arg}",
        data=dict(name="omniglot", protocol="vinyals", ways=row["ways"], shots=row["shots"],
                  queries=15),
        model=dict(name="conv4", filters=64, strided=True),
        learner=dict(name="maml", inner_steps=1 if five else 5, inner_lr=0.4 if five else 0.1),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=60_000, meta_batch_size=32 if five else 16, task_map="unroll",
                   log_every=100, save_every=1000),
        eval=dict(val_tasks=200, tasks=1000, steps=(0, 1, 3) if five else (0, 1, 5)),
        paper=dict(result=paper, source=PAPER),
    )
