"""Fine-tuning baseline: LoRA adapters and a new linear head fine-tuned on each test episode's
support texts from the pretrained weights, with no meta-training (transfer from a pretrained
encoder; LoRA: Hu et al., ICLR 2022; BANKING77: Casanueva et al. 2020).

Paper: none for this protocol (see configs/banking77_maml.py). Protocol: BANKING77 pooled, 50 /
10 / 17 intents; all-MiniLM-L6-v2 frozen (32 tokens); LoRA rank 8 on query and value of all
layers at B = 0 and a zero 5-way head, fine-tuned on the support set with Adam (lr 3e-3, full
batch) for 5 and 10 steps (chosen on 10 validation episodes: 5 steps, 88.4% at 1 shot; lr 1e-2
was as good, 3e-2 diverged); train.meta_steps=0; 600 test episodes of the 17 test intents, 15
queries per class, mean +- 95% CI.

Rows:    jmeta train configs/banking77_finetune.py:5w1s   (5w5s)
Make:    make reproduce-banking77_finetune-5w1s         (all methods: make reproduce-banking77)
"""

ROWS = {
    "5w1s": dict(shots=1),
    "5w5s": dict(shots=5),
}
PAPER = ""


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    return dict(
        name=f"banking77_finetune-{arg}",
        data=dict(name="banking77", max_length=32, ways=5, queries=15, **ROWS[arg]),
        model=dict(name="bert", rank=8, alpha=16.0, targets=("query", "value"), zero_head=True),
        learner=dict(name="finetune", inner_lr=3e-3, inner_steps=5),
        rule=dict(name="adam"),
        train=dict(meta_steps=0),
        eval=dict(tasks=600, steps=(5, 10)),
    )
