"""Meta-SGD on Omniglot (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for
Few-Shot Learning").

Paper (Omniglot, mean +- 95% CI):
    5w1s 99.53 +- 0.26    5w5s 99.93 +- 0.09    20w1s 95.93 +- 0.38    20w5s 98.97 +- 0.19
Protocol: Vinyals split, 28x28; MAML's strided Conv-4 (64 filters, transductive BatchNorm); one
inner step with a learned rate per parameter (initialised uniformly in [0.005, 0.1]) in training
and at test; second order; meta-batch 32 (5-way) / 16 (20-way); Adam 1e-3; 60,000 meta-steps; 15
queries per class; best checkpoint on validation classes; 1000 test tasks.

Rows:    jmeta train configs/omniglot_metasgd.py:5w1s   (5w5s, 20w1s, 20w5s)
CPU:     jmeta train configs/omniglot_metasgd.py:5w1s,runlocal
Make:    make reproduce-omniglot_metasgd-5w1s
"""

ROWS = {
    "5w1s": dict(ways=5, shots=1, paper=(99.53, 0.26)),
    "5w5s": dict(ways=5, shots=5, paper=(99.93, 0.09)),
    "20w1s": dict(ways=20, shots=1, paper=(95.93, 0.38)),
    "20w5s": dict(ways=20, shots=5, paper=(98.97, 0.19)),
}
PAPER = "Li et al. 2017"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    five = row["ways"] == 5
    return dict(
        name=f"omniglot_metasgd-{arg}",
        data=dict(name="omniglot", ways=row["ways"], shots=row["shots"], queries=15),
        model=dict(name="conv4", filters=64, strided=True),
        learner=dict(name="metasgd", inner_steps=1, init_lr=(0.005, 0.1)),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=60_000, meta_batch_size=32 if five else 16, task_map="unroll",
                   log_every=100, save_every=1000),
        eval=dict(val_tasks=200, tasks=1000, steps=(0, 1)),
        paper=dict(result=paper, source=PAPER),
    )
