"""ANIL on miniImageNet (Raghu et al., ICLR 2020, "Rapid Learning or Feature Reuse?", Table 2).

Paper (miniImageNet 5-way, mean +- 95% CI over 600 test tasks):
    5w1s 46.7 +- 0.4    5w5s 61.5 +- 0.5
Protocol: Ravi & Larochelle split (64 / 16 / 20 classes), 84x84 RGB; Conv-4 with 32 filters,
max-pool, BatchNorm with batch statistics (transductive); 5 inner SGD steps at 0.01 in training, 10
at test; second order, adapting only the linear head; meta-batch 4 (1-shot) / 2 (5-shot); Adam
1e-3; 60,000 meta-steps; 15 queries per class; best checkpoint on validation classes; 1000 test
tasks (the paper: 600). Needs an accelerator: a Conv-4 MAML step on 84x84 images takes seconds on a
CPU.

Rows:    jmeta train configs/miniimagenet_anil.py:5w1s   (5w5s)
CPU:     jmeta train configs/miniimagenet_anil.py:5w1s,runlocal
Make:    make reproduce-miniimagenet_anil-5w1s
"""

ROWS = {
    "5w1s": dict(ways=5, shots=1, meta_batch_size=4, paper=(46.7, 0.4)),
    "5w5s": dict(ways=5, shots=5, meta_batch_size=2, paper=(61.5, 0.5)),
}
PAPER = "Raghu et al. 2020, Table 2"
ALGORITHM = "anil"


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
