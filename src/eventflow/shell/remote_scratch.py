"""The scratch clean-up of succeeded remote jobs, on the cluster itself.

A succeeded step's big scratch (cluster.yaml's ``cleanup:`` globs, per code) stays on the
cluster when ``fetch_exclude`` keeps it there, so removing it locally frees nothing. The runner
records ``ScratchCleanupDecided`` first (the intent), then asks for this; the globs are then
expanded in the job folder's remote twin and the regular files they match are removed, all the
folders of one cluster in one round trip. Removing is idempotent (a file already gone is no
error), so a clean-up whose answer was lost is simply sent again. A cluster that does not
answer keeps its clean-ups pending; they are sent again at the next cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eventflow.core import events as ev
from eventflow.core.clusters import LOCAL
from eventflow.errors import EventflowError
from eventflow.shell.remote import RemoteScheduler
from eventflow.shell.scheduler import SchedulerError, _one_line

log = logging.getLogger("eventflow.remote")
_TYPES = ("ScratchCleanupDecided", "RemoteScratchRemoved")
LOCAL_NAMES = (LOCAL, "slurm", "local")  # what a JobSubmitted of this machine's jobs names

# Arguments: groups of (folder, number of globs, glob ...). Each glob is expanded (IFS empty:
# never split on spaces) inside its folder, which is an argument and never code; only regular
# files that are not symbolic links are removed. Prints how many it removed, folder by folder.
_REMOVE_GLOBS = """IFS=
while [ "$#" -gt 1 ]; do
  d=$1; n=$2; shift 2; removed=0
  while [ "$n" -gt 0 ] && [ "$#" -gt 0 ]; do
    p=$1; shift; n=$((n - 1))
    for f in "$d"/$p; do
      if [ -f "$f" ] && [ ! -L "$f" ]; then rm -f -- "$f" && removed=$((removed + 1)); fi
    done
  done
  printf '%s\\n' "$removed"
done
"""


def check_cleanup(value: Any) -> dict[str, list[str]]:
    """cluster.yaml's ``cleanup:``, checked: a mapping of code to a list of globs, each
    staying inside the job folder (both the local and the remote clean-up remove them)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(globs, list) and all(isinstance(g, str) for g in globs)
            for globs in value.values()):
        raise EventflowError("cluster.yaml: cleanup must map each code to a list of globs, "
                             "e.g. {qe: ['out/*.wfc*']}")
    return {str(code): [check_glob(g) for g in globs] for code, globs in value.items()}


def check_glob(pattern: str) -> str:
    """A clean-up glob stays inside the job folder: relative, no ``..``, no empty parts."""
    parts = pattern.split("/")
    if not pattern or pattern.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise EventflowError(f"cluster.yaml: cleanup glob {pattern!r} must stay inside the job "
                             "folder (relative, without '..')")
    return pattern


def remove_remote(remote: RemoteScheduler, jobs: Sequence[tuple[Path, Sequence[str]]]
                  ) -> list[int]:
    """Remove the globs of each (local job folder, globs) in its remote twin, in one round
    trip for all; how many files each lost. Unreachable/SchedulerError when it failed."""
    args: list[str] = []
    for folder, patterns in jobs:
        globs = [check_glob(p) for p in patterns]
        args += [remote.remote_dir(folder), str(len(globs)), *globs]
    if not args:
        return []
    result = remote.ssh.run(["sh", "-c", _REMOVE_GLOBS, "eventflow-clean", *args],
                            remote.timeout)
    counts = result.stdout.split()
    if result.returncode != 0 or len(counts) != len(jobs) or not all(
            c.isdigit() for c in counts):
        raise SchedulerError(f"{remote.name}: removing scratch: "
                             f"{_one_line(result.stderr or result.stdout)}")
    return [int(c) for c in counts]


class PendingCleanups:
    """The clean-ups of remote jobs decided in the log (ScratchCleanupDecided) and not yet
    observed done (RemoteScratchRemoved): read from the log as it grows, so a clean-up that
    its cluster did not answer, or that a stopped watcher never sent, is sent by the next
    one. Sent once per cycle, one round trip per cluster for all its jobs."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[str, list[str]]] = {}  # calc -> (cluster, globs)
        self._seen = 0

    def __bool__(self) -> bool:
        return bool(self._pending)

    def read(self, store: Any, placed: dict[str, str]) -> None:
        """Take in the decisions and removals recorded since the last read; ``placed`` is
        calculation -> the cluster its JobSubmitted names (local jobs are not ours)."""
        for rec in store.read(after=self._seen, types=_TYPES):
            self._seen = rec.seq
            e: Any = rec.event
            if isinstance(e, ev.RemoteScratchRemoved):
                self._pending.pop(e.calculation_id, None)
            elif placed.get(e.calculation_id, LOCAL) not in LOCAL_NAMES and e.patterns:
                self._pending[e.calculation_id] = (placed[e.calculation_id], list(e.patterns))

    def send(self, tracker: Any, remote_of: Callable[[str], RemoteScheduler | None]) -> int:
        """Send every pending clean-up, one round trip per cluster, and record each one done
        (RemoteScratchRemoved); those of a cluster that did not answer stay pending. The
        number of files removed."""
        by_cluster: dict[str, list[tuple[str, str, list[str]]]] = {}
        for cid, (cluster, patterns) in sorted(self._pending.items()):
            by_cluster.setdefault(cluster, []).append((cid, cid.rsplit("/", 2)[0], patterns))
        removed = 0
        for cluster, calcs in by_cluster.items():
            remote = remote_of(cluster)
            if remote is None:  # the cluster was removed since: nothing can be sent there
                for cid, _, _ in calcs:
                    self._pending.pop(cid, None)
                continue
            jobs = []
            for cid, mid, patterns in calcs:
                calc = tracker.state(mid).calcs.get(cid)
                if calc is not None and calc.directory:
                    jobs.append((cid, mid, tracker.project.root / calc.directory, patterns))
            try:
                counts = remove_remote(remote, [(folder, globs) for _, _, folder, globs in jobs])
            except SchedulerError as exc:
                log.warning("cluster %s: scratch clean-up of %d job(s) waits: %s", cluster,
                            len(jobs), exc)
                continue
            except EventflowError as exc:  # a glob that would leave the folder: never sent
                log.error("cluster %s: scratch clean-up refused: %s", cluster, exc)
                counts = [0] * len(jobs)
            for (cid, mid, _, _), n in zip(jobs, counts, strict=True):
                tracker.append(mid, [ev.RemoteScratchRemoved(cid, cluster, n)],
                               key=f"remote-scratch:{cid}", meta={"actor": "watcher"})
                removed += n
            for cid, _, _ in calcs:
                self._pending.pop(cid, None)
        if removed:
            log.info("removed %d scratch file(s) on remote clusters", removed)
        return removed
