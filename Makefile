# napari-cellmapper: every target sets itself up on a fresh machine (Python >= 3.12 is found automatically).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
XVFB := xvfb-run -a -s "-screen 0 1600x1000x24"
STAMP := $(VENV)/.installed

.PHONY: setup example demo test test-fast bench-env bench screenshots clean

$(STAMP): pyproject.toml
	@tools/install_system_deps.sh
	@test -x $(PY) || "$$(tools/find_python.sh)" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[testing]"
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv with the package and test tools

example: $(STAMP)  ## map the built-in example from the command line (no display needed)
	$(VENV)/bin/napari-cellmapper example

demo: $(STAMP)  ## open napari with the built-in example and the widget docked
	$(VENV)/bin/napari-cellmapper demo

test: $(STAMP)  ## the whole test suite (GUI tests under Xvfb); fails if no test ran
	@set -o pipefail; QT_QPA_PLATFORM=xcb $(XVFB) $(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

bench-env: $(STAMP)  ## a separate environment with cellmapper, for side-by-side benchmarks only
	@test -x .venv-bench/bin/python || "$$(tools/find_python.sh)" -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q cellmapper==0.2.6 faiss-cpu scanpy anndata psutil tqdm spatialdata

bench: bench-env  ## scale benchmark side by side with cellmapper (long)
	.venv-bench/bin/python benchmarks/scale.py --sizes 10000 100000 --repeats 3

screenshots: $(STAMP)  ## regenerate the user guide's screenshots from the real widget
	QT_QPA_PLATFORM=xcb $(XVFB) $(PY) docs/make_screenshots.py

clean:
	rm -rf $(VENV) .venv-bench build dist src/*.egg-info
