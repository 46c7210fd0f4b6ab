# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv if needed,
# installing the CPU torch pin first (a bare `torch` would pull a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sa2va-shards demo --out demo-out

test: $(STAMP)
	$(VENV)/bin/ruff check src pipeline tests benchmarks
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_build.py

clean:
	rm -rf demo-out .pytest_cache
