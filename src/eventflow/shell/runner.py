"""Carrying out what the log says should happen, exactly once.

One cycle: read completion records and turn them into events, reconcile with
the scheduler for jobs that died silently, request steps whose wait is over,
and submit what was requested. Every effect is preceded by the event that
records its intent, and every event carries an idempotency key derived from
what it is about, so a cycle repeated after a crash (or run by two processes)
records nothing twice. Submission (shell/submission.py) runs under the project
lock; before calling sbatch for a request it asks the scheduler whether a job
with that request's name already exists (the crash between sbatch and
JobSubmitted). Which cluster holds which job is shell/routing.py's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from eventflow.core import events as ev
from eventflow.core.clusters import LOCAL
from eventflow.core.kinds import kind_from_scheduler_state
from eventflow.core.state import CalcState, MaterialState
from eventflow.errors import EventflowError, IllegalTransition, UnreadableOutput
from eventflow.shell import clock
from eventflow.shell.api import Tracker
from eventflow.shell.jobs import RECORD, JobWriter, read_completion
from eventflow.shell.parsing import plugins
from eventflow.shell.remote_scratch import check_cleanup
from eventflow.shell.routing import Routing
from eventflow.shell.scheduler import JobInfo, Scheduler
from eventflow.shell.ssh import Unreachable
from eventflow.shell.store import utc_now
from eventflow.shell.submission import PREPARE_TRIES, Submission

log = logging.getLogger("eventflow.runner")

ACTIVE_SCHEDULER_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED",
                           "REQUEUED", "RESIZING", "STAGE_OUT", "SIGNALING"}
VERDICT_WAIT_S = 15.0  # how long a failed job's record waits for the scheduler's verdict


@attrs.define
class CycleReport:
    finished: int = 0
    started: int = 0
    lost: int = 0
    submitted: int = 0
    recovered_existing: int = 0
    submit_failures: int = 0
    released: int = 0
    deferred: int = 0  # failed jobs whose scheduler verdict is not in yet: look again soon
    unreadable: int = 0  # finished jobs whose output a parser raised on: looked at again

    def busy(self) -> bool:
        """Whether the cycle recorded anything (a deferral alone records nothing)."""
        return any(attrs.astuple(self, filter=lambda a, _: a.name not in _RECORDS_NOTHING))


_RECORDS_NOTHING = ("deferred", "unreadable")


class Runner(Submission):
    """One cycle of the watcher; submitting is Submission's part (shell/submission.py)."""

    def __init__(self, tracker: Tracker, scheduler: Scheduler) -> None:
        self.tracker = tracker
        self.scheduler = scheduler
        self.project = tracker.project
        cluster = self.project.config("cluster.yaml")
        self.max_jobs = int(cluster.get("max_jobs", 1000))
        self.max_submit = int(cluster.get("max_submit", 100))
        self.cleanup = check_cleanup(cluster.get("cleanup"))
        self.writer = JobWriter(self.project, tracker.policy)
        self.clusters = Routing(tracker, scheduler,
                                timeout=float((cluster.get("scheduler") or {}).get(
                                    "command_timeout_s", 30)))
        self._plugins = plugins()
        # Raises when this process no longer holds the project lock (shell.lock.fence); the
        # watcher sets it. Checked right before sbatch, the one effect a retry cannot undo.
        self.fence: Callable[[], None] = lambda: None
        # The clusters this runner acts for (watch --cluster; None: every one). Watchers of one
        # PostgreSQL log on several hosts each act for their own (shell.lock_pg).
        self.only: frozenset[str] | None = None

    # -- one cycle -----------------------------------------------------------------------------
    def cycle(self, *, reconcile: bool = True, remote: bool = True) -> CycleReport:
        """One pass. ``reconcile=False`` skips asking the local scheduler about every job we
        follow (the watcher does that every ``--reconcile`` seconds, not on every file event);
        ``remote=False`` skips polling the remote clusters (the watcher does that every
        ``--remote-poll`` seconds: their records make no local file events)."""
        report = CycleReport()
        self.clusters.refresh()
        self.clusters.send_cleanups()
        polled = self.clusters.poll(self._followed()) if remote else {}
        # Observations first (a JobFinished per new record), then their interpretation: a
        # burst of records is seen as soon as it arrives, not one parse after another.
        ended = []
        for mid, cid in self._with_records():
            state = self.tracker.state(mid)  # folded only now, and only for these
            calc = state.calcs.get(cid)
            if (calc is not None and calc.state in ("submitted", "running") and calc.job_id
                    and self._observe(state, calc, report) is not None):
                ended.append((mid, cid))
        for mid, cid in ended:
            state = self.tracker.state(mid)
            calc = state.calcs.get(cid)
            if calc is not None and calc.state in ("submitted", "running"):
                self._ingest(state, calc, report)
        if reconcile or polled:
            self._reconcile(report, polled, local=reconcile)
        self._release_waits(report)
        self._submit_pending(report)
        self.clusters.record_reachability()  # a remote cluster's outage: when it began, ended
        self.tracker.projections.catch_up(self.tracker.store)
        return report

    def followed_folders(self) -> set[Path]:
        """The folders of the jobs this runner follows (the watcher watches these)."""
        root = self.project.root
        return {root / directory for *_, directory in self._followed() if directory}

    def follows_remote_jobs(self) -> bool:
        """Whether any followed job runs on a remote cluster (the watcher polls them then)."""
        self.clusters.refresh()
        return any(self.clusters.is_remote(self.clusters.of_job(row[1]))
                   for row in self._followed())

    def _followed(self) -> list[tuple[str, str, str, str, str]]:
        """(material, calculation, state, job id, folder) of every submitted or running job,
        from the projections: one query, no folding."""
        projections = self.tracker.projections
        projections.catch_up(self.tracker.store)
        rows = projections.db.execute(
            "SELECT material_id, id, state, job_id, directory FROM calculations "
            "WHERE state IN ('submitted', 'running') AND job_id IS NOT NULL "
            "ORDER BY material_id, id"
        ).fetchall()
        if self.only is None:
            return rows
        return [row for row in rows if self._cluster_of(self.clusters.of_job(row[1]))
                in self.only]

    def _cluster_of(self, scheduler: Scheduler) -> str:
        """The cluster name ``watch --cluster`` uses for ``scheduler`` (local for ours)."""
        return LOCAL if scheduler is self.scheduler else scheduler.name

    def _with_records(self) -> list[tuple[str, str]]:
        """The followed calculations whose completion record exists: one stat each."""
        root = self.project.root
        return [(mid, cid) for mid, cid, _, _, directory in self._followed()
                if directory and os.path.lexists(root / directory / RECORD)]

    def _append(self, mid: str, events: list[ev.Event], key: str, actor: str = "watcher",
                **meta: str) -> bool:
        try:
            self.tracker.append(mid, events, key=key, meta={"actor": actor, **meta})
            return True
        except IllegalTransition as exc:
            # Someone else recorded a newer fact first; ours no longer applies.
            log.info("skipped %s: %s", key, exc, extra={"material": mid})
            return False

    # -- completion records -> observations and interpretations --------------------------------
    def _observe(self, state: MaterialState, calc: CalcState,
                 report: CycleReport) -> dict[str, Any] | None:
        """The completion record of ``calc``'s job, its JobFinished recorded (once)."""
        record = read_completion(self.project.root / calc.directory / RECORD)
        if record is None:
            return None
        if not calc.finished_seen:
            finished = ev.JobFinished(
                calculation_id=calc.id,
                job_id=str(record.get("job_id") or calc.job_id or ""),
                exit_code=_int(record.get("exit_code")),
                signal=_int(record.get("signal")),
                reason=record.get("reason"),
                started_at=str(record.get("started_at") or ""),
                finished_at=str(record.get("finished_at") or ""),
                host=str(record.get("host") or ""),
            )
            self._append(state.id, [finished], key=f"finished:{calc.id}")
            report.finished += 1
            log.info("job %s of %s finished (exit %s)", calc.job_id, calc.id,
                     record.get("exit_code"), extra={"material": state.id,
                                                     "calculation": calc.id, "job": calc.job_id})
        return record

    def _ingest(self, state: MaterialState, calc: CalcState, report: CycleReport) -> bool:
        folder = self.project.root / calc.directory
        record = self._observe(state, calc, report)
        if record is None:
            return False
        still_listed, scheduler_kind = self._scheduler_verdict(calc, record, folder / RECORD)
        if still_listed:
            report.deferred += 1  # judged at a later cycle, once the scheduler has its say
            return True
        self._interpret(state, calc, record, report, scheduler_kind)
        return True

    def _interpret(self, state: MaterialState, calc: CalcState, record: dict[str, Any],
                   report: CycleReport, scheduler_kind: str | None = None) -> None:
        from eventflow.shell.interpret import interpret

        try:
            events = interpret(self.project, self._plugins, state, calc, record,
                               self.writer.params_for(state, calc), scheduler_kind)
        except UnreadableOutput as exc:
            # One output a parser cannot read must not stop every other material. Nothing
            # is recorded: each cycle tries again, so a fixed parser reads it.
            report.unreadable += 1
            log.error("%s", exc, extra={"material": state.id, "calculation": calc.id})
            return
        self._append(state.id, events, key=f"interpreted:{calc.id}")
        kind = getattr(events[-1], "error_kind", None)
        if kind is None:
            self._cleanup(state, calc)
        log.info("%s %s", calc.id, f"failed: {kind}" if kind else "succeeded",
                 extra={"material": state.id, "calculation": calc.id, "job": calc.job_id})

    def _scheduler_verdict(self, calc: CalcState, record: dict[str, Any],
                           record_path: Path) -> tuple[bool, str | None]:
        """For a job that ended badly: (the scheduler still lists it, the kind it says ended it).

        Out of memory, cancellation and node failure are the scheduler's to say, and SLURM says
        so only once the job has left the queue: the script writes its record a moment before
        that (slurmstepd notices an OOM kill after the script exits). So a fresh record of such
        a job is judged later, for at most VERDICT_WAIT_S after it was written.
        """
        if record.get("exit_code") in (0, None) or record.get("reason") == "time_limit":
            return False, None
        if self._plugins.get("slurm") is None or not calc.job_id:
            return False, None
        try:
            info = self.clusters.of_job(calc.id).states([calc.job_id]).get(calc.job_id)
        except Unreachable:
            # Judged once the cluster answers again, but not waited for past VERDICT_WAIT_S:
            # then the record alone judges it (as when the scheduler has forgotten the job).
            return _age(record_path) < VERDICT_WAIT_S, None
        sched_state = info.state if info is not None else None
        if sched_state in ACTIVE_SCHEDULER_STATES and _age(record_path) < VERDICT_WAIT_S:
            return True, None
        return False, kind_from_scheduler_state(sched_state) if sched_state else None

    def _cleanup(self, state: MaterialState, calc: CalcState) -> None:
        """Remove the configured scratch of a succeeded step (recorded first; idempotent)."""
        patterns = self.cleanup.get(state.code) or []
        if not patterns or calc.reason.startswith("import"):
            return  # an imported calculation's folder is the user's own: never clean it
        try:
            folder = self.project.inside(calc.directory)
        except EventflowError:
            return
        self._append(state.id, [ev.ScratchCleanupDecided(calc.id, patterns)],
                     key=f"cleanup:{calc.id}")
        freed = 0
        real = folder.resolve()
        for pattern in patterns:
            for path in folder.glob(pattern):
                # A glob may pass through a link the job made (out/ -> a shared folder):
                # only files really inside the job folder are removed.
                if (path.is_file() and not path.is_symlink()
                        and path.resolve().is_relative_to(real)):
                    freed += path.stat().st_size
                    path.unlink(missing_ok=True)
        if freed:
            log.info("removed %.1f MB of scratch from %s", freed / 1e6, calc.id,
                     extra={"material": state.id, "calculation": calc.id})

    # -- the scheduler's view, for jobs that die silently --------------------------------------
    def _reconcile(self, report: CycleReport, polled: dict[str, dict[str, JobInfo] | None],
                   *, local: bool = True) -> None:
        """Judge every followed job by what its scheduler says, asked in one call per
        scheduler (a remote cluster's answer comes from this cycle's poll when there was one;
        ``local=False``: only those); fold only the materials whose job started or left the
        queue."""
        watched = self._followed()
        if not watched:
            return
        groups: dict[str, tuple[Any, list[tuple[str, str, str, str, str]]]] = {}
        for row in watched:
            scheduler = self.clusters.of_job(row[1])
            groups.setdefault(scheduler.name, (scheduler, []))[1].append(row)
        for name, (scheduler, rows) in groups.items():
            if name in polled:
                infos = polled[name]
                if infos is None:
                    continue  # did not answer the poll: its jobs wait (logged there)
            elif not local:
                continue
            else:
                try:
                    infos = scheduler.states([row[3] for row in rows])
                except Unreachable as exc:
                    log.warning("cluster %s does not answer; its jobs wait: %s", name, exc)
                    continue
            self._reconcile_rows(rows, infos, report)

    def _reconcile_rows(self, watched: list[tuple[str, str, str, str, str]],
                        infos: dict[str, Any], report: CycleReport) -> None:
        for mid, cid, projected, job_id, _ in watched:
            info = infos.get(job_id)
            sched_state = info.state if info is not None else None
            if sched_state in ACTIVE_SCHEDULER_STATES and not (
                sched_state == "RUNNING" and projected == "submitted"
            ):
                continue
            state = self.tracker.state(mid)
            calc = state.calcs.get(cid)
            if calc is None or calc.state not in ("submitted", "running") or calc.finished_seen:
                continue  # changed since the query, or its record is being judged
            if sched_state in ACTIVE_SCHEDULER_STATES:
                if sched_state == "RUNNING" and calc.state == "submitted":
                    self._append(state.id, [ev.JobStarted(calc.id, calc.job_id or "",
                                                          host=(info.node or "") if info else "")],
                                 key=f"started:{calc.id}")
                    report.started += 1
                continue
            # Gone from the queue. The record is written before the job ends, so look again
            # (on a remote cluster: there, and copy it back first).
            if not self.clusters.fetch_one(calc):
                continue  # the cluster did not answer: judged when it does
            if self._ingest(state, calc, report):
                continue
            self._lost(state, calc, sched_state, info, report)

    def _lost(self, state: MaterialState, calc: CalcState, sched_state: str | None,
              info: Any, report: CycleReport) -> None:
        from eventflow.shell.interpret import classify_lost

        kind, evidence = classify_lost(self.project, calc, sched_state, self._plugins)
        if sched_state == "COMPLETED" and kind is None:
            # A job recorded from outside eventflow writes no record: judge it by its output.
            self._interpret(state, calc, {"exit_code": 0, "job_id": calc.job_id}, report)
            return
        self._append(state.id, [ev.JobLost(calc.id, calc.job_id or "", sched_state,
                                           kind or "truncated", evidence)],
                     key=f"lost:{calc.id}")
        report.lost += 1
        log.warning("job %s of %s left the queue without a completion record (%s: %s)",
                    calc.job_id, calc.id, sched_state, kind,
                    extra={"material": state.id, "calculation": calc.id, "job": calc.job_id})

    # -- waits -----------------------------------------------------------------------------
    def _release_waits(self, report: CycleReport) -> None:
        """Ask the policy what is due now for waiting (and ready) materials: a wait that is
        over, or a failure decided late because it happened during a hold."""
        if self.tracker.policy.recovery is None:
            return
        from eventflow.core.recovery import due

        now = utc_now()
        for status in ("waiting", "ready"):
            for row in self.tracker.projections.materials(status):
                state = self.tracker.state(row["id"])
                for command in due(state, now, self.tracker.policy):
                    self.tracker.execute(command)
                    report.released += 1


def _age(path: Path) -> float:
    """Seconds since ``path`` was last written (0 if it cannot be read)."""
    try:
        return max(0.0, clock.now() - path.stat().st_mtime)
    except OSError:
        return 0.0


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


__all__ = ["ACTIVE_SCHEDULER_STATES", "PREPARE_TRIES", "CycleReport", "Runner"]
