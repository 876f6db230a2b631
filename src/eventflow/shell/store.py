"""The append-only event log: one SQLite file, WAL mode, one row per event.

``LogBase`` is the contract both logs keep (this SQLite one and ``store_pg``'s PostgreSQL
one); the SQL it runs is plain enough for both.

Writers take ``BEGIN IMMEDIATE`` and a busy timeout, so concurrent writers
queue instead of failing with 'database is locked'. Optimistic concurrency is
``UNIQUE(stream, version)``; idempotency is ``UNIQUE(idempotency_key)``; each
row's ``hash`` chains over the previous row's, so any edit of the file shows.
Triggers refuse UPDATE and DELETE.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson

from eventflow.core import events as ev
from eventflow.errors import (
    ConcurrencyError,
    EventflowError,
    LogCorruptError,
    LogTooNewError,
)
from eventflow.shell import clock

SCHEMA_VERSION = 1
GENESIS = "0" * 64
_ROW_COLUMNS = (
    "seq, stream, version, type, schema_version, data, meta, recorded_at, idempotency_key"
)
# What a fold needs (no meta, no key): read_raw(columns=FOLD_COLUMNS) for replays.
FOLD_COLUMNS = "seq, stream, version, type, schema_version, data, recorded_at"
_COLUMN_CHOICES = (_ROW_COLUMNS, FOLD_COLUMNS)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY,
    stream          TEXT    NOT NULL,
    version         INTEGER NOT NULL,
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
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only: DELETE refused'); END;
"""


_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


