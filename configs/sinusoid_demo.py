"""Sinusoid regression with MAML: a short run for `make demo` (about two minutes on 2 CPU cores).

Paper: Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML 2017, Section 5.1 and Figure 2 (K=10, one inner step of SGD at 0.01, meta-batch
25, Adam 1e-3, MLP 1-40-40-1 with ReLU). This demo uses a shorter schedule than the paper's 70,000
steps; `make reproduce-maml-sinusoid` runs the full one.

Command: jmeta train configs/sinusoid_demo.py --run-dir runs/demo
"""


def get_config():
    return dict(
        name="sinusoid_demo",
        algorithm="maml",
        k_shot=10,
        inner_steps=1,
        inner_lr=0.01,
        meta_batch_size=25,
        meta_lr=1e-3,
        num_steps=40_000,
        log_every=500,
        eval_tasks=1000,
        eval_steps=(1, 10),
    )
