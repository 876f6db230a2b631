"""Projections beside a PostgreSQL log: the tables of ``projections.db`` in the log's schema.

When the log is on a PostgreSQL server, the read models live in the same database and schema
as its ``events`` table, under the same names and columns as in ``projections.db``
(``materials``, ``calculations``, ``properties``, ``errors``, ``projection_state``), so the
same SQL works in ``sqlite3`` and in ``psql``, and anyone with a PostgreSQL client can query
them. They stay disposable: ``eventflow replay`` rebuilds them from the log.

The fold is the one of ``shell.projections`` (Python, checked against the lifecycles); only
the writing differs:

* a full rebuild fills fresh tables (``materials__new`` ...) that no reader looks at, with
  COPY, as each material's stream is folded; a big log is split by material id into ranges,
  one process each (as ``shell.replay`` does for SQLite), every process reading its streams
  from the server and COPYing its rows itself. Then ONE transaction builds the indexes, drops
  the old tables, renames the new ones and records ``last_seq``: readers see the old
  projections until COMMIT and the new ones after, never a mix. A crash before that COMMIT
  leaves the old projections as they were (and ``__new`` tables, which the next rebuild
  drops: it holds a session advisory lock, so no other rebuild is at work);
* catching up replaces the rows of the changed materials (DELETE + COPY) and ``last_seq`` in
  one transaction.

Writers of the projections (a catch-up, the swap) take a transaction-level advisory lock
first, so two of them (watchers on two hosts, a ``status`` beside a watcher) take turns; a
catch-up that finds the tables already further on writes nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any

from eventflow.core.state import MaterialState
from eventflow.errors import EventflowError, LogUnavailableError
from eventflow.shell.projections import (
    ROW_MAKERS,
    TABLES,
    Projections,
    folded_batches,
    gc_paused,
)
from eventflow.shell.store import LogBase
from eventflow.shell.store_pg import _one_line, _pg, _psycopg, redacted

# Another fixed number than the log's APPEND_LOCK: writers of the projections take turns.
PROJECTIONS_LOCK = 0x6576_7072_6F6A  # "evproj"
REBUILD_LOCK = 0x6576_7265_6275  # "evrebu": held by the one rebuild at work (a session lock)
FLUSH_EVERY = 2_000  # materials whose rows go to the server in one COPY per table
NEW = "__new"  # the suffix of the tables a rebuild fills before it swaps them in

# Column definitions only: keys and indexes are built after a rebuild's COPY (cheaper than
# keeping them up to date row by row). Ids sort by code point ("C"), as in SQLite.
_COLUMNS = {
    "materials": """id TEXT COLLATE "C" NOT NULL, formula TEXT, workflow TEXT, code TEXT,
        state TEXT NOT NULL, current_step TEXT, attempts INTEGER NOT NULL, reason TEXT,
        updated_at TEXT, last_seq BIGINT NOT NULL, cluster TEXT""",
    "calculations": """id TEXT COLLATE "C" NOT NULL, material_id TEXT COLLATE "C" NOT NULL,
        step TEXT NOT NULL, attempt INTEGER NOT NULL, state TEXT NOT NULL, job_id TEXT,
        directory TEXT, error_kind TEXT, requested_at TEXT, started_at TEXT,
        finished_at TEXT""",
    # numeric keeps what the log holds: 3 stays an integer, 3.0 a float (see _NumberLoader)
    "properties": """material_id TEXT COLLATE "C" NOT NULL, name TEXT COLLATE "C" NOT NULL,
        value NUMERIC, unit TEXT, calculation_id TEXT COLLATE "C" NOT NULL,
        source_seq BIGINT NOT NULL""",
    "errors": """material_id TEXT COLLATE "C" NOT NULL, calculation_id TEXT NOT NULL,
        kind TEXT NOT NULL, evidence TEXT""",
}
# (index, table, definition): the names are those of projections/schema.sql, plus the keys.
_INDEXES = (
    ("materials_pkey", "materials", "UNIQUE INDEX {name} ON {table} (id)"),
    ("materials_state", "materials", "INDEX {name} ON {table} (state)"),
    ("calculations_pkey", "calculations", "UNIQUE INDEX {name} ON {table} (id)"),
    ("calculations_material", "calculations", "INDEX {name} ON {table} (material_id)"),
    ("calculations_state", "calculations", "INDEX {name} ON {table} (state)"),
    ("properties_pkey", "properties",
     "UNIQUE INDEX {name} ON {table} (material_id, calculation_id, name)"),
    ("errors_material", "errors", "INDEX {name} ON {table} (material_id)"),
)
_STATE_TABLE = """CREATE TABLE IF NOT EXISTS projection_state (
    name TEXT PRIMARY KEY, last_seq BIGINT NOT NULL, log_path TEXT)"""
_SET_LAST = ("INSERT INTO projection_state (name, last_seq) VALUES ('all', %s) "
             "ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq")


def _create(suffix: str) -> list[str]:
    """The statements that make the four tables (named with ``suffix``) and their indexes."""
    out = [f"CREATE TABLE {t}{suffix} ({_COLUMNS[t]})" for t in TABLES]
    return out + _indexes(suffix)


def _indexes(suffix: str) -> list[str]:
    return ["CREATE " + sql.format(name=name + suffix, table=table + suffix)
            for name, table, sql in _INDEXES]


class _Connection:
    """The projections' connection, taking the ``?`` placeholders of the SQLite module, so the
    queries of ``Projections`` (and of the modules that read its tables) run unchanged."""

    def __init__(self, conn: Any, label: str, connect: Callable[[], Any] | None = None) -> None:
        self._conn = conn
        self.label = label
        self._connect = connect  # makes a new connection once this one has broken
        self._errors = _psycopg().OperationalError

    @property
    def conn(self) -> Any:
        """The connection; a new one when the last was cut (a server restart), so a watcher
        that waited for the server goes on with its projections too."""
        if self._conn.closed and self._connect is not None:
            self._conn = self._connect()
        return self._conn

    def execute(self, sql: str, args: Iterable[Any] = ()) -> Any:
        args = tuple(args)
        try:
            return self.conn.execute(_pg(sql) if args else sql, args or None)
        except self._errors as exc:
            if self._conn.closed:  # cut: the watcher waits for the server (LogUnavailable)
                raise LogUnavailableError(f"{self.label}: lost the server: "
                                          f"{_one_line(exc)}") from None
            raise EventflowError(f"{self.label}: lost the server: {_one_line(exc)}") from None

    def close(self) -> None:
        self._conn.close()


def _number_loader() -> type:
    """A NUMERIC reads back as the log's JSON holds it, and as SQLite gives it back: an int
    when written as one, else a float. NUMERIC keeps the digits after the point that it was
    given: a float below 1e16 always has a point (its repr has one, or an exponent below
    zero); a float above has none but more digits than an int (what eventflow records as
    properties is far smaller; an int above 1e16 would come back as the same float)."""
    from psycopg.adapt import Loader

    class NumberLoader(Loader):
        def load(self, data: Any) -> int | float:
            text = bytes(data)
            if re.fullmatch(rb"-?[0-9]{1,16}", text):
                return int(text)
            return float(text)

    return NumberLoader


class PostgresProjections(Projections):
    """The projection tables in the database (and first schema) of the log at ``url``."""

    def __init__(self, url: str, *, create: bool = False) -> None:  # noqa: ARG002 - see below
        psycopg = _psycopg()
        self.url = url
        self.path = redacted(url)  # type: ignore[assignment]  # what messages name
        self.name = "the projection tables"
        def connect(error: type[EventflowError] = EventflowError) -> Any:
            try:
                conn = psycopg.connect(url, autocommit=True)
            except psycopg.OperationalError as exc:
                raise error(f"{self.path}: cannot reach the server: "
                            f"{_one_line(exc)}") from None
            conn.adapters.register_loader("numeric", _number_loader())
            return conn

        conn = connect()
        self.db = _Connection(conn, self.path,  # type: ignore[assignment]
                              lambda: connect(LogUnavailableError))
        try:
            # Missing tables are made whether or not ``create``: empty projections at seq 0,
            # which the first catch-up fills (a log copied in by migrate-store has none yet).
            if not self._exists():
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (PROJECTIONS_LOCK,))
                    if not self._exists():
                        conn.execute(_STATE_TABLE)
                        for sql in _create(""):
                            conn.execute(sql)
            elif not self._has_cluster():
                # Made by an older eventflow: add the column and fold the log again.
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (PROJECTIONS_LOCK,))
                    conn.execute("ALTER TABLE materials ADD COLUMN IF NOT EXISTS cluster TEXT")
                    conn.execute("DELETE FROM projection_state")
        except psycopg.errors.InsufficientPrivilege as exc:
            user = conn.info.user
            conn.close()
            raise EventflowError(
                f"{self.path}: role {user!r} may not make the projection tables "
                f"beside the log (the log's owner makes them at its first status or replay): "
                f"{_one_line(exc)}") from None
        except BaseException:
            conn.close()
            raise

    def _exists(self) -> bool:
        return bool(self.db.conn.execute(
            "SELECT to_regclass('projection_state') IS NOT NULL").fetchone()[0])

    def _has_cluster(self) -> bool:
        return bool(self.db.conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = 'materials' AND column_name = 'cluster'"
        ).fetchone()[0])

    def close(self) -> None:
        self.db.close()

    def write(self, states: Iterable[MaterialState], last_seq: int) -> None:
        """Replace the rows of ``states``' materials, and set ``last_seq``, atomically (nothing,
        when another writer has already brought the tables to ``last_seq`` or beyond)."""
        states = list(states)
        conn = self.db.conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PROJECTIONS_LOCK,))
            if self.last_seq() >= last_seq:
                return
            ids = [s.id for s in states]
            conn.execute("DELETE FROM materials WHERE id = ANY(%s)", (ids,))
            for table in ("calculations", "properties", "errors"):
                conn.execute(f"DELETE FROM {table} WHERE material_id = ANY(%s)",  # noqa: S608
                             (ids,))
            with gc_paused():
                _copy(conn, "", states)
            conn.execute(_SET_LAST, (last_seq,))

    def rebuild(self, store: LogBase, *, jobs: int | None = None,
                until_seq: int | None = None, until_time: str | None = None) -> int:
        """Replace every row by a fresh fold of the log (up to ``until``), in ``jobs`` processes
        (default: one per core for a big log); the new rows appear in one transaction."""
        from eventflow.shell.replay import _ranges, default_jobs

        last = store.last_seq_until(until_seq=until_seq, until_time=until_time)
        jobs = default_jobs(last) if jobs is None else max(1, jobs)
        ranges = _ranges(store, jobs if sys.executable else 1)  # no interpreter: embedded
        conn = self.db.conn
        try:
            # One rebuild at a time; a session lock, so a rebuild that dies frees it.
            conn.execute("SELECT pg_advisory_lock(%s)", (REBUILD_LOCK,))
            try:
                self._fill_new_tables(store, ranges, last, until_time)
                self._swap_in(last)
            except BaseException:
                if not conn.closed and not conn.broken:
                    _drop_new(conn)
                raise
            finally:
                if not conn.closed and not conn.broken:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (REBUILD_LOCK,))
        except _psycopg().OperationalError as exc:
            raise EventflowError(f"{self.path}: lost the server during a rebuild (the old "
                                 f"projections stay): {_one_line(exc)}") from None
        return last

    def _fill_new_tables(self, store: LogBase, ranges: list[tuple[str | None, str | None]],
                         last: int, until_time: str | None) -> None:
        """The tables ``materials__new`` ... (committed, but under names no reader uses), filled
        by one process per range of material ids: this one and ``python -m
        eventflow.shell.projections_pg`` (see shell.replay for why not multiprocessing)."""
        from eventflow.shell.replay import _worker_error

        conn = self.db.conn
        _drop_new(conn)  # left by a rebuild that died: we hold the lock, it is not at work
        for table in TABLES:
            conn.execute(f"CREATE TABLE {table}{NEW} ({_COLUMNS[table]})")
        log_url = str(getattr(store, "url", store.path))
        workers: list[subprocess.Popen[bytes]] = []
        try:
            for lo, hi in ranges[1:]:
                part = [log_url, self.url, lo, hi, last, until_time]
                workers.append(subprocess.Popen(  # noqa: S603 - argv list, our own module
                    [sys.executable, "-m", "eventflow.shell.projections_pg", json.dumps(part)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            lo, hi = ranges[0]
            with conn.transaction(), gc_paused():
                _fold_copy(conn, store, lo, hi, last, until_time)
            for worker in workers:
                _, err = worker.communicate()
                if worker.returncode != 0:
                    raise EventflowError(_worker_error(err, worker.returncode))
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()

    def _swap_in(self, last: int) -> None:
        """Index the new tables and put them in the place of the old, with ``last``: one
        transaction, so readers see the old projections or the new, never a mix."""
        conn = self.db.conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PROJECTIONS_LOCK,))
            for sql in _indexes(NEW):
                conn.execute(sql)
            for table in TABLES:  # readers wait here a moment, then see the new tables
                conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute(f"ALTER TABLE {table}{NEW} RENAME TO {table}")
            for name, _, _ in _INDEXES:
                conn.execute(f"ALTER INDEX {name}{NEW} RENAME TO {name}")
            conn.execute(_STATE_TABLE)
            conn.execute(_SET_LAST, (last,))


def _drop_new(conn: Any) -> None:
    for table in TABLES:
        conn.execute(f"DROP TABLE IF EXISTS {table}{NEW}")


def _fold_copy(conn: Any, store: LogBase, lo: str | None, hi: str | None, last: int,
               until_time: str | None) -> None:
    """Fold the streams ``lo <= id < hi`` and COPY their rows into the new tables."""
    for done in folded_batches(store, lo, hi, last, until_time, FLUSH_EVERY):
        _copy(conn, NEW, done)


def _copy(conn: Any, suffix: str, states: list[MaterialState]) -> None:
    cursor = conn.cursor()
    for table in TABLES:
        with cursor.copy(f"COPY {table}{suffix} FROM STDIN") as copy:
            write = copy.write_row
            for row in ROW_MAKERS[table](states):
                write(row)


def _worker_main(argv: list[str]) -> int:
    """``python -m eventflow.shell.projections_pg '[log, views, lo, hi, last, until_time]'``:
    one range of a rebuild, into the new tables, committed when whole."""
    from eventflow.shell.store import open_store

    log, views, lo, hi, last, until_time = json.loads(argv[0])
    psycopg = _psycopg()
    try:
        with open_store(log) as store, psycopg.connect(views) as conn, gc_paused():
            _fold_copy(conn, store, lo, hi, last, until_time)
    except EventflowError as exc:
        print(f"eventflow: error: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"eventflow: error: {redacted(views)}: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
