"""The event log: append-only, idempotent, optimistic, tamper-evident — on SQLite and on a
real PostgreSQL server (scripts/local-postgres), one contract, one set of tests."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sqlite3
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.errors import ConcurrencyError, EventflowError, LogCorruptError, LogTooNewError
from eventflow.shell.store import EventStore, LogBase, NewEvent, open_store


def _registered(mid: str) -> ev.MaterialRegistered:
    return ev.MaterialRegistered(mid, "Si2", "test")


@pytest.fixture
def location(log_location: str) -> str:
    return log_location


@pytest.fixture
def store(location: str) -> LogBase:
    s = open_store(location, create=True)
    yield s
    s.close()


def _refused(store: LogBase, sql: str) -> None:
    """``sql`` fails with the log's append-only message, and the transaction is undone."""
    with pytest.raises(Exception, match="append-only"):
        store.query(sql)


def test_append_assigns_global_seq_and_gapless_stream_versions(store: LogBase) -> None:
    store.append("a", [_registered("a")])
    store.append("b", [_registered("b")])
    recs = store.append("a", [ev.MaterialHeld("x"), ev.MaterialReleased()])
    assert [r.seq for r in recs] == [3, 4]
    assert [r.version for r in recs] == [2, 3]
    assert [r.version for r in store.read(stream="b")] == [1]


def test_the_log_refuses_update_and_delete(store: LogBase) -> None:
    store.append("a", [_registered("a")])
    _refused(store, "UPDATE events SET data = '{}'")
    _refused(store, "DELETE FROM events")
    if not isinstance(store, EventStore):  # SQLite has no TRUNCATE; PostgreSQL's is refused
        _refused(store, "TRUNCATE events")
    assert store.last_seq() == 1
    assert store.verify_chain() == (1, [])


def test_same_idempotency_key_returns_the_stored_event(store: LogBase) -> None:
    first = store.append("a", [_registered("a")], idempotency_key="k1")
    again = store.append("a", [_registered("a")], idempotency_key="k1")
    assert again[0].seq == first[0].seq
    assert store.last_seq() == 1


def test_expected_version_mismatch_appends_nothing(store: LogBase) -> None:
    store.append("a", [_registered("a")])
    with pytest.raises(ConcurrencyError):
        store.append("a", [ev.MaterialHeld(), ev.MaterialReleased()], expected_version=0)
    assert store.last_seq() == 1


def test_one_event_appends_keep_the_contract(store: LogBase) -> None:
    """One event per append (PostgreSQL's one-round-trip path): the stored event for a known
    key, whatever stream the retry names; an expected version checked; the log unchanged by
    either refusal or retry."""
    first = store.append("a", [ev.MaterialHeld("why")], idempotency_key="k1",
                         meta={"actor": "test"})
    assert (first[0].seq, first[0].version, first[0].meta["actor"]) == (1, 1, "test")
    for stream in ("a", "elsewhere"):
        (again,) = store.append(stream, [ev.MaterialHeld("other")], idempotency_key="k1")
        assert again == first[0]
    assert store.append("a", [ev.MaterialReleased()], expected_version=1)[0].version == 2
    with pytest.raises(ConcurrencyError, match="at version 2, expected 1"):
        store.append("a", [ev.MaterialReleased()], expected_version=1)
    assert store.append("new", [_registered("new")], expected_version=0)[0].seq == 3
    assert store.last_seq() == 3 and store.verify_chain() == (3, [])


def test_the_hash_chain_holds_for_any_text(store: LogBase) -> None:
    """Every append path gives ``row_hash``'s bytes (PostgreSQL's one-trip append hashes in
    SQL), whatever the text: quotes, backslashes, control characters, non-ASCII."""
    if hasattr(store, "_one_trip"):
        assert store._one_trip  # the SQL-hashing path is the one under test
    odd = ['q"uote', "back\\slash", "tab\tnl\ncr\r", "\x01\x1f\x7f", "é☃😀\u2028", "/<>&'", ""]
    for text in odd:
        store.append(f"s{text}", [ev.MaterialHeld(text)], idempotency_key=f"k{text}",
                     meta={"note": text})
        store.append_many([NewEvent(f"s{text}", ev.MaterialHeld(text), meta={text: 1}),
                           NewEvent("other", ev.MaterialReleased())])
    assert store.verify_chain() == (3 * len(odd), [])
    assert [r.event.reason for r in store.read(stream="sé☃😀\u2028")] == ["é☃😀\u2028"] * 2


