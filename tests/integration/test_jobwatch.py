"""The daemon watches only the folders of active jobs (shell/jobwatch.py), on the real file
system with real inotify and the real polling loop; and a record written before its folder
was watched is not lost. Waits have generous upper bounds; nothing asserts how long anything
took."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventflow.shell.api import Tracker
from eventflow.shell.config import scheduler_for
from eventflow.shell.jobs import RECORD
from eventflow.shell.jobwatch import FolderWatch, InotifyFolders, PollFolders
from eventflow.shell.runner import Runner
from eventflow.shell.watcher import Watcher
from tests.integration.helpers import add, count, make_project, unique, wait_for

WAIT = 60.0


def write_record(folder: Path) -> None:
    """As the job script does: a temporary file renamed into place."""
    tmp = folder / f".{RECORD}.tmp"
    tmp.write_text('{"exit_code": 0}')
    os.replace(tmp, folder / RECORD)


@pytest.fixture(params=["inotify", "poll"])
def watch(request: pytest.FixtureRequest) -> Iterator[tuple[FolderWatch, threading.Event]]:
    fired = threading.Event()
    w: FolderWatch = InotifyFolders(fired.set) if request.param == "inotify" else PollFolders(
        fired.set, 0.05)
    w.start()
    yield w, fired
    w.stop()


def test_only_the_synced_folders_are_watched(tmp_path: Path,
                                             watch: tuple[FolderWatch, threading.Event]) -> None:
    w, fired = watch
    active, finished = tmp_path / "active", tmp_path / "finished"
    active.mkdir()
    finished.mkdir()
    w.sync([active])
    assert w.watched == 1
    write_record(finished)  # not watched: nothing
    (active / "output.txt").write_text("not a record")  # watched, but not a record: nothing
    assert not fired.wait(1.0)
    write_record(active)
    assert fired.wait(WAIT)
    fired.clear()
    w.sync([])  # its job ended: no longer watched
    assert w.watched == 0
    (active / RECORD).unlink()
    write_record(active)
    assert not fired.wait(1.0)


def test_a_record_written_before_its_folder_was_watched_fires_at_the_sync(
        tmp_path: Path, watch: tuple[FolderWatch, threading.Event]) -> None:
    """The job ended between its submission and the sync after the cycle that submitted it:
    no file event will ever come for its record, so the sync itself says it is there."""
    w, fired = watch
    folder, missing = tmp_path / "fast", tmp_path / "not-made-yet"
    folder.mkdir()
    write_record(folder)
    w.sync([folder, missing])  # a folder that does not exist is skipped, not fatal
    assert fired.is_set()
    assert w.watched == 1
    fired.clear()
    missing.mkdir()
    w.sync([folder, missing])  # ... and watched at a later sync
    assert w.watched == 2
    write_record(missing)
    assert fired.wait(WAIT)


class RecordBeforeReturn:
    """The project's real local executor, whose submit returns only once the job has written
    its record: the job ends before the cycle records JobSubmitted, so before its folder can be
    watched (the race the sync after each cycle must cover)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name

    def submit(self, script: Path, job_name: str, workdir: Path) -> str:
        job_id = self.inner.submit(script, job_name, workdir)
        wait_for(lambda: (Path(workdir) / RECORD).exists(), "the job's record", WAIT)
        return job_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_the_daemon_takes_up_a_record_written_before_the_folder_was_watched(
        tmp_path: Path) -> None:
    """In process (signal handlers need the main thread), with --reconcile 3600: the record
    exists before JobSubmitted is recorded, and the material still completes."""
    project = make_project(tmp_path, "local")
    mid = unique("fast")
    add(project, mid, ["true"])
    with Tracker.open(project) as tracker:
        inner, _ = scheduler_for(tracker.project)
        watcher = Watcher(tracker, reconcile=3600.0, scheduler=RecordBeforeReturn(inner))

        def stop_when_done() -> None:
            wait_for(lambda: count(project, "CalculationSucceeded") == 1, "the verdict", WAIT)
            watcher.stop()

        stopper = threading.Thread(target=stop_when_done)
        stopper.start()
        try:
            assert watcher.run() == 0
        finally:
            watcher.stop()
            stopper.join(timeout=WAIT)
        assert count(project, "JobFinished") == 1
        assert tracker.state(mid).state == "completed"
        # nothing is followed (or watched) any more
        assert Runner(tracker, inner).followed_folders() == set()
        assert watcher.folders.watched == 0
