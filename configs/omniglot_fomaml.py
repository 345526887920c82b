"""First-order MAML on Omniglot (Finn, Abbeel & Levine, ICML 2017; numbers as tabulated by
Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms", Table 1).

Paper ("1st-order MAML + Transduction", Omniglot, mean +- 95% CI):
    5w1s 98.3 +- 0.5    5w5s 99.2 +- 0.2    20w1s 89.4 +- 0.5    20w5s 97.9 +- 0.1
Protocol: as configs/omniglot_maml.py (Vinyals split, 28x28, strided Conv-4 with 64 filters,
transductive BatchNorm, inner SGD 0.4 x 1 step (5-way) / 0.1 x 5 steps (20-way), meta-batch 32 /
16, Adam 1e-3, 60,000 meta-steps, 15 queries per class, best checkpoint on validation classes, 1000
test tasks) with the second-derivative terms of the meta-gradient dropped.

Rows:    jmeta train configs/omniglot_fomaml.py:5w1s   (5w5s, 20w1s, 20w5s)
CPU:     jmeta train configs/omniglot_fomaml.py:5w1s,runlocal
Make:    make reproduce-omniglot_fomaml-5w1s
"""

ROWS = {
    "5w1s": dict(ways=5, shots=1, paper=(98.3, 0.5)),
    "5w5s": dict(ways=5, shots=5, paper=(99.2, 0.2)),
    "20w1s": dict(ways=20, shots=1, paper=(89.4, 0.5)),
    "20w5s": dict(ways=20, shots=5, paper=(97.9, 0.1)),
}
PAPER = "Finn et al. 2017 (first-order), via Nichol et al. 2018, Table 1"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    five = row["ways"] == 5
    return dict(
        name=f"omniglot_fomaml-{arg}",
        data=dict(name="omniglot", protocol="vinyals", ways=row["ways"], shots=row["shots"],
                  queries=15),
        model=dict(name="conv4", filters=64, strided=True),
        learner=dict(name="fomaml", inner_steps=1 if five else 5, inner_lr=0.4 if five else 0.1),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=60_000, meta_batch_size=32 if five else 16, task_map="unroll",
                   log_every=100, save_every=1000),
        eval=dict(val_tasks=200, tasks=1000, steps=(0, 1, 3) if five else (0, 1, 5)),
        paper=dict(result=paper, source=PAPER),
    )
