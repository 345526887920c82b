"""Meta-SGD on sinusoid regression, the full schedule.

Paper: Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017,
Section 4.1, Table 1. Reported query MSE after one inner step (mean +- 95% CI):
    K=5: 0.90 +- 0.16    K=10: 0.53 +- 0.09    K=20: 0.31 +- 0.05
Protocol: as MAML (amplitude U[0.1, 5], phase U[0, pi], x U[-5, 5], K support and K query
points, MLP 1-40-40-1 ReLU, one inner step, meta-batch 25, Adam 1e-3, 70,000 meta-steps) with a
learned step size per parameter, initialised uniformly in [0.005, 0.1]. Meta-test: 1000 new tasks,
100 query points each, MSE after 1 and 10 steps beside the pretrained baseline.

Command (one K):   jmeta train configs/sinusoid_metasgd.py data.shots=10
All three K:       make reproduce-metasgd-sinusoid
"""

def get_config():
    return dict(
        name="sinusoid_metasgd",
        data=dict(name="sinusoid", shots=10),
        model=dict(name="mlp", hidden=(40, 40)),
        learner=dict(name="metasgd", inner_steps=1, init_lr=(0.005, 0.1)),
        optimizer=dict(name="adam", lr=1e-3),
        train=dict(meta_steps=70_000, meta_batch_size=25, log_every=1000),
        eval=dict(tasks=1000, steps=(1, 10)),
    )
