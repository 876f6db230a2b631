"""The event log on a PostgreSQL server: the same contract as the SQLite one (``LogBase``).

Seq order is commit order. Every append takes one transaction-level advisory lock before it
reads the log's head, and holds it until COMMIT; so the writer of seq N+1 starts only after
seq N is committed and visible. A reader (``tail -f``, catch-up) that has seen seq N never
meets a later commit with a lower seq, and the hash chain links rows in that same order.
``UNIQUE (stream, version)`` and ``UNIQUE (idempotency_key)`` hold across hosts as on SQLite;
triggers refuse UPDATE, DELETE and TRUNCATE.

Appending one event is one round trip: ``eventflow_append_one``, a function in the log's
schema, takes the lock, answers a known idempotency key with the stored row, checks the
expected version, reads the head, chains the hash and inserts, all in the implicit
transaction of one ``SELECT`` that commits on its own (the lock is held until that commit).
The hash is ``store.row_hash``'s by construction: the client sends the orjson bytes of the
row's canonical JSON except ``seq`` and ``version``, and the hash it expects for the head it
last saw; the server takes that hash only when seq, previous hash and stream version are
exactly those, and otherwise runs ``sha256`` over the same bytes itself. A connection's next
append to a stream it knows is cheaper still: one plain ``INSERT`` of the row as the client
computed it, which appends only if that row chains on the log's real head (``_APPEND_NEXT``);
otherwise nothing is written and the function answers. Batches and several events at once
keep the shared path (one transaction, COPY).

The password never passes through eventflow: libpq finds it (``~/.pgpass``, ``PGPASSWORD``,
a service file), and ``path`` (what messages name) is the URL with any password removed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from hashlib import sha256
from pathlib import Path
from typing import Any

import orjson

from eventflow.core import events as ev
from eventflow.errors import ConcurrencyError, EventflowError, LogTooNewError, LogUnavailableError
from eventflow.shell.store import (
    _CANONICAL,
    _ROW_COLUMNS,
    SCHEMA_VERSION,
    LogBase,
    NewEvent,
    _decode_row,
    _event_data,
    default_meta,
    refuse_nul,
    utc_now,
)

DISK_FULL = "53100"  # SQLSTATE disk_full

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
""" + f"""
CREATE OR REPLACE FUNCTION eventflow_append_one(
    p_stream TEXT, p_expected BIGINT, p_type TEXT, p_schema_version INTEGER, p_data TEXT,
    p_meta TEXT, p_recorded_at TEXT, p_key TEXT, p_stream_json TEXT, p_hash_tail TEXT,
    p_guess_prev TEXT, p_guess_seq BIGINT, p_guess_version BIGINT, p_guess_hash TEXT,
    OUT o_outcome TEXT, OUT o_seq BIGINT, OUT o_stream TEXT, OUT o_version BIGINT,
    OUT o_type TEXT, OUT o_schema_version INTEGER, OUT o_data TEXT, OUT o_meta TEXT,
    OUT o_recorded_at TEXT, OUT o_hash TEXT)
LANGUAGE plpgsql AS $$
BEGIN
    -- (IF on a call, not PERFORM: plpgsql evaluates it without a query of its own.)
    IF pg_advisory_xact_lock({APPEND_LOCK}) IS NULL THEN RETURN; END IF;
    -- Each statement below sees every append committed before the lock was granted.
    IF p_key IS NOT NULL THEN
        SELECT 'stored', e.seq, e.stream, e.version, e.type, e.schema_version, e.data,
               e.meta, e.recorded_at
          INTO o_outcome, o_seq, o_stream, o_version, o_type, o_schema_version, o_data, o_meta,
               o_recorded_at
          FROM events AS e WHERE e.idempotency_key = p_key;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    -- The row's canonical JSON is '[seq,stream,version' || p_hash_tail (the client's orjson
    -- bytes of the rest), chained on the previous row's hash as in store.row_hash. The client
    -- sends that hash ready-made for the head it expects (its own last append): taken only
    -- when the head's seq and hash and the stream's version are exactly those.
    INSERT INTO events
    SELECT n.seq, p_stream, n.version, p_type, p_schema_version, p_data, p_meta, p_recorded_at,
           p_key, CASE WHEN n.seq = p_guess_seq AND n.version = p_guess_version
                            AND n.prev = p_guess_prev THEN p_guess_hash
                       ELSE encode(sha256(convert_to(n.prev || '[' || n.seq || ',' || p_stream_json
                                                     || ',' || n.version || p_hash_tail, 'UTF8')),
                                   'hex') END
      FROM (SELECT coalesce(head.seq, 0) + 1 AS seq, coalesce(head.hash, repeat('0', 64)) AS prev,
                   cur.version + 1 AS version
              FROM (SELECT coalesce(max(e.version), 0) AS version FROM events AS e
                     WHERE e.stream = p_stream) AS cur
              LEFT JOIN (SELECT e.seq, e.hash FROM events AS e ORDER BY e.seq DESC LIMIT 1)
                   AS head ON TRUE
             WHERE p_expected IS NULL OR cur.version = p_expected) AS n
    RETURNING seq, version, hash INTO o_seq, o_version, o_hash;
    IF NOT FOUND THEN
        o_outcome := 'conflict';
        SELECT coalesce(max(e.version), 0) INTO o_version FROM events AS e
         WHERE e.stream = p_stream;
        RETURN;
    END IF;
    IF pg_notify('eventflow_appended', '') IS NULL THEN RETURN; END IF;
    o_outcome := 'new';
END $$;
"""
_APPEND_ONE = "SELECT * FROM eventflow_append_one(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# The next append of a connection that made the last one, to a stream it has appended to: a
# plain INSERT of the row the client computed (seq, version and hash for the head it saw),
# cheaper than the function's call by about a raw INSERT's own time. The row goes in only
# if the rows it chains on are there (seq - 1 with that hash; the stream's version - 1), if
# seq, the (stream, version) and the key are free (ON CONFLICT: checked against the latest
# commits, whatever the statement's snapshot), and if the append lock is free at once
# (so no batch or function append is under way); the CASE takes the lock before the NOTIFY.
# Otherwise nothing is written and the function answers (a known key, a version conflict,
# another writer's append in between). Seq order stays commit order: seq - 1 is committed.
_APPEND_NEXT = f"""
INSERT INTO events
SELECT v.* FROM (VALUES (?::bigint, ?::text, ?::bigint, ?::text, ?::integer, ?::text, ?::text,
                         ?::text, ?::text, ?::text))
       AS v (seq, stream, version, type, schema_version, data, meta, recorded_at,
             idempotency_key, hash)
 WHERE EXISTS (SELECT FROM events AS e WHERE e.seq = v.seq - 1 AND e.hash = ?)
   AND EXISTS (SELECT FROM events AS e WHERE e.stream = v.stream AND e.version = v.version - 1)
   AND CASE WHEN pg_try_advisory_xact_lock({APPEND_LOCK})
            THEN pg_notify('eventflow_appended', '') IS NOT NULL ELSE FALSE END
ON CONFLICT DO NOTHING
"""
# The head and, per stream of the batch, its last version: one index probe per stream (a
# plain ``stream = ANY(...)`` lets the planner pick a scan of the whole table as it grows).
_HEAD_AND_VERSIONS = """
SELECT head.seq, head.hash, v.names, v.versions
  FROM (SELECT array_agg(s.name) AS names, array_agg(last.version) AS versions
          FROM unnest(?::text[]) AS s(name)
         CROSS JOIN LATERAL (SELECT e.version FROM events AS e WHERE e.stream = s.name
                              ORDER BY e.version DESC LIMIT 1) AS last) AS v
  LEFT JOIN (SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1) AS head ON TRUE
"""
_BY_KEYS = f"SELECT {_ROW_COLUMNS} FROM events WHERE idempotency_key = ANY(?::text[])"
_HAS_APPEND_ONE = ("SELECT to_regprocedure('eventflow_append_one(text, bigint, text, integer, "
                   "text, text, text, text, text, text, text, bigint, bigint, text)') IS NOT NULL")

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
        # The head (seq, hash) and stream versions as of this connection's last one-event
        # append: the next one sends its hash computed for them (the server checks).
        self._head: tuple[int, str] | None = None
        self._versions_seen: dict[str, int] = {}
        self._next_wait = 0  # appends to leave to the function after _APPEND_NEXT missed
        self._next_backoff = 0  # how many the last miss left (doubling while misses go on)
        self._cursor: Any = None  # query(reuse=True)'s
        self._in_transaction = False  # between _begin and _commit/_rollback
        self._last_row: tuple[int, str] | None = None  # this transaction's last (seq, hash)
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
        if getattr(exc, "sqlstate", None) == DISK_FULL:
            # The server is up and undid the statement's transaction: say what it lacks.
            return LogUnavailableError(f"{self.path}: the log's server has no disk space left "
                                       f"(nothing of this transaction was written; free space "
                                       f"and retry): {_one_line(exc)}")
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
        # The one-trip append hashes in SQL: its bytes are row_hash's only in UTF-8. A log
        # made before the function existed keeps the shared path.
        self._one_trip = (self.db.info.parameter_status("server_encoding") == "UTF8"
                          and self.db.execute(_HAS_APPEND_ONE).fetchone()[0])
        if version is not None and version > SCHEMA_VERSION:
            raise LogTooNewError(
                f"{self.path}: written by a newer eventflow (log schema {version}, this one "
                f"knows {SCHEMA_VERSION}): upgrade eventflow"
            )

    def close(self) -> None:
        self.db.close()
        if self._listener is not None:
            self._listener.close()

    def query(self, sql: str, args: Sequence[Any] = (), *, reuse: bool = False) -> Any:
        """``sql`` run (``?`` marks); ``reuse``: on one cursor kept for it, for a statement
        whose result is read before the next such one (a new cursor costs microseconds)."""
        if self.db.broken:  # lost earlier (a server restart, a terminated backend)
            if self._in_transaction:  # never finish a transaction on another connection
                raise self._lost(RuntimeError("the connection broke inside this transaction"))
            self.db.close()
            self.db = self._connect()  # outside a transaction: connect again
        try:
            if reuse:
                cursor = self._cursor
                if cursor is None or cursor.connection is not self.db:
                    cursor = self._cursor = self.db.cursor()
                return cursor.execute(_pg(sql), args)
            return self.db.execute(_pg(sql), args)
        except self._psycopg.OperationalError as exc:
            raise self._lost(exc) from None
        except self._psycopg.errors.InsufficientPrivilege as exc:
            raise self._denied(exc) from None

    def _stream(self, sql: str, args: Sequence[Any]) -> Any:
        # In chunks: the server sends the next rows while the caller folds these (a replay),
        # and a million rows are never all in memory at once.
        return self.db.cursor().stream(_pg(sql), args, size=2000)

    def _begin(self) -> None:
        # Held until COMMIT/ROLLBACK: appends are serialised, so seq order is commit order.
        # One round trip (a fixed text, our own constant: no parameters to bind).
        self._notify, self._last_row = False, None
        self.query(_BEGIN_LOCKED)
        self._in_transaction = True

    def _commit(self) -> None:
        # NOTIFY is delivered at COMMIT, to followers (tail -f); sent with it in one trip.
        last, self._last_row = self._last_row, None
        try:
            self.query("NOTIFY eventflow_appended; COMMIT" if self._notify else "COMMIT")
        except LogUnavailableError as exc:
            if not self.db.broken or last is None:  # the server answered (it undid it all),
                raise  # or nothing was written: nothing to find out
            self._in_transaction = False
            seq, row_hash = last
            self._after_lost_commit(
                exc, f"seq {seq}", lambda db: db.execute(
                    "SELECT 1 FROM events WHERE seq = %s AND hash = %s", last).fetchone())
        finally:
            self._in_transaction = False

    def _after_lost_commit(self, exc: LogUnavailableError, what: str,
                           find: Callable[[Any], Any]) -> Any:
        """The connection broke while the server may have been committing an append: the
        outcome is unknown to the server's reply. Look on a new connection, once the append
        lock is ours (so the old transaction has ended, committed or undone): ``find``'s
        answer (not None: it committed) is returned; otherwise one line says what is known."""
        try:
            with (self._psycopg.connect(self.url, autocommit=True, connect_timeout=10) as db,
                  db.transaction()):
                db.execute("SET LOCAL lock_timeout = '30s'")
                db.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
                found = find(db)
        except self._psycopg.Error as again:
            raise LogUnavailableError(
                f"{self.path}: lost the connection to the log's server during the commit of "
                f"an append: its outcome is unknown (it may have been written) and could not "
                f"be checked ({_one_line(again)}); when the server answers, `eventflow tail` "
                f"shows whether {what} is in the log, and a retry with the same idempotency "
                f"key is safe (the stored event is answered, nothing is appended twice): "
                f"{_one_line(exc)}") from None
        if found is None:
            raise LogUnavailableError(
                f"{self.path}: lost the connection to the log's server during the commit of "
                f"an append; looked again on a new connection: it was not written (nothing "
                f"of it is in the log; retry it): {_one_line(exc)}") from None
        return found

    def _rollback(self) -> None:
        self._in_transaction = False
        if not self.db.closed and not self.db.broken:
            # Lost just now: the server undoes the transaction anyway; say one thing, not two.
            with contextlib.suppress(self._psycopg.OperationalError):
                self.db.execute("ROLLBACK")

    def append(
        self,
        stream: str,
        events: Sequence[ev.Event],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> list[ev.Recorded]:
        # LogBase.append would reach _append_one too, through append_many; going straight
        # there skips building the NewEvent: 1.4 of the 7.7 us of Python a single append
        # costs, on the path whose goal (0.8x a raw INSERT) is met by a few percent.
        if len(events) != 1 or not self._one_trip:
            return super().append(stream, events, expected_version=expected_version,
                                  idempotency_key=idempotency_key, meta=meta)
        return self._append_one(stream, events[0], idempotency_key, meta, expected_version)

    def append_many(
        self,
        items: Sequence[NewEvent],
        *,
        expected_versions: dict[str, int | None] | None = None,
    ) -> list[ev.Recorded]:
        if len(items) != 1 or not self._one_trip:
            return super().append_many(items, expected_versions=expected_versions)
        (item,) = items
        return self._append_one(item.stream, item.event, item.idempotency_key, item.meta,
                                (expected_versions or {}).get(item.stream))

    def _append_one(self, stream: str, e: ev.Event, key: str | None,
                    own_meta: dict[str, Any] | None, expected: int | None
                    ) -> list[ev.Recorded]:
        """One event in one round trip (see the module's docstring)."""
        meta = {**default_meta(), **own_meta} if own_meta else default_meta()
        now = utc_now()
        dumps, option, type_, sv = orjson.dumps, _CANONICAL, e.TYPE, e.VERSION
        data = dumps(_event_data(e), option=option).decode()
        meta_json = dumps(meta, option=option).decode()
        if "\\u0000" in data or "\\u0000" in meta_json or "\x00" in stream or (
                key is not None and "\x00" in key):
            refuse_nul(stream, e, key, data, meta_json, meta)
        # row_hash's canonical JSON after ``[seq,stream,version``: the same orjson bytes.
        tail = "," + dumps([type_, sv, data, meta_json, now, key], option=option).decode()[1:]
        stream_json = dumps(stream).decode()
        guess: tuple[Any, ...] = (None, None, None, None)
        if self._head is not None:  # the head as of our last append: hash the row for it
            prev, seq = self._head[1], self._head[0] + 1
            version = self._versions_seen.get(stream, 0) + 1
            row_json = f"[{seq},{stream_json},{version}{tail}"
            guess = (prev, seq, version, sha256((prev + row_json).encode()).hexdigest())
            if self._next_wait:
                self._next_wait -= 1
            elif (stream in self._versions_seen
                    and expected in (None, version - 1)
                    and self._append_next(guess, stream, type_, sv, data, meta_json, now, key)):
                self._head = (seq, guess[3])
                self._versions_seen[stream] = version
                return [ev.Recorded(seq, stream, version, e, now, meta, key)]
        args = (stream, expected, type_, sv, data, meta_json, now, key, stream_json, tail, *guess)
        try:  # through query(), like every other statement (psycopg prepares it by the 5th)
            row = self.query(_APPEND_ONE, args).fetchone()
        except self._integrity_errors as exc:  # only a writer outside eventflow gets here
            raise ConcurrencyError(f"append refused by the log: {exc}") from exc
        except LogUnavailableError as exc:
            if not self.db.broken:  # the server answered: it undid the statement
                raise
            # Lost while the statement (which commits on its own) ran: find the event.
            found = (("idempotency_key = %s", (key,)) if key is not None else
                     ("recorded_at = %s AND stream = %s AND type = %s AND data = %s "
                      "AND meta = %s", (now, stream, type_, data, meta_json)))
            return [self._after_lost_commit(
                exc, f"{stream!r}'s event recorded at {now}",
                lambda db: _first_decoded(db, found[0], found[1]))]
        outcome, seq, version = row[0], row[1], row[3]
        if outcome == "new":
            self._head = (seq, row[9])
            if len(self._versions_seen) >= 100_000:  # a guess, not a record: kept bounded
                self._versions_seen.clear()
            self._versions_seen[stream] = version
            return [ev.Recorded(seq, stream, version, e, now, meta, key)]
        if outcome == "stored":
            return [_decode_row((*row[1:9], key))]
        self._versions_seen[stream] = version
        raise ConcurrencyError(f"stream {stream!r} is at version {version}, "
                               f"expected {expected}: someone else appended first")

    def _append_next(self, guess: tuple[Any, ...], stream: str, type_: str, sv: int,
                     data: str, meta: str, now: str, key: str | None) -> bool:
        """``_APPEND_NEXT``: whether it appended the row."""
        prev, seq, version, row_hash = guess
        args = (seq, stream, version, type_, sv, data, meta, now, key, row_hash, prev)
        try:
            if self.query(_APPEND_NEXT, args, reuse=True).rowcount == 1:
                self._next_backoff = 0
                return True
        except LogUnavailableError as exc:
            if not self.db.broken:  # the server answered: it undid the statement
                raise
            # Lost while the statement (which commits on its own) ran: is the row there?
            return self._after_lost_commit(exc, f"seq {seq}", lambda db: db.execute(
                "SELECT 1 FROM events WHERE seq = %s AND hash = %s", (seq, row_hash),
            ).fetchone()) is not None
        # Another writer appended (or holds the lock) meanwhile: leave the next 1, 2, 4, 8
        # appends to the function while that goes on (it waits its turn and reads the head).
        self._next_backoff = min(2 * self._next_backoff + 1, 8)
        self._next_wait = self._next_backoff
        return False

    # A batch's lookups bind one array instead of ``IN (?, ?, ...)``: one short statement that
    # psycopg prepares once, rather than a new 500-mark text to parse and plan per chunk.
    def _head_and_versions(self, streams: set[str]
                           ) -> tuple[int | None, str | None, dict[str, int]]:
        if len(streams) == 1:
            return super()._head_and_versions(streams)
        seq, prev, names, found = self.query(_HEAD_AND_VERSIONS, (list(streams),)).fetchone()
        versions = dict.fromkeys(streams, 0)
        versions.update(zip(names or (), found or (), strict=True))
        return seq, prev, versions

    def _by_keys(self, keys: list[str]) -> dict[str, ev.Recorded]:
        return {row[8]: _decode_row(row) for row in self.query(_BY_KEYS, (keys,))}

    def _insert_rows(self, rows: Iterable[tuple[Any, ...]], count: int | None = None
                     ) -> None:
        self._notify = True
        if (len(rows) if count is None else count) == 1:  # type: ignore[arg-type]
            (row,) = rows
            self.query("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", row)
            self._last_row = (row[0], row[9])
            return
        row = None
        with self.db.cursor().copy(_COPY) as copy:  # a batch: COPY, the server's fast path
            for row in rows:  # noqa: B007 - the last row is kept
                copy.write_row(row)
        if row is not None:  # seq, hash: in the log once (and only if) it commits
            self._last_row = (row[0], row[9])

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


def _first_decoded(db: Any, where: str, args: tuple[Any, ...]) -> ev.Recorded | None:
    """The first row of ``events WHERE {where}`` (fixed text; values bound), decoded."""
    row = db.execute(f"SELECT {_ROW_COLUMNS} FROM events WHERE {where} ORDER BY seq LIMIT 1",
                     args).fetchone()
    return None if row is None else _decode_row(row)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
