# `make run`  : set up .venv (idempotent) and run the main job (the embedded CPU default pipeline)
# `make test` : set up .venv (idempotent) and run the tests
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.dpbench-installed
CORES ?= 2

.PHONY: setup run test clean-results

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, with pip: it takes the wheels on this machine's disk
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	-scripts/install-offline-data.sh
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

clean-results:
	rm -rf results .snakemake/log
