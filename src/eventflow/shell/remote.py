"""SLURM on another machine, through one SSH connection: the same Scheduler as the local one.

The SLURM commands and their parsers are SlurmScheduler's own; only the runner of each argv
differs (it goes through ``SshConnection.run``). What is new is the job folder's journey:
``calcs/<material>/<step>/<attempt>/`` is copied up to ``<workdir>/calcs/...`` before sbatch
(a tar on ssh's standard input, checked against a sha256 manifest there, in the same
round trip as sbatch) and copied back (rsync with checksums) once its completion record
exists there. Which records exist is asked for all followed jobs of a cluster in one call
per cycle.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

from eventflow.core import events as ev
from eventflow.core.clusters import check_workdir, remote_path
from eventflow.shell.jobs import RECORD, sha256_of
from eventflow.shell.scheduler import (
    DEFAULT_TIMEOUT,
    CommandResult,
    JobInfo,
    SchedulerError,
    SlurmScheduler,
    SubmitError,
    _check_job_name,
    _one_line,
    sbatch_job_id,
)
from eventflow.shell.ssh import SshConnection, Unreachable

# Lists which of the folders given as arguments hold a completion record: one round trip
# for all followed jobs of a cluster. The folders are arguments ("$@"), never code.
_LIST_RECORDS = 'for d in "$@"; do [ -f "$d/{record}" ] && printf "%s\\n" "$d"; done; exit 0'


# Unpacks the job folder (a tar on standard input) into $1, checks every file against the
# sha256 manifest packed with it, then runs the rest of the arguments (sbatch): copying up and
# submitting cost one round trip. Folder and command are arguments ("$@"), never code.
#
# Once per attempt, even when a killed connection leaves this script running there: a remote
# process outlives the sshd that started it, and one that reaches sbatch after the retry's
# look-up by name found nothing would make a second job. So the whole runs under a lock on
# the attempt's folder (flock, where there is one), and the job id sbatch printed is kept in
# the folder: a later run of this script for the same attempt prints that id and submits
# nothing.
MANIFEST = ".eventflow-upload.sha256"
SUBMITTED = ".eventflow-job-id"
SUBMIT_LOCK = ".eventflow-submit.lock"
_UNPACK_AND_RUN = (
    'set -e; mkdir -p -- "$1"; cd -- "$1"; exec 9>>' + SUBMIT_LOCK + '; '
    'if command -v flock >/dev/null 2>&1 && ! flock -w 15 9; then '
    'echo "another submission of this job is still under way there" >&2; exit 75; fi; '
    f'if [ -s {SUBMITTED} ]; then cat {SUBMITTED}; exit 0; fi; '
    f'tar -xf -; sha256sum --quiet --strict -c {MANIFEST} >&2; shift; id=$("$@"); '
    f'{{ printf "%s\\n" "$id" > {SUBMITTED}.tmp && mv -f {SUBMITTED}.tmp {SUBMITTED}; }} '
    '2>/dev/null || true; printf "%s\\n" "$id"')


def upload_bundle(folder: Path) -> bytes:
    """The job folder's regular files as an uncompressed tar, with a sha256 manifest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add_job_folder(tar, folder, ".")
    return buffer.getvalue()


