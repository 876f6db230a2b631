"""Following the log as it grows (``tail -f``), without ever skipping an event.

Each round first reads the log's head, then the events up to it. Appends are serialised on
both stores (SQLite's write lock, PostgreSQL's advisory lock), so every seq up to the head is
committed by the time the head is read: a reader that moves its cursor to the head has seen
everything before it. (Moving the cursor to a head read *after* the events would skip an
append that committed in between.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from eventflow.core import events as ev
from eventflow.errors import LogUnavailableError
from eventflow.shell.store import LogBase

LOST_WAIT_S = (0.2, 5.0)  # the first wait for a lost log server, and the longest


def follow(store: LogBase, after: int, *, stream: str | None = None,
           types: Iterable[str] | None = None, rounds: int | None = None,
           wait: float = 0.2,
           lost: Callable[[LogUnavailableError | None, float], None] | None = None,
           ) -> Iterator[ev.Recorded]:
    """Events after seq ``after`` as they are appended, for ``rounds`` rounds (None: forever);
    between rounds the store's ``wait_for_append`` (a LISTEN on PostgreSQL, a sleep on
    SQLite).

    With ``lost``, a log server that goes away (a PostgreSQL restart) is waited for instead of
    ending the follow: ``lost(error, wait)`` before each wait (doubling up to 5 s), then
    ``lost(None, 0)`` once it answers again. The cursor is the last seq given out, so the
    rounds after the outage go on from there: nothing skipped, nothing given twice (the
    store connects again, and LISTENs again, on its next use)."""
    type_list = list(types) if types is not None else None
    cursor = after
    done = 0
    pause = LOST_WAIT_S[0]
    waiting = False
    while rounds is None or done < rounds:
        try:
            head = store.last_seq()
            if waiting:
                waiting, pause = False, LOST_WAIT_S[0]
                lost(None, 0.0)  # type: ignore[misc]
            if head > cursor:
                for rec in store.read(after=cursor, until_seq=head, stream=stream,
                                      types=type_list):
                    cursor = rec.seq
                    yield rec
                cursor = head
            done += 1
            if rounds is None or done < rounds:
                store.wait_for_append(wait)
        except LogUnavailableError as exc:
            if lost is None:
                raise
            waiting = True
            lost(exc, pause)
            time.sleep(pause)
            pause = min(2 * pause, LOST_WAIT_S[1])
