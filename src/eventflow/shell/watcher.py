"""``eventflow watch``: the long-running process on the login node.

It reacts to completion records as they appear (inotify through watchdog, or
polling for NFS/Lustre where inotify sees nothing from other nodes), and every
``reconcile`` seconds asks the scheduler about the jobs it follows. All work
happens in ``Runner.cycle`` under the project lock, so any number of watchers
and ``--once`` runs produce no duplicate events and no duplicate submissions.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import signal
import threading
import time
from pathlib import Path
from typing import Any

from eventflow.shell.api import Tracker
from eventflow.shell.lock import LockHeld, ProjectLock
from eventflow.shell.runner import Runner
from eventflow.shell.scheduler import choose_scheduler

log = logging.getLogger("eventflow.watcher")
RECORD = "eventflow-done.json"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        for key in ("material", "calculation", "job"):
            out[key] = getattr(record, key, None)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{k}={getattr(record, k)}" for k in ("material", "calculation", "job")
                       if getattr(record, k, None))
        base = f"{self.formatTime(record, '%Y-%m-%d %H:%M:%S')} {record.levelname:<7} "
        return base + record.getMessage() + (f"  [{ids}]" if ids else "")


def setup_logging(path: Path, *, as_json: bool, echo: bool) -> None:
    root = logging.getLogger("eventflow")
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter: logging.Formatter = JsonFormatter() if as_json else TextFormatter()
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=10_000_000, backupCount=5)
    file_handler.setFormatter(formatter)
    root.addHandler(file_handler)
    if echo:
        stream = logging.StreamHandler()
        stream.setFormatter(formatter)
        root.addHandler(stream)


def _scheduler_for(tracker: Tracker) -> tuple[Any, str]:
    executor = str(tracker.project.config("project.yaml").get("executor", "auto"))
    cluster = tracker.project.config("cluster.yaml")
    executor = str(cluster.get("executor", executor))
    return choose_scheduler(executor, tracker.project.state_dir)


def run_once(tracker: Tracker, *, lock_timeout: float = 600.0, scheduler: Any = None) -> Any:
    """Process everything pending once, under the project lock (waiting for it if needed)."""
    if scheduler is None:
        scheduler, _ = _scheduler_for(tracker)
    lock = ProjectLock(tracker.project.lock_path)
    lock.acquire(timeout=lock_timeout)
    try:
        return Runner(tracker, scheduler).cycle()
    finally:
        lock.release()


class Watcher:
    def __init__(self, tracker: Tracker, *, poll: float | None = None,
                 reconcile: float = 30.0, scheduler: Any = None) -> None:
        self.tracker = tracker
        self.poll = poll
        self.reconcile = reconcile
        self.scheduler = scheduler
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def stop(self, *_: Any) -> None:
        self.stopping.set()
        self.wake.set()

    def _observer(self) -> Any:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler

        if self.poll is not None:
            from watchdog.observers.polling import PollingObserver

            observer: Any = PollingObserver(timeout=self.poll)
        else:
            from watchdog.observers import Observer

            observer = Observer()
        wake = self.wake

        class OnRecord(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                path = str(getattr(event, "dest_path", "") or event.src_path)
                if path.endswith(RECORD):
                    wake.set()

        calcs = self.tracker.project.calcs
        calcs.mkdir(exist_ok=True)
        observer.schedule(OnRecord(), str(calcs), recursive=True)
        return observer

    def run(self) -> int:
        lock = ProjectLock(self.tracker.project.lock_path)
        if not lock.try_acquire():
            holder = lock.holder() or {}
            print(f"a watcher is already running for {self.tracker.project.root} "
                  f"(host {holder.get('host')}, pid {holder.get('pid')}); nothing to do")
            return 0
        if self.scheduler is None:
            self.scheduler, why = _scheduler_for(self.tracker)
            log.info(why)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        observer = self._observer()
        observer.start()
        runner = Runner(self.tracker, self.scheduler)
        log.info("watching %s (%s)", self.tracker.project.calcs,
                 f"polling every {self.poll} s" if self.poll else "inotify")
        try:
            next_reconcile = 0.0
            while not self.stopping.is_set():
                self.wake.clear()
                try:
                    report = runner.cycle()
                    if report.busy():
                        log.info("cycle: %s", report)
                except Exception:  # keep watching: one bad file must not stop the watcher
                    log.exception("cycle failed; retrying at the next event")
                lock.heartbeat()
                next_reconcile = time.monotonic() + self.reconcile
                self.wake.wait(max(0.0, next_reconcile - time.monotonic()))
        finally:
            observer.stop()
            observer.join(timeout=10)
            lock.release()
            log.info("watcher stopped")
        return 0


__all__ = ["LockHeld", "Watcher", "run_once", "setup_logging"]
