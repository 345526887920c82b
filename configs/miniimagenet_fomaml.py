"""First-order MAML on miniImageNet (Finn, Abbeel & Levine, ICML 2017, Table 1).

Paper (miniImageNet 5-way, mean +- 95% CI over 600 test tasks):
    5w1s 48.07 +- 1.75    5w5s 63.15 +- 0.91 ("MAML, first order approx.")
Protocol: Ravi & Larochelle split (64 / 16 / 20 classes), 84x84 RGB; Conv-4 with 32 filters,
max-pool, BatchNorm with batch statistics (transductive); 5 inner SGD steps at 0.01 in training, 10
at test; first order (second-derivative terms dropped); meta-batch 4 (1-shot) / 2 (5-shot); Adam
1e-3; 60,000 meta-steps; 15 queries per class; best checkpoint on validation classes; 1000 test
tasks (the paper: 600). Needs an accelerator: a Conv-4 MAML step on 84x84 images takes seconds on a
CPU.

Rows:    jmeta train configs/miniimagenet_fomaml.py:5w1s   (5w5s)
CPU:     jmeta train configs/miniimagenet_fomaml.py:5w1s,runlocal
Make:    make reproduce-miniimagenet_fomaml-5w1s
"""

ROWS = {
    "5w1s": dict(ways=5, shots=1, meta_batch_size=4, paper=(48.07, 1.75)),
    "5w5s": dict(ways=5, shots=5, meta_batch_size=2, paper=(63.15, 0.91)),
}
PAPER = "Finn et al. 2017, Table 1"
ALGORITHM = "fomaml"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    return dict(
        name=f"miniimagenet_{ALGORITHM}-{arg}",
        data=dict(name="miniimagenet", ways=row["ways"], shots=row["shots"], queries=15),
        model=dict(name="conv4", filters=32),
        learner=dict(name=ALGORITHM, inner_steps=5, inner_lr=0.01),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=60_000, meta_batch_size=row["meta_batch_size"], log_every=100,
                   save_every=1000),
        eval=dict(val_tasks=200, tasks=1000, steps=(0, 5, 10)),
        paper=dict(result=paper, source=PAPER),
    )
