"""Small helpers the integration tests share."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from eventflow.shell.store import GENESIS, EventStore, canonical, row_hash


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 240.0, *,
             every: float = 0.2) -> None:
    """Poll ``predicate`` until it holds; a bound on waiting, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def unique(name: str) -> str:
    """SLURM remembers finished jobs for minutes: ids must differ between runs."""
    return f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**8}"


def append_unknown_event(store: EventStore, stream: str) -> int:
    """An event a newer eventflow wrote, inserted as it would have (chain intact)."""
    seq = store.last_seq() + 1
    version = store.stream_version(stream) + 1
    prev = store.db.execute("SELECT hash FROM events WHERE seq = ?", (seq - 1,)).fetchone()[0]
    data, meta, at = canonical({"x": 1}).decode(), "{}", "2030-01-01T00:00:00.000000Z"
    h = row_hash(prev or GENESIS, seq, stream, version, "FutureThing", 1, data, meta, at, None)
    store.db.execute("INSERT INTO events VALUES (?,?,?,'FutureThing',1,?,?,?,NULL,?)",
                     (seq, stream, version, data, meta, at, h))
    return seq
