"""The event log on PostgreSQL against raw psycopg doing the same INSERTs, in one run.

``python bench/bench_postgres.py [--quick] [--url URL]`` (default: scripts/local-postgres's
server). Each run works in a fresh schema and drops it. Workloads:
- durable append, 1 event per transaction: eventflow vs raw ``INSERT`` + COMMIT (goal 0.8x)
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
from pathlib import Path

import psycopg

from eventflow.core import events as ev
from eventflow.shell.store import NewEvent, open_store
from eventflow.shell.store_pg import SCHEMA

REPO = Path(__file__).resolve().parents[1]
ROW = (1, "m", 1, "MaterialHeld", 1, '{"reason":"x"}', '{"actor":"cli"}',
       "2026-01-01T00:00:00.000000Z", None, "0" * 64)


def _schema(url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {name}")
    return name


def _in(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def raw_durable(url: str, n: int) -> float:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(SCHEMA)
        t = time.perf_counter()
        for i in range(1, n + 1):
            with db.transaction():
                db.execute("INSERT INTO events VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                           (i, f"m{i % 50}", i, *ROW[3:]))
        return n / (time.perf_counter() - t)


def ef_durable(url: str, n: int) -> float:
    with open_store(url, create=True) as s:
        t = time.perf_counter()
        for i in range(n):
            s.append(f"m{i % 50}", [ev.MaterialHeld("x")])
        return n / (time.perf_counter() - t)


def raw_batched(url: str, n: int) -> float:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(SCHEMA)
        t = time.perf_counter()
        for start in range(0, n, 1000):
            with db.transaction(), db.cursor().copy("COPY events FROM STDIN") as copy:
                for i in range(start + 1, start + 1001):
                    copy.write_row((i, f"m{i}", 1, *ROW[3:]))
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
    schemas: list[str] = []

    def fresh() -> str:
        schemas.append(_schema(url))
        return _in(url, schemas[-1])

    try:
        rounds = 1 if args.quick else 3
        d_ef = max(ef_durable(fresh(), n1) for _ in range(rounds))
        d_raw = max(raw_durable(fresh(), n1) for _ in range(rounds))
        b_ef = max(ef_batched(fresh(), nb) for _ in range(rounds))
        b_raw = max(raw_batched(fresh(), nb) for _ in range(rounds))
        w1 = writers(fresh(), 1, nw)
        w4 = writers(fresh(), 4, nw)
    finally:
        with psycopg.connect(url, autocommit=True) as db:
            for name in schemas:
                db.execute(f"DROP SCHEMA {name} CASCADE")
    print("| workload | eventflow | baseline | ratio | goal | met |")
    print("|---|---|---|---|---|---|")
    print(f"| durable append, 1 event/tx | {d_ef:,.0f}/s | {d_raw:,.0f}/s raw INSERT | "
          f"{d_ef / d_raw:.2f} | >= 0.8 | {d_ef / d_raw >= 0.8} |")
    print(f"| batched append, 1000/tx | {b_ef:,.0f}/s | {b_raw:,.0f}/s raw COPY | "
          f"{b_ef / b_raw:.2f} | >= 0.5 and >= 20,000/s | "
          f"{b_ef / b_raw >= 0.5 and b_ef >= 20_000} |")
    print(f"| 4 writer processes vs 1 (1 event/tx) | {w4:,.0f}/s | {w1:,.0f}/s one writer | "
          f"{w4 / w1:.2f} | reported; none lost | True |")


if __name__ == "__main__":
    main()
