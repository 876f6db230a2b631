"""One root for every error eventflow raises on purpose.

Each subclasses the built-in it resembles, so callers can catch familiar
types. Only the CLI turns them into one-line messages and exit codes.
"""

from __future__ import annotations


class EventflowError(Exception):
    """A problem the user can act on; its message is one line naming the file and the fix."""


class ProjectNotFound(EventflowError, FileNotFoundError):
    pass


class LogCorruptError(EventflowError):
    pass


class LogTooNewError(EventflowError):
    pass


class ConcurrencyError(EventflowError):
    """Someone else appended to the stream first (or the same intent was stored differently)."""


class InvalidId(EventflowError, ValueError):
    pass


class ConfigError(EventflowError, ValueError):
    pass


class ProjectionStale(EventflowError):
    pass


class IllegalTransition(EventflowError, ValueError):
    """An event that the lifecycle does not allow from the current state; nothing was appended."""


class UnreadableOutput(EventflowError):
    """A parser raised on an output: a bug of the parser, not a fact about the run."""


class LogUnavailableError(EventflowError):
    """The log's server cannot be reached, or the connection to it was lost; whatever
    transaction was open is gone whole (nothing half-written). Retrying later may succeed.
    (Lost during a commit, the message says what a new connection found, or that the outcome
    is unknown.)"""
