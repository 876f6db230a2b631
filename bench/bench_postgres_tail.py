"""`eventflow tail -f` on a PostgreSQL log: latency from another process's append to the line.

``python bench/bench_postgres_tail.py [--quick] [--url URL]`` (default: scripts/local-postgres's
server). A project is made on a fresh schema (dropped at the end); ``eventflow tail -f --json``
runs as its own process, and this process appends one event at a time (at random moments, so
tail is waiting in its LISTEN each time) and times, for each sample, from the start of the
append call to the moment tail's line for it arrives on the pipe. The baseline, in the same
run: a raw psycopg process that LISTENs and prints a line per notification, and a raw
autocommit INSERT + NOTIFY from here (the floor any LISTEN/NOTIFY follower can reach).
Goal (issue 12): under 0.2 s; reported as p50 / p95 / max over all samples.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from bench_postgres import ROW, _in, _schema

from eventflow.core import events as ev
from eventflow.shell.store import open_store
from eventflow.shell.store_pg import SCHEMA

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "eventflow.shell.cli"]

# The baseline follower: raw psycopg, LISTEN, one printed line per notification.
RAW_LISTENER = """
import sys, psycopg
db = psycopg.connect(sys.argv[1], autocommit=True)
db.execute("LISTEN bench_raw")
print("ready", flush=True)
for n in db.notifies():
    print(n.payload, flush=True)
"""


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _samples(proc: subprocess.Popen, n: int, append: Callable[[int], None]) -> list[float]:
    """Seconds from each ``append(i)`` call's start to ``proc``'s next printed line."""
    out = []
    for i in range(n):
        time.sleep(random.uniform(0.02, 0.08))  # the follower is idle, waiting, each time
        t0 = time.perf_counter()
        append(i)
        line = proc.stdout.readline()
        out.append(time.perf_counter() - t0)
        if not line:
            raise SystemExit(f"the follower stopped: {proc.stderr.read()}")
    return out


def _started(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    guard = threading.Timer(600, proc.kill)  # a bound on waiting: a hang ends the run
    guard.daemon = True
    guard.start()
    return proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--url")
    args = parser.parse_args()
    url = args.url or subprocess.run([str(REPO / "scripts" / "local-postgres"), "url"],
                                     capture_output=True, text=True, check=True).stdout.strip()
    n = 40 if args.quick else 300
    schemas = [_schema(url), _schema(url)]
    log_url, raw_url = _in(url, schemas[0]), _in(url, schemas[1])
    procs: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            project = Path(tmp) / "proj"
            subprocess.run([*CLI, "init", str(project), "--store", log_url], check=True,
                           capture_output=True)
            tail = _started([*CLI, "--project", str(project), "tail", "-f", "-n", "0",
                             "--json"], env=os.environ.copy())
            procs.append(tail)
            raw = _started([sys.executable, "-c", RAW_LISTENER, raw_url])
            procs.append(raw)
            assert raw.stdout.readline().strip() == "ready"
            with open_store(log_url) as store, psycopg.connect(raw_url, autocommit=True) as db:
                db.execute(SCHEMA)

                def ef_append(i: int) -> None:
                    store.append(f"m{i % 50}", [ev.MaterialHeld(f"sample {i}")])

                def raw_append(i: int) -> None:
                    # One statement, its own transaction: the NOTIFY goes out at its commit.
                    db.execute("WITH row AS (INSERT INTO events VALUES "
                               "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING seq) "
                               "SELECT pg_notify('bench_raw', seq::text) FROM row",
                               (i + 2, f"m{i % 50}", i + 2, *ROW[3:]))

                # Warm-up: tail has read the head and is in its follow loop once it prints.
                time.sleep(1.0)
                ef_append(-1)
                assert json.loads(tail.stdout.readline())["type"] == "MaterialHeld"
                ef: list[float] = []
                base: list[float] = []
                for start in range(0, n, 20):  # alternating blocks: load hits both alike
                    ef += _samples(tail, min(20, n - start), lambda i, s=start: ef_append(s + i))
                    base += _samples(raw, min(20, n - start),
                                     lambda i, s=start: raw_append(s + i))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        with psycopg.connect(url, autocommit=True) as db:
            for name in schemas:
                db.execute(f"DROP SCHEMA {name} CASCADE")
    p50, p95, worst = (statistics.median(ef), _percentile(ef, 0.95), max(ef))
    b50, b95 = statistics.median(base), _percentile(base, 0.95)
    print(f"{len(ef)} samples each")
    print("| workload | eventflow p50 / p95 / max | baseline p50 / p95 | goal | met |")
    print("|---|---|---|---|---|")
    print(f"| tail -f: another process's append -> printed line | {p50 * 1e3:.1f} / "
          f"{p95 * 1e3:.1f} / {worst * 1e3:.1f} ms | {b50 * 1e3:.1f} / {b95 * 1e3:.1f} ms "
          f"raw LISTEN + INSERT/NOTIFY | p95 < 200 ms | {p95 < 0.2} |")


if __name__ == "__main__":
    main()
