"""Clusters in the log, and which scheduler each calculation goes to.

Clusters are ClusterAdded/ClusterRemoved events of the system stream (so ``replay --until``
knows the clusters of the past); the job of a calculation is on the cluster its JobSubmitted
names (``scheduler``). Which cluster a new step goes to comes from config/cluster.yaml:

    cluster: local                      # every step (the default)
    cluster: {default: local, workflows: {full_characterization: hpc}, steps: {BAND: hpc}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eventflow.core import events as ev
from eventflow.core.clusters import LOCAL, ClusterError, check_added, check_name, fold_clusters
from eventflow.core.state import CalcState, MaterialState
from eventflow.shell.remote import RemoteScheduler
from eventflow.shell.remote_scratch import PendingCleanups
from eventflow.shell.scheduler import Scheduler

CLUSTER_TYPES = ("ClusterAdded", "ClusterRemoved")


def defined(store: Any, until_seq: int | None = None) -> dict[str, ev.ClusterAdded]:
    rows = store.read(stream=ev.SYSTEM_STREAM, types=CLUSTER_TYPES, until_seq=until_seq)
    return fold_clusters(r.event for r in rows)


def add(tracker: Any, cluster: ev.ClusterAdded) -> None:
    check_added(cluster)
    if cluster.name in defined(tracker.store):
        raise ClusterError(f"cluster {cluster.name!r} exists: remove it first")
    tracker.store.append(ev.SYSTEM_STREAM, [cluster], meta={"actor": "cli"})


def remove(tracker: Any, name: str, reason: str = "") -> None:
    check_name(name)
    if name not in defined(tracker.store):
        raise ClusterError(f"no cluster {name!r}")
    active = active_jobs(tracker, name)
    if active:
        raise ClusterError(f"cluster {name!r} has {len(active)} active job(s) "
                           f"(e.g. {active[0]}): cancel them or let them finish first")
    tracker.store.append(ev.SYSTEM_STREAM, [ev.ClusterRemoved(name, reason)],
                         meta={"actor": "cli"})


OUTAGE_TYPES = ("ClusterUnreachable", "ClusterAnswered", "ClusterRemoved")


def outages(store: Any) -> dict[str, tuple[str, str]]:
    """The clusters recorded unreachable and not answering since: name -> (since, why)."""
    down: dict[str, tuple[str, str]] = {}
    for rec in store.read(stream=ev.SYSTEM_STREAM, types=OUTAGE_TYPES):
        e: Any = rec.event
        if isinstance(e, ev.ClusterUnreachable):
            down.setdefault(e.name, (rec.recorded_at, e.reason))
        else:
            down.pop(e.name, None)
    return down


def with_outages(store: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Materials rows (of the projection) whose job's cluster does not answer, with that as
    their reason when they have none of their own (a running job there cannot move)."""
    down = outages(store)
    if not down:
        return rows
    out = []
    for row in rows:
        since, why = down.get(row.get("cluster") or "", ("", ""))
        if since and not row.get("reason") and row.get("state") in ("running", "waiting"):
            row = {**row, "reason": f"cluster {row['cluster']} does not answer since "
                                    f"{since[:19]}Z: {why}"[:300]}
        out.append(row)
    return out


def job_clusters(store: Any, after: int = 0) -> tuple[dict[str, str], int]:
    """calculation id -> the scheduler its last JobSubmitted names, from events after ``after``
    (so a watcher reads only what is new), and the last seq read."""
    found: dict[str, str] = {}
    last = after
    for rec in store.read(after=after, types=["JobSubmitted"]):
        found[rec.event.calculation_id] = rec.event.scheduler  # type: ignore[attr-defined]
        last = rec.seq
    return found, max(last, after)


def active_jobs(tracker: Any, name: str) -> list[str]:
    placed, _ = job_clusters(tracker.store)
    tracker.projections.catch_up(tracker.store)
    rows = tracker.projections.db.execute(
        "SELECT id FROM calculations WHERE state IN ('submitted', 'running') ORDER BY id")
    return [cid for (cid,) in rows if placed.get(cid) == name]


