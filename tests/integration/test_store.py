"""The SQLite event log: append-only, idempotent, optimistic, tamper-evident."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sqlite3
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.errors import ConcurrencyError, LogCorruptError, LogTooNewError
from eventflow.shell.store import EventStore


def _registered(mid: str) -> ev.MaterialRegistered:
    return ev.MaterialRegistered(mid, "Si2", "test")


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    s = EventStore(tmp_path / "events.db", create=True)
    yield s
    s.close()


def test_append_assigns_global_seq_and_gapless_stream_versions(store: EventStore) -> None:
    store.append("a", [_registered("a")])
    store.append("b", [_registered("b")])
    recs = store.append("a", [ev.MaterialHeld("x"), ev.MaterialReleased()])
    assert [r.seq for r in recs] == [3, 4]
    assert [r.version for r in recs] == [2, 3]
    assert [r.version for r in store.read(stream="b")] == [1]


def test_the_log_refuses_update_and_delete(store: EventStore) -> None:
    store.append("a", [_registered("a")])
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.db.execute("UPDATE events SET data = '{}'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.db.execute("DELETE FROM events")
    assert store.last_seq() == 1


def test_same_idempotency_key_returns_the_stored_event(store: EventStore) -> None:
    first = store.append("a", [_registered("a")], idempotency_key="k1")
    again = store.append("a", [_registered("a")], idempotency_key="k1")
    assert again[0].seq == first[0].seq
    assert store.last_seq() == 1


def test_expected_version_mismatch_appends_nothing(store: EventStore) -> None:
    store.append("a", [_registered("a")])
    with pytest.raises(ConcurrencyError):
        store.append("a", [ev.MaterialHeld(), ev.MaterialReleased()], expected_version=0)
    assert store.last_seq() == 1


def test_batched_append_over_many_streams_is_one_transaction(store: EventStore) -> None:
    from eventflow.shell.store import NewEvent

    items = [NewEvent(f"m{i}", _registered(f"m{i}")) for i in range(1000)]
    recs = store.append_many(items)
    assert len(recs) == 1000 and store.last_seq() == 1000
    assert store.verify_chain() == (1000, [])


def _append_with_key(path: str, barrier: mp.Barrier, out: mp.Queue) -> None:
    s = EventStore(path)
    barrier.wait()
    rec = s.append("same", [_registered("same")], idempotency_key="only-once")
    out.put(rec[0].seq)
    s.close()


def _append_expected(path: str, barrier: mp.Barrier, out: mp.Queue) -> None:
    s = EventStore(path)
    barrier.wait()
    try:
        s.append("race", [ev.MaterialHeld("me")], expected_version=1)
        out.put("won")
    except ConcurrencyError:
        out.put("lost")
    s.close()


def _run8(target, path: Path) -> list:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=target, args=(str(path), barrier, out)) for _ in range(8)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_eight_processes_same_idempotency_key_give_exactly_one_row(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    EventStore(path, create=True).close()
    seqs = _run8(_append_with_key, path)
    assert len(set(seqs)) == 1
    with EventStore(path) as s:
        assert s.last_seq() == 1


def test_eight_processes_same_expected_version_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with EventStore(path, create=True) as s:
        s.append("race", [_registered("race")])
    results = _run8(_append_expected, path)
    assert sorted(results) == ["lost"] * 7 + ["won"]
    with EventStore(path) as s:
        assert s.stream_version("race") == 2


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_verify_detects_a_flipped_byte_anywhere_in_the_data(tmp_path: Path) -> None:
    """Copy the log, flip one bit inside the stored JSON of some event, verify must name it."""
    src = tmp_path / "events.db"
    with EventStore(src, create=True) as s:
        for i in range(30):
            s.append(f"m{i % 3}", [ev.MaterialRegistered(f"m{i}", "Si2" * (i + 1), "test")]
                     if i < 3 else [ev.MaterialHeld(f"reason number {i}")])
        s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        datas = [row[0] for row in s.db.execute("SELECT data FROM events")]
    raw = src.read_bytes()
    positions = []
    for data in datas[::3]:
        at = raw.find(data.encode())
        assert at >= 0
        positions += [at + 1, at + len(data) // 2, at + len(data) - 2]
    for offset in positions:
        copy = tmp_path / "copy.db"
        shutil.copy(src, copy)
        _flip(copy, offset)
        with EventStore(copy) as s:
            _, problems = s.verify_chain()
        assert problems, f"flip at byte {offset} went unnoticed"
        assert "seq" in problems[0]


def test_a_corrupt_log_gives_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LogCorruptError, match=str(path)) as info:
        EventStore(path)
    assert "\n" not in str(info.value)


def test_a_log_from_a_newer_eventflow_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    EventStore(path, create=True).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(LogTooNewError, match="upgrade"):
        EventStore(path)


def test_unknown_events_are_preserved_and_reported_by_verify(tmp_path: Path) -> None:
    """An event type from a newer version: kept in the log, named by verify, never dropped."""
    from eventflow.shell.store import GENESIS, canonical, row_hash

    path = tmp_path / "events.db"
    with EventStore(path, create=True) as s:
        s.append("a", [_registered("a")])
        prev = s.db.execute("SELECT hash FROM events WHERE seq = 1").fetchone()[0] or GENESIS
        data, meta, at = canonical({"x": 1}).decode(), "{}", "2030-01-01T00:00:00.000000Z"
        h = row_hash(prev, 2, "a", 2, "FutureThing", 1, data, meta, at, None)
        s.db.execute("INSERT INTO events VALUES (2,'a',2,'FutureThing',1,?,?,?,NULL,?)",
                     (data, meta, at, h))
        count, problems = s.verify_chain()
    assert count == 2
    assert any("seq 2" in p and "FutureThing" in p for p in problems)
