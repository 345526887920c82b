"""Proto-MAML over LoRA adapters of a pretrained sentence encoder: few-shot intent classification
on BANKING77 (Proto-MAML: Triantafillou et al., ICLR 2020, "Meta-Dataset"; MAML: Finn, Abbeel &
Levine, ICML 2017; LoRA: Hu et al., ICLR 2022; BANKING77: Casanueva et al. 2020).

Paper: none for this protocol (see configs/banking77_maml.py). Protocol: as
configs/banking77_maml.py (BANKING77 pooled, 50 / 10 / 17 intents; all-MiniLM-L6-v2 frozen;
LoRA rank 8 on query and value of all layers; 32 tokens; 5 training / 15 test queries per class;
meta-batch 4, 2 at 5 shots; Adam 3e-4 on the adapters; best checkpoint on 100 validation
episodes; 600 test episodes after 1 and 2 inner steps), except the head: each task's 5-way head
starts at the Prototypical Network classifier of its support embeddings (kernel 2 s c_k, bias
-s |c_k|^2, s = proto_scale = 5: on unit-norm embeddings about ProtoNets' cosine temperature of
10), then adapters and head take 2 SGD steps at 1.0 (before meta-training, 0.5 and 2.0 gave
the same 86.8% after 1 and 2 steps on 30 validation episodes: from a prototype head the 1-shot
support set is already fitted); second-order meta-gradient through the steps and the
prototypes. MAML's zero head had to be learned from the support texts in two
steps; this one starts where the frozen-encoder baseline ends. Budget: about an hour on a 2-core
CPU (MAML's step plus one support forward).

Rows:    jmeta train configs/banking77_protomaml.py:5w1s   (5w5s)
CPU:     jmeta train configs/banking77_protomaml.py:5w1s,runlocal
Make:    make reproduce-banking77_protomaml-5w1s       (all methods: make reproduce-banking77)
"""

ROWS = {
    "5w1s": dict(shots=1, meta_steps=1000),
    "5w5s": dict(shots=5, meta_steps=700, meta_batch_size=2),
}
PAPER = ""


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])  # the row's shots, budget and (5 shots) meta-batch
    return dict(
        name=f"banking77_protomaml-{arg}",
        data=dict(name="banking77", max_length=32, ways=5, shots=row.pop("shots"), queries=5),
        model=dict(name="bert", rank=8, alpha=16.0, targets=("query", "value")),
        learner=dict(name="protomaml", inner_steps=2, inner_lr=1.0, scale=5.0),
        optimizer=dict(lr=3e-4),
        train={**dict(meta_batch_size=4, log_every=25, save_every=250), **row},
        eval=dict(queries=15, val_tasks=100, tasks=600, steps=(1, 2)),
    )
