"""Projections: the read models folded from the log into ``projections.db``.

A full rebuild is ``shell.replay``; catching up re-folds only the streams that
changed since the stored ``last_seq``, and writes their rows and the new
``last_seq`` in the same transaction, so a crash leaves either the old or the
new view, never a mix.
"""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventflow.core import events as ev
from eventflow.core.state import MaterialState, apply_event
from eventflow.errors import EventflowError, IllegalTransition, ProjectionStale
from eventflow.resources import data_text
from eventflow.shell.store import FOLD_COLUMNS, LogBase

if TYPE_CHECKING:
    from eventflow.shell.project import Project

TABLES = ("materials", "calculations", "properties", "errors")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a fold builds its (acyclic) object graph.

    A replay allocates millions of objects that all stay alive; the collector would walk
    the growing heap again and again for nothing (a third of a 1M-event replay's time).
    Reference counting still frees everything; the collector is restored afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def fold_log(
    store: LogBase,
    *,
    streams: Iterable[str] | None = None,
    until_seq: int | None = None,
    until_time: str | None = None,
) -> tuple[dict[str, MaterialState], int]:
    """Fold the log (or only ``streams``) into material states; return them and the last seq.

    This is the replay hot path (a million events should take seconds): it reads only the
    columns the fold needs (not ``meta``, which the fold never looks at) and runs with the
    cyclic garbage collector paused. Events are decoded (and upcast) by ``ev.decode_json``.
    """
    with gc_paused():
        return _fold(store, streams, until_seq, until_time)


def _fold(
    store: LogBase,
    streams: Iterable[str] | None,
    until_seq: int | None,
    until_time: str | None,
) -> tuple[dict[str, MaterialState], int]:
    states: dict[str, MaterialState] = {}
    last = 0
    decode = ev.decode_json
    system = ev.SYSTEM_STREAM
    if streams is None:
        sources: Iterable[Iterable[tuple[Any, ...]]] = [
            store.read_raw(until_seq=until_seq, until_time=until_time, columns=FOLD_COLUMNS)
        ]
    else:
        sources = [
            store.read_raw(stream=s, until_seq=until_seq, columns=FOLD_COLUMNS) for s in streams
        ]
    seq, stream, type_ = 0, "", ""
    try:
        for rows in sources:
            for seq, stream, version, type_, sv, data, at in rows:
                if seq > last:
                    last = seq
                if stream == system:
                    continue
                state = states.get(stream)
                if state is None:
                    state = states[stream] = MaterialState(stream)
                apply_event(state, decode(type_, sv, data), seq, version, at)
    except (ev.UnknownEventError, IllegalTransition) as exc:
        raise unreplayable(store.path, seq, type_, stream, exc) from None
    return states, last


def unreplayable(log: Path, seq: int, type_: str, stream: str, exc: Exception) -> EventflowError:
    """The one-line error for an event the fold cannot take (unknown, or illegal)."""
    return EventflowError(f"{log}: seq {seq} ({type_} of {stream}) cannot be replayed: {exc}")


def folded_batches(store: LogBase, lo: str | None, hi: str | None, last: int,
                   until_time: str | None, batch: int) -> Iterator[list[MaterialState]]:
    """Fold the streams ``lo <= id < hi`` (in stream order, up to ``last``/``until_time``)
    and yield their final states ``batch`` materials at a time, so memory does not grow with
    the log. The list yielded is reused: take its rows before asking for the next one."""
    rows = store.read_streams(lo=lo, hi=hi, until_seq=last, until_time=until_time)
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
                    if len(done) >= batch:
                        yield done
                        done.clear()
                state = MaterialState(stream)
            apply_event(state, decode(type_, sv, data), seq, version, at)
    except (ev.UnknownEventError, IllegalTransition) as exc:
        raise unreplayable(store.path, seq, type_, stream, exc) from None
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()  # a stream left midway would keep the log's connection busy
    if state is not None:
        done.append(state)
    yield done


def _material_rows(states: Iterable[MaterialState]) -> Iterator[tuple[Any, ...]]:
    for s in states:
        yield (s.id, s.formula, s.workflow, s.code, s.state, s.current_step, len(s.calcs),
               s.reason, s.updated_at, s.last_seq, _cluster_of(s))


def _cluster_of(state: MaterialState) -> str | None:
    """The cluster of the material's latest submitted job, as its JobSubmitted named it."""
    found = None
    for c in state.calcs.values():  # in the order they were requested
        if c.scheduler:
            found = c.scheduler
    return found


def _calculation_rows(states: Iterable[MaterialState]) -> Iterator[tuple[Any, ...]]:
    for s in states:
        sid = s.id
        for c in s.calcs.values():
            yield (c.id, sid, c.step, c.attempt, c.state, c.job_id, c.directory, c.error_kind,
                   c.requested_at, c.started_at, c.finished_at)


def _property_rows(states: Iterable[MaterialState]) -> Iterator[tuple[Any, ...]]:
    for s in states:
        if s.properties:
            sid = s.id
            latest: dict[tuple[str, str], tuple[Any, ...]] = {}
            for name, value, unit, cid, seq in s.properties:
                latest[(cid, name)] = (sid, name, value, unit, cid, seq)
            yield from latest.values()


def _error_rows(states: Iterable[MaterialState]) -> Iterator[tuple[Any, ...]]:
    for s in states:
        if s.errors:
            sid = s.id
            for cid, kind, text in s.errors:
                yield (sid, cid, kind, text)


ROW_MAKERS = {
    "materials": _material_rows,
    "calculations": _calculation_rows,
    "properties": _property_rows,
    "errors": _error_rows,
}


def rows_of(states: Iterable[MaterialState]) -> dict[str, list[tuple[Any, ...]]]:
    """The projection rows of ``states``, table by table."""
    states = list(states)
    with gc_paused():
        return {table: list(ROW_MAKERS[table](states)) for table in TABLES}


INSERT_SQL = {
    "materials": "INSERT OR REPLACE INTO materials VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    "calculations": "INSERT OR REPLACE INTO calculations VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    "properties": "INSERT OR REPLACE INTO properties VALUES (?,?,?,?,?,?)",
    "errors": "INSERT INTO errors VALUES (?,?,?,?)",
}


def open_projections(project: Project, *, create: bool = False) -> Projections:
    """The projections of ``project``: ``projections.db`` in its state folder, or, when its
    log is on a PostgreSQL server, the tables beside the log (``shell.projections_pg``)."""
    from eventflow.shell.store_pg import is_postgres

    if is_postgres(project.store):
        from eventflow.shell.projections_pg import PostgresProjections

        return PostgresProjections(project.store, create=create)
    return Projections(project.projections_path, create=create)


class Projections:
    """``projections.db``: open an existing one, or ``create=True`` to make it."""

    def __init__(self, path: Path | str, *, create: bool = False) -> None:
        self.path = Path(path)
        self.name = self.path.name  # what messages call them
        if not create and not self.path.is_file():
            raise ProjectionStale(
                f"{self.path}: projections are missing; rebuild them with `eventflow replay`"
            )
        try:
            self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.executescript(data_text("projections", "schema.sql"))
            self._add_missing_columns()
        except sqlite3.DatabaseError as exc:
            raise EventflowError(
                f"{self.path}: unreadable projections ({exc}); delete it and run `eventflow replay`"
            ) from exc

    def _add_missing_columns(self) -> None:
        """Projections made by an older eventflow lack the columns added since: add them
        (at the end, where the schema has them) and fold the log again from the start."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(materials)")}
        if "cluster" not in have:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("ALTER TABLE materials ADD COLUMN cluster TEXT")
            self.db.execute("DELETE FROM projection_state")
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def last_seq(self) -> int:
        row = self.db.execute(
            "SELECT last_seq FROM projection_state WHERE name = 'all'"
        ).fetchone()
        return row[0] if row else 0

    def write(self, states: Iterable[MaterialState], last_seq: int) -> None:
        """Replace the rows of ``states``' materials, and set ``last_seq``, atomically."""
        states = list(states)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = [(s.id,) for s in states]
            db.executemany("DELETE FROM materials WHERE id = ?", ids)
            for table in ("calculations", "properties", "errors"):
                db.executemany(f"DELETE FROM {table} WHERE material_id = ?", ids)  # noqa: S608
            with gc_paused():  # rows are made as SQLite takes them: never all in memory
                for table in TABLES:
                    db.executemany(INSERT_SQL[table], ROW_MAKERS[table](states))
            db.execute(
                "INSERT OR REPLACE INTO projection_state (name, last_seq) VALUES ('all', ?)",
                (last_seq,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def rebuild(self, store: LogBase, *, jobs: int | None = None, **until: Any) -> int:
        """Replace every row by a fresh fold of the log (optionally only up to ``until``),
        in ``jobs`` processes (default: one per core for a big log); see ``shell.replay``."""
        from eventflow.shell.replay import rebuild

        return rebuild(store, self, jobs=jobs, **until)

    def catch_up(self, store: LogBase) -> int:
        """Apply what the log has beyond our ``last_seq``; return the number of new events."""
        mine = self.last_seq()
        theirs = store.last_seq()
        if mine == theirs:
            return 0
        if mine > theirs:
            raise ProjectionStale(
                f"{self.path}: projections are ahead of the log (seq {mine} > {theirs}; "
                "was the log restored?); run `eventflow replay`"
            )
        changed = {
            r[0]
            for r in store.query(
                "SELECT DISTINCT stream FROM events WHERE seq > ? AND seq <= ?", (mine, theirs))
        }
        changed.discard(ev.SYSTEM_STREAM)
        if len(changed) > 5000:
            self.rebuild(store)
        else:
            # up to ``theirs`` only: the rows must be those of the seq they are recorded with
            states, _ = fold_log(store, streams=sorted(changed), until_seq=theirs)
            self.write(states.values(), theirs)
        return theirs - mine

    # -- queries -------------------------------------------------------------------------
    def materials(self, state: str | None = None, limit: int | None = None,
                  ) -> list[dict[str, Any]]:
        """Materials (of one state), those that want a look first: needs_attention, running,
        waiting, held, ready, registered, then completed and cancelled; ``limit`` rows at most."""
        sql = "SELECT * FROM materials"
        args: list[Any] = []
        if state is not None:
            sql += " WHERE state = ?"
            args.append(state)
        sql += (" ORDER BY CASE state WHEN 'needs_attention' THEN 0 WHEN 'running' THEN 1"
                " WHEN 'waiting' THEN 2 WHEN 'held' THEN 3 WHEN 'ready' THEN 4"
                " WHEN 'registered' THEN 5 WHEN 'completed' THEN 6 ELSE 7 END, id")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return self._dicts(sql, tuple(args))

    def material(self, material_id: str) -> dict[str, Any] | None:
        found = self._dicts("SELECT * FROM materials WHERE id = ?", (material_id,))
        return found[0] if found else None

    def calculations(self, material_id: str | None = None) -> list[dict[str, Any]]:
        if material_id is None:
            return self._dicts("SELECT * FROM calculations ORDER BY material_id, requested_at")
        return self._dicts(
            "SELECT * FROM calculations WHERE material_id = ? ORDER BY requested_at, id",
            (material_id,),
        )

    def properties(self, material_id: str | None = None) -> list[dict[str, Any]]:
        if material_id is None:
            return self._dicts("SELECT * FROM properties ORDER BY material_id, source_seq, name")
        return self._dicts(
            "SELECT * FROM properties WHERE material_id = ? ORDER BY source_seq, name",
            (material_id,),
        )

    def errors(self, material_id: str) -> list[dict[str, Any]]:
        return self._dicts("SELECT * FROM errors WHERE material_id = ?", (material_id,))

    def state_counts(self) -> dict[str, int]:
        return dict(self.db.execute(
            "SELECT state, count(*) FROM materials GROUP BY state ORDER BY state"))

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, sorted: what `verify` compares with a fresh fold."""
        return {
            t: sorted(self.db.execute(f"SELECT * FROM {t}"), key=repr)  # noqa: S608
            for t in TABLES
        }

    def _dicts(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cursor = self.db.execute(sql, args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]
