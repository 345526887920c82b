"""Frozen-encoder nearest-prototype baseline: Prototypical Networks' classifier on the pretrained
sentence embeddings, with no meta-training (all-MiniLM-L6-v2: Reimers & Gurevych, "Sentence-
BERT", EMNLP 2019, and the sentence-transformers release; BANKING77: Casanueva et al. 2020).

Paper: none for this protocol (see configs/banking77_maml.py). Protocol: BANKING77 pooled, 50 /
10 / 17 intents; all-MiniLM-L6-v2 (mean pooling, unit-norm embeddings, 32 tokens) as it is:
train.meta_steps=0, the LoRA adapters at B = 0 add nothing; each test class's prototype is the
mean embedding of its support texts, queries go to the most cosine-similar prototype; 600 test
episodes of the 17 test intents, 15 queries per class, mean +- 95% CI. Minutes on a CPU.

Rows:    jmeta train configs/banking77_frozen.py:5w1s   (5w5s)
Make:    make reproduce-banking77_frozen-5w1s         (all methods: make reproduce-banking77)
"""

ROWS = {
    "5w1s": dict(shots=1),
    "5w5s": dict(shots=5),
}
PAPER = ""


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    return dict(
        name=f"banking77_frozen-{arg}",
        data=dict(name="banking77", max_length=32, ways=5, queries=15, **ROWS[arg]),
        model=dict(name="bert"),
        learner=dict(name="protonets", distance="cosine"),
        train=dict(meta_steps=0),
        eval=dict(tasks=600, steps=(1,)),
    )
