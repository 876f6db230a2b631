"""A remote cluster asked about many jobs, or given many jobs, in one round trip.

``poll``: one ``sh -c`` that runs squeue for every followed job of the cluster and then lists
which of their folders hold a completion record (squeue first: a job writes its record before
it leaves the queue, so a job that squeue no longer lists and whose folder has no record
really left without one).

``submit_many``: the folders of every job submitted in a cycle go up as one tar on ssh's
standard input (each with its sha256 manifest); the remote script unpacks it under the work
folder, checks each folder against its manifest and runs sbatch for each that passes,
printing one ``ok NAME ID`` or ``fail NAME REASON`` line per job. Folders, names and options
are arguments or standard input, never code.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Sequence
from pathlib import Path

import attrs

from eventflow.core.clusters import check_workdir
from eventflow.shell.jobs import RECORD
from eventflow.shell.remote import (
    MANIFEST,
    SUBMIT_LOCK,
    SUBMITTED,
    RemoteScheduler,
    add_job_folder,
)
from eventflow.shell.scheduler import (
    SQUEUE_FORMAT,
    JobInfo,
    SchedulerError,
    _check_job_name,
    _check_slurm_id,
    _chunks,
    _one_line,
    parse_sbatch,
    parse_squeue,
)

_MARK = "--eventflow-poll--"

# $1: how many comma-joined id lists follow; then the lists; the folders come on standard
# input, one a line (remote paths hold no control characters: core/clusters.remote_path).
_POLL = ('n=$1; shift; i=0; while [ "$i" -lt "$n" ]; do '
         f'squeue --noheader --states=all --format="{SQUEUE_FORMAT}" --jobs="$1"; '
         f'printf "\\n{_MARK} %s\\n" "$?"; shift; i=$((i+1)); done; '
         f'while IFS= read -r d; do [ -f "$d/{RECORD}" ] && printf "%s\\n" "$d"; done; exit 0')

# $1 work folder, $2 the sbatch command, $3-$5 partition, qos, account (empty: not given),
# then (folder, job name, script) per job. Unpacking failure (the work folder cannot be made,
# a full disk) fails every job of the batch with tar's or mkdir's own words.
# Per job, under a lock on its folder, and the id sbatch printed kept there (remote.SUBMITTED):
# a submit script left running by a killed connection and a retry's must make one job between
# them (remote.py says why).
_SUBMIT = r'''base=$1 sbatch=$2 p=$3 q=$4 a=$5; shift 5
err=$( { mkdir -p -- "$base" && cd -- "$base" && tar -xf -; } 2>&1 ) || {
  printf '%s\n' "$err" >&2; exit 3; }
while [ "$#" -ge 3 ]; do
  d=$1 name=$2 script=$3; shift 3
  if err=$(cd -- "$d" && sha256sum --quiet --strict -c ''' + MANIFEST + r''' 2>&1); then
    if out=$(cd -- "$d" 2>&1 && exec 9>>''' + SUBMIT_LOCK + r''' && {
        if command -v flock >/dev/null 2>&1 && ! flock -w 15 9; then
          echo "another submission of this job is still under way there"; exit 75; fi
        if [ -s ''' + SUBMITTED + r''' ]; then cat ''' + SUBMITTED + r'''; exit 0; fi
        id=$("$sbatch" --parsable --job-name="$name" --chdir="$d" ${p:+"--partition=$p"} \
          ${q:+"--qos=$q"} ${a:+"--account=$a"} "$d/$script" 2>&1) || {
          printf '%s\n' "$id"; exit 1; }
        { printf '%s\n' "$id" >''' + SUBMITTED + r'''.tmp &&
          mv -f ''' + SUBMITTED + r'''.tmp ''' + SUBMITTED + r'''; } 2>/dev/null || true
        printf '%s\n' "$id"; }); then
      printf 'ok %s %s\n' "$name" "$(printf '%s' "$out" | tr '\n' ' ')"
    else
      printf 'fail %s %s\n' "$name" "$(printf '%s' "$out" | tr '\n' ' ')"
    fi
  else
    printf 'fail %s upload does not match its checksums: %s\n' "$name" \
      "$(printf '%s' "$err" | tr '\n' ' ')"
  fi
done
exit 0'''


@attrs.frozen
class Polled:
    """One cluster's answer: what squeue says of each job, and which folders are finished."""

    infos: dict[str, JobInfo]
    finished: list[Path]


