"""Which cluster each job is on, and the remote clusters' part of a watcher cycle.

The runner decides what happens (exactly once, intent first); this module knows where: the
scheduler a new attempt goes to, the cluster that holds a job, each cluster's room under its
own ``max_jobs``, the remote twin of a job folder, the batched poll of every remote cluster
(one round trip for squeue and the record listing, one rsync for what finished) and where a
cancel goes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from eventflow.core.state import CalcState, MaterialState
from eventflow.shell.clusters import Clusters
from eventflow.shell.jobs import RECORD
from eventflow.shell.remote import RemoteScheduler
from eventflow.shell.remote_batch import poll
from eventflow.shell.scheduler import JobInfo, Scheduler, SchedulerError

log = logging.getLogger("eventflow.runner")

# (material, calculation, state, job id, folder) of a followed job, as Runner._followed gives.
Row = tuple[str, str, str, str, str]


class Routing:
    """The local scheduler and the project's clusters, as one cycle of the runner sees them."""

    def __init__(self, tracker: Any, local: Scheduler, timeout: float = 30.0) -> None:
        self.local = local
        self.root = Path(tracker.project.root)
        self.project = tracker.project
        self.clusters = Clusters(tracker, local, timeout=timeout)

    def refresh(self) -> None:
        self.clusters.refresh()

    def send_cleanups(self) -> None:
        self.clusters.send_cleanups()

    def record_reachability(self) -> None:
        """A remote cluster's outage: recorded when it begins and when it ends."""
        self.clusters.record_reachability()

    def of_job(self, calculation_id: str) -> Scheduler:
        return self.clusters.of_job(calculation_id)

    def target(self, state: MaterialState, calc: CalcState,
               params: dict[str, Any] | None = None) -> Scheduler:
        return self.clusters.target(state, calc, params)

    def is_remote(self, scheduler: Scheduler) -> bool:
        return scheduler is not self.local

    def job_dir(self, scheduler: Scheduler, calc: CalcState) -> str | None:
        """Where the job of ``calc`` runs when not in its own folder (a remote cluster's copy)."""
        if not isinstance(scheduler, RemoteScheduler):
            return None
        return scheduler.remote_dir(self.project.inside(calc.directory))

    def remotes_in_use(self) -> list[RemoteScheduler]:
        return self.clusters.remotes_in_use()

    # -- polling ----------------------------------------------------------------------------
    def poll(self, followed: list[Row]) -> dict[str, dict[str, JobInfo] | None]:
        """Ask every remote cluster with followed jobs, in one round trip each, what squeue
        says of them and which hold a completion record there, and copy the finished folders
        back (one rsync per cluster). By cluster name: squeue's answer, or None when the
        cluster did not answer (its jobs stay as they are; the next poll asks again)."""
        groups: dict[str, tuple[RemoteScheduler, list[tuple[str, Path]]]] = {}
        for _, cid, _, job_id, directory in followed:
            scheduler = self.of_job(cid)
            if isinstance(scheduler, RemoteScheduler) and directory and job_id:
                groups.setdefault(scheduler.name, (scheduler, []))[1].append(
                    (job_id, self.root / directory))
        answers: dict[str, dict[str, JobInfo] | None] = {}
        for name, (remote, jobs) in groups.items():
            try:
                polled = poll(remote, jobs)
            except SchedulerError as exc:
                log.warning("cluster %s does not answer; its jobs wait: %s", name, exc)
                answers[name] = None
                continue
            answers[name] = polled.infos
            new = [f for f in polled.finished if not os.path.lexists(f / RECORD)]
            try:
                remote.fetch(new)
            except SchedulerError as exc:
                log.warning("cluster %s: cannot fetch results now: %s", name, exc)
        return answers

    def fetch_one(self, calc: CalcState) -> bool:
        """Copy back a remote job's folder if its record exists there; False when the cluster
        could not be asked (then nothing may be concluded about the job)."""
        remote = self.of_job(calc.id)
        if not isinstance(remote, RemoteScheduler) or not calc.directory:
            return True
        try:
            remote.fetch(remote.finished_folders([self.root / calc.directory]))
        except SchedulerError as exc:
            log.warning("%s: cannot copy its results back now: %s", calc.id, exc)
            return False
        return True

    # -- throttling -------------------------------------------------------------------------
    def room(self, followed: list[Row]) -> dict[str, int]:
        """For each remote cluster with a max_jobs: how many more jobs it may take now."""
        active: dict[str, int] = {}
        for _, cid, _, _, _ in followed:
            name = self.of_job(cid).name
            active[name] = active.get(name, 0) + 1
        return {name: int(cluster.max_jobs) - active.get(name, 0)
                for name, cluster in self.clusters.defined().items()
                if cluster.max_jobs is not None}


def cancel_jobs(tracker: Any, job_ids: list[str], material_id: str | None = None) -> None:
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
