"""Submission, exactly once: the part of the runner's cycle that calls sbatch.

Every request due now is taken in order (step order, then request time) within the budgets
(cluster.yaml ``max_jobs``/``max_submit``, a cluster's own ``max_jobs``, the recovery
policy's ``max_concurrent_recoveries``). Before sbatch its InputsPrepared is recorded; a
request that an earlier run may already have submitted (InputsPrepared or a failed
submission recorded) is first looked up by its unique job name on its cluster. Local jobs are
submitted one by one; a remote cluster's jobs of the cycle go in one round trip
(shell/remote_batch.py). Each outcome is recorded under its idempotency key.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventflow.core import events as ev
from eventflow.core.recovery import is_recovery_attempt
from eventflow.core.state import CalcState, MaterialState
from eventflow.errors import EventflowError, LogUnavailableError
from eventflow.shell import clock
from eventflow.shell.jobs import RECORD, STARTED, job_name, read_completion
from eventflow.shell.remote_batch import submit_many
from eventflow.shell.scheduler import Scheduler, SchedulerError, SubmitError, _check_slurm_id
from eventflow.shell.ssh import Unreachable
from eventflow.shell.store import utc_now

if TYPE_CHECKING:
    from collections.abc import Callable

    from eventflow.shell.api import Tracker
    from eventflow.shell.jobs import JobWriter
    from eventflow.shell.routing import Routing
    from eventflow.shell.runner import CycleReport

log = logging.getLogger("eventflow.runner")

CRASH_ENV = "EVENTFLOW_TEST_CRASH_AT"  # test hook: kill -9 ourselves at a named point
PREPARE_TRIES = 5  # a job folder that cannot be written this many times fails the attempt


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Submission:
    """The Runner's submitting half (a mixin: the Runner holds the state named below)."""

    tracker: Tracker
    project: Any
    writer: JobWriter
    clusters: Routing
    max_jobs: int
    max_submit: int
    fence: Callable[[], None]

    scheduler: Scheduler
    only: frozenset[str] | None

    def _append(self, mid: str, events: list[ev.Event], key: str,
                actor: str = "watcher", **meta: str) -> bool:
        raise NotImplementedError  # the Runner's

    def _cluster_of(self, scheduler: Scheduler) -> str:
        raise NotImplementedError  # the Runner's

    def _followed(self) -> list[tuple[str, str, str, str, str]]:
        raise NotImplementedError  # the Runner's

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
        room = self.clusters.room(self._followed()) if pending else {}
        batches: dict[str, tuple[Any, list[tuple[MaterialState, CalcState, Path]]]] = {}
        for _, _, state, calc in pending:
            try:
                target = self.clusters.target(state, calc, self.writer.params_for(state, calc))
                if target.name in down:
                    continue
                if self.only is not None and self._cluster_of(target) not in self.only:
                    continue  # another watcher's cluster (watch --cluster)
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
            if self.clusters.is_remote(target):  # prepared now, submitted with its batch
                script = self._prepare(state, calc, report, target)
                if script is not None:
                    batches.setdefault(target.name, (target, []))[1].append((state, calc, script))
            elif not self._submit(state, calc, report, target):
                down.add(target.name)
        for target, batch in batches.values():
            self._submit_batch(target, batch, report)

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
        if found:
            return sorted(found, key=lambda j: (len(j.job_id), j.job_id))[0].job_id
        # A job that ran and ended long enough ago is forgotten by squeue, and without
        # accounting sacct knows nothing either (eventflow-sim --seed 4734: an sbatch that
        # timed out had made a job, which ended before the retry; the retry made a second).
        # Its completion record is in the attempt's own folder, with its id, and its start
        # marker too (a job killed outright writes no record).
        if calc.directory and scheduler is self.scheduler:
            folder = self.project.root / calc.directory
            record = read_completion(folder / RECORD)
            job_id = str((record or {}).get("job_id") or "") or _started_id(folder / STARTED)
            if job_id:
                return job_id
        return None

    def _retry_at(self, state: MaterialState, calc: CalcState) -> str | None:
        if not calc.submit_failures:
            return None
        last = None
        for rec in self.tracker.store.read(stream=state.id, types=["SubmissionFailed"]):
            if rec.event.calculation_id == calc.id:  # type: ignore[attr-defined]
                last = rec.event.retry_at  # type: ignore[attr-defined]
        return last

    def _prepare(self, state: MaterialState, calc: CalcState, report: CycleReport,
                 scheduler: Scheduler) -> Path | None:
        """Write the job folder of ``calc`` and record InputsPrepared (the intent, before any
        sbatch); its job script, or None when it could not be written (recorded)."""
        try:
            job_dir = self.clusters.job_dir(scheduler, calc)  # a remote job runs in its copy
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
                return None
            self._submit_failed(state, calc, f"cannot prepare the job: {exc}", report)
            return None
        self._append(state.id, [prepared], key=f"inputs:{calc.id}",
                     cluster=self._cluster_of(scheduler))
        claimed = self._claimed_elsewhere(calc)
        if claimed is not None:
            log.warning("%s was prepared for cluster %s by another watcher; not submitted here "
                        "(does config/cluster.yaml place steps differently on the hosts?)",
                        calc.id, claimed, extra={"material": state.id, "calculation": calc.id})
            return None
        return script

    def _claimed_elsewhere(self, calc: CalcState) -> str | None:
        """For a runner of some clusters (watch --cluster): the cluster outside them that
        ``calc``'s InputsPrepared names. That append is the claim on a calculation (its key is
        unique in the log, so one host's wins), and the watcher of that cluster submits it."""
        if self.only is None:
            return None
        stored = self.tracker.store.by_key(f"inputs:{calc.id}")
        claimed = (stored.meta or {}).get("cluster") if stored is not None else None
        return None if claimed is None or claimed in self.only else str(claimed)

    def _submit(self, state: MaterialState, calc: CalcState, report: CycleReport,
                scheduler: Scheduler) -> bool:
        """Submit ``calc``; False when its cluster did not answer (recorded as a failure)."""
        script = self._prepare(state, calc, report, scheduler)
        if script is None:
            return True  # the cluster was not asked: only this job waits or is given up
        _crash_point("before_sbatch")
        self.fence()
        try:
            name = job_name(self.project.project_id, calc.id)
            job_id = scheduler.submit(script, name, script.parent)
        except SubmitError as exc:
            self._submit_failed(state, calc, str(exc), report)
            return not isinstance(exc.__cause__, Unreachable)
        _crash_point("after_sbatch")
        self._submitted(state, calc, job_id, scheduler, report)
        _crash_point("after_record")
        return True

    def _submit_batch(self, scheduler: Any,
                      batch: list[tuple[MaterialState, CalcState, Path]],
                      report: CycleReport) -> None:
        """Submit the prepared jobs of one remote cluster in one round trip (their inputs in
        one transfer); each job's outcome is recorded as for a single submission. A job the
        answer does not cover may exist: its SubmissionFailed makes the retry look it up by
        name first (``_may_be_in_scheduler``)."""
        names = {job_name(self.project.project_id, calc.id): (state, calc)
                 for state, calc, _ in batch}
        _crash_point("before_sbatch")
        self.fence()
        outcomes = submit_many(scheduler, [(script, job_name(self.project.project_id, calc.id))
                                           for _, calc, script in batch])
        _crash_point("after_sbatch")
        unreached = False
        for name, (state, calc) in names.items():
            outcome = outcomes[name]
            if outcome.job_id is not None:
                self._submitted(state, calc, outcome.job_id, scheduler, report)
            elif outcome.unreachable and unreached:
                # The cluster did not answer: one failure says so (as when the first single
                # submission finds it down); the others stay requested with their intent
                # recorded, so they are looked up by name before any sbatch once it answers.
                log.warning("%s waits: %s", calc.id, outcome.error,
                            extra={"material": state.id, "calculation": calc.id})
            else:
                unreached = unreached or outcome.unreachable
                self._submit_failed(state, calc, str(outcome.error), report)
        _crash_point("after_record")

    def _submitted(self, state: MaterialState, calc: CalcState, job_id: str,
                   scheduler: Scheduler, report: CycleReport) -> None:
        if not self._append(state.id, [ev.JobSubmitted(calc.id, job_id, scheduler.name)],
                            key=f"submitted:{calc.id}"):
            self._cancelled_meanwhile(state.id, calc.id, job_id, scheduler)
            return
        report.submitted += 1
        log.info("submitted %s as job %s", calc.id, job_id,
                 extra={"material": state.id, "calculation": calc.id, "job": job_id})

    def _cancelled_meanwhile(self, mid: str, cid: str, job_id: str,
                             scheduler: Scheduler) -> None:
        """A user cancelled ``cid`` while its sbatch ran (`eventflow cancel` found no job to
        scancel yet): the recorded cancellation is the intent, this job is its effect."""
        calc = self.tracker.state(mid).calcs.get(cid)
        if calc is None or calc.state != "cancelled":
            return
        log.warning("%s was cancelled while it was being submitted: cancelling its job %s",
                    cid, job_id, extra={"material": mid, "calculation": cid, "job": job_id})
        try:
            scheduler.cancel(job_id)
        except SchedulerError as exc:
            log.error("could not cancel job %s of cancelled %s: %s", job_id, cid, exc,
                      extra={"material": mid, "calculation": cid, "job": job_id})

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


def _started_id(path: Path) -> str:
    """The SLURM job id a job wrote at its start ('' when absent or not one). The local
    executor's ids are not needed here: its look-up by name never forgets a job."""
    try:
        return _check_slurm_id(path.read_text(errors="replace")[:64].strip())
    except (OSError, ValueError):
        return ""
