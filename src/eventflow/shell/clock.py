"""The shell's one clock: what time the runner and the log think it is.

Every timestamp the shell records (an event's ``recorded_at``, a submission's retry time) and
every age it measures (how long ago a completion record was written) comes from here, so a
deterministic simulation (``eventflow.sim``) can run the real runner on a simulated clock.
Outside a simulation it is the system clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

_source: Callable[[], float] = time.time  # seconds since the epoch


def now() -> float:
    """Seconds since the epoch."""
    return _source()


def utc_now() -> str:
    """Now as ISO-8601 UTC with microseconds and a ``Z`` (the log's ``recorded_at`` form)."""
    return iso(now())


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextmanager
def using(source: Callable[[], float]) -> Iterator[None]:
    """Run the block with ``source`` as the clock (a simulation's); restored afterwards."""
    global _source
    previous, _source = _source, source
    try:
        yield
    finally:
        _source = previous
