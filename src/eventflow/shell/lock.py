"""One writer at a time: a lock file beside the project marker.

It is created with O_EXCL (atomic also on NFS v3+), so it holds across the login
nodes that share the project folder. It names its holder (host, pid); a lock
whose process is dead on this host, or whose heartbeat is older than
``stale_after`` on another host, is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from eventflow.errors import EventflowError


class LockHeld(EventflowError, RuntimeError):
    def __init__(self, holder: dict[str, Any]) -> None:
        self.holder = holder
        super().__init__(
            f"another eventflow watcher holds the lock: host {holder.get('host')}, "
            f"pid {holder.get('pid')}, since {holder.get('since')}"
        )


def process_alive(pid: int) -> bool:
    """Whether a process of this host has this pid. A zombie (killed, not yet reaped by its
    parent) is not alive: it will never release what it holds, and os.kill still reaches it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (not Linux) or gone just now: os.kill had the last word
    return stat[stat.rfind(")") + 2:].startswith("Z")


class LockLost(EventflowError):
    """Another process took the project lock over (ours looked stale): act no more."""


class ProjectLock:
    def __init__(self, path: Path, *, stale_after: float = 120.0) -> None:
        self.path = path
        self.stale_after = stale_after
        self.held = False

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _is_stale(self, holder: dict[str, Any] | None) -> bool:
        if holder is None:
            # Unreadable: being written right now, or left half-written by a crash.
            try:
                return time.time() - self.path.stat().st_mtime > 5
            except FileNotFoundError:
                return True
        if holder.get("host") == socket.gethostname():
            return not process_alive(int(holder.get("pid", 0)))
        try:
            return time.time() - self.path.stat().st_mtime > self.stale_after
        except FileNotFoundError:
            return True

    def try_acquire(self, role: str = "once") -> bool:
        """Take the lock if free or stale. ``role`` ("daemon" or "once") tells others whether
        the holder stays (a daemon does all the work) or is about to let go."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "role": role,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_if_stale():
                    return False
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return True
        return False

    def _take_over_if_stale(self) -> bool:
        # Serialise take-overs on this host so two processes never both remove a fresh lock.
        guard = self.path.with_name(self.path.name + ".guard")
        with open(guard, "a") as g:
            fcntl.flock(g, fcntl.LOCK_EX)
            try:
                holder = self.holder()
                if not self._is_stale(holder):
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.path, f"{self.path}.stale.{os.getpid()}")
                    os.unlink(f"{self.path}.stale.{os.getpid()}")
                return True
            finally:
                fcntl.flock(g, fcntl.LOCK_UN)

    def acquire(self, timeout: float | None = None, poll: float = 0.05,
                role: str = "once") -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.try_acquire(role):
            if deadline is not None and time.monotonic() > deadline:
                raise LockHeld(self.holder() or {})
            time.sleep(poll)

    def fence(self) -> None:
        """Raise LockLost unless this process still holds the lock.

        A watcher paused past ``stale_after`` (a stopped process, a hung file system) has its
        lock taken over; when it resumes mid-cycle it must not call sbatch for an attempt the
        new holder may already have submitted. Called right before each sbatch: SLURM takes
        no fencing token, so the window left is the one between this check and the call.
        """
        holder = self.holder()
        if not (self.held and holder is not None and holder.get("pid") == os.getpid()
                and holder.get("host") == socket.gethostname()):
            self.held = False
            raise LockLost(f"{self.path}: the project lock was taken over by "
                           f"{(holder or {}).get('host')} pid {(holder or {}).get('pid')}; "
                           "this watcher stops before its next submission")

    def heartbeat(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def release(self) -> None:
        if self.held:
            holder = self.holder()
            if holder and holder.get("pid") == os.getpid() and (
                holder.get("host") == socket.gethostname()
            ):
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self.held = False

    def __enter__(self) -> ProjectLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
