"""Inner update rules of MAML compared on Omniglot at a CPU budget: plain SGD, Meta-SGD
(learned per-coordinate rates, Li et al. 2017), per-step per-layer rates (LSLR, Antoniou et al.
2019), the LSTM meta-learner (Ravi & Larochelle 2017) and a learned coordinate-wise LSTM
optimizer (Andrychowicz et al. 2016).

Paper (for reference; those runs used 60,000 meta-steps, this comparison far fewer):
    MAML 5w1s 98.7 +- 0.4, 20w1s 95.8 +- 0.3 (Finn et al. 2017); Meta-SGD 5w1s 99.53 +- 0.26,
    20w1s 95.93 +- 0.38 (Li et al. 2017)
Protocol: Vinyals split, 28x28, classes rotated by quarter turns; MAML's strided Conv-4 (64
filters, transductive BatchNorm); 5 inner steps in training and at test, second-order MAML
(the LSTM meta-learner drops the second-order terms of its gradient inputs, as in its paper);
inner step size 0.1 (the learned rules start there: Meta-SGD's and LSLR's rates, Meta-LSTM's
input gate); meta-batch 4 (5-way) / 2 (20-way); Adam 1e-3; 1,000 meta-steps; 15 queries per
class (5 for 20-way); best checkpoint on validation classes; 1000 test tasks. Only the inner
rule differs between the runs of a row, chosen by the second token of the row:

    :5w1s,sgd | :5w1s,lslr | :5w1s,meta_lstm | :5w1s,lstm_optimizer
    :5w1s,metasgd                    (Meta-SGD learns its rates as its own algorithm)

Rows:    jmeta train configs/omniglot_inner_rules.py:5w1s,meta_lstm   (20w1s)
CPU:     jmeta train configs/omniglot_inner_rules.py:5w1s,meta_lstm,runlocal
Make:    make compare-inner-rules   (all five rules, both rows; docs/results.md)

Budget: the LSTM rules run a 20-unit LSTM per coordinate (112k coordinates of Conv-4), which
dominates their step: on a 2-core CPU about 0.3 s per 5-way meta-step with SGD, 3 s with
Meta-LSTM and 6 s with the LSTM optimizer (measured beside another training job), so the
whole comparison is several CPU hours; the meta-batch and step count are sized for that.
"""

ROWS = {
    "5w1s": dict(ways=5, shots=1, meta_batch_size=4, queries=15, paper=(98.7, 0.4)),
    "20w1s": dict(ways=20, shots=1, meta_batch_size=2, queries=5, paper=(95.8, 0.3)),
}
PAPER = "Finn et al. 2017 (MAML with SGD, full schedule)"
RULES = {  # one run per rule, all else equal; Meta-SGD learns its rates as its own algorithm
    "sgd": dict(learner=dict(name="maml", inner_steps=5, inner_lr=0.1), rule=dict(name="sgd")),
    "lslr": dict(learner=dict(name="maml", inner_steps=5, inner_lr=0.1), rule=dict(name="lslr")),
    "meta_lstm": dict(learner=dict(name="maml", inner_steps=5, inner_lr=0.1),
                      rule=dict(name="meta_lstm")),
    "lstm_optimizer": dict(learner=dict(name="maml", inner_steps=5, inner_lr=0.1),
                           rule=dict(name="lstm_optimizer")),
    "metasgd": dict(learner=dict(name="metasgd", inner_steps=5), rule={}),
}


def get_config(arg="5w1s"):
    row_name, _, rule = (arg or "5w1s").partition(",")
    row = dict(ROWS[row_name])
    paper = row.pop("paper")
    return dict(
        name=f"omniglot_inner_rules-{row_name}" + (f"-{rule}" if rule else ""),
        data=dict(name="omniglot", ways=row["ways"], shots=row["shots"], queries=row["queries"]),
        model=dict(name="conv4", filters=64, strided=True),
        **RULES[rule or "sgd"],
        optimizer=dict(lr=1e-3),
        train=dict(meta_steps=1_000, meta_batch_size=row["meta_batch_size"], log_every=50,
                   save_every=250),
        eval=dict(val_tasks=100, tasks=1000, steps=(0, 5)),
        paper=dict(result=paper, source=PAPER),
    )
