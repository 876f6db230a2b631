"""``eventflow-sim``: run simulated histories by seed; a failing one prints how to replay it."""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

from eventflow.sim.corpus import Corpus
from eventflow.sim.run import SimResult, run_seed, shrink


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eventflow-sim", description=__doc__)
    parser.add_argument("--seed", type=int, action="append",
                        help="a seed to run (repeatable); default: --count random seeds")
    parser.add_argument("--count", type=int, default=1, help="random seeds to run")
    parser.add_argument("--first", type=int, help="run seeds FIRST .. FIRST+COUNT-1")
    parser.add_argument("--materials", type=int, help="materials per history (default: seeded)")
    parser.add_argument("--intensity", type=float, default=1.0, help="scale every fault rate")
    parser.add_argument("--corpus", help="the corpus folder (default: tests/data/corpus)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch project")
    parser.add_argument("--no-shrink", action="store_true",
                        help="do not look for the fewest fault kinds a failure needs")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per seed")
    args = parser.parse_args(argv)
    from pathlib import Path

    corpus = Corpus(Path(args.corpus) if args.corpus else None)
    if args.seed:
        seeds = args.seed
    elif args.first is not None:
        seeds = list(range(args.first, args.first + args.count))
    else:
        seeds = [random.SystemRandom().randrange(2**32) for _ in range(args.count)]
    failed: list[SimResult] = []
    faults: Counter[str] = Counter()
    lifecycles = 0
    start = time.perf_counter()
    for seed in seeds:
        result = run_seed(seed, corpus=corpus, materials=args.materials,
                          intensity=args.intensity, keep=args.keep)
        lifecycles += result.lifecycles
        faults.update(result.faults)
        if args.verbose or not result.ok:
            print(f"seed {seed}: {result.lifecycles} lifecycles, {result.steps} steps, "
                  f"{result.events} events, {result.crashes} crashes, "
                  f"final {dict(result.final_states)}, digest {result.digest[:12]}")
        if not result.ok:
            failed.append(result)
            for violation in result.violations:
                print(f"  violation: {violation}")
            print(f"  replay: {result.replay_command()}")
            if not args.no_shrink:
                needed, shrunk = shrink(seed, corpus=corpus, materials=args.materials,
                                        intensity=args.intensity)
                print("  shrunk: fails with only these faults: "
                      + ", ".join(f"{k} x{shrunk.faults[k]}" for k in needed)
                      + f" ({shrunk.violations[0] if shrunk.violations else ''})")
    elapsed = time.perf_counter() - start
    print(f"{len(seeds)} seeds, {lifecycles} lifecycles in {elapsed:.1f} s "
          f"({lifecycles / elapsed:.1f}/s), {len(failed)} failing")
    print("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    return 1 if failed else 0
