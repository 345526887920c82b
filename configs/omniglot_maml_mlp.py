"""MAML with a fully connected network on Omniglot 5-way 1-shot ("MAML, no conv").

Paper: Finn, Abbeel & Levine, ICML 2017, Table 1 (Omniglot, "MAML, no conv (ours)"):
    5-way 1-shot 89.7 +- 1.1 %      5-way 5-shot 97.5 +- 0.6 %
Protocol here: Vinyals split (1028 / 172 / 423 characters, rotations as new classes), 28x28
LANCZOS, inverted; MLP 784-256-128-64-64-5 with ReLU (the paper's network also had BatchNorm,
which this MLP does not); one inner SGD step at 0.4 in training, 3 at test; second order;
meta-batch 32; 15 queries per class; Adam 1e-3; 40,000 meta-steps; meta-test on 1000 tasks of
the test classes. Episodes are drawn on the device (sampler=device); sampler=host draws them with
NumPy and prefetches.

Command:  jmeta train configs/omniglot_maml_mlp.py --data-dir ../shared/data
5-shot:   jmeta train configs/omniglot_maml_mlp.py data.shots=5 --data-dir ../shared/data
CPU-size: jmeta train configs/omniglot_maml_mlp.py train.meta_steps=3000 --data-dir ../shared/data
"""

def get_config():
    return dict(
        name="omniglot_maml_mlp",
        data=dict(name="omniglot", protocol="vinyals", sampler="device", ways=5, shots=1,
                  queries=15),
        model=dict(name="mlp", hidden=(256, 128, 64, 64)),
        learner=dict(name="maml", inner_steps=1, inner_lr=0.4),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=40_000, meta_batch_size=32, log_every=250),
        eval=dict(tasks=1000, steps=(0, 1, 3)),
    )
