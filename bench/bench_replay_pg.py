"""Replay from a PostgreSQL log into the projection tables beside it, against raw psycopg
reading the same rows, and against the ``eventsourcing`` library's PostgreSQL persistence.

eventflow: ``PostgresProjections.rebuild``, as ``eventflow replay`` runs it on a project whose
log is on the server (shell/projections_pg.py): read each material's stream in order, decode
every event into its class, fold it into the material's state (checked against both
lifecycles), COPY the materials, calculations, properties and errors rows into new tables,
build their indexes, and swap them in for the old ones; one transaction. Also timed alone: the
in-memory fold (``fold_log``) from the server. Baseline: raw psycopg ``SELECT`` of the same
columns of the same rows in log order, and ``json.loads`` of each event's data (nothing else).

eventsourcing (``PERSISTENCE_MODULE=eventsourcing.postgres``, its own schema on the same
server): the same events saved through an ``Application`` (one ``Material`` aggregate per
material, as bench/bench_eventsourcing.py), then replayed the library's way into the same
four tables: a ``Projection`` whose view is a ``PostgresTrackingRecorder``; ``process_event``
writes an event's rows and its ``Tracking`` record in one transaction (its exactly-once
design), fed the notifications in order as its subscription would (the SQLite bench's
method). One transaction per event makes it slow, so it replays the first events only (rates
are compared). Its sessions get ``synchronous_commit=off`` (no wait for the WAL flush per
commit: the kindest setting for it); the default (``on``) is timed too, for information.

The log (default 1,000,000 events of 100,000 materials, bench/make_project.py's mix, the
history of bench/bench_replay.py) is copied once into a schema of its own on the server
(``eventflow_bench_…``) and kept for the next runs (drop it with ``--drop``). Each
contestant runs in its own process, alternating. Usage:
``python bench/bench_replay_pg.py [--quick] [--url URL] [--events N --materials M]
[--rounds R] [--drop]`` (default URL: scripts/local-postgres's server).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from common import Result, median, parse_args, peak_rss_mb, print_table
from make_project import GENERATOR_VERSION, cached_log

from eventflow.shell.store import FOLD_COLUMNS

REPO = Path(__file__).resolve().parents[1]
ES_PROJECTED = 5_000  # events eventsourcing's projection replays (one transaction each)


def in_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def load_log(url: str, schema: str, log: Path, n_events: int) -> None:
    """The cached SQLite log's rows, copied as they are into ``schema`` (once)."""
    from eventflow.shell.store import open_store

    with psycopg.connect(url, autocommit=True) as db:
        there = db.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.events",))
        if there.fetchone()[0] and db.execute(
                f"SELECT max(seq) FROM {schema}.events").fetchone()[0] == n_events:
            return
        print(f"copying {log} into schema {schema} (kept for the next runs)...",
              file=sys.stderr, flush=True)
        db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        db.execute(f"CREATE SCHEMA {schema}")
        open_store(in_schema(url, schema), create=True).close()
        source = sqlite3.connect(log)
        with db.transaction(), db.cursor().copy(f"COPY {schema}.events FROM STDIN") as copy:
            for row in source.execute("SELECT * FROM events ORDER BY seq"):
                copy.write_row(row)
        source.close()
        db.execute(f"VACUUM ANALYZE {schema}.events")


def child_eventflow(url: str) -> dict[str, float]:
    from eventflow.shell.projections_pg import PostgresProjections
    from eventflow.shell.store import open_store

    with open_store(url) as store:
        views = PostgresProjections(url, create=True)
        t0 = time.perf_counter()
        last = views.rebuild(store)
        seconds = time.perf_counter() - t0
        materials = views.db.execute("SELECT count(*) FROM materials").fetchone()[0]
        views.close()
    return {"events": last, "seconds": seconds, "materials": materials,
            "peak_rss_mb": peak_rss_mb()}


def child_fold(url: str) -> dict[str, float]:
    from eventflow.shell.projections import fold_log
    from eventflow.shell.store import open_store

    with open_store(url) as store:
        t0 = time.perf_counter()
        states, last = fold_log(store)
        seconds = time.perf_counter() - t0
    return {"events": last, "seconds": seconds, "materials": len(states),
            "peak_rss_mb": peak_rss_mb()}


def child_raw(url: str) -> dict[str, float]:
    loads = json.loads
    with psycopg.connect(url) as db:
        t0 = time.perf_counter()
        n = 0
        for row in db.execute(f"SELECT {FOLD_COLUMNS} FROM events ORDER BY seq"):
            loads(row[5])
            n += 1
        seconds = time.perf_counter() - t0
    return {"events": n, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


CHILDREN = {"eventflow": child_eventflow, "fold": child_fold, "raw": child_raw}


def run_child(kind: str, url: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--url", url],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"replay child {kind} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the server (default: scripts/local-postgres's)")
    parser.add_argument("--events", type=int)
    parser.add_argument("--materials", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--drop", action="store_true",
                        help="drop the cached schemas on the server afterwards")
    parser.add_argument("--child", choices=[*CHILDREN, "es"], help=argparse.SUPPRESS)


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0], extra_args)
    url = args.url or subprocess.run([str(REPO / "scripts" / "local-postgres"), "url"],
                                     capture_output=True, text=True,
                                     check=True).stdout.strip()
    if args.child:
        print(json.dumps(CHILDREN[args.child](url)))
        return 0
    n_events = args.events or (20_000 if args.quick else 1_000_000)
    n_materials = args.materials or max(2, n_events // 10)
    rounds = args.rounds or (1 if args.quick else 3)
    schema = f"eventflow_bench_v{GENERATOR_VERSION}_{n_materials}m_{n_events}e"
    load_log(url, schema, cached_log(n_materials, n_events), n_events)
    log_url = in_schema(url, schema)
    try:
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in CHILDREN}
        for r in range(rounds):
            kinds = list(runs) if r % 2 == 0 else list(reversed(runs))
            for kind in kinds:
                runs[kind].append(run_child(kind, log_url))
                print(f"round {r + 1} {kind}: {runs[kind][-1]}", file=sys.stderr, flush=True)
    finally:
        if args.drop:
            with psycopg.connect(url, autocommit=True) as db:
                db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    def rate(kind: str) -> float:
        return n_events / median([x["seconds"] for x in runs[kind]])

    ef, fold, raw = rate("eventflow"), rate("fold"), rate("raw")
    assert all(x["events"] == n_events for xs in runs.values() for x in xs)
    assert all(x["materials"] == n_materials for k in ("eventflow", "fold") for x in runs[k])
    rss = max(x["peak_rss_mb"] for x in runs["eventflow"])
    raw_rss = max(x["peak_rss_mb"] for x in runs["raw"])
    results = [
        Result(f"replay {n_events:,} events of {n_materials:,} materials from PostgreSQL into "
               "the projection tables beside the log (`eventflow replay`)", ef, raw,
               "raw psycopg SELECT + json.loads", ">= 0.7x raw", ef / raw >= 0.7,
               note=f"peak RSS {rss:,.0f} MB (raw: {raw_rss:,.0f} MB)"),
        Result("  decode + checked fold only, in log order, states kept in memory (`fold_log`)",
               fold, raw, "raw psycopg SELECT + json.loads", "(information)", None),
    ]
    print_table("Replay from PostgreSQL (bench/bench_replay_pg.py)", results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
