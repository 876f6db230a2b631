"""A full rebuild (shell/replay.py, and shell/projections_pg.py beside a PostgreSQL log): the
same rows whatever the split or the store, atomic, clear on errors."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.errors import EventflowError
from eventflow.shell.projections import Projections, fold_log, rows_of
from eventflow.shell.projections_pg import PostgresProjections
from eventflow.shell.store import EventStore, LogBase, NewEvent, open_store
from tests.integration.helpers import append_unknown_event


def _history(mid: str, rng: random.Random) -> list[ev.Event]:
    """A legal life: registered, then attempts of one step that fail, succeed, or stop."""
    events: list[ev.Event] = [ev.MaterialRegistered(mid, rng.choice(["Si2", "C2", "MgO"]), "t")]
    if rng.random() < 0.1:
        return [*events, ev.MaterialHeld("by hand")]
    for attempt in range(1, 4):
        cid = f"{mid}/scf/{attempt}"
        job = str(rng.randrange(10**6))
        events += [ev.SubmissionRequested(cid, "scf", attempt, reason="workflow"),
                   ev.JobSubmitted(cid, job), ev.JobStarted(cid, job, host="n1"),
                   ev.JobFinished(cid, job, exit_code=0)]
        if rng.random() < 0.6:
            return [*events, ev.CalculationSucceeded(cid, parser="qe"),
                    ev.PropertiesExtracted(cid, {"energy": {"value": -rng.random(), "unit": "Ry"},
                                                 "gap": {"value": rng.random(), "unit": "eV"}}),
                    ev.MaterialCompleted()]
        events.append(ev.CalculationFailed(cid, "scf_not_converged",
                                           [{"line": 9, "text": "convergence NOT achieved"}]))
        if rng.random() < 0.3:
            return [*events, ev.NeedsAttention("two failures", cid)]
    return events


def _items() -> list[NewEvent]:
    """300 materials whose histories are interleaved in the log, as on a cluster, some cut short
    (still in progress), so that log order and stream order differ."""
    rng = random.Random(7)
    pending = {f"m{i:04d}": _history(f"m{i:04d}", rng) for i in range(300)}
    for events in pending.values():
        if rng.random() < 0.2:
            del events[rng.randrange(1, len(events) + 1):]
    items: list[NewEvent] = []
    while pending:
        mid = rng.choice(sorted(pending))
        items.append(NewEvent(mid, pending[mid].pop(0)))
        if not pending[mid]:
            del pending[mid]
    return items


@pytest.fixture
def log(log_location: str) -> LogBase:
    """The history of ``_items`` in a SQLite log, and in one on the PostgreSQL server."""
    store = open_store(log_location, create=True)
    store.append_many(_items())
    yield store
    store.close()


@pytest.fixture
def sqlite_log(tmp_path: Path) -> EventStore:
    store = EventStore(tmp_path / "events.db", create=True)
    store.append_many(_items())
    yield store
    store.close()


def _views(log: LogBase, path: Path) -> Projections:
    """Fresh projections of ``log``: a SQLite file at ``path``, or the tables beside a
    PostgreSQL log."""
    if isinstance(log, EventStore):
        return Projections(path, create=True)
    return PostgresProjections(log.url, create=True)


def _rows(views: Projections) -> dict[str, list[tuple[object, ...]]]:
    return {t: [tuple(r) for r in rows] for t, rows in views.dump().items()}


def _fresh(store: LogBase, **until: object) -> dict[str, list[tuple[object, ...]]]:
    states, _ = fold_log(store, **until)  # type: ignore[arg-type]
    return {t: sorted((tuple(r) for r in rows), key=repr)
            for t, rows in rows_of(states.values()).items()}


def _index_names(views: Projections) -> set[str]:
    if isinstance(views, PostgresProjections):
        sql = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type='index'"
    return {r[0] for r in views.db.execute(sql)}


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_every_split_gives_the_rows_of_one_fold_in_log_order(log: LogBase, tmp_path: Path,
                                                             jobs: int) -> None:
    views = _views(log, tmp_path / f"p{jobs}.db")
    assert views.rebuild(log, jobs=jobs) == log.last_seq()
    assert views.last_seq() == log.last_seq()
    assert _rows(views) == _fresh(log)
    assert len(_rows(views)["materials"]) == 300
    assert {"materials_state", "calculations_material", "errors_material"} <= _index_names(views)
    if isinstance(log, EventStore):
        assert views.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    else:  # the swap renamed every new table and index: nothing of the rebuild is left over
        names = [r[0] for r in views.db.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE '%\\_\\_new'")]
        assert names == []
    assert sorted(p.name for p in tmp_path.iterdir() if ".rebuild-" in p.name) == []
    views.close()


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_rebuild_as_of_a_past_seq_or_time_matches_the_fold_up_to_it(log: LogBase,
                                                                      tmp_path: Path,
                                                                      jobs: int) -> None:
    middle = log.last_seq() // 2
    views = _views(log, tmp_path / "past.db")
    assert views.rebuild(log, jobs=jobs, until_seq=middle) == middle
    assert _rows(views) == _fresh(log, until_seq=middle)
    moment = log.query("SELECT recorded_at FROM events WHERE seq = ?", (middle,)).fetchone()[0]
    last = views.rebuild(log, jobs=jobs, until_time=moment)
    assert last >= middle
    assert _rows(views) == _fresh(log, until_time=moment)
    views.close()


def test_readers_see_the_old_projections_or_the_new_never_a_mix(sqlite_log: EventStore,
                                                                tmp_path: Path) -> None:
    log = sqlite_log
    path = tmp_path / "projections.db"
    views = Projections(path, create=True)
    views.rebuild(log, jobs=1, until_seq=100)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    before = reader.execute("SELECT count(*), max(last_seq) FROM materials").fetchone()
    views.rebuild(log, jobs=2)
    # inside its transaction the reader still sees the snapshot it started with
    assert reader.execute("SELECT count(*), max(last_seq) FROM materials").fetchone() == before
    reader.execute("COMMIT")
    after = reader.execute("SELECT count(*), max(last_seq) FROM materials").fetchone()
    assert after == (300, log.last_seq()) != before
    reader.close()


def test_postgres_readers_see_the_old_projections_or_the_new_never_a_mix(
        need_postgres: str) -> None:
    with open_store(need_postgres, create=True) as log:
        log.append_many(_items())
        views = PostgresProjections(need_postgres, create=True)
        views.rebuild(log, until_seq=100)
        before = views.db.execute("SELECT count(*), max(last_seq) FROM materials").fetchone()
        seen: list[object] = []
        stop = threading.Event()

        def read() -> None:  # another connection, as psql would be, reading all along
            reader = PostgresProjections(need_postgres)
            try:
                while not stop.is_set():
                    seen.append(tuple(reader.db.execute(
                        "SELECT count(*), max(m.last_seq) FROM materials m "
                        "JOIN projection_state s ON s.name = 'all' AND m.last_seq <= s.last_seq"
                    ).fetchone()))
            except Exception as exc:  # noqa: BLE001 - the test asserts there is none
                seen.append(exc)
            reader.close()

        thread = threading.Thread(target=read)
        thread.start()
        for _ in range(3):
            views.rebuild(log, until_seq=100)
            views.rebuild(log)
        stop.set()
        thread.join()
        after = views.db.execute("SELECT count(*), max(last_seq) FROM materials").fetchone()
        views.close()
        assert after == (300, log.last_seq()) != before
    assert set(seen) <= {before, after} and len(seen) > 1, seen[-1]


def test_a_rebuild_killed_midway_leaves_the_old_postgres_projections(need_postgres: str) -> None:
    """A real crash: the rebuilding process is killed (SIGKILL) while it writes the new rows;
    the old rows and last_seq stay, and the next rebuild clears what the dead one left."""
    with open_store(need_postgres, create=True) as log:
        log.append_many(_items())
        views = PostgresProjections(need_postgres, create=True)
        views.rebuild(log, until_seq=200)
        before, at = _rows(views), views.last_seq()
        child = subprocess.Popen(  # noqa: S603 - argv list
            [sys.executable, "-c", _KILLED_REBUILD, need_postgres],
            stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "writing"  # rows of 10 materials are sent
        child.kill()
        child.wait()
        assert _rows(views) == before and views.last_seq() == at == 200
        assert views.rebuild(log) == log.last_seq()  # no lock or table is left behind
        assert _rows(views) == _fresh(log)
        views.close()


# Rebuilds, flushing every 10 materials; at the second flush says so and waits to be killed.
_KILLED_REBUILD = """
import sys, time
from eventflow.shell import projections_pg as pg
from eventflow.shell.store import open_store
pg.FLUSH_EVERY = 10
copy, calls = pg._copy, []
def slow_copy(*args):
    copy(*args)
    calls.append(1)
    if len(calls) == 2:
        print("writing", flush=True)
        time.sleep(60)
