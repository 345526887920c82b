"""Proto-MAML over LoRA adapters of Qwen2.5-0.5B, a pretrained decoder: the head starts at each
episode's prototypes of last-token hidden states (Triantafillou et al., ICLR 2020; LoRA: Hu et
al., ICLR 2022; Qwen2.5: Qwen team 2024; BANKING77: Casanueva et al. 2020). NOT YET RUN: written for one GPU (H100/H200 class, bfloat16).

Paper: none for this protocol (configs/banking77_maml.py: published BANKING77 few-shot numbers
use other class splits and encoders). Protocol: BANKING77 pooled, 50 / 10 / 17 intents (as
configs/banking77_*.py); Qwen2.5-0.5B (24 layers, hidden 896, 14 heads, 2 key-value heads) from
Hugging Face in ../shared/models/Qwen2.5-0.5B (config.json, model.safetensors, tokenizer.json;
its tokenizer also tokenizes the texts, 32 tokens), bfloat16 backbone with float32 adapters and
head, frozen; LoRA rank 8 (alpha 16) on q and v of all 24 layers, a linear head on the last
real token's hidden state, remat per layer and per inner step; padding id 0 (the tokenizer's
padding when config.json names none: Qwen's "!" token, so a text's own "!" is masked too);
Proto-MAML: 2 SGD steps at 0.05 on adapters and the prototype head (the hidden
states are not unit-norm, so the step is far below configs/banking77_protomaml.py's), second
order, 5 queries per class in training, meta-batch 4, Adam 3e-4; best checkpoint on 100
validation episodes;
600 test episodes of the 17 test intents, 15 queries per class, mean +- 95% CI.

Rows:    jmeta train configs/banking77_qwen_protomaml.py:5w1s   (5w5s)        (NOT YET RUN)
Make:    make reproduce-banking77_qwen_protomaml-5w1s          (all GPU rows: make reproduce-decoders-gpu)
"""

ROWS = {
    "5w1s": dict(shots=1, meta_steps=2000),
    "5w5s": dict(shots=5, meta_steps=1500),
}
PAPER = ""
MODEL = "../shared/models/Qwen2.5-0.5B"


def get_config(arg="5w1s"):
    arg = arg or "5w1s"
    row = dict(ROWS[arg])
    return dict(
        name=f"banking77_qwen_protomaml-{arg}",
        data=dict(name="banking77", max_length=32, ways=5, shots=row.pop("shots"), queries=5),
        model=dict(name="decoder", path=MODEL, scoring="head", lora_rank=8, lora_alpha=16.0,
                   lora_targets=("q", "v"), dtype="bfloat16", remat=True, pad_token_id=0),
        learner=dict(name="protomaml", inner_steps=2, inner_lr=0.05, remat=True),
        optimizer=dict(lr=3e-4),
        train={**dict(meta_batch_size=4, log_every=25, save_every=250), **row},
        eval=dict(queries=15, val_tasks=100, tasks=600, steps=(1, 2), chunk_size=5),
    )
