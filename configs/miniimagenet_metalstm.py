"""The LSTM meta-learner on miniImageNet (Ravi & Larochelle, ICLR 2017, "Optimization as a
Model for Few-Shot Learning", Table 1).

Paper (miniImageNet 5-way, mean +- 95% CI over 600 test episodes):
    5w1s 43.44 +- 0.77    5w5s 60.60 +- 0.71
Protocol: Ravi & Larochelle split (64 / 16 / 20 classes), 84x84 RGB; the learner is Conv-4 with
32 filters and max-pooling, BatchNorm with the statistics of each batch in training and at test
(transductive); the inner rule is the coordinate-wise LSTM meta-learner (jmeta.inner.meta_lstm:
two coordinate-wise LSTM layers, hidden 20, preprocessed gradient and loss as inputs, learned
input and forget gates, the learner's parameters as the cell state, the initial cell state
meta-learned), with the gradient and loss inputs treated as constants (no second-order terms),
as in the paper; 12 inner updates on the 5 support images (1-shot) and 5 updates on the 25
support images (5-shot), the same at test; one episode per meta-step; Adam 1e-3; 15 queries per
class; the meta-gradient's global norm clipped at 0.25, as in the paper (meta_grad_clip); best
checkpoint on validation classes; 1000 test tasks (the paper: 600). Needs an accelerator.

Rows:    jmeta train configs/miniimagenet_metalstm.py:5w1s   (5w5s)
CPU:     jmeta train configs/miniimagenet_metalstm.py:5w1s,runlocal
Make:    make reproduce-miniimagenet_metalstm-5w1s
"""

ROWS = {
    "5w1s": dict(ways=5, shots=1, inner_steps=12, paper=(43.44, 0.77)),
    "5w5s": dict(ways=5, shots=5, inner_steps=5, paper=(60.60, 0.71)),
}
PAPER = "Ravi & Larochelle 2017, Table 1"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    paper = row.pop("paper")
    return dict(
        name=f"miniimagenet_metalstm-{arg}",
        data=dict(name="miniimagenet", ways=row["ways"], shots=row["shots"], queries=15),
        model=dict(name="conv4", filters=32),
        learner=dict(name="maml", inner_steps=row["inner_steps"]),
        rule=dict(name="meta_lstm", hidden=20),
        optimizer=dict(lr=1e-3, grad_clip=0.25),
        train=dict(meta_steps=75_000, meta_batch_size=1, log_every=100, save_every=1000),
        eval=dict(val_tasks=200, tasks=1000, steps=(0, row["inner_steps"])),
        paper=dict(result=paper, source=PAPER),
    )
