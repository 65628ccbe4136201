# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install torch 2.13.0 (local CPU wheel) before the
# project, so no dependency can pull a CUDA build of torch.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
DEMO_OUT ?= out/demo

.PHONY: venv demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/mergekit-from demo --out $(DEMO_OUT)

test: venv
	$(BIN)/python -m pytest -q --durations=15

clean:
	rm -rf $(VENV) out
