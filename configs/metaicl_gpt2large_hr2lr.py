"""MetaICL's protocol on GPT-2 Large: meta-train on the high-resource tasks, test in context on
the low-resource ones (Min, Lewis, Zettlemoyer & Hajishirzi, "MetaICL: Learning to Learn In
Context", NAACL 2022, Table 3, setting HR -> LR). NOT YET RUN: written for one GPU (H100/H200
class, bfloat16); the data are not in this repository.

Paper: MetaICL, HR -> LR, GPT-2 Large (774M), k = 16 demonstrations, macro-F1 / accuracy over
the 26 low-resource test tasks, mean over 5 seeds of demonstrations (the paper's Table 3; its
numbers are not copied here, because this config does not reproduce its exact evaluation: see
"Deviations").
Data (not included; place before running): MetaICL's preprocessed tasks (github.com/facebookresearch/
MetaICL, `python _build_gym.py --build --n_proc=...` then `preprocess.py`), converted to one CSV
../shared/data/metaicl/hr_to_lr.csv with columns text,label, one row per example, where label is
"<task>:<option>" (a class is one answer option of one task), and the class split folder
../shared/data/metaicl/hr_to_lr_split/{train,val,test}.txt: train = the options of the 61 HR
tasks of MetaICL's config/hr_to_lr.json (less 5 held out), val = those 5 HR tasks, test = the
26 LR tasks. Model: GPT-2 Large from Hugging Face (config.json, model.safetensors,
tokenizer.json) in ../shared/models/gpt2-large.
Protocol: MetaICL, channel (log p(x | v_1 x_1 ... v_16 x_16 v_c)), every weight trained
(model.train_backbone, learner.full), bfloat16 compute with float32 master weights, remat per
layer; 4-way 4-shot episodes = 16 demonstrations, 1 query per class in training, texts cut at
48 tokens (16 x 49 + 48 + 1 = 833 <= 1,024 positions); verbalisers: GPT-2's tokens " A", " B",
" C", " D" (ids 317, 347, 327, 360: check them with tokenizers' Tokenizer.encode before a run);
padding id 0 (the tokenizer pads with 0 when config.json names no padding id: GPT-2's "!", so a
text's own "!" is dropped from the prompt too);
Adam 1e-5 (MetaICL's lr), meta-batch 8, 30,000 meta-steps (the paper: 30,000 steps of batch 8);
1,000 test episodes of the LR classes, 15 queries per class, mean +- 95% CI.
Deviations from the paper: an episode draws 4 classes (task options) from the split's pool,
possibly from different tasks, and renumbers them (labels " A".." D"), where MetaICL keeps each
task's own options as their text; its loss here is the class cross-entropy (learner.loss="lm"
is MetaICL's: the LM loss of the right option); accuracy, not macro-F1.

Rows:    jmeta train configs/metaicl_gpt2large_hr2lr.py:4w4s          (NOT YET RUN)
Make:    make reproduce-metaicl_gpt2large_hr2lr-4w4s                  (all GPU rows: make reproduce-decoders-gpu)
Direct:  jmeta train configs/metaicl_gpt2large_hr2lr.py:4w4s learner.scoring=direct
"""

ROWS = {"4w4s": dict(ways=4, shots=4)}
PAPER = ""
MODEL = "../shared/models/gpt2-large"
DATA = "../shared/data/metaicl"


def get_config(arg="4w4s"):
    arg = arg or "4w4s"
    return dict(
        name=f"metaicl_gpt2large_hr2lr-{arg}",
        data=dict(name="text", files=f"{DATA}/hr_to_lr.csv", class_split=f"{DATA}/hr_to_lr_split",
                  max_length=48, queries=1, **ROWS[arg]),
        model=dict(name="decoder", path=MODEL, labels=(317, 347, 327, 360), lora_targets=(),
                   train_backbone=True, dtype="bfloat16", remat=True, pad_token_id=0),
        learner=dict(name="metaicl", scoring="channel", full=True),
        optimizer=dict(lr=1e-5),
        train=dict(meta_steps=30_000, meta_batch_size=8, log_every=100, save_every=2000),
        eval=dict(queries=15, val_tasks=100, tasks=1000, steps=(1,), chunk_size=1),
    )