def placement(config: dict[str, Any], state: MaterialState, calc: CalcState,
              params: dict[str, Any] | None = None) -> str:
    """The cluster a new attempt of ``calc`` goes to: its ``cluster`` parameter (the
    material's, from ``add --cluster``, or the step's in workflows.yaml), else cluster.yaml's
    ``cluster`` key (per step, per workflow, default), else local."""
    if params and params.get("cluster"):
        return str(params["cluster"])
    setting = config.get("cluster") or LOCAL
    if isinstance(setting, str):
        return setting
    if not isinstance(setting, dict):
        raise ClusterError(f"cluster.yaml: cluster must be a name or a mapping, not {setting!r}")
    steps = setting.get("steps") or {}
    workflows = setting.get("workflows") or {}
    return str(steps.get(calc.step) or workflows.get(state.workflow)
               or setting.get("default") or LOCAL)


class Clusters:
    """The local scheduler and one RemoteScheduler per cluster in the log, for the runner."""

    def __init__(self, tracker: Any, local: Scheduler, timeout: float = 30.0) -> None:
        self.tracker = tracker
        self.local = local
        self.timeout = timeout
        self.config = tracker.project.config("cluster.yaml")
        self._remotes: dict[str, RemoteScheduler] = {}
        self._placed: dict[str, str] = {}
        self._seen = 0
        self._cleanups = PendingCleanups()
        self._trips: dict[str, int] = {}  # round trips of each remote at the last record
        self._down: set[str] | None = None  # clusters whose outage is recorded (lazily read)

    def remote(self, name: str) -> RemoteScheduler | None:
        if name in self._remotes:
            return self._remotes[name]
        cluster = defined(self.tracker.store).get(name)
        if cluster is None:
            return None
        control = Path(self.tracker.project.state_dir) / "ssh"
        exclude = (self.config.get("remote") or {}).get("fetch_exclude") or []
        self._remotes[name] = RemoteScheduler(cluster, self.tracker.project.root, control,
                                              timeout=self.timeout, fetch_exclude=exclude)
        return self._remotes[name]

    def target(self, state: MaterialState, calc: CalcState,
               params: dict[str, Any] | None = None) -> Scheduler:
        """Where a new submission of ``calc`` goes (an unknown cluster name is an error)."""
        name = placement(self.config, state, calc, params)
        if name == LOCAL:
            return self.local
        remote = self.remote(name)
        if remote is None:
            raise ClusterError(f"config/cluster.yaml places {calc.step} on cluster {name!r}, "
                               f"which is not defined (eventflow cluster add {name} ...)")
        return remote

    def refresh(self) -> None:
        """Read the JobSubmitted events recorded since the last refresh (once per cycle)."""
        placed, self._seen = job_clusters(self.tracker.store, self._seen)
        self._placed.update(placed)
        # Scratch clean-ups of remote jobs decided since (shell.remote_scratch).
        self._cleanups.read(self.tracker.store, self._placed)

    def send_cleanups(self) -> None:
        """The remote scratch clean-ups not yet done on their cluster (as of the last
        ``refresh``): one round trip per cluster. An effect, so only the runner's cycle
        calls it, not a mere look at where jobs are."""
        if self._cleanups:
            self._cleanups.send(self.tracker, self.remote)

    def of_job(self, calculation_id: str) -> Scheduler:
        """The scheduler that holds the job of ``calculation_id`` (local unless recorded),
        as of the last ``refresh``."""
        name = self._placed.get(calculation_id)
        remote = self.remote(name) if name and name not in (LOCAL, "slurm", "local") else None
        return remote if remote is not None else self.local

    def record_reachability(self) -> None:
        """Record an outage of each remote cluster asked in this cycle once when it begins
        (ClusterUnreachable, with ssh's reason) and once when it ends (ClusterAnswered)."""
        asked = {name: r for name, r in self._remotes.items()
                 if r.ssh.round_trips != self._trips.get(name)}
        if not asked:
            return
        if self._down is None:
            self._down = set(outages(self.tracker.store))
        for name, remote in asked.items():
            self._trips[name] = remote.ssh.round_trips
            failure = remote.ssh.failure
            if failure is not None and name not in self._down:
                self.tracker.store.append(ev.SYSTEM_STREAM,
                                          [ev.ClusterUnreachable(name, failure[:300])],
                                          meta={"actor": "watcher"})
                self._down.add(name)
            elif failure is None and name in self._down:
                self.tracker.store.append(ev.SYSTEM_STREAM, [ev.ClusterAnswered(name)],
                                          meta={"actor": "watcher"})
                self._down.discard(name)

    def defined(self) -> dict[str, ev.ClusterAdded]:
        return defined(self.tracker.store)

    def remotes_in_use(self) -> list[RemoteScheduler]:
        return list(self._remotes.values())
