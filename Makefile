# Two commands do everything on a fresh machine:
#   make demo   set up .venv, then run the soup example on its embedded default
#   make test   set up .venv, then run the test suite
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.tna_hf_setup

.PHONY: setup demo test test-slow benchmark lint

$(SETUP_STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(SETUP_STAMP)

setup: $(SETUP_STAMP)

demo: $(SETUP_STAMP)
	$(VENV)/bin/accelerate launch --num_processes 1 --cpu examples/soup.py

test: $(SETUP_STAMP)
	$(PYTHON) -m pytest -q

test-slow: $(SETUP_STAMP)
	$(PYTHON) -m pytest -q -m slow || [ $$? -eq 5 ]  # exit status 5: no test is marked slow

benchmark: $(SETUP_STAMP)
	$(PYTHON) benchmarks/masked_step.py

lint: $(SETUP_STAMP)
	$(VENV)/bin/ruff check tna_hf tests examples benchmarks
