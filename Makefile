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
#   make soak [SOAK_MATERIALS=N]    N materials (default 1000) through the real SLURM cluster
#                                   under chaos (bench/soak.py; not run by CI)
#   make sim-million [SIM_WORKERS=N]  seeds from 1 until 1,000,000 simulated lifecycles
#                                   (about 2 hours: 120-150 lifecycles/s on 2 cores; progress on stderr)

PYTHON ?= python
BENCH_ARGS ?=
SIM_SEEDS ?= 1000
SIM_FIRST ?= 1
SOAK_MATERIALS ?= 1000
SIM_WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
BENCHES := $(sort $(wildcard bench/bench_*.py))

export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: test lint bench bench-quick sim sim-million soak

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

sim-million:
	$(PYTHON) -m eventflow.sim --first 1 --lifecycles 1000000 --workers $(SIM_WORKERS)

soak:
	$(PYTHON) bench/soak.py --materials $(SOAK_MATERIALS)
