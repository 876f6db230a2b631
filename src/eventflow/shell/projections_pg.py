"""Projections beside a PostgreSQL log: the tables of ``projections.db`` in the log's schema.

When the log is on a PostgreSQL server, the read models live in the same database and schema
as its ``events`` table, under the same names and columns as in ``projections.db``
(``materials``, ``calculations``, ``properties``, ``errors``, ``projection_state``), so the
same SQL works in ``sqlite3`` and in ``psql``, and anyone with a PostgreSQL client can query
them. They stay disposable: ``eventflow replay`` rebuilds them from the log.

The fold is the one of ``shell.projections`` (Python, checked against the lifecycles); only
the writing differs:

* a full rebuild runs in ONE transaction: it creates fresh tables (``materials__new`` ...),
  streams the rows into them with COPY as each material's stream is folded, builds their
  indexes, drops the old tables and renames the new ones, and records ``last_seq``. Readers
  see the old projections until COMMIT and the new ones after, never a mix; a crash or a lost
  connection rolls everything back and leaves the old ones;
* catching up replaces the rows of the changed materials (DELETE + COPY) and ``last_seq`` in
  one transaction.

Both take a transaction-level advisory lock first, so two writers (watchers on two hosts, a
``status`` beside a watcher) take turns; a catch-up that finds the tables already further on
writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from eventflow.core import events as ev
from eventflow.core.state import MaterialState, apply_event
from eventflow.errors import EventflowError, IllegalTransition
from eventflow.shell.projections import ROW_MAKERS, TABLES, Projections, gc_paused, unreplayable
from eventflow.shell.store import LogBase
from eventflow.shell.store_pg import _one_line, _pg, _psycopg, redacted

# Another fixed number than the log's APPEND_LOCK: writers of the projections take turns.
PROJECTIONS_LOCK = 0x6576_7072_6F6A  # "evproj"
FLUSH_EVERY = 2_000  # materials whose rows go to the server in one COPY per table
NEW = "__new"  # the suffix of the tables a rebuild fills before it swaps them in

# Column definitions only: keys and indexes are built after a rebuild's COPY (cheaper than
# keeping them up to date row by row). Ids sort by code point ("C"), as in SQLite.
_COLUMNS = {
    "materials": """id TEXT COLLATE "C" NOT NULL, formula TEXT, workflow TEXT, code TEXT,
        state TEXT NOT NULL, current_step TEXT, attempts INTEGER NOT NULL, reason TEXT,
        updated_at TEXT, last_seq BIGINT NOT NULL""",
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

    def __init__(self, conn: Any, label: str) -> None:
        self.conn = conn
        self.label = label
        self._errors = _psycopg().OperationalError

    def execute(self, sql: str, args: Iterable[Any] = ()) -> Any:
        args = tuple(args)
        try:
            return self.conn.execute(_pg(sql) if args else sql, args or None)
        except self._errors as exc:
            raise EventflowError(f"{self.label}: lost the server: {_one_line(exc)}") from None

    def close(self) -> None:
        self.conn.close()


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
        try:
            conn = psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as exc:
            raise EventflowError(f"{self.path}: cannot reach the server: "
                                 f"{_one_line(exc)}") from None
        conn.adapters.register_loader("numeric", _number_loader())
        self.db = _Connection(conn, self.path)  # type: ignore[assignment]
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
        except BaseException:
            conn.close()
            raise

    def _exists(self) -> bool:
        return bool(self.db.conn.execute(
            "SELECT to_regclass('projection_state') IS NOT NULL").fetchone()[0])

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

    def rebuild(self, store: LogBase, *, jobs: int | None = None,  # noqa: ARG002 - one process
                until_seq: int | None = None, until_time: str | None = None) -> int:
        """Replace every row by a fresh fold of the log (up to ``until``), in one transaction."""
        last = store.last_seq_until(until_seq=until_seq, until_time=until_time)
        conn = self.db.conn
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (PROJECTIONS_LOCK,))
                for table in TABLES:
                    conn.execute(f"CREATE TABLE {table}{NEW} ({_COLUMNS[table]})")
                with gc_paused():
                    _fold_copy(conn, store, last, until_time)
                for sql in _indexes(NEW):
                    conn.execute(sql)
                for table in TABLES:  # the swap: readers wait here a moment, then see the new
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
                    conn.execute(f"ALTER TABLE {table}{NEW} RENAME TO {table}")
                for name, _, _ in _INDEXES:
                    conn.execute(f"ALTER INDEX {name}{NEW} RENAME TO {name}")
                conn.execute(_STATE_TABLE)
                conn.execute(_SET_LAST, (last,))
        except _psycopg().OperationalError as exc:
            raise EventflowError(f"{self.path}: lost the server during a rebuild (the old "
                                 f"projections stay): {_one_line(exc)}") from None
        return last


def _fold_copy(conn: Any, store: LogBase, last: int, until_time: str | None) -> None:
    """Fold every material's stream (in stream order) and COPY the rows into the new tables,
    ``FLUSH_EVERY`` materials at a time: memory does not grow with the log."""
    rows = store.read_streams(until_seq=last, until_time=until_time)
    done: list[MaterialState] = []
    state: MaterialState | None = None
    decode = ev.decode_json
    seq = 0
    type_ = stream = ""
    try:
        for seq, stream, version, type_, sv, data, at in rows:
            if state is None or stream != state.id:
                if state is not None:
                    done.append(state)
                    if len(done) >= FLUSH_EVERY:
                        _copy(conn, NEW, done)
                        done.clear()
                state = MaterialState(stream)
            apply_event(state, decode(type_, sv, data), seq, version, at)
    except (ev.UnknownEventError, IllegalTransition) as exc:
        raise unreplayable(store.path, seq, type_, stream, exc) from None
    if state is not None:
        done.append(state)
    _copy(conn, NEW, done)


def _copy(conn: Any, suffix: str, states: list[MaterialState]) -> None:
    cursor = conn.cursor()
    for table in TABLES:
        with cursor.copy(f"COPY {table}{suffix} FROM STDIN") as copy:
            write = copy.write_row
            for row in ROW_MAKERS[table](states):
                write(row)
