"""``eventflow-sim``: run simulated histories by seed; a failing one prints how to replay it."""

from __future__ import annotations

import argparse
import functools
import itertools
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

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
    parser.add_argument("--lifecycles", type=int,
                        help="run seeds from --first (default 1) until this many lifecycles")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes running seeds side by side (results stay in seed order)")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per seed")
    args = parser.parse_args(argv)
    from pathlib import Path

    if args.workers < 1:
        parser.error("--workers must be at least 1")
    corpus = Corpus(Path(args.corpus) if args.corpus else None)
    if args.seed:
        seeds: Iterator[int] = iter(args.seed)
    elif args.lifecycles is not None:
        seeds = itertools.count(args.first if args.first is not None else 1)
    elif args.first is not None:
        seeds = iter(range(args.first, args.first + args.count))
    else:
        seeds = iter([random.SystemRandom().randrange(2**32) for _ in range(args.count)])
    failed: list[SimResult] = []
    faults: Counter[str] = Counter()
    lifecycles = ran = 0
    start = last_progress = time.perf_counter()
    for result in _results(seeds, args, corpus):
        ran += 1
        lifecycles += result.lifecycles
        faults.update(result.faults)
        if args.verbose or not result.ok:
            print(f"seed {result.seed}: {result.lifecycles} lifecycles, {result.steps} steps, "
                  f"{result.events} events, {result.crashes} crashes, "
                  f"final {dict(result.final_states)}, digest {result.digest[:12]}")
        if not result.ok:
            failed.append(result)
            for violation in result.violations:
                print(f"  violation: {violation}")
            print(f"  replay: {result.replay_command()}")
            if not args.no_shrink:
                needed, shrunk = shrink(result.seed, corpus=corpus, materials=args.materials,
                                        intensity=args.intensity)
                print("  shrunk: fails with only these faults: "
                      + ", ".join(f"{k} x{shrunk.faults[k]}" for k in needed)
                      + f" ({shrunk.violations[0] if shrunk.violations else ''})")
        now = time.perf_counter()
        if now - last_progress >= 30:  # a long run says how far it is, on stderr
            last_progress = now
            print(f"... {ran} seeds, {lifecycles} lifecycles, {len(failed)} failing, "
                  f"{lifecycles / (now - start):.0f}/s", file=sys.stderr, flush=True)
        if args.lifecycles is not None and lifecycles >= args.lifecycles:
            break
    seeds_run = ran
    elapsed = time.perf_counter() - start
    print(f"{seeds_run} seeds, {lifecycles} lifecycles in {elapsed:.1f} s "
          f"({lifecycles / elapsed:.1f}/s), {len(failed)} failing")
    print("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    return 1 if failed else 0


@functools.cache
def _corpus(folder: str | None) -> Corpus:
    from pathlib import Path

    return Corpus(Path(folder) if folder else None)


def _one(job: tuple[int, int | None, float, str | None]) -> SimResult:
    seed, materials, intensity, corpus_folder = job
    return run_seed(seed, corpus=_corpus(corpus_folder), materials=materials,
                    intensity=intensity)


def _results(seeds: Iterator[int], args: argparse.Namespace, corpus: Corpus
             ) -> Iterator[SimResult]:
    """Each seed's result, in seed order; with workers, computed a batch ahead."""
    if args.workers == 1:
        for seed in seeds:
            yield run_seed(seed, corpus=corpus, materials=args.materials,
                           intensity=args.intensity, keep=args.keep)
        return
    with ProcessPoolExecutor(args.workers) as pool:
        while batch := list(itertools.islice(seeds, args.workers * 32)):
            jobs = [(seed, args.materials, args.intensity, args.corpus) for seed in batch]
            yield from pool.map(_one, jobs, chunksize=8)
