"""``eventflow watch``: the long-running process on the login node.

It reacts to completion records as they appear in the folders of the jobs it
follows (inotify, or polling for NFS/Lustre where inotify sees nothing from other
nodes; see shell/jobwatch.py), to the log growing (watchdog), and every
``reconcile`` seconds asks the scheduler about the jobs it follows. A remote cluster's
records appear on the cluster, not here: while jobs run on one, every ``remote_poll``
seconds it is asked (one round trip per cluster) which of them finished. All work
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
import warnings
from pathlib import Path
from typing import Any

import attrs

from eventflow.core.clusters import ClusterError
from eventflow.errors import ConfigError, LogUnavailableError
from eventflow.shell.api import Tracker
from eventflow.shell.jobwatch import FolderWatch, folder_watch
from eventflow.shell.lock import LockHeld, LockLost
from eventflow.shell.lock_pg import watcher_lock
from eventflow.shell.runner import CycleReport, Runner

log = logging.getLogger("eventflow.watcher")
RECORD = "eventflow-done.json"
LOG_MAX_BYTES = 10_000_000  # the operational log rotates at this size ...
LOG_BACKUPS = 5  # ... keeping this many old files (watcher.log.1 ... .5)
HEARTBEAT_S = 20.0  # the daemon touches its lock this often (others call it stale after 120 s)
RECHECK_S = 1.0  # a failed job waiting for the scheduler's verdict is looked at again this soon
RETRY_AFTER_ERROR_S = 5.0  # a cycle that raised is tried again this soon
LOG_WAIT_S = (0.5, 30.0)  # the log's server unreachable: first wait, doubling up to the last
LOG_FILES = ("events.db", "events.db-wal")  # their changes: another process appended
REMOTE_POLL_S = 5.0  # remote clusters are polled this often (cluster.yaml remote: poll_s)


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
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES,
                                                        backupCount=LOG_BACKUPS)
    file_handler.setFormatter(formatter)
    root.addHandler(file_handler)
    if echo:
        stream = logging.StreamHandler()
        stream.setFormatter(formatter)
        root.addHandler(stream)


def _scheduler_for(tracker: Tracker) -> tuple[Any, str]:
    from eventflow.shell.config import scheduler_for

    return scheduler_for(tracker.project)


def run_once(tracker: Tracker, *, lock_timeout: float = 600.0, scheduler: Any = None,
             poll: float = 0.05, clusters: list[str] | None = None) -> CycleReport:
    """Process everything pending once, under the project lock (waiting while another
    ``--once`` holds it). When a daemon holds it there is nothing to do: the daemon does it.

    A failed job whose scheduler verdict is not in yet (see Runner._scheduler_verdict) is
    looked at again every second until it is judged, for at most VERDICT_WAIT_S.
    """
    if scheduler is None:
        scheduler, _ = _scheduler_for(tracker)
    lock = watcher_lock(tracker, clusters)
    deadline = time.monotonic() + lock_timeout
    while not lock.try_acquire("once"):
        holder = lock.holder() or {}
        if holder.get("role") == "daemon":
            print(f"a watcher is running for {tracker.project.root} (host {holder.get('host')}, "
                  f"pid {holder.get('pid')}): it processes everything; nothing to do")
            return CycleReport()
        if time.monotonic() > deadline:
            raise LockHeld(holder)
        time.sleep(poll)
    try:
        runner = Runner(tracker, scheduler)
        runner.only = _checked_clusters(runner, clusters)
        runner.fence = lock.fence
        report = runner.cycle()
        while report.deferred:
            time.sleep(RECHECK_S)
            again = runner.cycle(reconcile=False)
            for field in attrs.fields(CycleReport):
                if field.name != "deferred":
                    setattr(report, field.name,
                            getattr(report, field.name) + getattr(again, field.name))
            report.deferred = again.deferred
        return report
    finally:
        lock.release()


class Watcher:
    def __init__(self, tracker: Tracker, *, poll: float | None = None,
                 reconcile: float = 30.0, scheduler: Any = None,
                 remote_poll: float | None = None, clusters: list[str] | None = None) -> None:
        self.tracker = tracker
        self.clusters = clusters  # act only for these (None: every cluster)
        self.poll = poll
        self.reconcile = reconcile
        self.remote_poll = check_remote_poll(
            remote_poll if remote_poll is not None else remote_poll_s(tracker),
            "--remote-poll" if remote_poll is not None else "config/cluster.yaml: remote: poll_s")
        self.scheduler = scheduler
        self.wake = threading.Event()  # something changed: look (set by any watched change)
        self.record_seen = threading.Event()  # ... and it was a completion record
        self.stopping = threading.Event()
        self._lost = False  # the log's server was unreachable; say when it answers again
        self._log_wait = LOG_WAIT_S[0]  # how long to wait before asking it again
        # The folders of the jobs followed, watched for their record; synced after each cycle.
        self.folders: FolderWatch = folder_watch(self._on_record, poll)

    def stop(self, *_: Any) -> None:
        self.stopping.set()
        self.wake.set()

    def _observer(self) -> Any:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler

        # watchdog's inotify observer warns on stderr, with a dump of every watch (tens of KB
        # each), whenever folders appear in quick succession (a cycle writing many job
        # folders). On a daemon whose stderr is a pipe nobody reads, that blocks its thread
        # and the daemon goes deaf (seen with 200 materials); the warning is harmless.
        warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning,
                                module=r"watchdog\.")

        if self.poll is not None:
            from watchdog.observers.polling import PollingObserver

            observer: Any = PollingObserver(timeout=self.poll)
        else:
            from watchdog.observers import Observer

            observer = Observer()
        wake = self.wake

        class OnLog(FileSystemEventHandler):
            """Another process appended (`eventflow add`, `retry`, `release`): react now,
            not at the next reconcile."""

            def on_any_event(self, event: FileSystemEvent) -> None:
                if Path(str(event.src_path)).name in LOG_FILES:
                    wake.set()

        # Job folders are not watched here: only the active ones are, by self.folders.
        self.tracker.project.calcs.mkdir(exist_ok=True)
        observer.schedule(OnLog(), str(self.tracker.project.state_dir), recursive=False)
        return observer

    def _on_record(self) -> None:
        self.record_seen.set()
        self.wake.set()

    def run(self) -> int:
        lock = watcher_lock(self.tracker, self.clusters)
        if not lock.try_acquire("daemon"):
            holder = lock.holder() or {}
            which = f" ({lock.describe()})" if hasattr(lock, "describe") else ""
            print(f"a watcher is already running for {self.tracker.project.root}{which} "
                  f"(host {holder.get('host')}, pid {holder.get('pid')}); nothing to do")
            return 0
        if self.scheduler is None:
            self.scheduler, why = _scheduler_for(self.tracker)
            log.info(why)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        observer = self._observer()
        observer.start()
        self.folders.start()
        runner = Runner(self.tracker, self.scheduler)
        try:
            runner.only = _checked_clusters(runner, self.clusters)
        except ClusterError as exc:
            lock.release()
            raise exc from None
        runner.fence = lock.fence
        log.info("watching the folders of active jobs in %s (%s)%s", self.tracker.project.calcs,
                 f"polling every {self.poll} s" if self.poll else "inotify",
                 f" for {lock.describe()}" if hasattr(lock, "describe") else "")
        try:
            self._loop(runner, lock)
        except LockLost as exc:
            log.error("%s", exc)
            return 1
        finally:
            observer.stop()
            observer.join(timeout=10)
            self.folders.stop()
            lock.release()
            log.info("watcher stopped")
        return 0

    def _loop(self, runner: Runner, lock: Any) -> None:
        """``_watch`` until stopped; while the log's server is unreachable (a PostgreSQL log
        whose server restarts), wait for it with a doubling backoff, one line per try, and
        then carry on: the interrupted transaction was undone whole, and ``_watch`` starts
        over with a full cycle (reconciling), so nothing that happened meanwhile is missed."""
        while not self.stopping.is_set():
            try:
                self._watch(runner, lock)
                return
            except LogUnavailableError as exc:
                wait = self._log_wait
                log.warning("waiting for the log's server (retrying in %g s): %s", wait, exc)
                lock.heartbeat()
                if self.stopping.wait(wait):
                    return
                self._log_wait = min(2 * wait, LOG_WAIT_S[1])
                self._lost = True

    def _watch(self, runner: Runner, lock: Any) -> None:
        """Cycle on every file event, ask the scheduler every ``reconcile`` seconds, and keep
        the lock's heartbeat going in between, until stopped."""
        next_reconcile = 0.0  # the first cycle reconciles at once
        next_remote = time.monotonic() + self.remote_poll  # the first cycle polls anyway
        next_retry: float | None = None
        seen_seq = -1  # the log's last seq when the last cycle began
        store = self.tracker.store
        while not self.stopping.is_set():
            now = time.monotonic()
            due = now >= next_reconcile
            retry = next_retry is not None and now >= next_retry
            remote = now >= next_remote and runner.follows_remote_jobs()
            if now >= next_remote and not remote:
                next_remote = now + self.remote_poll  # nothing runs remotely: look again then
            if self.wake.is_set() or due or retry or remote:
                self.wake.clear()
                by_record = self.record_seen.is_set()
                self.record_seen.clear()
                seq = store.last_seq()
                if self._lost:
                    self._lost, self._log_wait = False, LOG_WAIT_S[0]
                    log.info("the log's server answers again (last seq %d)", seq)
                # A wake by the log alone: only if it grew since the last cycle began (so our
                # own appends cost one quiet cycle, and the log's checkpoints none).
                if not (due or retry or remote or by_record or seq != seen_seq):
                    lock.heartbeat()
                    continue
                seen_seq = seq
                # The database's lock (lock_pg): if its session died (a server restart), hold
                # it again before acting, or stop (LockLost) if another watcher took it.
                regain = getattr(lock, "regain", None)
                if regain is not None and regain():
                    log.info("holding the watcher lock for %s again", lock.describe())
                report = self._cycle(runner, reconcile=due, remote=due or remote)
                if due:
                    next_reconcile = time.monotonic() + self.reconcile
                if due or remote:
                    next_remote = time.monotonic() + self.remote_poll
                if report is None:
                    next_retry = time.monotonic() + RETRY_AFTER_ERROR_S
                elif report.deferred:
                    next_retry = time.monotonic() + RECHECK_S
                else:
                    next_retry = None
            lock.heartbeat()
            wake_at = min(next_reconcile, next_remote, time.monotonic() + HEARTBEAT_S,
                          next_retry if next_retry is not None else float("inf"))
            self.wake.wait(max(0.0, wake_at - time.monotonic()))

    def _cycle(self, runner: Runner, *, reconcile: bool, remote: bool) -> CycleReport | None:
        try:
            report = runner.cycle(reconcile=reconcile, remote=remote)
            # Now watch the folders of the jobs followed after this cycle (new submissions in,
            # ended jobs out); a record already there wakes the next cycle.
            self.folders.sync(runner.followed_folders())
        except LockLost:
            raise  # another watcher holds the project now: this one must stop
        except LogUnavailableError:
            raise  # _loop waits for the server
        except Exception:  # keep watching: one bad file must not stop the watcher
            log.exception("cycle failed; retrying in %g s", RETRY_AFTER_ERROR_S)
            return None
        if report.busy():
            log.info("cycle: %s", report)
        return report


def remote_poll_s(tracker: Tracker) -> float:
    """cluster.yaml's ``remote: {poll_s: N}``, else REMOTE_POLL_S."""
    remote = tracker.project.config("cluster.yaml").get("remote") or {}
    return remote.get("poll_s", REMOTE_POLL_S) if isinstance(remote, dict) else REMOTE_POLL_S


def check_remote_poll(value: Any, where: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{where}: must be a number of seconds above 0, not {value!r}")
    return seconds


def _checked_clusters(runner: Runner, clusters: list[str] | None) -> frozenset[str] | None:
    """The clusters a watcher acts for (None: every one); an unknown name is an error."""
    if clusters is None:
        return None
    from eventflow.core.clusters import LOCAL
    from eventflow.shell.clusters import defined

    known = {LOCAL, *defined(runner.tracker.store)}  # the clusters in the log
    unknown = sorted(set(clusters) - known)
    if unknown:
        raise ClusterError(f"watch --cluster: no cluster {unknown[0]!r} (known: "
                           f"{', '.join(sorted(known))})")
    return frozenset(clusters)


__all__ = ["LockHeld", "Watcher", "run_once", "setup_logging"]
