"""Deterministic simulation at scale: lifecycles per second, violations, faults injected.

Runs ``eventflow.sim.run_seed`` over consecutive seeds (the real runner, log, policy and
parsers against the simulated SLURM cluster; see src/eventflow/sim), in ``--workers``
processes, and reports simulated job lifecycles per second, how many histories broke an
invariant (each printed with its replay command), and how many faults of each kind were
injected. The baseline, measured in the same run on the same seeds, is the simulation with
every fault switched off (``intensity 0``: no crashes, no scheduler or job folder faults;
the programs' own errors from the corpus still happen): the ratio is what the faults and
the recoveries they cause cost.

Run: ``PYTHONPATH=src python bench/bench_sim.py [--seeds 400] [--first 1] [--workers N]``
(``--quick``: 6 seeds).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Result, parse_args, print_table  # noqa: E402

from eventflow.sim import run_seed  # noqa: E402


def _one(args: tuple[int, float]) -> tuple[int, int, list[str], dict[str, int]]:
    seed, intensity = args
    result = run_seed(seed, intensity=intensity)
    return seed, result.lifecycles, result.violations, dict(result.faults)


def run(seeds: list[int], intensity: float, workers: int
        ) -> tuple[float, int, dict[int, list[str]], Counter]:
    start = time.perf_counter()
    lifecycles, failed, faults = 0, {}, Counter()
    jobs = [(s, intensity) for s in seeds]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            outcomes = list(pool.map(_one, jobs, chunksize=4))
    else:
        outcomes = [_one(j) for j in jobs]
    for seed, n, violations, injected in outcomes:
        lifecycles += n
        faults.update(injected)
        if violations:
            failed[seed] = violations
    return time.perf_counter() - start, lifecycles, failed, faults


def main() -> int:
    def extra(parser) -> None:  # noqa: ANN001
        parser.add_argument("--seeds", type=int, default=400)
        parser.add_argument("--first", type=int, default=1)
        parser.add_argument("--workers", type=int, default=1)

    args = parse_args(__doc__.splitlines()[0], extra)
    n = 6 if args.quick else args.seeds
    seeds = list(range(args.first, args.first + n))
    base_s, base_n, base_failed, _ = run(seeds, 0.0, args.workers)
    sim_s, sim_n, failed, faults = run(seeds, 1.0, args.workers)
    for seed, violations in sorted({**base_failed, **failed}.items()):
        print(f"seed {seed}: " + "; ".join(violations))
        print(f"  replay: eventflow-sim --seed {seed}")
    results = [
        Result(f"{n} seeds, faults on: simulated job lifecycles/s ({sim_n} lifecycles, "
               f"{args.workers} worker(s))", sim_n / sim_s, base_n / base_s,
               "same seeds, faults off", "-", None, unit="lifecycles/s"),
        Result(f"{n} seeds: histories that broke an invariant (faults on / off)",
               len(failed), len(base_failed), "faults off", "0", not failed and not base_failed,
               unit="histories"),
    ]
    print_table("Deterministic simulation (bench/bench_sim.py)", results, args.json)
    print(f"\nfaults on: {sim_n} lifecycles in {sim_s:.1f} s; faults off: {base_n} in "
          f"{base_s:.1f} s")
    print("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    return 1 if failed or base_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
