# Two commands: `make book` and `make test`. Both create the virtual environment and the book's
# offline assets when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= default
STAMP := $(VENV)/.installed
# MathJax, require.js and the Jupyter widget manager, which the book serves itself (no CDN), and the
# browser driver of the book's test, pinned by book_assets/package-lock.json.
ASSETS_STAMP := book_assets/node_modules/.installed

.PHONY: book test venv book-assets clean-runs

venv: $(STAMP)

# torch is pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (nnae)" > /dev/null
	touch $(STAMP)

book-assets: $(ASSETS_STAMP)

# npm ci installs exactly the lockfile; it runs again only when package.json or the lockfile change.
$(ASSETS_STAMP): book_assets/package.json book_assets/package-lock.json
	cd book_assets && npm ci --no-audit --no-fund --loglevel=error
	touch $(ASSETS_STAMP)

book: $(STAMP) $(ASSETS_STAMP)
	$(PY) -m nnae_utils.pipeline --profile $(PROFILE) --book --book-output .
	@echo "open _build/html/index.html"

test: $(STAMP) $(ASSETS_STAMP)
	$(PY) -m pytest

clean-runs:
	rm -rf runs _build
