"""Carrying out what the log says should happen, exactly once.

One cycle: read completion records and turn them into events, reconcile with
the scheduler for jobs that died silently, request steps whose wait is over,
and submit what was requested. Every effect is preceded by the event that
records its intent, and every event carries an idempotency key derived from
what it is about, so a cycle repeated after a crash (or run by two processes)
records nothing twice. Submission runs under the project lock; before calling
sbatch for a request it asks the scheduler whether a job with that request's
name already exists (the crash between sbatch and JobSubmitted).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs

from eventflow.codes.slurm import kind_from_state
from eventflow.core import events as ev
from eventflow.core.state import CalcState, MaterialState
from eventflow.errors import EventflowError, IllegalTransition
from eventflow.shell.api import Tracker
from eventflow.shell.jobs import JobWriter, job_name, read_completion
from eventflow.shell.parsing import plugins
from eventflow.shell.scheduler import Scheduler, SubmitError
from eventflow.shell.store import utc_now

log = logging.getLogger("eventflow.runner")

ACTIVE_SCHEDULER_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED",
                           "REQUEUED", "RESIZING", "STAGE_OUT", "SIGNALING"}
CRASH_ENV = "EVENTFLOW_TEST_CRASH_AT"  # test hook: kill -9 ourselves at a named point


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@attrs.define
class CycleReport:
    finished: int = 0
    started: int = 0
    lost: int = 0
    submitted: int = 0
    recovered_existing: int = 0
    submit_failures: int = 0
    released: int = 0

    def busy(self) -> bool:
        return any(attrs.astuple(self))


class Runner:
    def __init__(self, tracker: Tracker, scheduler: Scheduler) -> None:
        self.tracker = tracker
        self.scheduler = scheduler
        self.project = tracker.project
        cluster = self.project.config("cluster.yaml")
        self.max_jobs = int(cluster.get("max_jobs", 1000))
        self.max_submit = int(cluster.get("max_submit", 100))
        self.cleanup: dict[str, Any] = dict(cluster.get("cleanup") or {})
        self.writer = JobWriter(self.project, tracker.policy)
        self._plugins = plugins()

    # -- one cycle -----------------------------------------------------------------------------
    def cycle(self) -> CycleReport:
        report = CycleReport()
        states = self._materials_with_work()
        for state in states:
            for calc in list(state.calcs.values()):
                if calc.state in ("submitted", "running") and calc.job_id:
                    self._ingest(state, calc, report)
        states = self._materials_with_work()
        self._reconcile(states, report)
        self._release_waits(report)
        self._submit_pending(report)
        self.tracker.projections.catch_up(self.tracker.store)
        return report

    def _materials_with_work(self) -> list[MaterialState]:
        projections = self.tracker.projections
        projections.catch_up(self.tracker.store)
        ids = {
            row[0]
            for row in projections.db.execute(
                "SELECT DISTINCT material_id FROM calculations "
                "WHERE state IN ('requested', 'submitted', 'running')"
            )
        }
        return [self.tracker.state(mid) for mid in sorted(ids)]

    def _append(self, mid: str, events: list[ev.Event], key: str, actor: str = "watcher") -> bool:
        try:
            self.tracker.append(mid, events, key=key, meta={"actor": actor})
            return True
        except IllegalTransition as exc:
            # Someone else recorded a newer fact first; ours no longer applies.
            log.info("skipped %s: %s", key, exc, extra={"material": mid})
            return False

    # -- completion records -> observations and interpretations --------------------------------
    def _ingest(self, state: MaterialState, calc: CalcState, report: CycleReport) -> bool:
        folder = self.project.root / calc.directory
        record = read_completion(folder / "eventflow-done.json")
        if record is None:
            return False
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
        self._interpret(state, calc, record)
        return True

    def _interpret(self, state: MaterialState, calc: CalcState, record: dict[str, Any]) -> None:
        from eventflow.shell.interpret import interpret

        events = interpret(self.project, self._plugins, state, calc, record,
                           self.writer.params_for(state, calc), self._scheduler_kind(calc, record))
        self._append(state.id, events, key=f"interpreted:{calc.id}")
        kind = getattr(events[-1], "error_kind", None)
        if kind is None:
            self._cleanup(state, calc)
        log.info("%s %s", calc.id, f"failed: {kind}" if kind else "succeeded",
                 extra={"material": state.id, "calculation": calc.id, "job": calc.job_id})

    def _scheduler_kind(self, calc: CalcState, record: dict[str, Any]) -> str | None:
        """For a job that ended badly: what the scheduler says ended it (None if nothing)."""
        if record.get("exit_code") in (0, None) or record.get("reason") == "time_limit":
            return None
        slurm = self._plugins.get("slurm")
        if slurm is None or not calc.job_id:
            return None
        info = self.scheduler.states([calc.job_id]).get(calc.job_id)
        if info is None or info.state is None:
            return None
        return kind_from_state(info.state)

    def _cleanup(self, state: MaterialState, calc: CalcState) -> None:
        """Remove the configured scratch of a succeeded step (recorded first; idempotent)."""
        patterns = [str(p) for p in (self.cleanup.get(state.code) or [])]
        if not patterns:
            return
        self._append(state.id, [ev.ScratchCleanupDecided(calc.id, patterns)],
                     key=f"cleanup:{calc.id}")
        folder = self.project.inside(calc.directory)
        freed = 0
        for pattern in patterns:
            for path in folder.glob(pattern):
                if path.is_file() and not path.is_symlink():
                    freed += path.stat().st_size
                    path.unlink(missing_ok=True)
        if freed:
            log.info("removed %.1f MB of scratch from %s", freed / 1e6, calc.id,
                     extra={"material": state.id, "calculation": calc.id})

    # -- the scheduler's view, for jobs that die silently --------------------------------------
    def _reconcile(self, states: list[MaterialState], report: CycleReport) -> None:
        watched = [(s, c) for s in states for c in s.calcs.values()
                   if c.state in ("submitted", "running") and c.job_id and not c.finished_seen]
        if not watched:
            return
        infos = self.scheduler.states([c.job_id for _, c in watched])  # type: ignore[misc]
        for state, calc in watched:
            info = infos.get(calc.job_id)  # type: ignore[arg-type]
            sched_state = info.state if info is not None else None
            if sched_state in ACTIVE_SCHEDULER_STATES:
                if sched_state == "RUNNING" and calc.state == "submitted":
                    self._append(state.id, [ev.JobStarted(calc.id, calc.job_id or "",
                                                          host=(info.node or "") if info else "")],
                                 key=f"started:{calc.id}")
                    report.started += 1
                continue
            # Gone from the queue. The record is written before the job ends, so look again.
            if self._ingest(state, calc, report):
                continue
            self._lost(state, calc, sched_state, info, report)

    def _lost(self, state: MaterialState, calc: CalcState, sched_state: str | None,
              info: Any, report: CycleReport) -> None:
        from eventflow.shell.interpret import classify_lost

        kind, evidence = classify_lost(self.project, calc, sched_state, self._plugins)
        if sched_state == "COMPLETED" and kind is None:
            # A job recorded from outside eventflow writes no record: judge it by its output.
            self._interpret(state, calc, {"exit_code": 0, "job_id": calc.job_id})
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
        now = utc_now()
        for row in self.tracker.projections.materials("waiting"):
            state = self.tracker.state(row["id"])
            if state.wait_until is None or state.wait_until > now:
                continue
            from eventflow.shell.interpret import after_wait

            for command in after_wait(state, self.tracker.policy):
                self.tracker.execute(command)
                report.released += 1

    # -- submission, exactly once ------------------------------------------------------------
    def _submit_pending(self, report: CycleReport) -> None:
        rows = self.tracker.projections.db.execute(
            "SELECT state, count(*) FROM calculations WHERE state IN ('submitted', 'running') "
            "GROUP BY state"
        ).fetchall()
        in_queue = sum(n for _, n in rows)
        budget = min(self.max_submit, max(0, self.max_jobs - in_queue))
        pending = []
        now = utc_now()
        for state in self._materials_with_work():
            if state.state in ("held", "cancelled"):
                continue
            order = self.writer.step_order(state)
            for calc in state.calcs.values():
                if calc.state == "requested" and calc.job_id is None:
                    retry_at = self._retry_at(state, calc)
                    if retry_at is not None and retry_at > now:
                        continue
                    pending.append((order.get(calc.step, 99), calc.requested_at, state, calc))
        pending.sort(key=lambda p: (p[0], p[1]))
        for _, _, state, calc in pending:
            existing = self._existing_job(calc)
            if existing is not None:
                self._append(state.id, [ev.JobSubmitted(calc.id, existing, self.scheduler.name)],
                             key=f"submitted:{calc.id}")
                report.recovered_existing += 1
                log.info("found job %s of %s already in the scheduler; recorded it",
                         existing, calc.id, extra={"material": state.id, "calculation": calc.id,
                                                   "job": existing})
                continue
            if budget <= 0:
                continue
            budget -= 1
            self._submit(state, calc, report)

    def _existing_job(self, calc: CalcState) -> str | None:
        found = self.scheduler.find(job_name(self.project.project_id, calc.id))
        if not found:
            return None
        return sorted(found, key=lambda j: (len(j.job_id), j.job_id))[0].job_id

    def _retry_at(self, state: MaterialState, calc: CalcState) -> str | None:
        if not calc.submit_failures:
            return None
        last = None
        for rec in self.tracker.store.read(stream=state.id, types=["SubmissionFailed"]):
            if rec.event.calculation_id == calc.id:  # type: ignore[attr-defined]
                last = rec.event.retry_at  # type: ignore[attr-defined]
        return last

    def _submit(self, state: MaterialState, calc: CalcState, report: CycleReport) -> None:
        try:
            script, prepared = self.writer.write(state, calc)
        except (EventflowError, OSError) as exc:
            self._submit_failed(state, calc, f"cannot prepare the job: {exc}", report)
            return
        self._append(state.id, [prepared], key=f"inputs:{calc.id}")
        _crash_point("before_sbatch")
        try:
            name = job_name(self.project.project_id, calc.id)
            job_id = self.scheduler.submit(script, name, script.parent)
        except SubmitError as exc:
            self._submit_failed(state, calc, str(exc), report)
            return
        _crash_point("after_sbatch")
        self._append(state.id, [ev.JobSubmitted(calc.id, job_id, self.scheduler.name)],
                     key=f"submitted:{calc.id}")
        report.submitted += 1
        log.info("submitted %s as job %s", calc.id, job_id,
                 extra={"material": state.id, "calculation": calc.id, "job": job_id})
        _crash_point("after_record")

    def _submit_failed(self, state: MaterialState, calc: CalcState, message: str,
                       report: CycleReport) -> None:
        n = calc.submit_failures + 1
        delay = min(3600, 10 * 2 ** (n - 1))
        retry_at = (datetime.now(timezone.utc) + timedelta(seconds=delay)).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ")
        self._append(state.id, [ev.SubmissionFailed(calc.id, message[:2000], retry_at)],
                     key=f"submit-failed:{calc.id}:{n}")
        report.submit_failures += 1
        log.error("submission of %s failed (retry in %d s): %s", calc.id, delay, message,
                  extra={"material": state.id, "calculation": calc.id})


def cancel_jobs(tracker: Tracker, job_ids: list[str]) -> None:
    """scancel the given jobs (their cancellation is already recorded)."""
    from eventflow.shell.scheduler import choose_scheduler

    scheduler, _ = choose_scheduler(tracker.project.config("project.yaml").get("executor", "auto"),
                                    tracker.project.state_dir)
    for job_id in job_ids:
        scheduler.cancel(job_id)


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def completion_path(folder: Path) -> Path:
    return folder / "eventflow-done.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)
