"""A full rebuild (shell/replay.py): the same rows whatever the split, atomic, clear on errors."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.errors import EventflowError
from eventflow.shell.projections import Projections, fold_log, rows_of
from eventflow.shell.store import EventStore, NewEvent
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


@pytest.fixture
def log(tmp_path: Path) -> EventStore:
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
    store = EventStore(tmp_path / "events.db", create=True)
    store.append_many(items)
    yield store
    store.close()


def _rows(views: Projections) -> dict[str, list[tuple[object, ...]]]:
    return {t: [tuple(r) for r in rows] for t, rows in views.dump().items()}


def _fresh(store: EventStore, **until: object) -> dict[str, list[tuple[object, ...]]]:
    states, _ = fold_log(store, **until)  # type: ignore[arg-type]
    return {t: sorted((tuple(r) for r in rows), key=repr)
            for t, rows in rows_of(states.values()).items()}


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_every_split_gives_the_rows_of_one_fold_in_log_order(log: EventStore, tmp_path: Path,
                                                             jobs: int) -> None:
    views = Projections(tmp_path / f"p{jobs}.db", create=True)
    assert views.rebuild(log, jobs=jobs) == log.last_seq()
    assert views.last_seq() == log.last_seq()
    assert _rows(views) == _fresh(log)
    assert len(_rows(views)["materials"]) == 300
    assert views.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {r[0] for r in views.db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"materials_state", "calculations_material", "errors_material"} <= indexes
    assert sorted(p.name for p in tmp_path.iterdir() if ".rebuild-" in p.name) == []


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_rebuild_as_of_a_past_seq_or_time_matches_the_fold_up_to_it(log: EventStore,
                                                                      tmp_path: Path,
                                                                      jobs: int) -> None:
    middle = log.last_seq() // 2
    views = Projections(tmp_path / "past.db", create=True)
    assert views.rebuild(log, jobs=jobs, until_seq=middle) == middle
    assert _rows(views) == _fresh(log, until_seq=middle)
    moment = log.db.execute("SELECT recorded_at FROM events WHERE seq = ?", (middle,)).fetchone()[0]
    last = views.rebuild(log, jobs=jobs, until_time=moment)
    assert last >= middle
    assert _rows(views) == _fresh(log, until_time=moment)


def test_readers_see_the_old_projections_or_the_new_never_a_mix(log: EventStore,
                                                                tmp_path: Path) -> None:
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


@pytest.mark.parametrize("stream", ["m0003", "m0290"])  # the first range, and the last one
def test_an_event_it_cannot_read_stops_the_rebuild_with_one_line_and_keeps_the_old_rows(
        log: EventStore, tmp_path: Path, stream: str) -> None:
    views = Projections(tmp_path / "projections.db", create=True)
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
    assert [p.name for p in tmp_path.iterdir() if ".rebuild-" in p.name] == []


def test_scratch_files_of_a_killed_rebuild_are_removed_and_live_ones_kept(
        log: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "projections.db"
    dead = tmp_path / "projections.db.rebuild-999999999-0"  # no such process
    alive = tmp_path / f"projections.db.rebuild-{os.getppid()}-1"  # our parent: running
    dead.write_bytes(b"left by a rebuild that was killed")
    alive.write_bytes(b"another rebuild at work")
    Projections(path, create=True).rebuild(log, jobs=1)
    assert not dead.exists()
    assert alive.exists()


def test_projections_with_another_page_size_are_rebuilt_all_the_same(log: EventStore,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "projections.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size = 8192")
    db.execute("VACUUM")
    db.close()
    views = Projections(path, create=True)
    assert views.db.execute("PRAGMA page_size").fetchone()[0] == 8192
    views.rebuild(log, jobs=2)
    assert _rows(views) == _fresh(log)
    assert views.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_catching_up_stops_at_the_seq_it_records_even_if_the_log_grows_meanwhile(
        log: EventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    end = log.last_seq()
    views = Projections(tmp_path / "projections.db", create=True)
    views.rebuild(log, until_seq=end - 3)
    # The log's end is read, then the last event is appended before the streams are folded.
    monkeypatch.setattr(log, "last_seq", lambda: end - 1)
    assert views.catch_up(log) == 2
    assert views.last_seq() == end - 1
    assert _rows(views) == _fresh(log, until_seq=end - 1)
    monkeypatch.undo()
    assert views.catch_up(log) == 1
    assert _rows(views) == _fresh(log)
