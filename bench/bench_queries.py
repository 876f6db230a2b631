"""Queries: ``status`` and ``show``, in-process and as whole ``eventflow`` processes.

In-process (a project of 100,000 materials, 1,000,000 events), timing what the CLI
commands do before printing:

* status: ``catch_up`` + ``materials()`` (every material as a dict) + ``state_counts()``
  + ``last_seq()``; baseline: raw sqlite3 running the same two SELECTs (rows as tuples).
  Also the summary alone (``state_counts``), which is what a 100,000-row table boils down to.
* show: one material with 1,000 events: ``catch_up`` + its material, calculation,
  property and error rows + its history decoded (``store.read(stream=...)`` and the
  CLI's event dicts); baseline: raw sqlite3 SELECTs of the same rows + ``json.loads``.

As processes (a project of 10,000 materials, 100,000 events): ``eventflow status --json``
and ``eventflow show MATERIAL`` (a typical material, and the 1,000-event one), wall time
from start to exit; baseline: a ``python`` process doing the same queries with raw
sqlite3 and printing the same amount.

Projects are generated once and cached under the temp folder. Usage:
``python bench/bench_queries.py [--quick]``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import Result, alternate, median, parse_args, print_table
from make_project import HEAVY, cached_project

from eventflow.shell.api import Tracker
from eventflow.shell.cli import _event_dict


def in_process(project: Path, repeats: int) -> list[Result]:
    tracker = Tracker.open(project)
    views, store = tracker.projections, tracker.store
    raw_views = sqlite3.connect(views.path)
    raw_log = sqlite3.connect(store.path)

    def status() -> None:
        views.catch_up(store)
        rows = views.materials(None)
        views.state_counts()
        views.last_seq()
        assert rows

    def raw_status() -> None:
        rows = raw_views.execute("SELECT * FROM materials ORDER BY id").fetchall()
        raw_views.execute("SELECT state, count(*) FROM materials GROUP BY state").fetchall()
        assert rows

    def status_table() -> None:
        views.catch_up(store)
        views.state_counts()
        rows = views.materials(None, limit=100)
        views.last_seq()
        assert len(rows) == 100

    def raw_status_table() -> None:
        raw_views.execute("SELECT state, count(*) FROM materials GROUP BY state").fetchall()
        rows = raw_views.execute("SELECT * FROM materials ORDER BY id LIMIT 100").fetchall()
        assert rows

    def counts() -> None:
        views.catch_up(store)
        views.state_counts()
        views.last_seq()

    def raw_counts() -> None:
        raw_views.execute("SELECT state, count(*) FROM materials GROUP BY state").fetchall()

    def show() -> None:
        views.catch_up(store)
        views.material(HEAVY)
        views.calculations(HEAVY)
        views.properties(HEAVY)
        views.errors(HEAVY)
        history = [_event_dict(r) for r in store.read(stream=HEAVY)]
        assert len(history) == 1000

    def raw_show() -> None:
        raw_views.execute("SELECT * FROM materials WHERE id = ?", (HEAVY,)).fetchall()
        for table in ("calculations", "properties", "errors"):
            raw_views.execute(f"SELECT * FROM {table} WHERE material_id = ?",  # noqa: S608
                              (HEAVY,)).fetchall()
        history = [
            (json.loads(data), json.loads(meta))
            for data, meta in raw_log.execute(
                "SELECT data, meta FROM events WHERE stream = ? ORDER BY seq", (HEAVY,))
        ]
        assert len(history) == 1000

    n = views.db.execute("SELECT count(*) FROM materials").fetchone()[0]
    results = []
    for label, ef, raw, goal_ms in (
        (f"status query as `eventflow status` runs it: counts + the first 100 of {n:,} "
         "materials by priority (in-process)", status_table, raw_status_table, 100),
        (f"status query, all {n:,} materials as dicts (`status --all`/`--json`, in-process)",
         status, raw_status, 100),
        (f"status summary: counts by state of {n:,} materials (in-process)", counts, raw_counts,
         100),
        ("show one material with 1,000 events (in-process)", show, raw_show, 50),
    ):
        t_ef, t_raw = alternate([ef, raw], repeats)
        ms, raw_ms = median(t_ef) * 1000, median(t_raw) * 1000
        results.append(Result(label, ms, raw_ms, "raw sqlite3", f"< {goal_ms} ms",
                              ms < goal_ms, unit="ms"))
    tracker.close()
    return results


def eventflow_command() -> list[str]:
    """The installed ``eventflow`` script beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("eventflow")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "eventflow.shell.cli"]


