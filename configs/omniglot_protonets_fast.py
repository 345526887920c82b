"""Prototypical Networks on Omniglot, the CPU recipe that reaches 97% (5-way 1-shot) soonest
(Snell, Swersky & Zemel, NeurIPS 2017; the protocol of configs/omniglot_protonets.py).

Paper (Omniglot, Vinyals split, 1000 test episodes): 5w1s 98.8    5w5s 99.7    20w5s 98.9
Protocol: as configs/omniglot_protonets.py: Vinyals split (rotations as classes), 28x28;
Conv-4 (64 filters, max-pool) embedding, squared Euclidean distance, BatchNorm with each set's
statistics (transductive); tested on 5-way 1-shot episodes of the test classes, 15 queries per
class. The recipe: training episodes 20-way K-shot with 5 queries per class (120 images a step
at K=1 instead of 320 with 15 queries, or 360 with the paper's 60-way; 200 at K=5 instead of
the paper's 600), Adam 1e-3 constant, one episode per step, 2,000 steps; best checkpoint on 200
validation episodes of the row's ways; 1000 test episodes.

Time to accuracy (`jmeta bench tta`, one CPU core, 600 test episodes; docs/performance.md):
97.09 +- 0.33 after 300 training seconds (1,603 steps) against 810 s for 20-way 15-query
episodes, 360 s for 60-way 5-query ones.
Rows trained (docs/results.md, one core): 5w5s 99.16 +- 0.09 (12 min), 20w5s 97.04 +- 0.09
(19 min; the same training as 5w5s, validated and tested 20-way); both were still rising at the
last of the 2,000 steps, so the gap to the paper is in part the budget.

Rows:    jmeta train configs/omniglot_protonets_fast.py:5w1s   (5w5s, 20w5s)
Make:    make reproduce-omniglot_protonets_fast-5w1s
Test a trained run on other ways:  jmeta eval RUN_DIR --ways 20
"""

ROWS = {
    "5w1s": dict(eval_ways=5, shots=1, paper=(98.8,)),
    "5w5s": dict(eval_ways=5, shots=5, paper=(99.7,)),
    "20w5s": dict(eval_ways=20, shots=5, paper=(98.9,)),
}
PAPER = "Snell et al. 2017, Table 1"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = ROWS[arg]
    return dict(
        name=f"omniglot_protonets_fast-{arg}",
        data=dict(name="omniglot", ways=20, shots=row["shots"], queries=5),
        model=dict(name="conv4", filters=64),
        learner=dict(name="protonets"),
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=2000, meta_batch_size=1, log_every=100, save_every=250),
        eval=dict(ways=row["eval_ways"], queries=15, val_tasks=200, tasks=1000, steps=(1,)),
        paper=dict(result=row["paper"], source=PAPER),
    )
