"""ANIL on Omniglot (Raghu, Raghu, Bengio & Vinyals 2020, "Rapid Learning or Feature Reuse?
Towards Understanding the Effectiveness of MAML", Table 2).

Paper (Omniglot, mean +- 95% CI): 20w1s 96.2 +- 0.5    20w5s 98.0 +- 0.3
(5-way rows were not reported; they are here for comparison with MAML and carry no paper number.)
Protocol: as configs/omniglot_maml.py (Vinyals split, 28x28, strided Conv-4 with 64 filters,
transductive BatchNorm, second order, meta-batch 32 / 16, Adam 1e-3, 60,000 meta-steps, 15 queries
per class, best checkpoint on validation classes, 1000 test tasks), adapting only the linear head
in the inner loop.

Rows:    jmeta train configs/omniglot_anil.py:20w1s   (20w5s, 5w1s, 5w5s)
CPU:     jmeta train configs/omniglot_anil.py:20w1s,runlocal
Make:    make reproduce-omniglot_anil-20w1s
"""

ROWS = {
    "5w1s": dict(ways=5, shots=1, paper=()),
    "5w5s": dict(ways=5, shots=5, paper=()),
    "20w1s": dict(ways=20, shots=1, paper=(96.2, 0.5)),
    "20w5s": dict(ways=20, shots=5, paper=(98.0, 0.3)),
}
PAPER = "Raghu et al. 2020, Table 2"


def get_config(arg="20w1s"):
    arg = arg or "20w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    five = row["ways"] == 5
    return dict(
        name=f"omniglot_anil-{arg}",
        data=dict(name="omniglot", protocol="vinyals", ways=row["ways"], shots=row["shots"],
                  queries=15),
        model=dict(name="conv4", filters=64, strided=True),
        learner=dict(name="anil", inner_steps=1 if five else 5, inner_lr=0.4 if five else 0.1),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=60_000, meta_batch_size=32 if five else 16, log_every=100,
                   save_every=1000),
        eval=dict(val_tasks=200, tasks=1000, steps=(0, 1, 3) if five else (0, 1, 5)),
        paper=dict(result=paper, source=PAPER if paper else ""),
    )
