# Two entry points a new user needs: `make demo` and `make test`. Both build the environment first if
# it is missing. The environment is a plain venv in .venv/, installed from requirements.lock in one pip
# call so that torch, torchvision and nnunetv2 are resolved together and never swapped.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.ccfv-installed
CORES ?= 2

.PHONY: demo test lint clean-demo

$(STAMP): requirements.lock pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

.venv: $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH snakemake --cores $(CORES)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH snakemake --cores $(CORES) --report results/report.zip
	@echo "Demo finished: tables in results/tables/ (table1.md: baselines and CC-FV, table2.md: ablations, table3.md: pre-registered scores,"
	@echo "statistics.md: intervals and p-values; .csv and .tex beside them; ground_truth.md: can the Dice rank"
	@echo "the models?), figures in results/figures/, everything with provenance in results/report.zip"
	@PATH=$(CURDIR)/$(VENV)/bin:$$PATH ccfv report results --ground-truth
	@PATH=$(CURDIR)/$(VENV)/bin:$$PATH ccfv report results --reference docs/demo

# Two pytest-xdist workers, one per core of the CI machine (tests that must not overlap take a file lock:
# tests/conftest.py, workflow_scripts_lock). `make test TEST_WORKERS=0` runs the suite in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

lint: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH snakemake --lint

clean-demo:
	rm -rf results logs .snakemake

# Builds containers/ccfv.def without Apptainer (debootstrap + chroot under build/container/, as root; a missing
# debootstrap is installed with apt-get first; pip
# downloads from PyPI), runs its %test and the score rule inside it against .venv. Slow the first time
# (docs/cluster.md gives the time and size); not part of `make test` or CI.
.PHONY: container-check
container-check: $(STAMP)
	nice -n 10 $(VENV)/bin/python containers/check.py
