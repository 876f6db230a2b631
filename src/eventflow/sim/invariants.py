"""What must hold after every step of a simulation, and when the world has quieted down.

Each check returns the violations it finds as sentences naming the material, attempt and
job; an empty list is a pass. They read the log and the projections through their own
connections (like another process would) and the simulated cluster's jobs (the truth about
what the scheduler ran).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from eventflow.core.recovery.units import memory_mb, walltime_seconds
from eventflow.core.state import MaterialState
from eventflow.shell.api import Tracker
from eventflow.shell.jobs import JobWriter, job_name
from eventflow.shell.projections import fold_log, rows_of
from eventflow.sim.cluster import ACTIVE, SimCluster

QUIET_OK = ("completed", "cancelled")
QUIET_WITH_REASON = ("waiting", "held", "needs_attention")


class Checker:
    def __init__(self, tracker: Tracker, cluster: SimCluster) -> None:
        self.tracker = tracker
        self.cluster = cluster
        self.writer = JobWriter(tracker.project, tracker.policy)
        self._seen: tuple[int, int, int] | None = None
        self._resources: dict[str, tuple[int, int]] = {}  # (memory MB, walltime s) per attempt
        self.limit = getattr(tracker.policy.recovery, "max_recoveries_per_material", None)
        self.project_id = tracker.project.project_id

    # -- after every step --------------------------------------------------------------------
    def step_if_changed(self) -> list[str]:
        """:meth:`step`, unless neither the log nor the cluster changed since the last check
        (then every invariant still holds as checked)."""
        seen = (self.tracker.store.last_seq(), len(self.cluster.jobs),
                sum(len(j.history) for j in self.cluster.jobs.values()))
        if seen == self._seen:
            return []
        self._seen = seen
        return self.step()

    def step(self) -> list[str]:
        states, _ = fold_log(self.tracker.store)
        out = self.one_job_per_attempt()
        out += self.one_ending_per_job()
        out += self.projections_equal_replay(states)
        out += self.chain_verifies()
        for state in states.values():
            out += self.jobs_are_their_own(state)
            out += self.retries_within_limits(state)
            out += self.resources_never_decrease(state)
        return out

    def one_job_per_attempt(self) -> list[str]:
        names = Counter(j.name for j in self.cluster.jobs.values())
        return [f"attempt with job name {n} has {c} scheduler jobs "
                f"({', '.join(j.job_id for j in self.cluster.jobs.values() if j.name == n)})"
                for n, c in names.items() if c > 1]

    def one_ending_per_job(self) -> list[str]:
        rows = self.tracker.store.db.execute(
            "SELECT json_extract(data, '$.calculation_id') AS cid, group_concat(type), count(*) "
            "FROM events WHERE type IN ('JobFinished', 'JobLost') GROUP BY cid "
            "HAVING count(*) > 1").fetchall()
        return [f"{cid}: {n} completion/loss events ({types})" for cid, types, n in rows]

    def projections_equal_replay(self, states: dict[str, MaterialState]) -> list[str]:
        views = self.tracker.projections
        views.catch_up(self.tracker.store)
        incremental = views.dump()
        fresh = {t: sorted(rows, key=repr) for t, rows in rows_of(states.values()).items()}
        return [f"projection table {t} differs from a full replay"
                for t in fresh if fresh[t] != incremental.get(t)]

    def chain_verifies(self) -> list[str]:
        _, problems = self.tracker.store.verify_chain()
        return [f"hash chain: {p}" for p in problems]

    def jobs_are_their_own(self, state: MaterialState) -> list[str]:
        out = []
        for calc in state.calcs.values():
            if calc.job_id is None:
                continue
            job = self.cluster.jobs.get(calc.job_id)
            expected = job_name(self.project_id, calc.id)
            if job is None or job.name != expected:
                out.append(f"{calc.id}: recorded job {calc.job_id} is not its job")
        return out

    def retries_within_limits(self, state: MaterialState) -> list[str]:
        if self.limit is None:
            return []
        automatic = sum(1 for c in state.calcs.values() if c.attempt > 1)
        if automatic > self.limit:
            return [f"{state.id}: {automatic} retries, more than max_recoveries_per_material "
                    f"= {self.limit}"]
        return []

    def resources_never_decrease(self, state: MaterialState) -> list[str]:
        out = []
        by_step: dict[str, list[Any]] = {}
        for calc in sorted(state.calcs.values(), key=lambda c: c.attempt):
            by_step.setdefault(calc.step, []).append(calc)
        for step, calcs in by_step.items():
            previous = None
            for calc in calcs:
                now = self._resources.get(calc.id)
                if now is None:  # an attempt's resources are fixed when it is requested
                    res = self.writer.resources_for(state, calc)
                    now = (memory_mb(res.mem) if res.mem else 0, walltime_seconds(res.time))
                    self._resources[calc.id] = now
                if previous is not None and (now[0] < previous[0] or now[1] < previous[1]):
                    out.append(f"{calc.id}: memory/walltime {now} below the previous attempt's "
                               f"{previous} of step {step}")
                previous = now
        return out

    # -- when the world is quiet -------------------------------------------------------------
    def quiescent(self) -> list[str]:
        states, _ = fold_log(self.tracker.store)
        out = []
        by_name = {}
        for state in states.values():
            for calc in state.calcs.values():
                by_name[job_name(self.project_id, calc.id)] = (state, calc)
            if state.state in QUIET_OK:
                pass
            elif state.state in QUIET_WITH_REASON:
                if not state.reason:
                    out.append(f"{state.id}: {state.state} without a reason")
            else:
                out.append(f"{state.id}: left {state.state!r} when the world is quiet")
            for calc in state.calcs.values():
                if calc.state in ("submitted", "running"):
                    out.append(f"{calc.id}: still {calc.state} after its job {calc.job_id} "
                               "is gone")
                if calc.state == "requested" and state.state not in ("held", "cancelled"):
                    out.append(f"{calc.id}: requested but never submitted "
                               f"(material {state.state}: {state.reason})")
        endings = Counter(cid for (cid,) in self.tracker.store.db.execute(
            "SELECT json_extract(data, '$.calculation_id') FROM events "
            "WHERE type IN ('JobFinished', 'JobLost')"))
        # A job that left the queue COMPLETED without a record is judged by its output alone
        # (Runner._lost): its interpretation is its ending.
        judged = {cid for (cid,) in self.tracker.store.db.execute(
            "SELECT json_extract(data, '$.calculation_id') FROM events "
            "WHERE type IN ('CalculationSucceeded', 'CalculationFailed')")}
        for job in self.cluster.jobs.values():
            if job.state in ACTIVE:
                out.append(f"job {job.job_id} ({job.name}) still {job.state}")
                continue
            found = by_name.get(job.name)
            if found is None:
                out.append(f"job {job.job_id} ({job.name}) belongs to no attempt")
                continue
            state, calc = found
            if calc.state == "cancelled":
                continue
            if calc.job_id != job.job_id:
                out.append(f"{calc.id}: its job {job.job_id} ran but was never recorded")
            elif endings[calc.id] + (endings[calc.id] == 0 and calc.id in judged) != 1:
                out.append(f"{calc.id}: job {job.job_id} ended with {endings[calc.id]} "
                           "completion/loss events")
        return out