pg._copy = slow_copy
pg.PostgresProjections(sys.argv[1]).rebuild(open_store(sys.argv[1]))
"""


@pytest.mark.parametrize("stream", ["m0003", "m0290"])  # the first range, and the last one
def test_an_event_it_cannot_read_stops_the_rebuild_with_one_line_and_keeps_the_old_rows(
        log: LogBase, tmp_path: Path, stream: str) -> None:
    views = _views(log, tmp_path / "projections.db")
    views.rebuild(log, jobs=1)
    before = _rows(views)
    seq = append_unknown_event(log, stream)
    with pytest.raises(EventflowError) as info:
        views.rebuild(log, jobs=2)  # m0290 is folded by the other process
    message = str(info.value)
    assert "\n" not in message
    assert str(log.path) in message and f"seq {seq}" in message and "FutureThing" in message
    assert "upgrade eventflow" in message
    assert _rows(views) == before
    assert log.last_seq() == seq  # the log's connection is still fine after the broken read
    assert [p.name for p in tmp_path.iterdir() if ".rebuild-" in p.name] == []
    views.close()


def test_scratch_files_of_a_killed_rebuild_are_removed_and_live_ones_kept(
        sqlite_log: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "projections.db"
    dead = tmp_path / "projections.db.rebuild-999999999-0"  # no such process
    alive = tmp_path / f"projections.db.rebuild-{os.getppid()}-1"  # our parent: running
    dead.write_bytes(b"left by a rebuild that was killed")
    alive.write_bytes(b"another rebuild at work")
    Projections(path, create=True).rebuild(sqlite_log, jobs=1)
    assert not dead.exists()
    assert alive.exists()


def test_projections_with_another_page_size_are_rebuilt_all_the_same(sqlite_log: EventStore,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "projections.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size = 8192")
    db.execute("VACUUM")
    db.close()
    views = Projections(path, create=True)
    assert views.db.execute("PRAGMA page_size").fetchone()[0] == 8192
    views.rebuild(sqlite_log, jobs=2)
    assert _rows(views) == _fresh(sqlite_log)
    assert views.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_catching_up_stops_at_the_seq_it_records_even_if_the_log_grows_meanwhile(
        log: LogBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    end = log.last_seq()
    views = _views(log, tmp_path / "projections.db")
    views.rebuild(log, until_seq=end - 3)
    # The log's end is read, then the last event is appended before the streams are folded.
    monkeypatch.setattr(log, "last_seq", lambda: end - 1)
    assert views.catch_up(log) == 2
    assert views.last_seq() == end - 1
    assert _rows(views) == _fresh(log, until_seq=end - 1)
    monkeypatch.undo()
    assert views.catch_up(log) == 1
    assert _rows(views) == _fresh(log)
    views.close()