def poll(remote: RemoteScheduler, jobs: Sequence[tuple[str, Path]]) -> Polled:
    """squeue for every (job id, local job folder) of ``jobs`` and the record listing of
    their folders, in one round trip."""
    ids = [_check_slurm_id(str(j)) for j in dict.fromkeys(j for j, _ in jobs)]
    chunks = [",".join(c) for c in _chunks(ids)]
    by_remote = {remote.remote_dir(f): f for _, f in jobs}
    listing = "".join(f"{d}\n" for d in by_remote).encode()
    result = remote.ssh.run(["sh", "-c", _POLL, "eventflow-poll", str(len(chunks)), *chunks],
                            remote.timeout, stdin=listing)
    if result.returncode != 0:
        raise SchedulerError(f"{remote.name}: polling: {_one_line(result.stderr)}")
    lines = result.stdout.split("\n")
    infos: dict[str, JobInfo] = {}
    start = 0
    for i, line in enumerate(lines):
        if line.startswith(_MARK + " "):
            if line.split()[-1] != "0" and "Invalid job id" not in result.stderr:
                raise SchedulerError(f"{remote.name}: squeue: {_one_line(result.stderr)}")
            infos.update(parse_squeue("\n".join(lines[start:i])))
            start = i + 1
    finished = [by_remote[line] for line in lines[start:] if line in by_remote]
    # squeue knows no exit codes: ask scontrol (one call each, as for a local job) only about
    # the jobs that ended without a record; a record says itself how its job ended.
    with_record = set(finished)
    silent = {j: infos[j] for j, folder in jobs
              if j in infos and infos[j].finished and folder not in with_record}
    if silent:
        infos.update(remote.slurm._with_exit_codes(silent))
    return Polled({j: infos.get(j, JobInfo(job_id=j)) for j in ids}, finished)


@attrs.frozen
class Outcome:
    """What became of one job of a batch: its id, or why it was not submitted."""

    job_id: str | None = None
    error: str | None = None
    maybe_submitted: bool = False  # no answer about it: look it up by name before retrying
    unreachable: bool = False  # the call itself failed (no connection, lost, timed out)


def submit_many(remote: RemoteScheduler, jobs: Sequence[tuple[Path, str]]
                ) -> dict[str, Outcome]:
    """Submit every (job script, job name) in one round trip; the outcome by job name. A call
    that fails on its way (lost connection, timeout) leaves every job it did not answer for
    ``maybe_submitted``: sbatch may have run."""
    base = check_workdir(remote.cluster.workdir)
    argv = ["sh", "-c", _SUBMIT, "eventflow-submit", base, "sbatch",
            *(getattr(remote.cluster, k) or "" for k in ("partition", "qos", "account"))]
    folders = []
    for script, name in jobs:
        _check_job_name(name)
        folder = Path(script).parent
        folders.append(folder)
        argv += [remote.remote_dir(folder), name, Path(script).name]
    bundle = _bundle(remote, folders)
    timeout = remote.timeout + 0.5 * len(jobs)  # sbatch takes ~0.1 s a job; a busy one more
    outcomes: dict[str, Outcome] = {}
    try:
        result = remote.ssh.run(argv, timeout, stdin=bundle)
    except SchedulerError as exc:
        result, lost = None, str(exc)
    if result is not None and result.returncode != 0:
        reason = (f"{remote.name}: "
                  + (_one_line(result.stderr or result.stdout) or f"exit {result.returncode}"))
        # Nothing ran past the unpacking (exit 3); any other failure: sbatch may have run.
        return {name: Outcome(error=reason, maybe_submitted=result.returncode != 3)
                for _, name in jobs}
    for line in (result.stdout.splitlines() if result is not None else []):
        word, _, rest = line.partition(" ")
        name, _, text = rest.partition(" ")
        if word == "ok":
            try:
                outcomes[name] = Outcome(job_id=parse_sbatch(text))
            except SchedulerError as exc:
                outcomes[name] = Outcome(error=str(exc), maybe_submitted=True)
        elif word == "fail":
            outcomes[name] = Outcome(error=f"{remote.name}: {text.strip() or 'sbatch failed'}")
    if result is None:
        lost = f"{lost}; the job may have been submitted: it is looked up by name first"
    else:
        lost = (f"{remote.name}: no answer about this job; it may have been submitted: "
                "looked up by name first")
    for _, name in jobs:
        outcomes.setdefault(name, Outcome(error=lost, maybe_submitted=True,
                                          unreachable=result is None))
    return outcomes


def _bundle(remote: RemoteScheduler, folders: Sequence[Path]) -> bytes:
    """The folders' regular files as one uncompressed tar, paths relative to the work folder,
    each folder with its own sha256 manifest."""
    base = check_workdir(remote.cluster.workdir)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in folders:
            add_job_folder(tar, folder, posixpath.relpath(remote.remote_dir(folder), base))
    return buffer.getvalue()


