"""R2D2 (ridge regression differentiable discriminator) on FC100.

Paper (Lee et al. 2019 (MetaOptNet-RR), Table 2; FC100 5-way, mean +- 95% CI):
    5w1s 40.5 +- 0.6    5w5s 55.3 +- 0.6
Protocol: FC100 split of CIFAR-100 by superclass (60 / 20 / 20 classes, Oreshkin et al. 2018),
32x32 RGB; ResNet-12 (64-160-320-640) embedding, closed-form ridge-regression head with learned
regulariser, scale and bias (R2D2); trained 5-way with 6 queries per class, meta-batch 8; SGD 0.1,
decayed by 0.06 every 20,000 meta-steps; 60,000 meta-steps; tested 5-way with 15 queries; best
checkpoint on validation classes; 1000 test tasks. Differences: no data augmentation, DropBlock or
label smoothing. Needs an accelerator for the full schedule.

Rows:    jmeta train configs/fc100_r2d2.py:5w1s   (5w5s)
CPU:     jmeta train configs/fc100_r2d2.py:5w1s,runlocal
Make:    make reproduce-fc100_r2d2-5w1s
"""

ROWS = {
    "5w1s": dict(shots=1, paper=(40.5, 0.6)),
    "5w5s": dict(shots=5, paper=(55.3, 0.6)),
}
PAPER = "Lee et al. 2019 (MetaOptNet-RR), Table 2"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    return dict(
        name=f"fc100_r2d2-{arg}",
        data=dict(name="fc100", ways=5, shots=row["shots"], queries=6),
        model=dict(name="resnet12"),
        learner=dict(name="r2d2"),
        optimizer=dict(name="sgd", lr=0.1, schedule="step", decay_every=20_000, decay_rate=0.06),
        train=dict(meta_steps=60_000, meta_batch_size=8, log_every=100, save_every=1000),
        eval=dict(steps=(1,), queries=15, val_tasks=200, tasks=1000),
        paper=dict(result=paper, source=PAPER if paper else ""),
    )
