# Quick start: `make test` and `make bench`. Both set up what is missing and are idempotent.
# VENV=path reuses an existing environment instead of ./.venv.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.lmdeq-deps-stamp
INSTALL_STAMP := $(VENV)/.lmdeq-install-stamp
CSRC := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.h)
export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: test test-cpu-paths bench install venv clean docs

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements-dev.txt | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

$(INSTALL_STAMP): $(DEPS_STAMP) setup.py pyproject.toml $(CSRC)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

venv: $(DEPS_STAMP)
install: $(INSTALL_STAMP)

test: $(INSTALL_STAMP)
	$(PY) -m lmdeq.app.info
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'make test: pytest collected no tests; there must be tests' >&2; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi
	$(PY) scripts/cpu_paths.py

# The solver and contract tests under other CPU code paths (also the last step of `make test`).
test-cpu-paths: $(INSTALL_STAMP)
	$(PY) scripts/cpu_paths.py

bench: $(INSTALL_STAMP)
	$(PY) -m lmdeq.app.cli bench $(BENCH_ARGS)

# The documentation site into site/ (mkdocs build --strict; needs no lmdeq build: griffe reads the source).
docs: | $(PY)
	VENV=$(VENV) bash scripts/build_docs.sh site

clean:
	rm -rf build *.egg-info lmdeq/_C*.so lmdeq/_build_info.json $(INSTALL_STAMP)
