"""The event log on PostgreSQL against raw psycopg doing the same INSERTs, in one run.

``python bench/bench_postgres.py [--quick] [--url URL]`` (default: scripts/local-postgres's
server). Each run works in a database of its own where the role may make one (advisory locks
are per database), each workload in a fresh schema, all dropped after. Workloads:
- durable append, 1 event per transaction over 50 streams (after 50 untimed on the same
  connection, both sides): eventflow vs raw psycopg's ``INSERT`` of the same
  row in autocommit mode (its own transaction, committed durably before it returns: one round
  trip, the fastest honest way to do it) (goal 0.8x); raw ``BEGIN; INSERT; COMMIT`` (three round
  trips, as ``with conn.transaction()`` does) is shown beside it. Both sides' connections
  must show the same durability settings (synchronous_commit and fsync on), checked per run
- batched append, 1,000 events per transaction: eventflow vs raw COPY of the same rows
  (goal 0.5x and 20,000 events/s)
- 4 writer processes at once vs 1 (throughput reported; every append must be there)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from eventflow.core import events as ev
from eventflow.shell.store import NewEvent, canonical, default_meta, open_store
from eventflow.shell.store_pg import SCHEMA

REPO = Path(__file__).resolve().parents[1]
# The row eventflow writes for MaterialHeld("x"), column for column (data, meta, a timestamp
# of the same form, a 64-character hash), so the raw baselines store the same bytes.
ROW = (1, "m", 1, "MaterialHeld", 1, canonical({"reason": "x"}).decode(),
       canonical(default_meta()).decode(), "2026-01-01T00:00:00.000000Z", None, "0" * 64)
_INSERT = "INSERT INTO events VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
# Durable appends: the first few on a new connection, not timed (both sides): psycopg
# prepares a statement at its 5th run, and the server compiles and plans on first use
# (the append function's first call costs a few ms); a watcher's connection lives for hours.
# As many as there are streams (50): eventflow's connection then knows each stream's version,
# as a long-lived watcher's does (a stream's first append on a connection is the function's).
WARM_UP = 50


def _schema(url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {name}")
    return name


def _own_database(url: str) -> tuple[str, str | None]:
    """A database of the run's own on the server (URL, name), if the role may make one: the
    append lock is an advisory lock, and those are per database, so other users' logs in
    other schemas of a shared database would take turns with this run's appends. Without
    the right: ``url`` itself (None)."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")  # a fixed-format name, no user text
    except psycopg.errors.InsufficientPrivilege:
        return url, None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/{name}{'?' if parts.query else ''}{parts.query}", name


