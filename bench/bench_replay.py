"""Replay: rebuilding every projection from the log, against raw sqlite3 reading the same rows.

eventflow: ``Projections.rebuild`` on a fresh projections.db, as ``eventflow replay`` runs
it (shell/replay.py): read each material's stream, decode every event into its class, fold
it into the material's state (checked against both lifecycles), write the materials,
calculations, properties and errors rows into a scratch database, build the indexes, and
copy it into projections.db; for a big log, in one process per core (up to 4). Also timed
alone: the same in one process, and the in-memory fold (``fold_log``). Baseline: raw
sqlite3 ``SELECT`` of the same columns of the same rows, in log order, and ``json.loads``
of each event's data (nothing else).

The log (default 1,000,000 events of 100,000 materials, the realistic mix of
bench/make_project.py) is generated once and cached under the temp folder. Each
contestant runs in its own process (so its peak memory is its own), alternating, after
one read of the file to warm the page cache. Usage:
``python bench/bench_replay.py [--quick] [--events N --materials M] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Result, median, parse_args, peak_rss_mb, print_table
from make_project import cached_log


def child_eventflow(log: Path, jobs: int | None) -> dict[str, float]:
    """``Projections.rebuild``, as ``eventflow replay`` runs it (``jobs=None``: its default)."""
    import resource

    from eventflow.shell.projections import Projections
    from eventflow.shell.replay import default_jobs
    from eventflow.shell.store import EventStore

    with tempfile.TemporaryDirectory(prefix="eventflow-bench-replay-") as tmp:
        store = EventStore(log)
        views = Projections(Path(tmp) / "projections.db", create=True)
        t0 = time.perf_counter()
        last = views.rebuild(store, jobs=jobs)
        seconds = time.perf_counter() - t0
        materials = views.db.execute("SELECT count(*) FROM materials").fetchone()[0]
        views.close()
        store.close()
    return {"events": last, "seconds": seconds, "materials": materials,
            "jobs": jobs or default_jobs(last), "peak_rss_mb": peak_rss_mb(),
            "workers_peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN)}


def child_fold(log: Path) -> dict[str, float]:
    """``fold_log``: decode and checked fold of the whole log in log order, in memory."""
    from eventflow.shell.projections import fold_log
    from eventflow.shell.store import EventStore

    store = EventStore(log)
    t0 = time.perf_counter()
    states, last = fold_log(store)
    seconds = time.perf_counter() - t0
    store.close()
    return {"events": last, "seconds": seconds, "materials": len(states),
            "peak_rss_mb": peak_rss_mb()}


def child_raw(log: Path, loads_name: str) -> dict[str, float]:
    import sqlite3

    from eventflow.shell.store import FOLD_COLUMNS

    if loads_name == "orjson":
        import orjson

        loads = orjson.loads
    else:
        loads = json.loads
    db = sqlite3.connect(log)
    t0 = time.perf_counter()
    n = 0
    for row in db.execute(f"SELECT {FOLD_COLUMNS} FROM events ORDER BY seq"):
        loads(row[5])
        n += 1
    seconds = time.perf_counter() - t0
    db.close()
    return {"events": n, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def run_child(kind: str, log: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--log", str(log)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"replay child {kind} failed:\n{out.stderr}")
    return json.loads(out.stdout)


KINDS = ("eventflow", "eventflow-1", "fold", "raw-json", "raw-orjson")


def extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int)
    parser.add_argument("--materials", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--child", choices=list(KINDS),
                        help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0], extra_args)
    if args.child:
        if args.child == "eventflow":
            result = child_eventflow(args.log, None)
        elif args.child == "eventflow-1":
            result = child_eventflow(args.log, 1)
        elif args.child == "fold":
            result = child_fold(args.log)
        else:
            result = child_raw(args.log, args.child.removeprefix("raw-"))
        print(json.dumps(result))
        return 0
    n_events = args.events or (20_000 if args.quick else 1_000_000)
    n_materials = args.materials or max(2, n_events // 10)
    rounds = args.rounds or (1 if args.quick else 3)
    log = cached_log(n_materials, n_events)
    with log.open("rb") as handle:  # warm the page cache: every contestant reads from memory
        while handle.read(1 << 24):
            pass
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for r in range(rounds):
        kinds = list(runs) if r % 2 == 0 else list(reversed(runs))
        for kind in kinds:
            runs[kind].append(run_child(kind, log))
            print(f"round {r + 1} {kind}: {runs[kind][-1]}", file=sys.stderr, flush=True)

    def rate(kind: str) -> float:
        return n_events / median([x["seconds"] for x in runs[kind]])

    ef, serial, fold = rate("eventflow"), rate("eventflow-1"), rate("fold")
    raw, raw_orjson = rate("raw-json"), rate("raw-orjson")
    jobs = runs["eventflow"][0]["jobs"]
    rss = max(x["peak_rss_mb"] for x in runs["eventflow"])
    workers_rss = max(x["workers_peak_rss_mb"] for x in runs["eventflow"])
    serial_rss = max(x["peak_rss_mb"] for x in runs["eventflow-1"])
    fold_rss = max(x["peak_rss_mb"] for x in runs["fold"])
    raw_rss = max(x["peak_rss_mb"] for x in runs["raw-json"])
    assert all(x["events"] == n_events for xs in runs.values() for x in xs)
    assert all(x["materials"] == n_materials for k in ("eventflow", "eventflow-1", "fold")
               for x in runs[k])
    results = [
        Result(f"replay {n_events:,} events of {n_materials:,} materials into all projections "
               f"(`eventflow replay`: {jobs} process{'es' if jobs > 1 else ''})",
               ef, raw, "raw SELECT + json.loads", ">= 100,000/s and >= 0.7x raw",
               ef >= 100_000 and ef / raw >= 0.7,
               note=f"peak RSS {rss:,.0f} MB"
                    + (f", each worker at most {workers_rss:,.0f} MB" if jobs > 1 else "")
                    + f" (raw: {raw_rss:,.0f} MB)"),
        Result("  the same in one process (`--workers 1`)", serial, raw,
               "raw SELECT + json.loads", "(information)", None,
               note=f"peak RSS {serial_rss:,.0f} MB"),
        Result("  decode + checked fold only, in log order, states kept in memory (`fold_log`)",
               fold, raw, "raw SELECT + json.loads", "(information)", None,
               note=f"peak RSS {fold_rss:,.0f} MB"),
        Result("replay vs raw SELECT + orjson.loads", ef, raw_orjson, "raw SELECT + orjson.loads",
               "(information)", None),
    ]
    print_table("Replay (bench/bench_replay.py)", results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
