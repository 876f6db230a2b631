"""PostgreSQL's one-event appends on the real test server: the plain INSERT a connection uses
for its next append (``_APPEND_NEXT``) appends only where it must, and the function answers
everything else, so interleaved writers keep seq order, gapless versions and the chain."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from eventflow.core import events as ev
from eventflow.errors import ConcurrencyError
from eventflow.shell import store_pg
from eventflow.shell.store import LogBase, NewEvent, open_store


def _counting(store: LogBase) -> dict[str, int]:
    """Count the store's next-append INSERTs and function calls (the real statements run)."""
    counts = {"next": 0, "function": 0}
    query = store.query

    def counted(sql: str, args: Any = (), **kw: Any) -> Any:
        if sql is store_pg._APPEND_NEXT:
            counts["next"] += 1
        elif sql is store_pg._APPEND_ONE:
            counts["function"] += 1
        return query(sql, args, **kw)

    store.query = counted  # type: ignore[method-assign]
    return counts


@pytest.fixture
def two(need_postgres: str) -> Iterator[tuple[LogBase, LogBase]]:
    a = open_store(need_postgres, create=True)
    b = open_store(need_postgres)
    yield a, b
    a.close()
    b.close()


def _check(store: LogBase) -> None:
    rows = list(store.read())
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    by_stream: dict[str, list[int]] = {}
    for r in rows:
        by_stream.setdefault(r.stream, []).append(r.version)
    assert all(v == list(range(1, len(v) + 1)) for v in by_stream.values())
    assert store.verify_chain() == (len(rows), [])


def test_a_connection_s_next_append_is_one_insert(two: tuple[LogBase, LogBase]) -> None:
    a, _ = two
    counts = _counting(a)
    for i in range(20):
        a.append(f"s{i % 4}", [ev.MaterialHeld(f"{i}")])
    # The first append and each stream's first go through the function; the rest are INSERTs.
    assert counts == {"next": 16, "function": 4}
    _check(a)


def test_interleaved_writers_batches_keys_and_versions_stay_exact(
        two: tuple[LogBase, LogBase]) -> None:
    a, b = two
    counts = _counting(a)
    a.append("s", [ev.MaterialHeld("1")], idempotency_key="k1")
    a.append("s", [ev.MaterialHeld("2")])
    b.append("s", [ev.MaterialHeld("3 from b")])  # a's guess of seq and version is now taken
    (rec,) = a.append("s", [ev.MaterialHeld("4")])
    assert (rec.seq, rec.version) == (4, 4)
    b.append_many([NewEvent(f"m{i}", ev.MaterialHeld("batch")) for i in range(10)])
    for _ in range(9):  # after a miss the function answers a few appends, then INSERTs again
        a.append("s", [ev.MaterialHeld("more")])
    (rec,) = a.append("s", [ev.MaterialHeld("again")])
    assert (rec.seq, rec.version) == (24, 14)
    assert counts["next"] >= 3
    # A known key is answered with the stored event; a stale expected version is refused.
    (again,) = a.append("s", [ev.MaterialHeld("retry")], idempotency_key="k1")
    assert (again.seq, again.event) == (1, ev.MaterialHeld("1"))
    with pytest.raises(ConcurrencyError, match="at version 14, expected 13"):
        a.append("s", [ev.MaterialHeld("late")], expected_version=13)
    assert a.append("s", [ev.MaterialHeld("ok")], expected_version=14)[0].version == 15
    _check(a)


def test_a_wrong_memory_of_the_head_appends_nothing_wrong(
        two: tuple[LogBase, LogBase]) -> None:
    """The INSERT checks the row it chains on: a head hash the log does not hold (as if the log
    had been restored to another history under a running process) is not chained on."""
    a, _ = two
    counts = _counting(a)
    a.append("s", [ev.MaterialHeld("1")])
    a.append("s", [ev.MaterialHeld("2")])
    a._head = (a._head[0], "f" * 64)  # type: ignore[attr-defined]
    a.append("s", [ev.MaterialHeld("3")])
    a._versions_seen["s"] = 7  # type: ignore[attr-defined]
    a._next_wait = 0  # type: ignore[attr-defined]
    a.append("s", [ev.MaterialHeld("4")])
    assert counts["next"] >= 2
    assert [r.version for r in a.read(stream="s")] == [1, 2, 3, 4]
    _check(a)