def test_batched_append_over_many_streams_is_one_transaction(store: LogBase) -> None:
    items = [NewEvent(f"m{i}", _registered(f"m{i}")) for i in range(1000)]
    recs = store.append_many(items)
    assert len(recs) == 1000 and store.last_seq() == 1000
    assert store.verify_chain() == (1000, [])
    assert [r.event for r in store.read(stream="m999")] == [_registered("m999")]


def test_a_refused_batch_leaves_nothing_behind(store: LogBase) -> None:
    store.append("x", [_registered("x")])
    # Two items of one batch carry the same key: the log's UNIQUE refuses the whole batch.
    with pytest.raises(ConcurrencyError):
        store.append_many([NewEvent("b", _registered("b")),
                           NewEvent("b", ev.MaterialHeld("y"), "k2"),
                           NewEvent("c", _registered("c"), "k2")])
    assert store.last_seq() == 1
    assert store.verify_chain() == (1, [])
    assert store.append("b", [_registered("b")])[0].seq == 2  # the log goes on after it


def _append_with_key(location: str, barrier: mp.Barrier, out: mp.Queue) -> None:
    s = open_store(location)
    barrier.wait()
    rec = s.append("same", [_registered("same")], idempotency_key="only-once")
    out.put(rec[0].seq)
    s.close()


def _append_expected(location: str, barrier: mp.Barrier, out: mp.Queue) -> None:
    s = open_store(location)
    barrier.wait()
    try:
        s.append("race", [ev.MaterialHeld("me")], expected_version=1)
        out.put("won")
    except ConcurrencyError:
        out.put("lost")
    s.close()


def _run8(target, location: str) -> list:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=target, args=(location, barrier, out)) for _ in range(8)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_eight_processes_same_idempotency_key_give_exactly_one_row(location: str) -> None:
    open_store(location, create=True).close()
    seqs = _run8(_append_with_key, location)
    assert len(set(seqs)) == 1
    with open_store(location) as s:
        assert s.last_seq() == 1


def test_eight_processes_same_expected_version_exactly_one_wins(location: str) -> None:
    with open_store(location, create=True) as s:
        s.append("race", [_registered("race")])
    results = _run8(_append_expected, location)
    assert sorted(results) == ["lost"] * 7 + ["won"]
    with open_store(location) as s:
        assert s.stream_version("race") == 2
        assert s.verify_chain() == (2, [])


def _disable_protection(store: LogBase) -> None:
    """What someone with the database's keys could do: switch the append-only triggers off."""
    if isinstance(store, EventStore):
        store.query("DROP TRIGGER events_no_update")
    else:
        store.query("SET session_replication_role = replica")  # superuser: triggers off


@pytest.mark.parametrize("column", ["data", "meta", "recorded_at", "type"])
def test_verify_names_the_row_someone_altered_behind_the_triggers(store: LogBase,
                                                                  column: str) -> None:
    for i in range(12):
        store.append(f"m{i % 3}", [_registered(f"m{i}") if i < 3 else ev.MaterialHeld(f"r{i}")])
    _disable_protection(store)
    value = store.query(f"SELECT {column} FROM events WHERE seq = 7").fetchone()[0]
    altered = value[:-2] + ("X" if value[-2] != "X" else "Y") + value[-1]
    store.query(f"UPDATE events SET {column} = ? WHERE seq = 7", (altered,))
    count, problems = store.verify_chain()
    assert problems and problems[0].startswith("seq 7:")


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_verify_detects_a_flipped_byte_anywhere_in_the_data(tmp_path: Path) -> None:
    """SQLite's file: copy the log, flip one bit inside the stored JSON of some event, verify
    must name it."""
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


def test_a_server_that_is_down_gives_one_line_naming_it(tmp_path: Path,
                                                        need_psycopg: None) -> None:
    url = f"postgresql:///eventflow?host={tmp_path}&port=5999&user=eventflow"
    with pytest.raises(EventflowError, match="cannot reach the log's server") as info:
        open_store(url)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_a_missing_log_on_the_server_is_named(need_postgres: str) -> None:
    with pytest.raises(EventflowError, match="no event log here"):
        open_store(need_postgres)


def test_a_log_from_a_newer_eventflow_is_refused(location: str) -> None:
    with open_store(location, create=True) as s:
        if isinstance(s, EventStore):
            s.query("PRAGMA user_version = 99")
        else:
            s.query("INSERT INTO eventflow_schema VALUES (99)")
    with pytest.raises(LogTooNewError, match="upgrade"):
        open_store(location)


