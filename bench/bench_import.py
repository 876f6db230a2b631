"""``eventflow import`` of a large tree: 10,000 job folders of real outputs.

The tree is generated under a temporary folder: folder ``mat_<k>_<suffix>`` holds
``mat_<k>_<suffix>.out``, a copy of a real CRYSTAL or pw.x output of the corpus (every
crystal and qe TRUTH.tsv row whose file is here, finished and failed, taken in turn), so
each material ``mat_<k>`` has an OPT, SP, BAND and DOS calculation (suffixes opt, sp,
band, doss) of one code; every tenth folder also has a ``slurm-<id>.out`` (a copy of a
real SLURM log). The import runs into a fresh project with ``--workers`` parser
processes, not asking the queue (no job of the tree is running). Then the same tree is
imported again, which must add no event.

Goal: >= 100 calculations/s on 2 cores, end to end (walk, parse, plan, append,
structures, projections). Usage: ``python bench/bench_import.py [--n 10000] [--workers 2]``
(``--quick``: 400 folders, a smoke run). Exits 1 if the goal is missed or the second
import adds an event.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.corpus.conftest import corpus_file, truth_rows  # noqa: E402

from eventflow.shell.api import Tracker  # noqa: E402
from eventflow.shell.importer import ImportOptions, run_import  # noqa: E402

SUFFIXES = ("opt", "sp", "band", "doss")
GOAL = 100.0


def corpus() -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {"crystal": [], "qe": []}
    for row in truth_rows():
        path = corpus_file(row["file"]) if row["code"] in files else None
        if path is not None:
            files[row["code"]].append(path)
    return files


def generate(root: Path, n: int) -> tuple[int, int]:
    """``n`` job folders under ``root``; returns (bytes written, slurm logs)."""
    files = corpus()
    log = corpus_file("slurm/slurm_stderr_user_cancelled.e")
    turn = {"crystal": 0, "qe": 0}
    size = logs = 0
    for i in range(n):
        material, suffix = divmod(i, len(SUFFIXES))
        code = "crystal" if material % 3 else "qe"  # about the corpus' own mix
        source = files[code][turn[code] % len(files[code])]
        turn[code] += 1
        name = f"mat_{material}_{SUFFIXES[suffix]}"
        folder = root / name
        folder.mkdir(parents=True)
        shutil.copyfile(source, folder / f"{name}.out")
        size += source.stat().st_size
        if i % 10 == 0 and log is not None:
            shutil.copyfile(log, folder / f"slurm-{7_000_000 + i}.out")
            logs += 1
    return size, logs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="job folders (default 10000)")
    parser.add_argument("--workers", type=int, default=2, help="parser processes (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 400 folders (the rate is then not meaningful)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the generated tree")
    args = parser.parse_args()
    if args.quick:
        args.n = min(args.n, 400)
    scratch = Path(tempfile.mkdtemp(prefix="eventflow-bench-import-"))
    try:
        tree = scratch / "tree"
        started = time.perf_counter()
        size, logs = generate(tree, args.n)
        made = time.perf_counter() - started
        print(f"generated {args.n} folders ({size / 1e9:.2f} GB, {logs} slurm logs) "
              f"in {made:.1f} s under {scratch}")
        tracker = Tracker.init(scratch / "proj")
        options = ImportOptions(tree, workers=args.workers, use_queue=False)
        started = time.perf_counter()
        report = run_import(tracker, options)
        wall = time.perf_counter() - started
        started = time.perf_counter()
        again = run_import(tracker, options)
        wall_again = time.perf_counter() - started
        tracker.close()
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    calcs = len(report.calculations)
    rate = calcs / wall
    rows = [
        ("calculations imported", f"{calcs:,}"),
        ("events appended", f"{report.events:,}"),
        ("materials", f"{report.materials:,}"),
        ("skipped / ignored files", f"{len(report.skipped)} / {len(report.ignored)}"),
        *((f"stage: {k}", f"{v:.2f} s") for k, v in report.timings.items()),
        ("wall time", f"{wall:.2f} s"),
        ("rate (goal >= 100/s)", f"{rate:,.0f} calculations/s — "
                                 f"{'met' if rate >= GOAL else '**not met**'}"),
        ("second import: events / unchanged",
         f"{again.events} / {again.unchanged:,} in {wall_again:.2f} s"),
        *((f"second import stage: {k}", f"{v:.2f} s") for k, v in again.timings.items()),
    ]
    print(f"\n### Import of {args.n:,} job folders, {args.workers} parser processes\n")
    print("| measure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\nPython {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPUs; outputs {size / args.n / 1e3:.0f} kB on average.")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "n": args.n, "workers": args.workers, "calculations": calcs, "wall_s": wall,
            "rate": rate, "goal": GOAL, "met": rate >= GOAL, "timings_s": report.timings,
            "events": report.events, "second_events": again.events,
            "second_wall_s": wall_again, "second_timings_s": again.timings,
        }, indent=2) + "\n")
    return 0 if rate >= GOAL and again.events == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
