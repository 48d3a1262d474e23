# Two commands: `make book` and `make test`. Both create the virtual environment when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= default
STAMP := $(VENV)/.installed

.PHONY: book test venv clean-runs

venv: $(STAMP)

# torch is pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (nnae)" > /dev/null
	touch $(STAMP)

book: $(STAMP)
	$(PY) -m nnae_utils.pipeline --profile $(PROFILE) --book --book-output .
	@echo "open _build/html/index.html"

test: $(STAMP)
	$(PY) -m pytest

clean-runs:
	rm -rf runs _build
