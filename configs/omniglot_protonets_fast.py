"""Prototypical Networks on Omniglot, the CPU recipe that reaches 97% (5-way 1-shot) soonest
(Snell, Swersky & Zemel, NeurIPS 2017; the protocol of configs/omniglot_protonets.py).

Paper (Omniglot, Vinyals split, 1000 test episodes): 5w1s 98.8
Protocol: as configs/omniglot_protonets.py: Vinyals split (rotations as classes), 28x28;
Conv-4 (64 filters, max-pool) embedding, squared Euclidean distance, BatchNorm with each set's
statistics (transductive); tested on 5-way 1-shot episodes of the test classes, 15 queries per
class. The recipe: training episodes 20-way 1-shot with 5 queries per class (120 images a step
instead of 320 with 15 queries, or 360 with the paper's 60-way), Adam 1e-3 constant, one
episode per step, 2,000 steps; best checkpoint on 200 validation episodes; 1000 test episodes.

Time to accuracy (`jmeta bench tta`, one CPU core, 600 test episodes; docs/performance.md):
97.09 +- 0.33 after 300 training seconds (1,603 steps) against 810 s for 20-way 15-query
episodes, 360 s for 60-way 5-query ones.

Rows:    jmeta train configs/omniglot_protonets_fast.py:5w1s
Make:    make reproduce-omniglot_protonets_fast-5w1s
"""

ROWS = {"5w1s": dict(paper=(98.8,))}
PAPER = "Snell et al. 2017, Table 1"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    paper = ROWS[arg]["paper"]
    return dict(
        name=f"omniglot_protonets_fast-{arg}",
        data=dict(name="omniglot", ways=20, shots=1, queries=5),
        model=dict(name="conv4", filters=64),
        learner=dict(name="protonets"),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=2000, meta_batch_size=1, log_every=100, save_every=250),
        eval=dict(ways=5, queries=15, val_tasks=200, tasks=1000, steps=(1,)),
        paper=dict(result=paper, source=PAPER),
    )
