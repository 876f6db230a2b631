# Developer tasks. Use another interpreter (e.g. a virtualenv's) with `make test PYTHON=...`.
#
#   make test                       the test suite
#   make lint                       ruff, with the configuration in pyproject.toml
#   make bench                      every bench/bench_*.py at full size (several minutes;
#                                   results are described in docs/benchmarks.md)
#   make bench-quick                a smoke run of every benchmark (small sizes; every
#                                   bench/bench_*.py accepts --quick)
#   make sim [SIM_SEEDS=N SIM_FIRST=S]  deterministic simulation over N seeds from S
#                                   (eventflow.sim; a failing seed prints its replay command)

PYTHON ?= python
BENCH_ARGS ?=
SIM_SEEDS ?= 1000
SIM_FIRST ?= 1
BENCHES := $(sort $(wildcard bench/bench_*.py))

export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: test lint bench bench-quick sim

test:
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check src tests bench

bench:
	@failed=""; for script in $(BENCHES); do \
		echo "== $(PYTHON) $$script $(BENCH_ARGS)"; \
		$(PYTHON) $$script $(BENCH_ARGS) || failed="$$failed $$script"; \
	done; \
	if [ -n "$$failed" ]; then echo "benchmarks that failed:$$failed"; exit 1; fi

bench-quick:
	$(MAKE) bench BENCH_ARGS=--quick

sim:
	$(PYTHON) -m eventflow.sim --first $(SIM_FIRST) --count $(SIM_SEEDS)
