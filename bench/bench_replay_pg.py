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
import os
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
ES_LOADED = 50_000  # the first events of the history, saved through eventsourcing
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


def child_eventflow(url: str, jobs: int | None = None) -> dict[str, float]:
    from eventflow.shell.projections_pg import PostgresProjections
    from eventflow.shell.store import open_store

    with open_store(url) as store:
        views = PostgresProjections(url, create=True)
        t0 = time.perf_counter()
        last = views.rebuild(store, jobs=jobs)
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


def child_raw_stream(url: str) -> dict[str, float]:
    """The same, read as eventflow reads a replay: streamed in chunks of 2,000 rows."""
    loads = json.loads
    with psycopg.connect(url) as db:
        t0 = time.perf_counter()
        n = 0
        sql = f"SELECT {FOLD_COLUMNS} FROM events ORDER BY seq"
        for row in db.cursor().stream(sql, size=2000):
            loads(row[5])
            n += 1
        seconds = time.perf_counter() - t0
    return {"events": n, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def child_eventflow_1(url: str) -> dict[str, float]:
    return child_eventflow(url, jobs=1)


CHILDREN = {"eventflow": child_eventflow, "eventflow-1": child_eventflow_1,
            "fold": child_fold, "raw": child_raw, "raw-stream": child_raw_stream}


# -- the eventsourcing library on the same server ---------------------------------------------

def es_env(url: str, schema: str) -> dict[str, str]:
    """eventsourcing's settings for the server of ``url``, in ``schema``."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", "IS_SNAPSHOTTING_ENABLED": "no",
            "POSTGRES_DBNAME": str(info.get("dbname", "")),
            "POSTGRES_HOST": str(info.get("host", "")),
            "POSTGRES_PORT": str(info.get("port", "5432")),
            "POSTGRES_USER": str(info.get("user", "")),
            "POSTGRES_PASSWORD": str(info.get("password", "")), "POSTGRES_SCHEMA": schema}


def _es_pg_sql(sql: str) -> str:
    """bench_eventsourcing's SQLite statements for the same tables, in PostgreSQL's words."""
    sql = sql.replace("?", "%s")
    if sql.startswith("INSERT OR REPLACE INTO properties"):
        sql = (sql.replace("INSERT OR REPLACE", "INSERT")
               + " ON CONFLICT (material_id, calculation_id, name) DO UPDATE"
                 " SET value = excluded.value, unit = excluded.unit")
    return sql


def es_load(url: str, schema: str, n_materials: int, n_events: int, n_load: int) -> float:
    """The first ``n_load`` events of the history saved through an eventsourcing Application
    (100 per save, as bench_eventsourcing); returns events/s."""
    from itertools import islice

    from bench_eventsourcing import EsWriter, Materials
    from make_project import batches, generate

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        db.execute(f"CREATE SCHEMA {schema}")
    writer = EsWriter(Materials(env=es_env(url, schema)))
    t0 = time.perf_counter()
    for group in batches(islice(generate(n_materials, n_events), n_load), 100):
        writer.save(group)
    seconds = time.perf_counter() - t0
    assert writer.app.recorder.max_notification_id() == n_load
    writer.app.close()
    return n_load / seconds


def child_es_memory(url: str, schema: str, n: int) -> dict[str, float]:
    """eventsourcing's replay without tables: its recorder read in log order (pages of 1,000),
    each stored event mapped back and ``mutate``d into its aggregate (bench_eventsourcing's
    ``es_replay``)."""
    from bench_eventsourcing import Materials, es_replay

    app = Materials(env=es_env(url, schema))
    t0 = time.perf_counter()
    assert es_replay(app) == n
    seconds = time.perf_counter() - t0
    app.close()
    return {"events": n, "seconds": seconds}


def child_es_projection(url: str, schema: str, view_schema: str, n: int) -> dict[str, float]:
    """eventsourcing's projection of its first ``n`` events into the four tables, one
    transaction per event with its Tracking record (bench_eventsourcing's method)."""
    from bench_eventsourcing import _VIEW_TABLES, Materials, _view_statements
    from eventsourcing.persistence import Tracking
    from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
    from eventsourcing.projection import Projection
    from psycopg.sql import SQL

    class MaterialsView(PostgresTrackingRecorder):
        def __init__(self, datastore: PostgresDatastore) -> None:
            super().__init__(datastore)
            self.sql_create_statements += [
                SQL(sql.replace("value,", "value NUMERIC,"))  # noqa: S608 - our constants
                for sql in _VIEW_TABLES]

        def apply(self, statements: list[tuple[str, tuple]], tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as c:
                for sql, args in statements:
                    c.execute(_es_pg_sql(sql), args)
                self._insert_tracking(c, tracking)

    class MaterialsProjection(Projection[MaterialsView]):
        def process_event(self, domain_event: object, tracking: Tracking) -> None:
            self.view.apply(_view_statements(
                str(domain_event.originator_id), domain_event.kind, domain_event.data,
                str(domain_event.timestamp)), tracking)

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"DROP SCHEMA IF EXISTS {view_schema} CASCADE")
        db.execute(f"CREATE SCHEMA {view_schema}")
    # the view's unqualified table names resolve in view_schema (search_path, set by the caller)
    assert os.environ.get("PGOPTIONS", "").endswith(f"search_path={view_schema}")
    app = Materials(env=es_env(url, schema))
    env = es_env(url, view_schema)
    datastore = PostgresDatastore(env["POSTGRES_DBNAME"], env["POSTGRES_HOST"],
                                  env["POSTGRES_PORT"], env["POSTGRES_USER"],
                                  env["POSTGRES_PASSWORD"], schema=view_schema)
    view = MaterialsView(datastore)
    view.create_table()
    projection = MaterialsProjection(view)
    recorder, mapper = app.recorder, app.mapper
    t0 = time.perf_counter()
    start, done = 1, 0
    while done < n:
        page = recorder.select_notifications(start, min(1000, n - done))
        if not page:
            break
        for notification in page:
            projection.process_event(mapper.to_domain_event(notification),
                                     Tracking(app.name, notification.id))
            done += 1
        start = page[-1].id + 1
    seconds = time.perf_counter() - t0
    assert view.max_tracking_id(app.name) == n == done
    with datastore.transaction(commit=False) as c:
        c.execute("SHOW synchronous_commit")
        sync = c.fetchone()["synchronous_commit"]
        c.execute("SELECT count(*) AS n FROM materials")  # the view's own tables, in its schema
        assert c.fetchone()["n"] > 0
    datastore.close()
    app.close()
    return {"events": n, "seconds": seconds, "synchronous_commit": sync}


def run_child(kind: str, url: str, *extra: str, env: dict[str, str] | None = None
              ) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--url", url, *extra],
                         capture_output=True, text=True, check=False,
                         env={**os.environ, **(env or {})})
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
    parser.add_argument("--child", choices=[*CHILDREN, "es-projection", "es-memory"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--es", nargs=3, help=argparse.SUPPRESS)


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0], extra_args)
    url = args.url or subprocess.run([str(REPO / "scripts" / "local-postgres"), "url"],
                                     capture_output=True, text=True,
                                     check=True).stdout.strip()
    if args.child == "es-memory":
        schema, _, n = args.es
        print(json.dumps(child_es_memory(url, schema, int(n))))
        return 0
    if args.child == "es-projection":
        schema, view_schema, n = args.es
        print(json.dumps(child_es_projection(url, schema, view_schema, int(n))))
        return 0
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
        es_schema, es_view = "eventflow_bench_es_log", "eventflow_bench_es_view"
        n_projected = 500 if args.quick else ES_PROJECTED
        n_loaded = 2_000 if args.quick else ES_LOADED
        es_save = es_load(url, es_schema, n_materials, n_events, n_loaded)
        es_runs: dict[str, list[dict[str, float]]] = {"off": [], "on": [], "memory": []}
        for _ in range(rounds):
            es_runs["memory"].append(run_child("es-memory", url, "--es", es_schema, "-",
                                               str(n_loaded)))
            for sync in ("off", "on"):
                es_runs[sync].append(run_child(
                    "es-projection", url, "--es", es_schema, es_view, str(n_projected),
                    env={"PGOPTIONS": f"-c synchronous_commit={sync} -c search_path={es_view}"}))
                print(f"eventsourcing projection, synchronous_commit={sync}: "
                      f"{es_runs[sync][-1]}", file=sys.stderr, flush=True)
    finally:
        with psycopg.connect(url, autocommit=True) as db:
            for name in ("eventflow_bench_es_log", "eventflow_bench_es_view"):
                db.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
            if args.drop:
                db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    def rate(kind: str) -> float:
        return n_events / median([x["seconds"] for x in runs[kind]])

    ef, serial, fold = rate("eventflow"), rate("eventflow-1"), rate("fold")
    raw_plain, raw_stream = rate("raw"), rate("raw-stream")
    raw = max(raw_plain, raw_stream)  # the faster way to read: the stricter baseline
    raw_name = ("raw psycopg SELECT + json.loads"
                + (", streamed" if raw_stream >= raw_plain else ""))
    es_off = n_projected / median([x["seconds"] for x in es_runs["off"]])
    es_on = n_projected / median([x["seconds"] for x in es_runs["on"]])
    es_memory = n_loaded / median([x["seconds"] for x in es_runs["memory"]])
    assert [x["synchronous_commit"] for x in es_runs["off"]] == ["off"] * rounds
    assert all(x["events"] == n_events for xs in runs.values() for x in xs)
    assert all(x["materials"] == n_materials for k in ("eventflow", "eventflow-1", "fold")
               for x in runs[k])
    rss = max(x["peak_rss_mb"] for x in runs["eventflow"])
    raw_rss = max(x["peak_rss_mb"] for x in runs["raw"])
    results = [
        Result(f"replay {n_events:,} events of {n_materials:,} materials from PostgreSQL into "
               "the projection tables beside the log (`eventflow replay`)", ef, raw,
               raw_name, ">= 0.7x raw", ef / raw >= 0.7,
               note=f"peak RSS {rss:,.0f} MB (raw: {raw_rss:,.0f} MB)"),
        Result("  the same in one process (`--workers 1`)", serial, raw, raw_name,
               "(information)", None),
        Result("  decode + checked fold only, in log order, states kept in memory (`fold_log`)",
               fold, raw, raw_name, "(information)", None),
        Result("  the replay vs the raw loop reading all rows at once (not streamed)", ef,
               raw_plain, "raw psycopg SELECT + json.loads", "(information)", None),
        Result(f"replay into the projection tables: eventflow (all {n_events:,}) vs "
               f"eventsourcing's PostgreSQL persistence, Projection.process_event over its "
               f"first {n_projected:,}, synchronous_commit=off", ef, es_off,
               "eventsourcing", ">= 5x", ef / es_off >= 5),
        Result("  the same, eventsourcing at the server's default synchronous_commit=on", ef,
               es_on, "eventsourcing", "(information)", None),
        Result(f"replay in memory, no tables: eventflow decode + checked fold (`fold_log`, "
               f"all {n_events:,}) vs eventsourcing mapper + mutate (its first {n_loaded:,})",
               fold, es_memory, "eventsourcing", "(information)", None),
        Result(f"  (eventsourcing saving those {n_loaded:,} events, 100 per save: "
               "information)", es_save, None, "", "(information)", None),
    ]
    print_table("Replay from PostgreSQL (bench/bench_replay_pg.py)", results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
