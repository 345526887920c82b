"""MAML++ on Omniglot, a CPU recipe of 2,800 meta-steps (Antoniou, Edwards & Storkey, ICLR 2019,
"How to train your MAML", Table 1; the protocol of configs/omniglot_mamlpp.py).

Paper (MAML++, Omniglot): 5w1s 99.47
Protocol: as configs/omniglot_mamlpp.py: Vinyals split, 28x28; Conv-4 (64 filters, 3x3
convolutions, max-pooling), BatchNorm with batch statistics and per-step weights and biases;
5 inner steps with learned per-step, per-layer rates (initialised 0.1); 15 queries per class;
best checkpoint on 200 validation tasks; 1000 test tasks, 5 inner steps at test.
The recipe: the paper's schedule shrunk to fit about 75 minutes on one CPU core: the
multi-step loss annealed and first-order meta-gradients kept for the first 300 meta-steps
(the paper: 5,000 and 25,000), where a step costs 2.4 times a second-order step after it
(0.32 against 0.77 steps/s on one core: every inner step's query loss is back-propagated);
meta-batch 4 instead of 16; Adam 1e-3 cosine-annealed to 1e-5 over 2,800 meta-steps
(the paper: 75,000); PyTorch's initialisation (``model.init="torch"``), as in the other CPU
recipes.

Rows:    jmeta train configs/omniglot_mamlpp_fast.py:5w1s
Make:    make reproduce-omniglot_mamlpp_fast-5w1s
"""

ROWS = {"5w1s": dict(paper=(99.47,))}
PAPER = "Antoniou et al. 2019, Table 1"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    return dict(
        name=f"omniglot_mamlpp_fast-{arg}",
        data=dict(name="omniglot", ways=5, shots=1, queries=15),
        model=dict(name="conv4", filters=64, strided=False, init="torch"),
        learner=dict(name="mamlpp", inner_steps=5, inner_lr=0.1, msl_anneal_steps=300,
                     first_order_until=300, per_step_bn=True),
        optimizer=dict(lr=1e-3, schedule="cosine", lr_min=1e-5),
        train=dict(meta_steps=2_800, meta_batch_size=4, log_every=100, save_every=700),
        eval=dict(val_tasks=200, tasks=1000, steps=(0, 1, 5)),
        paper=dict(result=ROWS[arg]["paper"], source=PAPER),
    )
