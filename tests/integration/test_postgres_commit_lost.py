"""A connection lost while the server may be committing an append, on the real test server.

The cut is real (``pg_terminate_backend`` of the store's backend, and the driver's own error
on its next use); only its moment is arranged, since the few microseconds between a commit
and its reply cannot be hit from outside: ``before`` cuts just before the statement that
commits (the server undoes the transaction), ``after`` just after the server committed (the
reply is what gets lost). The store then looks on a new connection: a committed append is
answered as done, an undone one is said to be not written; when it cannot look (the server
unreachable), the message says the outcome is unknown, how to check, and that a retry with
the same idempotency key is safe, which the test then does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from eventflow.core import events as ev
from eventflow.errors import LogUnavailableError
from eventflow.shell import store_pg
from eventflow.shell.store import LogBase, NewEvent, open_store


def _terminate(url: str, pid: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        assert db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        deadline = time.monotonic() + 30
        while db.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, "the backend did not end"
            time.sleep(0.01)


def _cut(store: LogBase, url: str, when: str, commits: Callable[[str], bool]) -> None:
    """Cut ``store``'s connection ``when`` ("before"/"after") its next statement that
    ``commits``."""
    query = store.query

    def cut(sql: str, args: Any = (), **kw: Any) -> Any:
        if not commits(sql):
            return query(sql, args, **kw)
        store.query = query  # type: ignore[method-assign]  # once
        pid = store.db.info.backend_pid
        if when == "before":
            _terminate(url, pid)
            return query(sql, args, **kw)  # the driver's error: the server is gone for it
        result = query(sql, args, **kw)  # committed by the server
        _terminate(url, pid)
        query("SELECT 1")  # the driver's error, as if the reply had been lost
        return result

    store.query = cut  # type: ignore[method-assign]


def _is_commit(sql: str) -> bool:
    return sql.endswith("COMMIT")


def _batch(tag: str, n: int = 50) -> list[NewEvent]:
    return [NewEvent(f"{tag}{i}", ev.MaterialHeld(tag), f"{tag}:{i}") for i in range(n)]


@pytest.fixture
def store(need_postgres: str) -> LogBase:
    s = open_store(need_postgres, create=True)
    s.append("a", [ev.MaterialHeld("first")])
    yield s
    s.close()


def test_a_batch_whose_commit_reply_is_lost_is_found_committed(
        store: LogBase, need_postgres: str) -> None:
    _cut(store, need_postgres, "after", _is_commit)
    recs = store.append_many(_batch("b"))
    assert [r.seq for r in recs] == list(range(2, 52))
    with open_store(need_postgres) as other:
        assert other.last_seq() == 51 and other.verify_chain() == (51, [])
    assert store.append("a", [ev.MaterialHeld("next")])[0].seq == 52  # connects again


def test_a_batch_cut_before_its_commit_is_said_not_written(
        store: LogBase, need_postgres: str) -> None:
    _cut(store, need_postgres, "before", _is_commit)
    with pytest.raises(LogUnavailableError, match="it was not written") as lost:
        store.append_many(_batch("b"))
    assert "\n" not in str(lost.value) and "during the commit" in str(lost.value)
    assert store.last_seq() == 1
    assert len(store.append_many(_batch("b"))) == 50 and store.verify_chain() == (51, [])


def test_an_outcome_that_cannot_be_checked_is_unknown_and_a_keyed_retry_is_safe(
        store: LogBase, need_postgres: str) -> None:
    _cut(store, need_postgres, "after", _is_commit)
    url = store.url  # type: ignore[attr-defined]
    # The server unreachable for the check: a socket where nothing listens.
    store.url = url.replace("port=", "port=1")  # type: ignore[attr-defined]
    with pytest.raises(LogUnavailableError) as lost:
        store.append_many(_batch("b"))
    message = str(lost.value)
    assert "\n" not in message
    for words in ("outcome is unknown", "may have been written", "could not be checked",
                  "eventflow tail", "seq 51", "same idempotency key is safe"):
        assert words in message, message
    store.url = url  # type: ignore[attr-defined]
    again = store.append_many(_batch("b"))  # the retry: every key is answered, none twice
    assert [r.seq for r in again] == list(range(2, 52))
    assert store.last_seq() == 51 and store.verify_chain() == (51, [])


@pytest.mark.parametrize("path", ["function", "next insert"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_one_event_appends_lost_at_their_commit(
        store: LogBase, need_postgres: str, path: str, when: str) -> None:
    """One event is one statement that commits on its own: the function's call, or a
    connection's next INSERT; the same check answers for both."""
    store.append("s", [ev.MaterialHeld("known stream")])  # seq 2; the next INSERT applies
    sql = store_pg._APPEND_ONE if path == "function" else store_pg._APPEND_NEXT
    stream = "new" if path == "function" else "s"
    _cut(store, need_postgres, when, lambda text: text is sql)
    if when == "after":
        (rec,) = store.append(stream, [ev.MaterialHeld("x")])
        assert (rec.seq, rec.stream, rec.event) == (3, stream, ev.MaterialHeld("x"))
        expected = 3
    else:
        with pytest.raises(LogUnavailableError, match="it was not written"):
            store.append(stream, [ev.MaterialHeld("x")])
        expected = 2
    with open_store(need_postgres) as other:
        assert other.last_seq() == expected and other.verify_chain() == (expected, [])
