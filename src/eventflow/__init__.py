"""eventflow: an event-sourced workflow manager for DFT calculations on SLURM clusters.

    >>> import eventflow
    >>> tracker = eventflow.open(".")
    >>> mid = tracker.create_material("NaCl.cif", source="cif")

Heavy modules (ASE, the stores) are imported only when used, so the command
line starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from eventflow.shell.api import Tracker


def open(path: Any = ".") -> Tracker:  # noqa: A001 - the documented entry point
    """Open the eventflow project at ``path`` (searching upward for ``.eventflow/``)."""
    from eventflow.shell.api import Tracker

    return Tracker.open(path)


def init(path: Any = ".") -> Tracker:
    """Create an eventflow project at ``path`` (idempotent) and open it."""
    from eventflow.shell.api import Tracker

    return Tracker.init(path)
