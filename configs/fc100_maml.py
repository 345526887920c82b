"""MAML on FC100.

Paper (no published row; FC100 5-way, mean +- 95% CI):
    5w1s -    5w5s -
Protocol: FC100 split of CIFAR-100 by superclass (60 / 20 / 20 classes, Oreshkin et al. 2018),
32x32 RGB; Conv-4 with 32 filters, max-pool, BatchNorm with batch statistics (transductive); 5
inner SGD steps at 0.01 in training, 10 at test; second order; meta-batch 4 (1-shot) / 2 (5-shot);
Adam 1e-3; 60,000 meta-steps; 15 queries per class; best checkpoint on validation classes; 1000
test tasks. No published MAML row with this protocol is known to us; the row is here for comparison
with ProtoNets and R2D2 and carries no paper number. Needs an accelerator for the full schedule.

Rows:    jmeta train configs/fc100_maml.py:5w1s   (5w5s)
CPU:     jmeta train configs/fc100_maml.py:5w1s,runlocal
Make:    make reproduce-fc100_maml-5w1s
"""

ROWS = {
    "5w1s": dict(shots=1, paper=()),
    "5w5s": dict(shots=5, paper=()),
}
PAPER = ""


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    return dict(
        name=f"fc100_maml-{arg}",
        data=dict(name="fc100", ways=5, shots=row["shots"], queries=15),
        model=dict(name="conv4", filters=32),
        learner=dict(name="maml", inner_steps=5, inner_lr=0.01),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=60_000, meta_batch_size=4 if arg == "5w1s" else 2, log_every=100,
                   save_every=1000),
        eval=dict(steps=(0, 5, 10), val_tasks=200, tasks=1000),
        paper=dict(result=paper, source=PAPER if paper else ""),
    )
