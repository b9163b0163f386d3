# The README's two commands: `make demo` (simulate + run a 12-ObsID survey) and `make test`.
# Both create .venv and install the project the first time; later runs reuse it (the stamp
# is refreshed when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xmm-survey-installed
DEMO ?= demo
N_OBSIDS ?= 12
PYTEST_ARGS ?=
# Two pytest-xdist workers, one test file per unit (a module fixture is built once), longest files first
# (tests/conftest.py XDIST_FIRST): on 2 cores one worker computes while the other waits on SLURM,
# subprocesses and Dask start-up. `make test PYTEST_XDIST=` runs the suite in one process.
PYTEST_XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: install demo test bench lint clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,models,slurm,apec,dev]'
	touch $(STAMP)

install: $(STAMP)

# A second `make demo` reuses the simulated data and every finished step (resume); `make clean-demo` starts over.
demo: install
	test -d $(DEMO)/data || $(VENV)/bin/xmm-survey simulate --out $(DEMO)/data --n-obsids $(N_OBSIDS) --seed 1
	$(VENV)/bin/xmm-survey run --data $(DEMO)/data --results $(DEMO)/results --workers 2
	$(VENV)/bin/xmm-survey report --results $(DEMO)/results
	@echo "catalogue: $(DEMO)/results/catalogue.parquet and $(DEMO)/results/catalogue.fits"
	@echo "plots:     $(DEMO)/results/plots/ and $(DEMO)/results/<obsid>/plots/"
	@echo "report:    $(DEMO)/results/report/index.html"

# pytest exit 5 means no test ran: that is a failure, never a pass.
test: install
	$(PY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: install
	$(PY) benchmarks/run.py

# The habits as a gate: ruff (rules in pyproject.toml), the formatter's check, and mypy on all three packages.
LINT_PATHS := xmmcore survey catalog tests benchmarks
lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy xmmcore catalog survey

clean-demo:
	rm -rf $(DEMO)
