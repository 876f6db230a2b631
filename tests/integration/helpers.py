"""Small helpers the integration tests share."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 240.0) -> None:
    """Poll ``predicate`` until it holds; a bound on waiting, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def unique(name: str) -> str:
    """SLURM remembers finished jobs for minutes: ids must differ between runs."""
    return f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**8}"
