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
        data=dict(name="sinusoid", shots=10),
        model=dict(name="mlp", hidden=(40, 40)),
        learner=dict(name="maml", inner_steps=1, inner_lr=0.01),
        optimizer=dict(name="adam", lr=1e-3),
        train=dict(meta_steps=40_000, meta_batch_size=25, log_every=500),
        eval=dict(tasks=1000, steps=(1, 10)),
    )