def test_unknown_events_are_preserved_and_reported_by_verify(store: LogBase) -> None:
    """An event type from a newer version: kept in the log, named by verify, never dropped."""
    from eventflow.shell.store import canonical, row_hash

    store.append("a", [_registered("a")])
    prev = store.query("SELECT hash FROM events WHERE seq = 1").fetchone()[0]
    data, meta, at = canonical({"x": 1}).decode(), "{}", "2030-01-01T00:00:00.000000Z"
    h = row_hash(prev, 2, "a", 2, "FutureThing", 1, data, meta, at, None)
    store.query("INSERT INTO events VALUES (2,'a',2,'FutureThing',1,?,?,?,NULL,?)",
                (data, meta, at, h))
    count, problems = store.verify_chain()
    assert count == 2
    assert any("seq 2" in p and "FutureThing" in p for p in problems)


def test_sqlite_error_class_is_the_drivers(tmp_path: Path) -> None:
    """The SQLite log still raises sqlite3's own error for a refused UPDATE (callers catch it)."""
    with EventStore(tmp_path / "e.db", create=True) as s:
        s.append("a", [_registered("a")])
        with pytest.raises(sqlite3.IntegrityError):
            s.db.execute("DELETE FROM events")


def test_a_postgresql_log_without_the_append_function_takes_the_shared_path(
        need_postgres: str) -> None:
    """A log made before ``eventflow_append_one`` existed: appends still work, chained alike."""
    with open_store(need_postgres, create=True) as s:
        s.append("a", [_registered("a")])
        s.query("DROP FUNCTION eventflow_append_one(text, bigint, text, integer, text, text, "
                "text, text, text, text, text, bigint, bigint, text)")
    with open_store(need_postgres) as s:
        assert not s._one_trip
        assert s.append("a", [ev.MaterialHeld("x")], idempotency_key="k")[0].seq == 2
        assert s.append("a", [ev.MaterialHeld("x")], idempotency_key="k")[0].seq == 2
        assert s.verify_chain() == (2, [])


def test_a_wrong_guess_of_the_head_is_never_stored(need_postgres: str) -> None:
    """A one-event append sends its row's hash computed for the head its connection last
    saw; the server takes it only when seq, previous hash and stream version are exactly
    those, and hashes the row itself otherwise."""
    with open_store(need_postgres, create=True) as a, open_store(need_postgres) as b:
        a.append("s", [_registered("s")])
        b.append("x", [_registered("x")])
        b.append("s", [ev.MaterialHeld("b")])  # seq guessed right, stream version not
        a.append("s", [ev.MaterialHeld("a")])  # another writer appended since a's last
        a._head = (a._head[0], "f" * 64)  # a head that is not the log's (a restored log)
        a.append("s", [ev.MaterialReleased()])
        a.append("s", [ev.MaterialHeld("c")])  # and the guess right again
        assert a.verify_chain() == (6, [])


def test_a_nul_character_is_refused_before_anything_is_written(store: LogBase) -> None:
    """PostgreSQL's text cannot hold NUL, so neither store's log does: an event with one (in
    its data, meta, stream or key) is refused in one line, alone or in a batch, whole; a
    literal backslash-u0000 in text is no NUL and round-trips."""
    store.append("a", [_registered("a")])
    refusals = [
        lambda: store.append("a", [ev.MaterialHeld("zeros\x00\x00")]),
        lambda: store.append("a", [ev.MaterialHeld("x")], meta={"note": "a\x00"}),
        lambda: store.append("a\x00b", [ev.MaterialHeld("x")]),
        lambda: store.append("a", [ev.MaterialHeld("x")], idempotency_key="k\x00"),
        lambda: store.append_many([NewEvent(f"m{i}", _registered(f"m{i}")) for i in range(50)]
                                  + [NewEvent("m", ev.MaterialHeld("\x00"))]),
    ]
    for refused in refusals:
        with pytest.raises(EventflowError, match=r"NUL character \(\\x00\)") as caught:
            refused()
        assert "\n" not in str(caught.value) and "nothing of this append" in str(caught.value)
    assert store.last_seq() == 1
    literal = "C:\\u0000 is no NUL"
    (rec,) = store.append("a", [ev.MaterialHeld(literal)], meta={"n": literal})
    assert [r.event for r in store.read(after=1)] == [ev.MaterialHeld(literal)]
    assert rec.seq == 2 and store.verify_chain() == (2, [])
