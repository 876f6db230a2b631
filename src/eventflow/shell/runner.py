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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from eventflow.core import events as ev
from eventflow.core.kinds import kind_from_scheduler_state
from eventflow.core.recovery import is_recovery_attempt
from eventflow.core.state import CalcState, MaterialState
from eventflow.errors import EventflowError, IllegalTransition, LogUnavailableError
from eventflow.shell import clock
from eventflow.shell.api import Tracker
from eventflow.shell.clusters import Clusters
from eventflow.shell.jobs import RECORD, JobWriter, job_name, read_completion
from eventflow.shell.parsing import plugins
from eventflow.shell.scheduler import Scheduler, SchedulerError, SubmitError
from eventflow.shell.ssh import Unreachable
from eventflow.shell.store import utc_now

log = logging.getLogger("eventflow.runner")

ACTIVE_SCHEDULER_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED",
                           "REQUEUED", "RESIZING", "STAGE_OUT", "SIGNALING"}
CRASH_ENV = "EVENTFLOW_TEST_CRASH_AT"  # test hook: kill -9 ourselves at a named point
PREPARE_TRIES = 5  # a job folder that cannot be written this many times fails the attempt
VERDICT_WAIT_S = 15.0  # how long a failed job's record waits for the scheduler's verdict


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
    deferred: int = 0  # failed jobs whose scheduler verdict is not in yet: look again soon

    def busy(self) -> bool:
        """Whether the cycle recorded anything (a deferral alone records nothing)."""
        return any(attrs.astuple(self, filter=lambda a, _: a.name != "deferred"))


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
        self.clusters = Clusters(tracker, scheduler,
                                 timeout=float((cluster.get("scheduler") or {}).get(
                                     "command_timeout_s", 30)))
        self._plugins = plugins()
        # Raises when this process no longer holds the project lock (shell.lock.fence); the
        # watcher sets it. Checked right before sbatch, the one effect a retry cannot undo.
        self.fence: Callable[[], None] = lambda: None

    # -- one cycle -----------------------------------------------------------------------------
    def cycle(self, *, reconcile: bool = True) -> CycleReport:
        """One pass. ``reconcile=False`` skips asking the scheduler about every job we follow
        (the watcher does that every ``--reconcile`` seconds, not on every file event)."""
        report = CycleReport()
        self.clusters.refresh()
        self._fetch_remote_records()
        for mid, cid in self._with_records():
            state = self.tracker.state(mid)  # folded only now, and only for these
            calc = state.calcs.get(cid)
            if calc is not None and calc.state in ("submitted", "running") and calc.job_id:
                self._ingest(state, calc, report)
        if reconcile:
            self._reconcile(report)
        self._release_waits(report)
        self._submit_pending(report)
        self.clusters.record_reachability()  # a remote cluster's outage: when it began, ended
        self.tracker.projections.catch_up(self.tracker.store)
        return report

    def _followed(self) -> list[tuple[str, str, str, str, str]]:
        """(material, calculation, state, job id, folder) of every submitted or running job,
        from the projections: one query, no folding."""
        projections = self.tracker.projections
        projections.catch_up(self.tracker.store)
        return projections.db.execute(
            "SELECT material_id, id, state, job_id, directory FROM calculations "
            "WHERE state IN ('submitted', 'running') AND job_id IS NOT NULL "
            "ORDER BY material_id, id"
        ).fetchall()

    def _fetch_remote_records(self) -> None:
        """Copy back the folders of remote jobs whose record exists there: one listing per
        cluster for all its followed jobs, then one rsync for all its finished ones. An unreachable
        cluster is skipped (its jobs stay as they are; the next cycle asks again)."""
        root = self.project.root
        by_cluster: dict[str, tuple[Any, list[Path]]] = {}
        for _, cid, _, _, directory in self._followed():
            scheduler = self.clusters.of_job(cid)
            if scheduler is self.scheduler or not directory:
                continue
            if os.path.lexists(root / directory / RECORD):
                continue
            by_cluster.setdefault(scheduler.name, (scheduler, []))[1].append(root / directory)
        for name, (remote, folders) in by_cluster.items():
            try:
                remote.fetch(remote.finished_folders(folders))
            except SchedulerError as exc:
                log.warning("cluster %s: cannot fetch results now: %s", name, exc)

    def _with_records(self) -> list[tuple[str, str]]:
        """The followed calculations whose completion record exists: one stat each."""
        root = self.project.root
        return [(mid, cid) for mid, cid, _, _, directory in self._followed()
                if directory and os.path.lexists(root / directory / RECORD)]

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
        record = read_completion(folder / RECORD)
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
        still_listed, scheduler_kind = self._scheduler_verdict(calc, record, folder / RECORD)
        if still_listed:
            report.deferred += 1  # judged at a later cycle, once the scheduler has its say
            return True
        self._interpret(state, calc, record, scheduler_kind)
        return True

    def _interpret(self, state: MaterialState, calc: CalcState, record: dict[str, Any],
                   scheduler_kind: str | None = None) -> None:
        from eventflow.shell.interpret import interpret

        events = interpret(self.project, self._plugins, state, calc, record,
                           self.writer.params_for(state, calc), scheduler_kind)
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
        patterns = [str(p) for p in (self.cleanup.get(state.code) or [])]
        if not patterns or calc.reason.startswith("import"):
            return  # an imported calculation's folder is the user's own: never clean it
        try:
            folder = self.project.inside(calc.directory)
        except EventflowError:
            return
        self._append(state.id, [ev.ScratchCleanupDecided(calc.id, patterns)],
                     key=f"cleanup:{calc.id}")
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
    def _reconcile(self, report: CycleReport) -> None:
        """Ask the scheduler about every followed job in one call; fold only the materials
        whose job started or left the queue."""
        watched = self._followed()
        if not watched:
            return
        groups: dict[str, tuple[Any, list[tuple[str, str, str, str, str]]]] = {}
        for row in watched:
            scheduler = self.clusters.of_job(row[1])
            groups.setdefault(scheduler.name, (scheduler, []))[1].append(row)
        for name, (scheduler, rows) in groups.items():
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
            if not self._fetch_one(calc):
                continue  # the cluster did not answer: judged when it does
            if self._ingest(state, calc, report):
                continue
            self._lost(state, calc, sched_state, info, report)

    def _fetch_one(self, calc: CalcState) -> bool:
        """Copy back a remote job's folder if its record exists there; False when the cluster
        could not be asked (then nothing may be concluded about the job)."""
        remote = self.clusters.of_job(calc.id)
        if remote is self.scheduler or not calc.directory:
            return True
        folder = self.project.root / calc.directory
        try:
            remote.fetch(remote.finished_folders([folder]))  # type: ignore[attr-defined]
        except SchedulerError as exc:
            log.warning("%s: cannot copy its results back now: %s", calc.id, exc)
            return False
        return True

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
        requested = [row[0] for row in self.tracker.projections.db.execute(
            "SELECT DISTINCT material_id FROM calculations WHERE state = 'requested' "
            "ORDER BY material_id")]
        for state in (self.tracker.state(mid) for mid in requested):
            if state.state == "cancelled":
                continue
            order = self.writer.step_order(state)
            for calc in state.calcs.values():
                if calc.state == "requested" and calc.job_id is None:
                    if state.state == "held" and not self._may_be_in_scheduler(calc):
                        continue  # held: nothing new is submitted ...
                    retry_at = self._retry_at(state, calc)
                    if retry_at is not None and retry_at > now:
                        continue
                    pending.append((order.get(calc.step, 99), calc.requested_at, state, calc))
        pending.sort(key=lambda p: (p[0], p[1]))
        slots = self._recovery_slots() if pending else None
        down: set[str] = set()  # clusters that did not answer in this cycle: not asked again
        room = self._cluster_room() if pending else {}
        for _, _, state, calc in pending:
            try:
                target = self.clusters.target(state, calc, self.writer.params_for(state, calc))
                if target.name in down:
                    continue
                existing = (self._existing_job(calc, target) if self._may_be_in_scheduler(calc)
                            else None)
            except Unreachable as exc:
                down.add(target.name)
                log.warning("%s waits: %s", calc.id, exc,
                            extra={"material": state.id, "calculation": calc.id})
                continue  # whether it was submitted is unknown until the cluster answers
            except LogUnavailableError:
                raise  # the log's server, not the step, failed: the watcher waits for it
            except EventflowError as exc:
                self._submit_failed(state, calc, str(exc), report)
                continue
            if existing is not None:
                self._append(state.id, [ev.JobSubmitted(calc.id, existing, target.name)],
                             key=f"submitted:{calc.id}")
                report.recovered_existing += 1
                log.info("found job %s of %s already in the scheduler; recorded it",
                         existing, calc.id, extra={"material": state.id, "calculation": calc.id,
                                                   "job": existing})
                continue
            if budget <= 0 or state.state == "held":
                continue  # ... but a job an earlier run submitted is recorded (a fact)
            if slots is not None and is_recovery_attempt(state, calc):
                if slots <= 0:
                    continue  # max_concurrent_recoveries: this one waits for a free slot
                slots -= 1
            if room.get(target.name, 1) <= 0:
                continue  # the cluster's own max_jobs (cluster add --max-jobs)
            budget -= 1
            if target.name in room:
                room[target.name] -= 1
            if not self._submit(state, calc, report, target):
                down.add(target.name)

    def _cluster_room(self) -> dict[str, int]:
        """For each remote cluster with a max_jobs: how many more jobs it may take now."""
        active: dict[str, int] = {}
        for _, cid, _, _, _ in self._followed():
            name = self.clusters.of_job(cid).name
            active[name] = active.get(name, 0) + 1
        room = {}
        for name, cluster in self.clusters.defined().items():
            if cluster.max_jobs is not None:
                room[name] = int(cluster.max_jobs) - active.get(name, 0)
        return room

    def _recovery_slots(self) -> int | None:
        rules = self.tracker.policy.recovery
        limit = getattr(rules, "max_concurrent_recoveries", None)
        if limit is None:
            return None
        from eventflow.core.recovery import recovery_slots

        # Only a second or later attempt can be a recovery: fold just those materials.
        retried = [row[0] for row in self.tracker.projections.db.execute(
            "SELECT DISTINCT material_id FROM calculations "
            "WHERE state IN ('submitted', 'running') AND attempt > 1")]
        return recovery_slots((self.tracker.state(mid) for mid in retried), limit)

    def _may_be_in_scheduler(self, calc: CalcState) -> bool:
        """Whether an earlier run may have called sbatch for ``calc``: it records the job's
        InputsPrepared before every sbatch (and a timed-out sbatch as SubmissionFailed), so a
        request without either never reached the scheduler and needs no look-up by name."""
        if calc.submit_failures > 0:
            return True
        return self.tracker.store.by_key(f"inputs:{calc.id}") is not None

    def _existing_job(self, calc: CalcState, scheduler: Scheduler) -> str | None:
        found = scheduler.find(job_name(self.project.project_id, calc.id))
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

    def _submit(self, state: MaterialState, calc: CalcState, report: CycleReport,
                scheduler: Scheduler) -> bool:
        """Submit ``calc``; False when its cluster did not answer (recorded as a failure)."""
        try:
            job_dir = None
            if scheduler is not self.scheduler:  # a remote cluster: the job runs in its copy
                job_dir = scheduler.remote_dir(self.project.inside(calc.directory))  # type: ignore[attr-defined]
            script, prepared = self.writer.write(state, calc, job_dir=job_dir)
        except (EventflowError, OSError) as exc:
            tries = calc.submit_failures + 1
            if tries >= PREPARE_TRIES:
                # Not a passing fault: the attempt fails (input_error) and the recovery policy
                # decides, instead of a retry every hour for ever.
                text = f"cannot prepare the job ({tries} tries): {exc}"[:2000]
                self._append(state.id, [ev.CalculationFailed(
                    calc.id, "input_error", [{"line": 0, "text": text}], "eventflow")],
                    key=f"unpreparable:{calc.id}")
                report.submit_failures += 1
                return True  # the cluster answered: only this job is given up
            self._submit_failed(state, calc, f"cannot prepare the job: {exc}", report)
            return True
        self._append(state.id, [prepared], key=f"inputs:{calc.id}")
        _crash_point("before_sbatch")
        self.fence()
        try:
            name = job_name(self.project.project_id, calc.id)
            job_id = scheduler.submit(script, name, script.parent)
        except SubmitError as exc:
            self._submit_failed(state, calc, str(exc), report)
            return not isinstance(exc.__cause__, Unreachable)
        _crash_point("after_sbatch")
        self._append(state.id, [ev.JobSubmitted(calc.id, job_id, scheduler.name)],
                     key=f"submitted:{calc.id}")
        report.submitted += 1
        log.info("submitted %s as job %s", calc.id, job_id,
                 extra={"material": state.id, "calculation": calc.id, "job": job_id})
        _crash_point("after_record")
        return True

    def _submit_failed(self, state: MaterialState, calc: CalcState, message: str,
                       report: CycleReport) -> None:
        n = calc.submit_failures + 1
        delay = min(3600, 10 * 2 ** (n - 1))
        retry_at = clock.iso(clock.now() + delay)
        self._append(state.id, [ev.SubmissionFailed(calc.id, message[:2000], retry_at)],
                     key=f"submit-failed:{calc.id}:{n}")
        report.submit_failures += 1
        log.error("submission of %s failed (retry in %d s): %s", calc.id, delay, message,
                  extra={"material": state.id, "calculation": calc.id})


def cancel_jobs(tracker: Tracker, job_ids: list[str], material_id: str | None = None) -> None:
    """scancel the given jobs (their cancellation is already recorded); a job of
    ``material_id`` that went to a remote cluster is cancelled there."""
    from eventflow.shell.config import scheduler_for

    scheduler, _ = scheduler_for(tracker.project)
    placed: dict[str, str | None] = {}
    if material_id is not None:
        placed = {c.job_id: c.scheduler for c in tracker.state(material_id).calcs.values()
                  if c.job_id}
    clusters = Clusters(tracker, scheduler)
    for job_id in job_ids:
        name = placed.get(job_id)
        remote = clusters.remote(name) if name and name not in ("slurm", "local") else None
        (remote or scheduler).cancel(job_id)


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


def completion_path(folder: Path) -> Path:
    return folder / "eventflow-done.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)