def add_job_folder(tar: tarfile.TarFile, folder: Path, prefix: str) -> None:
    """``folder``'s regular files into ``tar`` under ``prefix``, with the sha256 manifest the
    remote side checks (``sha256sum -c`` in the folder) before it submits anything."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                   and p.name not in (MANIFEST, SUBMITTED, SUBMIT_LOCK))
    manifest = "".join(f"{sha256_of(p)}  ./{p.relative_to(folder).as_posix()}\n"
                       for p in files)
    for path in files:
        tar.add(path, arcname=f"{prefix}/{path.relative_to(folder).as_posix()}",
                recursive=False)
    data = manifest.encode()
    info = tarfile.TarInfo(f"{prefix}/{MANIFEST}")
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(info, io.BytesIO(data))


class RemoteScheduler:
    """sbatch/squeue/scontrol/scancel on ``cluster`` over SSH; job folders copied both ways."""

    def __init__(self, cluster: ev.ClusterAdded, project_root: Path, control_dir: Path,
                 timeout: float = DEFAULT_TIMEOUT, fetch_exclude: Sequence[str] = ()) -> None:
        self.cluster = cluster
        # rsync patterns of files that stay on the cluster (big scratch nothing here reads).
        self.fetch_exclude = [str(p) for p in fetch_exclude]
        self.name = cluster.name
        self.root = Path(project_root).resolve()
        self.timeout = timeout
        self.ssh = SshConnection(cluster, control_dir)
        self.slurm = SlurmScheduler(timeout=timeout, runner=self._run, use_sacct=None)

    def _run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        return self.ssh.run(argv, timeout)

    # -- paths ----------------------------------------------------------------------------
    def remote_dir(self, folder: Path) -> str:
        """The remote twin of a job folder inside the project (refused when outside)."""
        try:
            relative = Path(folder).resolve().relative_to(self.root)
        except ValueError as exc:
            raise SchedulerError(f"{folder}: not inside the project {self.root}") from exc
        return remote_path(self.cluster.workdir, relative.as_posix())

    # -- the Scheduler protocol -------------------------------------------------------------
    def ping(self) -> bool:
        try:
            return self.slurm.ping()
        except SchedulerError:
            return False

    def submit(self, script: Path, job_name: str, workdir: Path) -> str:
        _check_job_name(job_name)
        remote = self.remote_dir(workdir)
        remote_script = posixpath.join(remote, Path(script).name)
        sbatch = ["sbatch", "--parsable", f"--job-name={job_name}", f"--chdir={remote}"]
        sbatch += [f"--{k}={v}" for k in ("partition", "qos", "account")
                   if (v := getattr(self.cluster, k))]
        bundle = upload_bundle(Path(workdir))
        try:
            return sbatch_job_id(lambda: self.ssh.run(
                ["sh", "-c", _UNPACK_AND_RUN, "eventflow-upload", remote, *sbatch,
                 remote_script], self.timeout, stdin=bundle), job_name)
        except SubmitError as exc:
            if exc.__cause__ is not None:
                raise  # the connection's failure: its message names the cluster already
            raise SubmitError(f"{self.name}: {exc}") from None  # the cluster said no

    def find(self, job_name: str) -> list[JobInfo]:
        return self.slurm.find(job_name)

    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        return self.slurm.states(job_ids)

    def cancel(self, job_id: str) -> None:
        self.slurm.cancel(job_id)

    # -- copying results back ---------------------------------------------------------------
    def finished_folders(self, folders: Sequence[Path]) -> list[Path]:
        """Of the local job ``folders``, those whose remote twin holds a completion record:
        one round trip for all of them."""
        if not folders:
            return []
        by_remote = {self.remote_dir(f): f for f in folders}
        script = _LIST_RECORDS.format(record=RECORD)
        result = self.ssh.run(["sh", "-c", script, "eventflow-list", *by_remote],
                              self.timeout)
        if result.returncode != 0:
            raise SchedulerError(f"{self.name}: listing records: {_one_line(result.stderr)}")
        return [by_remote[line] for line in result.stdout.splitlines() if line in by_remote]

    def fetch(self, folders: Sequence[Path]) -> None:
        """Copy the remote job folders back (checksums) in one rsync for all of them
        (``--relative`` from the work folder); ``--delay-updates`` puts every file in place
        only at the end, so a local record means the rest of its folder has arrived."""
        if not folders:
            return
        base = check_workdir(self.cluster.workdir)
        sources = []
        for folder in folders:
            relative = posixpath.relpath(self.remote_dir(folder), base)
            sources.append(self.ssh.remote(f"{base}/./{relative}/"))
        self.ssh.rsync(sources, f"{self.root}/", self.timeout * 10,
                       extra=["--relative", "--delay-updates",
                              *(f"--exclude={p}" for p in self.fetch_exclude)])

    def close(self) -> None:
        self.ssh.close()


__all__ = ["RemoteScheduler", "Unreachable"]