# The last row's seq and hash (NULLs when the log is empty), and one stream's version.
# Plain SQL both backends run (``?`` marks; the PostgreSQL store turns them into ``%s``).
_LAST_ROW = "(SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1)"
_HEAD = f"SELECT head.seq, head.hash FROM (SELECT 1) AS one LEFT JOIN {_LAST_ROW} AS head ON TRUE"
_HEAD_AND_VERSION = (
    "SELECT head.seq, head.hash, "
    "(SELECT coalesce(max(version), 0) FROM events WHERE stream = ?) "
    f"FROM (SELECT 1) AS one LEFT JOIN {_LAST_ROW} AS head ON TRUE"
)


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8."""
    return orjson.dumps(obj, option=_CANONICAL)


def utc_now() -> str:
    return clock.utc_now()


def row_hash(prev: str, seq: int, stream: str, version: int, type_: str, schema_version: int,
             data: str, meta: str, recorded_at: str, key: str | None) -> str:
    content = canonical([seq, stream, version, type_, schema_version, data, meta, recorded_at, key])
    return hashlib.sha256(prev.encode() + content).hexdigest()


# Field names per event class, for serialising events whose class keeps the default
# ``Event.to_data`` without attrs.asdict's per-call introspection (the append hot path).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _event_data(e: ev.Event) -> dict[str, Any]:
    cls = type(e)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        if cls.to_data is not ev.Event.to_data:
            return e.to_data()  # a class with its own serialisation
        names = _FIELD_NAMES[cls] = tuple(f.name for f in attrs.fields(cls))
    return {name: getattr(e, name) for name in names}


_HOST: tuple[int, str] | None = None


@attrs.frozen
class NewEvent:
    """An event to append: the stream it belongs to, an optional idempotency key and metadata."""

    stream: str
    event: ev.Event
    idempotency_key: str | None = None
    meta: dict[str, Any] = attrs.field(factory=dict)


def default_meta(actor: str = "cli") -> dict[str, Any]:
    global _HOST
    pid = os.getpid()
    if _HOST is None or _HOST[0] != pid:  # asked once per process, not once per append
        _HOST = (pid, socket.gethostname())
    return {"actor": actor, "host": _HOST[1], "pid": pid}


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def refuse_nul(stream: str, e: ev.Event, key: str | None, data: str, meta: str,
               meta_obj: dict[str, Any]) -> None:
    """No text in the log holds a NUL (\\x00): PostgreSQL's text cannot, and one contract
    holds on both stores. ``data`` and ``meta`` are the row's JSON, where orjson writes NUL as
    ``\\u0000``; only then are the values themselves looked through (a literal backslash-u0000
    in some text is no NUL)."""
    if not ("\x00" in stream or (key is not None and "\x00" in key) or (
            ("\\u0000" in data or "\\u0000" in meta)
            and (_has_nul(_event_data(e)) or _has_nul(meta_obj)))):
        return
    source = meta_obj.get("source")
    raise EventflowError(
        f"{f'{source}: ' if source else ''}refused: a {e.TYPE} event for {stream!r} has a NUL "
        "character (\\x00) in its text, which the log cannot hold (PostgreSQL's text "
        "cannot); nothing of this append was written")


def _where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """The ``WHERE`` text and arguments of those ``(clause, value)`` whose value is not None
    (the clauses are fixed text; only the values come from callers)."""
    kept = [(clause, value) for clause, value in conditions if value is not None]
    return " AND ".join(c for c, _ in kept) or "TRUE", [v for _, v in kept]


def _decode_row(row: Sequence[Any]) -> ev.Recorded:
    seq, stream, version, type_, schema_version, data, meta, recorded_at, key = row
    return ev.Recorded(
        seq=seq,
        stream=stream,
        version=version,
        event=ev.decode_json(type_, schema_version, data),
        recorded_at=recorded_at,
        meta=orjson.loads(meta),
        idempotency_key=key,
    )


class LogBase:
    """The event-store contract and everything in it that is plain SQL, shared by the SQLite
    log (``EventStore``) and the PostgreSQL one (``store_pg.PostgresEventStore``).

    A backend gives ``path`` (what error messages name), ``query`` (run SQL with ``?`` marks),
    ``_begin`` (start the one-writer-at-a-time transaction), ``_insert_rows``, ``_commit``,
    ``_rollback``, ``_integrity_errors``, ``close`` and ``backup``.
    """

    path: Any
    _integrity_errors: tuple[type[BaseException], ...] = ()
    # The driver's errors that ``_translated`` turns into an EventflowError (a lost server, a
    # role without rights), for the statements a backend runs outside ``query``.
    _driver_errors: tuple[type[BaseException], ...] = ()

    def _translated(self, exc: BaseException) -> BaseException:
        return exc

    def query(self, sql: str, args: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def _begin(self) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        self.query("COMMIT")

    def _rollback(self) -> None:
        self.query("ROLLBACK")

    def _insert_rows(self, rows: Iterable[tuple[Any, ...]], count: int | None = None
                     ) -> None:
        """Insert ``count`` rows (None: ``rows`` is a list), taking them from ``rows`` as it
        goes."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def backup(self, dest: Path) -> None:
        raise NotImplementedError

    def wait_for_append(self, timeout: float) -> None:
        """Return when another process may have appended, or after ``timeout`` seconds."""
        time.sleep(timeout)

    def __enter__(self) -> LogBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------
    def append(
        self,
        stream: str,
        events: Sequence[ev.Event],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> list[ev.Recorded]:
        """Append ``events`` to one stream atomically.

        ``expected_version`` is the stream version the caller decided on (None: don't check);
        a mismatch raises ConcurrencyError and appends nothing. ``idempotency_key`` names the
        first event: if it is already stored, the stored events are returned and nothing is
        appended (a retry of the same intent is not a duplicate).
        """
        keys = [idempotency_key] + [None] * (len(events) - 1) if events else []
        items = [NewEvent(stream, e, k, meta or {}) for e, k in zip(events, keys, strict=True)]
        return self.append_many(items, expected_versions={stream: expected_version})

    def append_many(
        self,
        items: Sequence[NewEvent],
        *,
        expected_versions: dict[str, int | None] | None = None,
    ) -> list[ev.Recorded]:
        """Append a batch (any streams) in one transaction; see ``append``."""
        if not items:
            return []
        self._begin()
        try:
            keys = [i.idempotency_key for i in items if i.idempotency_key is not None]
            stored = self._by_keys(keys) if keys else {}
            if stored and len(stored) == len(keys) and len(keys) == len(items):
                self._commit()
                return [stored[k] for k in keys]
            if stored and items[0].idempotency_key in stored:
                # The group's intent is already recorded: the whole group was appended then.
                self._commit()
                return [stored[items[0].idempotency_key]]
            seq, prev, versions = self._head_and_versions({i.stream for i in items})
            seq, prev = seq or 0, prev or GENESIS
            for stream, expected in (expected_versions or {}).items():
                if expected is not None and versions.get(stream, expected) != expected:
                    raise ConcurrencyError(
                        f"stream {stream!r} is at version {versions[stream]}, "
                        f"expected {expected}: someone else appended first"
                    )
            now = utc_now()
            out: list[ev.Recorded] = []
            fresh = sum(1 for i in items if i.idempotency_key is None
                        or i.idempotency_key not in stored)
            # Rows are made as the backend consumes them: PostgreSQL's COPY sends each full
            # buffer while the next rows are hashed, so the server works alongside.
            self._insert_rows(self._new_rows(items, stored, versions, seq, prev, now, out),
                              fresh)
            self._commit()
            return out
        except self._integrity_errors as exc:
            self._rollback()
            raise ConcurrencyError(f"append refused by the log: {exc}") from exc
        except self._driver_errors as exc:  # a lost server, a role without rights: one line
            self._rollback()
            raise self._translated(exc) from None
        except BaseException:
            self._rollback()
            raise

    @staticmethod
    def _new_rows(items: Sequence[NewEvent], stored: dict[str, ev.Recorded],
                  versions: dict[str, int], seq: int, prev: str, now: str,
                  out: list[ev.Recorded]) -> Iterator[tuple[Any, ...]]:
        """The rows to insert, seq after seq, each hash chained on the one before; ``out``
        gets every item's Recorded (a stored one for a key already in the log)."""
        base_meta = default_meta()
        dumps, sha256, option = orjson.dumps, hashlib.sha256, _CANONICAL
        recorded, event_data = ev.Recorded, _event_data
        metas: dict[int, tuple[dict[str, Any], str]] = {}  # id(item.meta) -> merged, JSON
        plain = (base_meta, dumps(base_meta, option=option).decode())  # no meta of its own
        prev_bytes = prev.encode()
        for item in items:
            key = item.idempotency_key
            if key is not None and key in stored:
                out.append(stored[key])
                continue
            seq += 1
            stream = item.stream
            version = versions[stream] = versions[stream] + 1
            e = item.event
            data = dumps(event_data(e), option=option).decode()
            own = item.meta
            merged = metas.get(id(own)) if own else plain
            if merged is None:
                meta_obj = {**base_meta, **own}
                merged = metas[id(own)] = (meta_obj, dumps(meta_obj, option=option).decode())
            meta = merged[1]
            if "\\u0000" in data or "\\u0000" in meta or "\x00" in stream or (
                    key is not None and "\x00" in key):
                refuse_nul(stream, e, key, data, meta, merged[0])
            type_, sv = e.TYPE, e.VERSION
            # The same bytes as row_hash(): canonical JSON of the row, chained on prev.
            h = sha256(prev_bytes + dumps(
                [seq, stream, version, type_, sv, data, meta, now, key], option=option
            )).hexdigest()
            prev_bytes = h.encode()
            out.append(recorded(seq, stream, version, e, now, dict(merged[0]), key))
            yield (seq, stream, version, type_, sv, data, meta, now, key, h)

    def _head_and_versions(self, streams: set[str]
                           ) -> tuple[int | None, str | None, dict[str, int]]:
        """The log's last seq and hash (None, None when empty) and each stream's version."""
        if len(streams) == 1:  # the common case: the log's head and the stream in one query
            (only,) = streams
            seq, prev, version = self.query(_HEAD_AND_VERSION, (only,)).fetchone()
            return seq, prev, {only: version}
        seq, prev = self.query(_HEAD).fetchone()
        return seq, prev, self._versions(streams)

    def _versions(self, streams: set[str]) -> dict[str, int]:
        """Current version of each stream: a few queries per batch, not one per stream."""
        versions = dict.fromkeys(streams, 0)
        names = list(streams)
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            marks = ",".join("?" * len(chunk))
            versions.update(self.query(
                f"SELECT stream, max(version) FROM events WHERE stream IN ({marks}) "
                "GROUP BY stream",
                chunk,
            ))
        return versions

    def _by_keys(self, keys: list[str]) -> dict[str, ev.Recorded]:
        found: dict[str, ev.Recorded] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.query(
                f"SELECT {_ROW_COLUMNS} FROM events WHERE idempotency_key IN ({marks})", chunk
            ):
                found[row[8]] = _decode_row(row)
        return found

    # -- reading ----------------------------------------------------------------------------
    def last_seq(self) -> int:
        return self.query("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]

    def stream_version(self, stream: str) -> int:
        return self.query(
            "SELECT coalesce(max(version), 0) FROM events WHERE stream = ?", (stream,)
        ).fetchone()[0]

    def by_key(self, key: str) -> ev.Recorded | None:
        return self._by_keys([key]).get(key)

    def read(
        self,
        *,
        stream: str | None = None,
        after: int = 0,
        until_seq: int | None = None,
        until_time: str | None = None,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[ev.Recorded]:
        """Events in log order, filtered; decoding upcasts old shapes."""
        for row in self.read_raw(stream=stream, after=after, until_seq=until_seq,
                                 until_time=until_time, types=types, limit=limit):
            yield _decode_row(row)

    def read_raw(
        self,
        *,
        stream: str | None = None,
        after: int = 0,
        until_seq: int | None = None,
        until_time: str | None = None,
        types: Iterable[str] | None = None,
        limit: int | None = None,
        columns: str = _ROW_COLUMNS,
    ) -> Iterator[tuple[Any, ...]]:
        """Rows (``seq, stream, version, type, schema_version, data, meta, recorded_at,
        idempotency_key``, or ``columns=FOLD_COLUMNS``) in log order, undecoded."""
        if columns not in _COLUMN_CHOICES:
            raise ValueError(f"read_raw: unknown column list {columns!r}")
        where, args = _where(("seq > ?", after), ("stream = ?", stream),
                             ("seq <= ?", until_seq), ("recorded_at <= ?", until_time))
        type_list = list(types) if types is not None else None
        if type_list:
            where += f" AND type IN ({','.join('?' * len(type_list))})"
            args.extend(type_list)
        sql = f"SELECT {columns} FROM events WHERE {where} ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        # Straight from the cursor: re-yielding fetchmany() batches row by row cost more.
        return self.query(sql, args)

    def tail(self, n: int) -> list[ev.Recorded]:
        rows = self.query(
            f"SELECT {_ROW_COLUMNS} FROM events ORDER BY seq DESC LIMIT ?", (n,)
        ).fetchall()
        return [_decode_row(r) for r in reversed(rows)]

    def streams(self) -> list[str]:
        """Every stream id, sorted."""
        return [r[0] for r in self.query("SELECT DISTINCT stream FROM events ORDER BY stream")]

    def last_seq_until(self, *, until_seq: int | None = None, until_time: str | None = None
                       ) -> int:
        """The last seq a replay up to ``until_seq`` / ``until_time`` includes."""
        where, args = _where(("seq <= ?", until_seq), ("recorded_at <= ?", until_time))
        return self.query(
            f"SELECT coalesce(max(seq), 0) FROM events WHERE {where}", args
        ).fetchone()[0]

    def read_streams(self, *, lo: str | None = None, hi: str | None = None,
                     until_seq: int, until_time: str | None = None
                     ) -> Iterator[tuple[Any, ...]]:
        """``FOLD_COLUMNS`` rows of the material streams ``lo <= stream < hi``, stream by
        stream, each in version order (through the ``(stream, version)`` index)."""
        where, args = _where(("stream != ?", ev.SYSTEM_STREAM), ("seq <= ?", until_seq),
                             ("stream >= ?", lo), ("stream < ?", hi),
                             ("recorded_at <= ?", until_time))
        sql = f"SELECT {FOLD_COLUMNS} FROM events WHERE {where} ORDER BY stream, version"
        return self._stream(sql, args)

    def _stream(self, sql: str, args: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """The rows of a long read that the caller consumes to the end before its next query."""
        return self.query(sql, args)

    # -- integrity --------------------------------------------------------------------------
    def verify_chain(self) -> tuple[int, list[str]]:
        """Walk the hash chain. Return (events checked, problems); problems name the seq."""
        problems: list[str] = []
        prev = GENESIS
        expected_seq = 0
        versions: dict[str, int] = {}
        count = 0
        cursor = self.query(f"SELECT {_ROW_COLUMNS}, hash FROM events ORDER BY seq")
        for row in cursor:
            seq, stream, version, type_, sv, data, meta, at, key, h = row
            count += 1
            expected_seq += 1
            if seq != expected_seq:
                problems.append(f"seq {seq}: gap in the log (expected {expected_seq})")
                expected_seq = seq
            if row_hash(prev, seq, stream, version, type_, sv, data, meta, at, key) != h:
                problems.append(f"seq {seq}: hash mismatch (the row was altered)")
                break
            if version != versions.get(stream, 0) + 1:
                problems.append(f"seq {seq}: stream {stream!r} version {version} is not gapless")
            versions[stream] = version
            try:
                ev.decode(type_, sv, orjson.loads(data))
            except ev.UnknownEventError as exc:
                problems.append(f"seq {seq}: preserved but not understood: {exc}")
            except orjson.JSONDecodeError:
                problems.append(f"seq {seq}: data is not JSON")
            prev = h
        return count, problems


class EventStore(LogBase):
    """The SQLite log. Open with ``EventStore(path)``; ``create=True`` makes a new one."""

    _integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path | str, *, create: bool = False, synchronous: str = "FULL"):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise EventflowError(
                f"{self.path}: no event log here (run `eventflow init`, or restore from a backup)"
            )
        try:
            self.db = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA busy_timeout = 60000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'FULL' else 'NORMAL'}")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                # IF NOT EXISTS everywhere: two processes creating the log at once is harmless.
                self.db.executescript(
                    f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;"
                )
            elif version > SCHEMA_VERSION:
                raise LogTooNewError(
                    f"{self.path}: written by a newer eventflow (log schema {version}, this one "
                    f"knows {SCHEMA_VERSION}): upgrade eventflow"
                )
            self.db.execute("SELECT count(*) FROM events WHERE seq = 1").fetchone()
        except sqlite3.DatabaseError as exc:
            raise LogCorruptError(
                f"{self.path}: not a readable event log ({exc}); restore it with "
                "`eventflow restore BACKUP`"
            ) from exc

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> EventStore:
        return self

    def query(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.db.execute(sql, args)

    def _begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")  # one writer at a time: seq and hash chain in order

    def _insert_rows(self, rows: Iterable[tuple[Any, ...]], count: int | None = None
                     ) -> None:
        if (len(rows) if count is None else count) == 1:  # type: ignore[arg-type]
            (row,) = rows
            self.db.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", row)
        else:
            self.db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def wait_for_append(self, timeout: float) -> None:
        """Poll SQLite's ``data_version`` (it changes when another connection commits) until
        it changes or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        before = self.db.execute("PRAGMA data_version").fetchone()[0]
        while time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            if self.db.execute("PRAGMA data_version").fetchone()[0] != before:
                return

    def backup(self, dest: Path) -> None:
        """A consistent online copy of the log (SQLite backup API), safe while writers run."""
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".partial")
        if tmp.exists():
            tmp.unlink()
        target = sqlite3.connect(tmp)
        try:
            self.db.backup(target)
        finally:
            target.close()
        os.replace(tmp, dest)


def open_store(location: Path | str, *, create: bool = False) -> LogBase:
    """The log at ``location``: a ``postgresql://`` URL, or else a SQLite file's path."""
    if isinstance(location, str) and location.startswith(("postgresql://", "postgres://")):
        from eventflow.shell.store_pg import PostgresEventStore

        return PostgresEventStore(location, create=create)
    return EventStore(location, create=create)
