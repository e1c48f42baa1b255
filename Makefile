# The README's two commands:  make tiny  (install + the embedded default)  and  make test.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install tiny test lint bench

# the pinned requirements, then the project's own packages (rethink, rethink_lab: pyproject.toml) and
# profiles/slurm's executor (workflow_scripts/slurm_direct), editable: `import rethink` works from
# any folder with this venv, and an edit needs no reinstall
$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml workflow_scripts/slurm_direct/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e . -e workflow_scripts/slurm_direct
	touch $@

install: $(VENV)/.installed

# the whole pipeline on synthetic data, CPU: data -> pre-training -> training -> COCO evaluation -> tables, figures
tiny: install
	$(VENV)/bin/snakemake --profile profiles/tiny

# SLURM packages for the tests that start a real controller, graphviz for the rule graph (needs root;
# those tests skip with a reason otherwise)
test: install lint
	@if [ "$$(id -u)" = 0 ]; then bash .ci/slurm.sh && bash .ci/graphviz.sh; \
	 else echo "not root: SLURM tests and the rule-graph rendering will be skipped"; fi
	$(PY) -m pytest tests -ra --durations=25

# the linters (rules and settings: pyproject.toml): ruff's checks and its formatter, snakefmt, and
# snakemake --lint with and without conda environments
lint: install
	$(VENV)/bin/ruff check workflow_scripts tests bench
	$(VENV)/bin/ruff format --check workflow_scripts tests bench
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(VENV)/bin/snakemake --lint --profile profiles/tiny
	$(VENV)/bin/snakemake --lint --sdm conda --profile profiles/tiny

bench: install
	$(PY) bench/bench_dryrun.py
