"""MAML on CIFAR-FS.

Paper (Bertinetto et al. 2019 (R2D2 paper), Table 1; CIFAR-FS 5-way, mean +- 95% CI):
    5w1s 58.9 +- 1.9    5w5s 71.5 +- 1.0
Protocol: CIFAR-FS split of CIFAR-100 (64 / 16 / 20 classes, Bertinetto et al. 2019), 32x32 RGB;
Conv-4 with 32 filters, max-pool, BatchNorm with batch statistics (transductive); 5 inner SGD steps
at 0.01 in training, 10 at test; second order; meta-batch 4 (1-shot) / 2 (5-shot); Adam 1e-3;
60,000 meta-steps; 15 queries per class; best checkpoint on validation classes; 1000 test tasks.
Needs an accelerator for the full schedule.

Rows:    jmeta train configs/cifar_fs_maml.py:5w1s   (5w5s)
CPU:     jmeta train configs/cifar_fs_maml.py:5w1s,runlocal
Make:    make reproduce-cifar_fs_maml-5w1s
"""

ROWS = {
    "5w1s": dict(shots=1, paper=(58.9, 1.9)),
    "5w5s": dict(shots=5, paper=(71.5, 1.0)),
}
PAPER = "Bertinetto et al. 2019 (R2D2 paper), Table 1"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    return dict(
        name=f"cifar_fs_maml-{arg}",
        data=dict(name="cifar_fs", ways=5, shots=row["shots"], queries=15),
        model=dict(name="conv4", filters=32),
        learner=dict(name="maml", inner_steps=5, inner_lr=0.01),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=60_000, meta_batch_size=4 if arg == "5w1s" else 2, log_every=100,
                   save_every=1000),
        eval=dict(steps=(0, 5, 10), val_tasks=200, tasks=1000),
        paper=dict(result=paper, source=PAPER if paper else ""),
    )
