# Two-command quickstart: `make demo` runs the main job, `make test` runs the suite.
# Both create .venv and install the package (with test extras) on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= demo_out

.PHONY: install demo test test-shipped clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sid2video demo --workdir $(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# Every config variant through train (DP, FSDP + accumulation), resume, sample and evaluate
# (about 20 minutes on 2 cores; `make test` runs the chain for two of them).
test-shipped: $(STAMP)
	SID2VIDEO_SHIPPED_FULL=1 $(BIN)/python -m pytest -q -n 2 --dist loadgroup tests/test_shipped_configs.py tests/test_readme.py

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache
