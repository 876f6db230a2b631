"""The event log on a PostgreSQL server: the same contract as the SQLite one (``LogBase``).

Seq order is commit order. Every append takes one transaction-level advisory lock before it
reads the log's head, and holds it until COMMIT; so the writer of seq N+1 starts only after
seq N is committed and visible. A reader (``tail -f``, catch-up) that has seen seq N never
meets a later commit with a lower seq, and the hash chain links rows in that same order.
``UNIQUE (stream, version)`` and ``UNIQUE (idempotency_key)`` hold across hosts as on SQLite;
triggers refuse UPDATE, DELETE and TRUNCATE.

The password never passes through eventflow: libpq finds it (``~/.pgpass``, ``PGPASSWORD``,
a service file), and ``path`` (what messages name) is the URL with any password removed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from eventflow.errors import EventflowError, LogTooNewError, LogUnavailableError
from eventflow.shell.store import SCHEMA_VERSION, LogBase

# Any fixed number: eventflow's lock, the same in every process and on every host.
APPEND_LOCK = 0x6576_666C_6F77  # "evflow"

SCHEMA = """
CREATE TABLE IF NOT EXISTS eventflow_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq             BIGINT  PRIMARY KEY,
    stream          TEXT    NOT NULL,
    version         BIGINT  NOT NULL,
    type            TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    data            TEXT    NOT NULL,
    meta            TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL,
    idempotency_key TEXT    UNIQUE,
    hash            TEXT    NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX IF NOT EXISTS events_recorded_at ON events (recorded_at);
CREATE INDEX IF NOT EXISTS events_type ON events (type);
CREATE OR REPLACE FUNCTION eventflow_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % refused', TG_OP;
END $$;
DROP TRIGGER IF EXISTS events_no_update ON events;
CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION eventflow_append_only();
DROP TRIGGER IF EXISTS events_no_truncate ON events;
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION eventflow_append_only();
"""

_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK})"
_COPY = ("COPY events (seq, stream, version, type, schema_version, data, meta, recorded_at, "
         "idempotency_key, hash) FROM STDIN")


def is_postgres(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """``url`` without a password (``user:secret@`` -> ``user@``, ``password=`` dropped)."""
    url = re.sub(r"(://[^/@:]*):[^/@]*@", r"\1@", url)
    return re.sub(r"([?&])password=[^&]*&?", r"\1", url).rstrip("?&")


@lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """The shared ``?``-marked SQL in psycopg's ``%s`` style (our SQL has no other ? or %)."""
    return sql.replace("?", "%s")


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise EventflowError(
            "a PostgreSQL log needs psycopg 3: pip install 'eventflow[postgresql]'"
        ) from None
    return psycopg


class PostgresEventStore(LogBase):
    """The log in a PostgreSQL database (tables in the connection's first schema)."""

    def __init__(self, url: str, *, create: bool = False):
        psycopg = self._psycopg = _psycopg()
        self.url = url
        self.path = redacted(url)
        self._integrity_errors = (psycopg.errors.IntegrityError,)
        self._listener: Any = None
        self._notify = False
        self._in_transaction = False  # between _begin and _commit/_rollback
        self._driver_errors = (psycopg.OperationalError, psycopg.errors.InsufficientPrivilege)
        self.db = self._connect()
        try:
            self._open(create)
        except psycopg.errors.InsufficientPrivilege as exc:
            denied = self._denied(exc)
            self.db.close()
            raise denied from None
        except BaseException:
            self.db.close()
            raise

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=True)
        except self._psycopg.OperationalError as exc:
            raise LogUnavailableError(f"{self.path}: cannot reach the log's server: "
                                      f"{_one_line(exc)}") from None

    def _lost(self, exc: BaseException) -> LogUnavailableError:
        """The connection broke: its open transaction (if any) is rolled back whole by the
        server; the next statement outside a transaction connects again."""
        return LogUnavailableError(f"{self.path}: lost the connection to the log's server "
                                   f"(an open transaction is undone whole): {_one_line(exc)}")

    def _translated(self, exc: BaseException) -> BaseException:
        if isinstance(exc, self._psycopg.errors.InsufficientPrivilege):
            return self._denied(exc)
        return self._lost(exc)

    def _denied(self, exc: BaseException) -> EventflowError:
        return EventflowError(f"{self.path}: role {self.db.info.user!r} lacks rights on the log "
                              f"(grant it SELECT, INSERT on its tables): {_one_line(exc)}")

    def _open(self, create: bool) -> None:
        exists = self.db.execute("SELECT to_regclass('eventflow_schema') IS NOT NULL").fetchone()[0]
        if not exists:
            if not create:
                raise EventflowError(f"{self.path}: no event log here (run `eventflow init "
                                     "--store URL`, or `eventflow migrate-store --to URL`)")
            with self.db.transaction():
                self.db.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
                self.db.execute(SCHEMA)
                if self.db.execute("SELECT count(*) FROM eventflow_schema").fetchone()[0] == 0:
                    self.db.execute("INSERT INTO eventflow_schema VALUES (%s)", (SCHEMA_VERSION,))
        version = self.db.execute("SELECT max(version) FROM eventflow_schema").fetchone()[0]
        if version is not None and version > SCHEMA_VERSION:
            raise LogTooNewError(
                f"{self.path}: written by a newer eventflow (log schema {version}, this one "
                f"knows {SCHEMA_VERSION}): upgrade eventflow"
            )

    def close(self) -> None:
        self.db.close()
        if self._listener is not None:
            self._listener.close()

    def query(self, sql: str, args: Sequence[Any] = ()) -> Any:
        if self.db.broken:  # lost earlier (a server restart, a terminated backend)
            if self._in_transaction:  # never finish a transaction on another connection
                raise self._lost(RuntimeError("the connection broke inside this transaction"))
            self.db.close()
            self.db = self._connect()  # outside a transaction: connect again
        try:
            return self.db.execute(_pg(sql), args)
        except self._psycopg.OperationalError as exc:
            raise self._lost(exc) from None
        except self._psycopg.errors.InsufficientPrivilege as exc:
            raise self._denied(exc) from None

    def _begin(self) -> None:
        # Held until COMMIT/ROLLBACK: appends are serialised, so seq order is commit order.
        # One round trip (a fixed text, our own constant: no parameters to bind).
        self._notify = False
        self.query(_BEGIN_LOCKED)
        self._in_transaction = True

    def _commit(self) -> None:
        # NOTIFY is delivered at COMMIT, to followers (tail -f); sent with it in one trip.
        try:
            self.query("NOTIFY eventflow_appended; COMMIT" if self._notify else "COMMIT")
        finally:
            self._in_transaction = False

    def _rollback(self) -> None:
        self._in_transaction = False
        if not self.db.closed and not self.db.broken:
            # Lost just now: the server undoes the transaction anyway; say one thing, not two.
            with contextlib.suppress(self._psycopg.OperationalError):
                self.db.execute("ROLLBACK")

    def _insert_rows(self, rows: list[tuple[Any, ...]]) -> None:
        self._notify = True
        if len(rows) == 1:
            self.query("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows[0])
            return
        with self.db.cursor().copy(_COPY) as copy:  # a batch: COPY, the server's fast path
            for row in rows:
                copy.write_row(row)

    def wait_for_append(self, timeout: float) -> None:
        """LISTEN (on a connection of its own, opened on first use) until an append's NOTIFY
        arrives or ``timeout`` passes: a follower wakes within milliseconds of a commit."""
        if self._listener is not None and self._listener.broken:
            self._listener.close()  # the server restarted: listen again on a new connection
            self._listener = None
        try:
            if self._listener is None:
                self._listener = self._connect()
                self._listener.execute("LISTEN eventflow_appended")
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                pass
        except self._psycopg.OperationalError as exc:
            raise self._lost(exc) from None

    def backup(self, dest: Path) -> None:
        raise EventflowError(
            f"{self.path}: a PostgreSQL log is backed up by the server's tools: "
            "pg_dump (a copy) or WAL archiving (point-in-time recovery)"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
