"""Following the log as it grows (``tail -f``), without ever skipping an event.

Each round first reads the log's head, then the events up to it. Appends are serialised on
both stores (SQLite's write lock, PostgreSQL's advisory lock), so every seq up to the head is
committed by the time the head is read: a reader that moves its cursor to the head has seen
everything before it. (Moving the cursor to a head read *after* the events would skip an
append that committed in between.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from eventflow.core import events as ev
from eventflow.shell.store import LogBase


def follow(store: LogBase, after: int, *, stream: str | None = None,
           types: Iterable[str] | None = None, rounds: int | None = None,
           wait: float = 0.2) -> Iterator[ev.Recorded]:
    """Events after seq ``after`` as they are appended, for ``rounds`` rounds (None: forever);
    between rounds the store's ``wait_for_append`` (a LISTEN on PostgreSQL, a sleep on
    SQLite)."""
    type_list = list(types) if types is not None else None
    cursor = after
    done = 0
    while rounds is None or done < rounds:
        head = store.last_seq()
        if head > cursor:
            yield from store.read(after=cursor, until_seq=head, stream=stream, types=type_list)
            cursor = head
        done += 1
        if rounds is None or done < rounds:
            store.wait_for_append(wait)