def _in(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


# Both sides' commits must be equally durable: the session settings that decide it, as each
# side's own connection sees them (checked in every run; a difference stops the benchmark).
DURABILITY = ("synchronous_commit", "fsync", "wal_sync_method", "commit_delay")
SEEN: dict[str, tuple[str, ...]] = {}


def _durability(db: psycopg.Connection, side: str) -> None:
    SEEN[side] = tuple(db.execute(f"SHOW {name}").fetchone()[0] for name in DURABILITY)
    assert SEEN[side][:2] == ("on", "on"), f"{side}: not a durable commit: {SEEN[side]}"
    assert len(set(SEEN.values())) == 1, f"durability differs between the sides: {SEEN}"


def raw_durable(url: str, n: int, *, explicit: bool = False) -> float:
    """Raw INSERTs, each durably committed: autocommit (one round trip), or ``explicit``
    BEGIN / INSERT / COMMIT."""
    with psycopg.connect(url, autocommit=True) as db:
        _durability(db, "raw BEGIN/INSERT/COMMIT" if explicit else "raw INSERT")
        db.execute(SCHEMA)
        t = 0.0
        for i in range(1, WARM_UP + n + 1):
            if i == WARM_UP + 1:
                t = time.perf_counter()
            if explicit:
                with db.transaction():
                    db.execute(_INSERT, (i, f"m{i % 50}", i, *ROW[3:]))
            else:
                db.execute(_INSERT, (i, f"m{i % 50}", i, *ROW[3:]))
        return n / (time.perf_counter() - t)


def ef_durable(url: str, n: int) -> float:
    with open_store(url, create=True) as s:
        _durability(s.db, "eventflow")  # type: ignore[attr-defined]
        t = 0.0
        for i in range(WARM_UP + n):
            if i == WARM_UP:
                t = time.perf_counter()
            s.append(f"m{i % 50}", [ev.MaterialHeld("x")])
        return n / (time.perf_counter() - t)


def best_of(rounds: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each workload's best rate over ``rounds``, the workloads taking turns within a round
    (so a burst of load from other users of the machine hits them alike)."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    return best


def raw_batched(url: str, n: int) -> float:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(SCHEMA)
        t = time.perf_counter()
        for start in range(0, n, 1000):
            with db.transaction(), db.cursor().copy("COPY events FROM STDIN") as copy:
                for i in range(start + 1, start + 1001):
                    copy.write_row((i, f"m{i}", 1, *ROW[3:]))  # 1,000 streams, as below
        return n / (time.perf_counter() - t)


def ef_batched(url: str, n: int) -> float:
    with open_store(url, create=True) as s:
        t = time.perf_counter()
        for start in range(0, n, 1000):
            s.append_many([NewEvent(f"m{i}", ev.MaterialHeld("x"))
                           for i in range(start, start + 1000)])
        return n / (time.perf_counter() - t)


def _writer(url: str, k: int, n: int) -> None:
    with open_store(url) as s:
        for _ in range(n):
            s.append(f"w{k}", [ev.MaterialHeld("x")])


def writers(url: str, procs: int, n: int) -> float:
    open_store(url, create=True).close()
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=_writer, args=(url, k, n)) for k in range(procs)]
    t = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
        assert p.exitcode == 0
    rate = procs * n / (time.perf_counter() - t)
    with open_store(url) as s:
        assert s.last_seq() == procs * n and s.verify_chain()[1] == []  # nothing lost
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--url")
    args = parser.parse_args()
    url = args.url or subprocess.run([str(REPO / "scripts" / "local-postgres"), "url"],
                                     capture_output=True, text=True, check=True).stdout.strip()
    n1, nb, nw = (300, 20_000, 200) if args.quick else (2_000, 100_000, 1_000)
    rounds = 3 if args.quick else 5
    server_url = url
    url, database = _own_database(server_url)
    schemas: list[str] = []

    def fresh() -> str:
        schemas.append(_schema(url))
        return _in(url, schemas[-1])

    try:
        durable = best_of(rounds, {
            "ef": lambda: ef_durable(fresh(), n1),
            "raw": lambda: raw_durable(fresh(), n1),
            "raw3": lambda: raw_durable(fresh(), n1, explicit=True),
        })
        batched = best_of(rounds, {"ef": lambda: ef_batched(fresh(), nb),
                                   "raw": lambda: raw_batched(fresh(), nb)})
        d_ef, d_raw, d_raw3 = durable["ef"], durable["raw"], durable["raw3"]
        b_ef, b_raw = batched["ef"], batched["raw"]
        w1 = writers(fresh(), 1, nw)
        w4 = writers(fresh(), 4, nw)
    finally:
        with psycopg.connect(url, autocommit=True) as db:
            for name in schemas:
                db.execute(f"DROP SCHEMA {name} CASCADE")
        if database is not None:
            with psycopg.connect(server_url, autocommit=True) as db:
                db.execute(f"DROP DATABASE {database} WITH (FORCE)")
    print("durable commits on both sides: "
          + ", ".join(f"{k}={v}" for k, v in zip(DURABILITY, SEEN["eventflow"], strict=True)))
    print("| workload | eventflow | baseline | ratio | goal | met |")
    print("|---|---|---|---|---|---|")
    print(f"| durable append, 1 event/tx | {d_ef:,.0f}/s | {d_raw:,.0f}/s raw INSERT "
          f"(autocommit) | {d_ef / d_raw:.2f} | >= 0.8 | {d_ef / d_raw >= 0.8} |")
    print(f"| (same, other baseline) | {d_ef:,.0f}/s | {d_raw3:,.0f}/s raw BEGIN; INSERT; "
          f"COMMIT | {d_ef / d_raw3:.2f} | shown | - |")
    print(f"| batched append, 1000/tx | {b_ef:,.0f}/s | {b_raw:,.0f}/s raw COPY | "
          f"{b_ef / b_raw:.2f} | >= 0.5 and >= 20,000/s | "
          f"{b_ef / b_raw >= 0.5 and b_ef >= 20_000} |")
    print(f"| 4 writer processes vs 1 (1 event/tx) | {w4:,.0f}/s | {w1:,.0f}/s one writer | "
          f"{w4 / w1:.2f} | reported; none lost | True |")


if __name__ == "__main__":
    main()
