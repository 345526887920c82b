"""MAML on sinusoid regression, the full schedule of the paper.

Paper: Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML 2017, Section 5.1. Reference numbers (query MSE after one inner step, mean +- 95%
CI) as reported for MAML in Li et al. 2017, "Meta-SGD", Table 1:
    K=5: 1.13 +- 0.18    K=10: 0.77 +- 0.11    K=20: 0.48 +- 0.08
Protocol: amplitude U[0.1, 5], phase U[0, pi], x U[-5, 5]; K support and K query points per
task; MLP 1-40-40-1 (ReLU); one inner SGD step at 0.01, second order; meta-batch 25 tasks; Adam
1e-3; 70,000 meta-steps. Meta-test: 1000 new tasks, 100 query points each, MSE after 1 and 10
steps, beside the "pretrained" baseline (MAML Figure 2).

Command (one K):   jmeta train configs/sinusoid_maml.py data.shots=10
All three K:       make reproduce-maml-sinusoid
"""

def get_config():
    return dict(
        name="sinusoid_maml",
        data=dict(name="sinusoid", shots=10),
        model=dict(name="mlp", hidden=(40, 40)),
        learner=dict(name="maml", inner_steps=1, inner_lr=0.01),
        optimizer=dict(name="adam", lr=1e-3),
        train=dict(meta_steps=70_000, meta_batch_size=25, log_every=1000),
        eval=dict(tasks=1000, steps=(1, 10)),
    )
