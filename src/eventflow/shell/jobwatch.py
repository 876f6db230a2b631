"""Watching the folders of active jobs for their completion record.

Only a submitted or running job can still write a record, so the daemon watches only their
folders, not the whole ``calcs/`` tree: a recursive watch costs about 1 KB per folder in
watchdog's observers (88 MB at 10,000 materials, so ~450 MB at 100,000, nearly all of them
long finished). watchdog runs one thread per scheduled watch, which does not scale to
10,000 active jobs either, so here one inotify descriptor holds a non-recursive watch per
active folder and one thread reads it; the polling variant (NFS, Lustre: inotify sees nothing
written on other nodes) ``lstat``s each active folder's record once per interval.

``sync(folders)`` is called after every cycle with the folders of the jobs then followed. A
record written before its folder's watch was added (the job ended between its submission
and this sync) produces no event, so a newly watched folder whose record is already there
fires at once; the cycle that causes looks at every followed folder anyway.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from eventflow.shell.jobs import RECORD

log = logging.getLogger("eventflow.watcher")
READ_TIMEOUT_MS = 500  # how often the inotify thread looks whether it should stop


class FolderWatch:
    """The watched set and the diff against the wanted one; subclasses add and remove."""

    def __init__(self, on_record: Callable[[], None]) -> None:
        self.on_record = on_record
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    @property
    def watched(self) -> int:
        return len(self._folders())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="eventflow-jobwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close()

    def sync(self, wanted: Iterable[Path]) -> None:
        """Watch exactly ``wanted`` (a folder that cannot be watched now is tried again at the
        next sync; its record is still found by the cycles, which look at every folder)."""
        wanted = set(wanted)
        current = self._folders()
        for folder in current - wanted:
            self._remove(folder)
        fired = False
        for folder in wanted - current:
            try:
                self._add(folder)
            except OSError as exc:
                if not self._warned:  # once: a missing folder or the kernel's watch limit
                    log.warning("cannot watch %s (%s); its record is found by the next cycle "
                                "that looks", folder, exc.strerror or exc)
                    self._warned = True
                continue
            if not fired and os.path.lexists(folder / RECORD):
                fired = True  # written before the watch existed: no event will come
        if fired:
            self.on_record()

    # -- what subclasses provide -----------------------------------------------------------
    def _folders(self) -> set[Path]:
        raise NotImplementedError

    def _add(self, folder: Path) -> None:
        raise NotImplementedError

    def _remove(self, folder: Path) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass


class InotifyFolders(FolderWatch):
    """One inotify descriptor, a non-recursive watch per folder, one reading thread."""

    def __init__(self, on_record: Callable[[], None]) -> None:
        from inotify_simple import INotify, flags

        super().__init__(on_record)
        self._flags = flags
        self._fd = INotify()
        # A record is renamed into place (MOVED_TO) or, by other writers, created and closed.
        self._mask = flags.CREATE | flags.MOVED_TO | flags.CLOSE_WRITE | flags.ONLYDIR
        self._wds: dict[Path, int] = {}

    def _folders(self) -> set[Path]:
        with self._lock:
            return set(self._wds)

    def _add(self, folder: Path) -> None:
        wd = self._fd.add_watch(folder, self._mask)
        with self._lock:
            self._wds[folder] = wd

    def _remove(self, folder: Path) -> None:
        with self._lock:
            wd = self._wds.pop(folder)
        with contextlib.suppress(OSError):  # deleted or moved away: the kernel dropped it
            self._fd.rm_watch(wd)

    def _run(self) -> None:
        overflow, record = self._flags.Q_OVERFLOW, RECORD
        while not self._stop.is_set():
            try:
                events = self._fd.read(timeout=READ_TIMEOUT_MS)
            except (OSError, ValueError):
                return  # closed
            # Watch descriptors are allocated cyclically by the kernel, so one whose folder was
            # deleted (IGNORED) is not handed out again: no event can be taken for another's.
            if any(event.name == record or event.mask & overflow for event in events):
                self.on_record()  # an overflow may have dropped one: the cycle looks at all

    def _close(self) -> None:
        self._fd.close()


class PollFolders(FolderWatch):
    """Every ``interval`` seconds, one ``lstat`` per watched folder's record."""

    def __init__(self, on_record: Callable[[], None], interval: float) -> None:
        super().__init__(on_record)
        self.interval = interval
        self._seen: dict[Path, bool] = {}  # folder -> its record was there at the last look

    def _folders(self) -> set[Path]:
        with self._lock:
            return set(self._seen)

    def _add(self, folder: Path) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(2, "no such folder", str(folder))
        with self._lock:
            self._seen[folder] = os.path.lexists(folder / RECORD)

    def _remove(self, folder: Path) -> None:
        with self._lock:
            self._seen.pop(folder, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                folders = list(self._seen)
            appeared = False
            for folder in folders:
                there = os.path.lexists(folder / RECORD)
                with self._lock:
                    if folder in self._seen:
                        appeared |= there and not self._seen[folder]
                        self._seen[folder] = there
            if appeared:
                self.on_record()


def folder_watch(on_record: Callable[[], None], poll: float | None) -> FolderWatch:
    """Polling every ``poll`` seconds, or inotify (polling every second where inotify cannot
    be had: not Linux, or the user's inotify instances used up)."""
    if poll is not None:
        return PollFolders(on_record, poll)
    try:
        return InotifyFolders(on_record)
    except (ImportError, OSError) as exc:
        log.warning("inotify unavailable (%s): polling the active job folders every second", exc)
        return PollFolders(on_record, 1.0)


__all__ = ["FolderWatch", "InotifyFolders", "PollFolders", "folder_watch"]
