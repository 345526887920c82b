"""Reptile on Omniglot (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning
Algorithms", Table 1).

Paper (Reptile, Omniglot, mean +- 95% CI; transductive BatchNorm at test):
    5w1s 97.68 +- 0.04    5w5s 99.48 +- 0.06    20w1s 89.43 +- 0.14    20w5s 97.12 +- 0.32
Protocol: Vinyals split, 28x28; MAML's strided Conv-4 (64 filters, batch statistics); inner loop
in training: Adam (lr 1e-3, beta1 0), 5 steps on minibatches of 10 drawn from 10 "train shots"
per class (train_shots=10, inner_batch=10); 50 steps at test on the K-shot support set; outer step
size 1.0 annealed linearly to 0 over 100,000 meta-steps (plain SGD on the Reptile direction),
meta-batch 5; best checkpoint on validation classes; 1000 test tasks. The 20-way rows follow the
authors' released commands: inner batch 20, 10 inner steps, lr 5e-4, 200,000 meta-steps.
Differences: the paper keeps the inner Adam's second-moment state across tasks; here each task
starts a fresh Adam state. At test the paper's inner loop takes minibatches (5 examples for
5-way, 10 for 20-way); here every test step uses the whole support set (identical for 5w1s).
Training episodes carry 10 query images per class (metrics only; 10 + 10 of Omniglot's 20).

Rows:    jmeta train configs/omniglot_reptile.py:5w1s   (5w5s, 20w1s, 20w5s)
CPU:     jmeta train configs/omniglot_reptile.py:5w1s,runlocal
Make:    make reproduce-omniglot_reptile-5w1s
"""

FIVE_WAY = dict(ways=5, inner_batch=10, inner_steps=5, inner_lr=1e-3, meta_steps=100_000)
TWENTY_WAY = dict(ways=20, inner_batch=20, inner_steps=10, inner_lr=5e-4, meta_steps=200_000)
ROWS = {
    "5w1s": dict(FIVE_WAY, shots=1, paper=(97.68, 0.04)),
    "5w5s": dict(FIVE_WAY, shots=5, paper=(99.48, 0.06)),
    "20w1s": dict(TWENTY_WAY, shots=1, paper=(89.43, 0.14)),
    "20w5s": dict(TWENTY_WAY, shots=5, paper=(97.12, 0.32)),
}
PAPER = "Nichol et al. 2018, Table 1"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    return dict(
        name=f"omniglot_reptile-{arg}",
        data=dict(name="omniglot", ways=row["ways"], shots=row["shots"], train_shots=10,
                  queries=10),
        model=dict(name="conv4", filters=64, strided=True),
        learner=dict(name="reptile", inner_batch=row["inner_batch"], inner_steps=row["inner_steps"],
                     inner_lr=row["inner_lr"]),
        rule=dict(name="adam", b1=0.0),
        optimizer=dict(name="sgd", lr=1.0, schedule="linear", lr_min=0.0),
        train=dict(meta_steps=row["meta_steps"], meta_batch_size=5, task_map="unroll",
                   log_every=100, save_every=2000),
        eval=dict(queries=15, val_tasks=200, tasks=1000, steps=(0, 5, 50)),
        paper=dict(result=paper, source=PAPER),
    )
