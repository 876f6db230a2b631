"""A full rebuild of the projections from the log: fast, in bounded memory, in parallel.

Each material's stream is read in order through the log's ``(stream, version)`` index and
folded; as soon as the next material begins, the finished state becomes rows and is
forgotten, so memory does not grow with the log. Rows go into a private scratch database
beside the projections, with no journal and no secondary indexes (building an index once at
the end is cheaper than keeping it up to date row by row). The SQLite backup API then copies
the finished database into ``projections.db`` in one transaction: readers, the watcher
among them, see the old projections or the new, never a mix, and a crash leaves the old.

A big log is split by material id into ranges, one per process (the fold is CPU-bound
Python, one core each): this process folds the first range, ``python -m
eventflow.shell.replay`` the others (a plain child process, not multiprocessing, which would
re-run the caller's script in every child). Every range goes into its own scratch file, and
SQLite merges them (``INSERT ... SELECT``) before the copy. The rows do not depend on the
split: a material's state depends only on its own stream.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

from eventflow.core.state import MaterialState
from eventflow.errors import EventflowError
from eventflow.resources import data_text
from eventflow.shell.lock import process_alive
from eventflow.shell.projections import (
    INSERT_SQL,
    ROW_MAKERS,
    TABLES,
    Projections,
    folded_batches,
    gc_paused,
)
from eventflow.shell.store import LogBase, open_store

PARALLEL_FROM = 200_000  # events; below this, starting processes costs more than it saves
MAX_JOBS = 4
FLUSH_EVERY = 2_000  # materials whose rows are written in one executemany per table
Range = tuple[str | None, str | None]  # material ids lo <= id < hi; None: unbounded


def default_jobs(events: int) -> int:
    """Processes for a rebuild of ``events`` events: one per available core, up to MAX_JOBS."""
    if events < PARALLEL_FROM:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_JOBS))


def rebuild(
    store: LogBase,
    views: Projections,
    *,
    until_seq: int | None = None,
    until_time: str | None = None,
    jobs: int | None = None,
) -> int:
    """Replace every row of ``views`` by a fresh fold of the log (up to ``until``); the last seq."""
    last = store.last_seq_until(until_seq=until_seq, until_time=until_time)
    jobs = default_jobs(last) if jobs is None else max(1, jobs)
    ranges = _ranges(store, jobs if sys.executable else 1)  # no interpreter to start: embedded
    _remove_stale_scratch(views.path)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # the pid first: see _remove_stale_scratch
    scratch = [views.path.with_name(f"{views.path.name}.rebuild-{token}-{k}")
               for k in range(len(ranges))]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for k, (lo, hi) in enumerate(ranges[1:], start=1):
            part = [_location(store), str(scratch[k]), lo, hi, last, until_time]
            workers.append(subprocess.Popen(  # noqa: S603 - argv list, our own module
                [sys.executable, "-m", "eventflow.shell.replay", json.dumps(part)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        lo, hi = ranges[0]
        fold_range(_location(store), scratch[0], lo, hi, last, until_time)
        for worker in workers:
            _, err = worker.communicate()
            if worker.returncode != 0:
                raise EventflowError(_worker_error(err, worker.returncode))
        _merge_and_copy(scratch, views, last)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for path in scratch:
            path.unlink(missing_ok=True)
    return last


def _location(store: LogBase) -> str:
    """What a worker opens: the file's path, or the full URL of a PostgreSQL log."""
    return str(getattr(store, "url", store.path))


def fold_range(
    log: Path | str, out: Path, lo: str | None, hi: str | None, last: int, until_time: str | None
) -> int:
    """Fold the materials ``lo <= id < hi`` (events up to ``last``) into rows in ``out``.

    Runs in a worker process or in the caller's; returns the number of materials.
    """
    db = _scratch_db(out)
    try:
        with gc_paused(), open_store(log) as store:
            count = _fold_into(db, store, lo, hi, last, until_time)
        db.execute("COMMIT")
    finally:
        db.close()
    return count


def _fold_into(db: sqlite3.Connection, store: LogBase, lo: str | None, hi: str | None,
               last: int, until_time: str | None) -> int:
    return sum(_insert(db, done)
               for done in folded_batches(store, lo, hi, last, until_time, FLUSH_EVERY))


def _worker_error(stderr: bytes, code: int) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    for line in lines:
        if line.startswith("eventflow: error: "):
            return line.removeprefix("eventflow: error: ")
    last = lines[-1] if lines else "no message"
    return f"a replay worker process failed (exit {code}): {last}"


def _insert(db: sqlite3.Connection, states: list[MaterialState]) -> int:
    for table in TABLES:
        db.executemany(INSERT_SQL[table], ROW_MAKERS[table](states))
    n = len(states)
    states.clear()
    return n


def _scratch_db(path: Path) -> sqlite3.Connection:
    """A new database with the projection tables but not their indexes, written unjournaled:
    it is private to this rebuild and thrown away if anything fails."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    db.executescript(data_text("projections", "schema.sql"))
    indexes = [r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")]
    for name in indexes:
        db.execute(f'DROP INDEX "{name}"')  # names from our own schema file
    db.execute("BEGIN")
    return db


def _merge_and_copy(scratch: list[Path], views: Projections, last: int) -> None:
    base = sqlite3.connect(scratch[0], isolation_level=None)
    try:
        base.execute("PRAGMA journal_mode = OFF")
        base.execute("PRAGMA synchronous = OFF")
        for k, path in enumerate(scratch[1:], start=1):
            alias = f"part{k}"
            base.execute("ATTACH DATABASE ? AS " + alias, (str(path),))
            base.execute("BEGIN")
            for table in TABLES:
                base.execute(f"INSERT INTO main.{table} SELECT * FROM {alias}.{table}")  # noqa: S608
            base.execute("COMMIT")
            base.execute("DETACH DATABASE " + alias)
        base.executescript(data_text("projections", "schema.sql"))  # the indexes, now
        page_size = views.db.execute("PRAGMA page_size").fetchone()[0]
        if base.execute("PRAGMA page_size").fetchone()[0] != page_size:
            # the backup API cannot copy into a WAL database of another page size
            base.execute(f"PRAGMA page_size = {int(page_size)}")
            base.execute("VACUUM")
        base.execute("DELETE FROM projection_state")
        base.execute("INSERT INTO projection_state (name, last_seq) VALUES ('all', ?)", (last,))
        base.backup(views.db)
    finally:
        base.close()


def _ranges(store: LogBase, jobs: int) -> list[Range]:
    if jobs <= 1:
        return [(None, None)]
    ids = store.streams()
    cuts = sorted({ids[len(ids) * k // jobs] for k in range(1, jobs)} if ids else set())
    bounds: list[str | None] = [None, *cuts, None]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _remove_stale_scratch(views: Path) -> None:
    """Scratch files of a rebuild that was killed (its process is gone) are removed."""
    for path in views.parent.glob(f"{views.name}.rebuild-*"):
        pid = path.name.rsplit(".rebuild-", 1)[1].split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            path.unlink(missing_ok=True)


def _worker_main(argv: list[str]) -> int:
    """``python -m eventflow.shell.replay '[log, out, lo, hi, last, until_time]'``."""
    log, out, lo, hi, last, until_time = json.loads(argv[0])
    try:
        fold_range(Path(log), Path(out), lo, hi, last, until_time)
    except EventflowError as exc:
        print(f"eventflow: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
