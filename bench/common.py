"""Helpers shared by the event-log benchmarks: timing, raw-SQLite baselines, the result table.

Every benchmark measures eventflow and its baseline in the same run, alternating
them in rounds (these machines are noisy: a slow minute then hits both), and
prints one table: workload, eventflow rate, baseline rate, ratio, goal, met.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from eventflow.shell.store import GENESIS, SCHEMA, canonical


@dataclass
class Result:
    """One row of a benchmark's table. Rates are per second unless ``unit`` says otherwise."""

    workload: str
    eventflow: float
    baseline: float | None
    baseline_name: str
    goal: str
    met: bool | None
    unit: str = "events/s"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.baseline:
            return None
        if self.unit in ("ms", "s"):  # times: lower is better, ratio = baseline / eventflow
            return self.baseline / self.eventflow if self.eventflow else None
        return self.eventflow / self.baseline


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run with small sizes (numbers not meaningful)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the results to FILE as JSON")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "s"):
        return f"{value:,.1f} {unit}" if value >= 10 else f"{value:,.2f} {unit}"
    return f"{value:,.0f}"


def print_table(title: str, results: Sequence[Result], json_path: Path | None = None) -> None:
    """A Markdown table (readable in a terminal and pasteable into docs/benchmarks.md)."""
    print(f"\n### {title}\n")
    print("| workload | eventflow | baseline | ratio | goal | met |")
    print("|---|---:|---:|---:|---|---|")
    for r in results:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        base = f"{fmt(r.baseline, r.unit)} ({r.baseline_name})" if r.baseline_name else "-"
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        note = f" — {r.note}" if r.note else ""
        print(f"| {r.workload}{note} | {fmt(r.eventflow, r.unit)} | {base} | {ratio} | "
              f"{r.goal} | {met} |")
    print(f"\nRates in events/s, times as marked. Ratio = eventflow rate / baseline rate; "
          f"for times, baseline time / eventflow time: either way > 1 means eventflow is "
          f"faster. Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPUs.")
    if json_path is not None:
        json_path.write_text(json.dumps([{**asdict(r), "ratio": r.ratio} for r in results],
                                        indent=2) + "\n")
    sys.stdout.flush()


def alternate(funcs: Sequence[Callable[[], Any]], rounds: int) -> list[list[float]]:
    """Run each function once per round, in turn, and return each one's times (seconds).

    Alternating means a noisy stretch of time slows every contestant, not just one.
    """
    times: list[list[float]] = [[] for _ in funcs]
    for r in range(rounds):
        order = range(len(funcs)) if r % 2 == 0 else reversed(range(len(funcs)))
        for i in order:
            t0 = time.perf_counter()
            funcs[i]()
            times[i].append(time.perf_counter() - t0)
    return times


def best_of(function: Callable[[], Any], rounds: int) -> float:
    """The fastest of ``rounds`` runs of ``function`` (seconds)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or, with RUSAGE_CHILDREN, of the largest of its
    finished children) in MB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(who).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def remove_db(path: Path) -> None:
    for extra in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        extra.unlink(missing_ok=True)


# --- raw sqlite3: the baselines, with the event log's own schema ----------------------------


class RawLog:
    """What a hand-written sqlite3 program would do with eventflow's schema: no objects,
    sequence numbers, versions and the previous hash kept in memory (no lookups)."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        remove_db(path)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute(f"PRAGMA synchronous = {synchronous}")
        self.db.executescript(SCHEMA)
        self.seq = 0
        self.prev = GENESIS
        self.versions: dict[str, int] = {}

    def row(self, stream: str, type_: str, sv: int, data: dict[str, Any], meta: str,
            at: str) -> tuple[Any, ...]:
        """One row: canonical JSON of the data and the chained sha256, as the log stores it."""
        self.seq += 1
        version = self.versions[stream] = self.versions.get(stream, 0) + 1
        data_json = canonical(data).decode()
        content = canonical([self.seq, stream, version, type_, sv, data_json, meta, at, None])
        self.prev = hashlib.sha256(self.prev.encode() + content).hexdigest()
        return (self.seq, stream, version, type_, sv, data_json, meta, at, None, self.prev)

    def insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        if len(rows) == 1:
            db.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows[0])
        else:
            db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


def meta_json() -> str:
    return orjson.dumps({"actor": "bench", "host": "bench-host", "pid": os.getpid()},
                        option=orjson.OPT_SORT_KEYS).decode()
