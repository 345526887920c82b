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
    "5w1s": dict(k_shot=1, paper=(58.9, 1.9)),
    "5w5s": dict(k_shot=5, paper=(71.5, 1.0)),
}
PAPER = "Bertinetto et al. 2019 (R2D2 paper), Table 1"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    return dict(
        name=f"cifar_fs_maml-{arg}",
        task="cifar_fs",
        algorithm="maml",
        ways=5,
        model="conv4",
        filters=32,
        k_query=15,
        inner_steps=5,
        inner_lr=0.01,
        meta_batch_size=4 if arg == "5w1s" else 2,
        meta_lr=1e-3,
        num_steps=60_000,
        eval_steps=(0, 5, 10),
        log_every=100,
        save_every=1000,
        val_tasks=200,
        eval_tasks=1000,
        paper_result=paper,
        paper_source=PAPER if paper else "",
        **row,
    )