_RAW_STATUS = """
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
cur = db.execute("SELECT * FROM materials ORDER BY id")
names = [d[0] for d in cur.description]
rows = [dict(zip(names, r)) for r in cur]
counts = dict(db.execute("SELECT state, count(*) FROM materials GROUP BY state"))
sys.stdout.write(json.dumps({"materials": rows, "counts": counts}, indent=2, sort_keys=True))
"""

_RAW_SHOW = """
import json, sqlite3, sys
views, log, mid = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2]), sys.argv[3]
print(views.execute("SELECT * FROM materials WHERE id = ?", (mid,)).fetchall())
for table in ("calculations", "properties", "errors"):
    for row in views.execute(f"SELECT * FROM {table} WHERE material_id = ?", (mid,)):
        print(row)
for seq, type_, data, at in log.execute(
        "SELECT seq, type, data, recorded_at FROM events WHERE stream = ? ORDER BY seq", (mid,)):
    print(seq, at, type_, json.loads(data))
"""


def as_processes(project: Path, repeats: int) -> list[Result]:
    state = project / ".eventflow"
    views, log = str(state / "projections.db"), str(state / "events.db")
    base = [*eventflow_command(), "--project", str(project)]

    def run(argv: list[str]) -> Callable[[], None]:
        def go() -> None:
            out = subprocess.run(argv, capture_output=True, check=False)
            if out.returncode != 0:
                raise SystemExit(f"{argv} failed: {out.stderr.decode()}")
        return go

    n = sqlite3.connect(views).execute("SELECT count(*) FROM materials").fetchone()[0]
    typical = "mp-000001"
    cases = (
        (f"`eventflow status --json`, {n:,} materials (process)", [*base, "status", "--json"],
         [sys.executable, "-c", _RAW_STATUS, views], 500),
        (f"`eventflow show {typical}`, {n:,} materials (process)", [*base, "show", typical],
         [sys.executable, "-c", _RAW_SHOW, views, log, typical], 300),
        (f"`eventflow show {HEAVY}` (1,000 events), {n:,} materials (process)",
         [*base, "show", HEAVY], [sys.executable, "-c", _RAW_SHOW, views, log, HEAVY], 300),
    )
    results = []
    run(cases[0][1])()  # warm the page cache and the .pyc files
    for label, argv, raw_argv, goal_ms in cases:
        t_ef, t_raw = alternate([run(argv), run(raw_argv)], repeats)
        ms, raw_ms = median(t_ef) * 1000, median(t_raw) * 1000
        results.append(Result(label, ms, raw_ms, "python + raw sqlite3", f"< {goal_ms} ms",
                              ms < goal_ms, unit="ms"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    startup = (time.perf_counter() - t0) * 1000
    results[-1].note = f"bare `python -c pass` here: {startup:.0f} ms"
    return results


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0])
    big = (2_000, 20_000) if args.quick else (100_000, 1_000_000)
    small = (1_000, 10_000) if args.quick else (10_000, 100_000)
    repeats = 3 if args.quick else 11
    results = in_process(cached_project(*big), repeats)
    results += as_processes(cached_project(*small), 3 if args.quick else 7)
    print_table("Queries (bench/bench_queries.py)", results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
