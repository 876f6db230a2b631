"""Readers never skip: seq order is commit order on both stores.

A slow writer holds its transaction open after its seq is fixed; fast writers try to append
meanwhile; a follower (what ``tail -f`` and catch-up do) reads all along. Nothing with a
higher seq may become visible before the slow one commits, and the follower sees every seq
exactly once, in order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from eventflow.core import events as ev
from eventflow.shell.follow import follow
from eventflow.shell.store import LogBase, open_store


def _held(slow: LogBase, holding: threading.Event, release: threading.Event) -> None:
    """Make ``slow``'s next append stop inside its transaction, after its seq is computed.

    The stop is in the shared append path, so on PostgreSQL ``slow`` takes that path; the
    other writers keep the one-round-trip append (``eventflow_append_one``), which must queue
    behind the open transaction all the same."""
    if hasattr(slow, "_one_trip"):
        slow._one_trip = False
    insert = slow._insert_rows

    def stalled(rows: Iterable[tuple[Any, ...]], count: int) -> None:
        holding.set()
        assert release.wait(30)
        insert(rows, count)

    slow._insert_rows = stalled  # type: ignore[method-assign]


def test_a_slow_writer_is_never_overtaken_and_the_follower_skips_nothing(
        log_location: str) -> None:
    with open_store(log_location, create=True) as s:
        s.append("setup", [ev.MaterialRegistered("setup", "Si2", "test")])
    seen: list[int] = []
    stop = threading.Event()

    def follower() -> None:
        with open_store(log_location) as r:
            cursor = 0
            while not stop.is_set():
                for rec in follow(r, cursor, rounds=1):
                    seen.append(rec.seq)
                    cursor = rec.seq
                time.sleep(0.005)
            seen.extend(rec.seq for rec in follow(r, cursor, rounds=1))

    def fast(name: str, n: int) -> None:
        with open_store(log_location) as w:
            for i in range(n):
                w.append(name, [ev.MaterialHeld(f"{name} {i}")])

    reader = threading.Thread(target=follower)
    reader.start()
    holding, release = threading.Event(), threading.Event()
    slow = open_store(log_location)
    _held(slow, holding, release)
    slow_thread = threading.Thread(target=lambda: slow.append("slow", [ev.MaterialHeld("s")]))
    slow_thread.start()
    assert holding.wait(30)
    fasts = [threading.Thread(target=fast, args=(f"fast{k}", 10)) for k in range(2)]
    for t in fasts:
        t.start()
    time.sleep(0.3)  # the fast writers' chance to (wrongly) commit past the open seq
    with open_store(log_location) as probe:
        assert probe.last_seq() == 1, "an append became visible before a lower seq committed"
    release.set()
    slow_thread.join(30)
    for t in fasts:
        t.join(30)
    stop.set()
    reader.join(30)
    slow.close()
    assert seen == list(range(1, 23))
    with open_store(log_location) as s:
        assert s.verify_chain() == (22, [])
        assert next(s.read(stream="slow")).seq == 2  # it took its seq first and kept it


def test_follow_wakes_on_another_connections_append(log_location: str) -> None:
    """``tail -f``'s wait: a LISTEN on PostgreSQL, a short sleep on SQLite; an append made
    while the follower waits is printed in the next round."""
    with open_store(log_location, create=True) as s, open_store(log_location) as w:
        got: list[ev.Recorded] = []
        t = threading.Thread(target=lambda: got.extend(follow(s, 0, rounds=2, wait=10)))
        t.start()
        time.sleep(0.2)
        w.append("a", [ev.MaterialRegistered("a", "Si2", "test")])
        t.join(30)
        assert not t.is_alive()
        assert [r.stream for r in got] == ["a"]
