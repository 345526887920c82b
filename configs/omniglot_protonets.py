"""Prototypical Networks on Omniglot 20-way training, tested 5-way and 20-way 1-shot.

Paper: Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017,
Table 1 (Omniglot, Vinyals split): 5-way 1-shot 98.8 %, 20-way 1-shot 96.0 %.
Protocol: Vinyals split (rotations as classes), 28x28; Conv-4 (64 filters, max-pool) embedding,
squared Euclidean distance; trained 20-way 1-shot (the paper used 60-way episodes), 15 queries per
class; one episode per step; Adam 1e-3; meta-test on 1000 episodes of the test classes.
BatchNorm: batch statistics of each set (transductive).

Command:  jmeta train configs/omniglot_protonets.py --data-dir ../shared/data
Test 5-way: jmeta eval RUN_DIR (the config's ways) after training with ways=5, or train ways=20
"""


def get_config():
    return dict(
        name="omniglot_protonets",
        task="omniglot",
        algorithm="protonets",
        model="conv4",
        filters=64,
        ways=20,
        k_shot=1,
        k_query=15,
        meta_batch_size=1,
        meta_lr=1e-3,
        num_steps=20_000,
        log_every=100,
        save_every=1000,
        eval_tasks=1000,
        eval_steps=(1,),
        val_tasks=100,
    )
