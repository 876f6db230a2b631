"""Schedulers behind one interface: real SLURM, or a local executor for a laptop without it.

Both answer the same questions with the same vocabulary (SLURM's job states), so the
submission path and the watcher never ask which one they talk to:

- ``submit(script, job_name, workdir)`` -> job id
- ``states(job_ids)`` -> what the scheduler says about each job, in one call for many jobs
- ``find(job_name)`` -> the jobs with this exact name the scheduler still knows (after a crash
  between submitting and recording the id, the name - which carries the idempotency key - is
  the only handle left)
- ``cancel(job_id)``, ``ping()``

Every external command runs from an argv list with a timeout; nothing goes through a shell.
The parsers of squeue/scontrol/sacct output are module functions so they can be tested on
captured real output (tests/data/slurm/).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, runtime_checkable

import attrs

from eventflow.core.jobscript import (
    LOCAL_JOB_ID_VARIABLE,
    read_directives,
    signal_warning_seconds,
    walltime_seconds,
)
from eventflow.errors import EventflowError

# SLURM's job states, the vocabulary of JobInfo.state (None: the scheduler does not know the job).
PENDING, RUNNING, COMPLETED, FAILED = "PENDING", "RUNNING", "COMPLETED", "FAILED"
TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, CANCELLED = "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED"
PREEMPTED, BOOT_FAIL, DEADLINE = "PREEMPTED", "BOOT_FAIL", "DEADLINE"
JOB_STATES = frozenset({PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL,
                        CANCELLED, PREEMPTED, BOOT_FAIL, DEADLINE})
ACTIVE_STATES = frozenset({PENDING, RUNNING})
FINISHED_STATES = JOB_STATES - ACTIVE_STATES

# SLURM's other, transient state names, folded into the vocabulary above: a job that still holds
# or may again hold resources is RUNNING or PENDING; the watcher waits for a final state.
_STATE_ALIASES = {
    "COMPLETING": RUNNING, "CONFIGURING": RUNNING, "SIGNALING": RUNNING, "STAGE_OUT": RUNNING,
    "SUSPENDED": RUNNING, "STOPPED": RUNNING, "RESIZING": RUNNING,
    "REQUEUED": PENDING, "REQUEUE_HOLD": PENDING, "REQUEUE_FED": PENDING,
    "RESV_DEL_HOLD": PENDING, "SPECIAL_EXIT": FAILED, "REVOKED": CANCELLED,
}

DEFAULT_TIMEOUT = 30.0


class SchedulerError(EventflowError, RuntimeError):
    """The scheduler refused or did not answer; the message is its own words."""


class SubmitError(SchedulerError):
    """sbatch (or the local executor) refused the job; ``str(error)`` is the scheduler's message."""


@attrs.frozen
class JobInfo:
    """What the scheduler says about one job, in SLURM's words."""

    job_id: str
    name: str | None = None
    state: str | None = None  # one of JOB_STATES, or None when the scheduler does not know the job
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    node: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


@runtime_checkable
class Scheduler(Protocol):
    """What the submission path and the watcher need from a scheduler."""

    name: str

    def ping(self) -> bool:
        """True when the scheduler answers."""

    def submit(self, script: Path, job_name: str, workdir: Path) -> str:
        """Submit ``script`` to run in ``workdir`` under ``job_name``; return the job id."""

    def find(self, job_name: str) -> list[JobInfo]:
        """Jobs the scheduler still knows whose name is exactly ``job_name``."""

    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        """Each id's JobInfo (state None when unknown), asked in as few calls as possible."""

    def cancel(self, job_id: str) -> None:
        """Ask the scheduler to end the job (no error when it has already ended)."""


def normalize_state(raw: str | None) -> str | None:
    """SLURM's state text ('CANCELLED by 0', 'CANCELLED+', 'COMPLETING') in JobInfo's words."""
    if raw is None:
        return None
    word = raw.strip().split(" ")[0].rstrip("+").upper()
    if not word or word in {"UNKNOWN", "(NULL)"}:
        return None
    if word in JOB_STATES:
        return word
    return _STATE_ALIASES.get(word)


def parse_exit_code(text: str | None) -> tuple[int | None, int | None]:
    """SLURM's ``exit:signal`` pair ('3:0', '0:9') as (exit_code, signal or None)."""
    if not text:
        return None, None
    match = re.fullmatch(r"\s*(\d+)(?::(\d+))?\s*", text)
    if match is None:
        return None, None
    code = int(match.group(1))
    sig = int(match.group(2)) if match.group(2) else 0
    return code, (sig or None)


def _none_if_null(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return None if value in {"", "None", "(null)", "N/A"} else value


# --- squeue --------------------------------------------------------------------------------

SQUEUE_FORMAT = "%i|%T|%r|%N|%j"  # the name last: it is the only field that may hold a '|'


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Rows of ``squeue --noheader --format=SQUEUE_FORMAT`` by job id."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 4)
        if len(parts) != 5:
            continue
        job_id, state, reason, node, name = (p.strip() for p in parts)
        jobs[job_id] = JobInfo(
            job_id=job_id,
            name=name or None,
            state=normalize_state(state),
            reason=_none_if_null(reason),
            node=_none_if_null(node),
        )
    return jobs


# --- scontrol ------------------------------------------------------------------------------

_SCONTROL_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One ``scontrol --oneliner show job`` line as key -> value (values may contain spaces)."""
    matches = list(_SCONTROL_KEY.finditer(line))
    fields: dict[str, str] = {}
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following is not None else len(line)
        fields.setdefault(match.group(1), line[match.end():end].strip())
    return fields


def parse_scontrol_jobs(text: str) -> dict[str, JobInfo]:
    """``scontrol --oneliner show job [id]`` output (one job per line) by job id."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        if "JobId=" not in line:
            continue
        fields = parse_scontrol_record(line.strip())
        job_id = fields.get("JobId", "")
        if not job_id:
            continue
        exit_code, sig = parse_exit_code(fields.get("ExitCode"))
        node = _none_if_null(fields.get("NodeList")) or _none_if_null(fields.get("BatchHost"))
        jobs[job_id] = JobInfo(
            job_id=job_id,
            name=fields.get("JobName"),
            state=normalize_state(fields.get("JobState")),
            exit_code=exit_code,
            signal=sig,
            reason=_none_if_null(fields.get("Reason")),
            node=node,
        )
    return jobs


def parse_accounting_storage(show_config: str) -> str | None:
    """AccountingStorageType from ``scontrol show config`` (None when not printed)."""
    match = re.search(r"^AccountingStorageType\s*=\s*(\S+)", show_config, re.MULTILINE)
    return match.group(1) if match else None


# --- sacct ---------------------------------------------------------------------------------

SACCT_FIELDS = "JobIDRaw,State,ExitCode,Reason,NodeList,JobName"  # the name last, as above


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """``sacct --noheader --parsable2 --allocations --format=SACCT_FIELDS`` rows by job id.

    Only allocation rows (no ``.batch``/``.0`` steps) are kept; with --allocations sacct
    prints only those, but a site's sacct may ignore it, so steps are skipped here too.
    """
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 5)
        if len(parts) != 6:
            continue
        job_id, state, exit_text, reason, node, name = (p.strip() for p in parts)
        if "." in job_id or not job_id:
            continue
        exit_code, sig = parse_exit_code(exit_text)
        jobs[job_id] = JobInfo(
            job_id=job_id,
            name=name or None,
            state=normalize_state(state),
            exit_code=exit_code,
            signal=sig,
            reason=_none_if_null(reason),
            node=_none_if_null(node) if node not in {"None assigned"} else None,
        )
    return jobs


def sbatch_job_id(call: Callable[[], CommandResult], job_name: str) -> str:
    """The job id an sbatch ``call`` printed. A call that failed on its way (timeout, lost
    connection) may still have created the job: the error says to look for it by name."""
    try:
        result = call()
    except SchedulerError as exc:
        raise SubmitError(f"{exc}; the job may have been submitted: look for it by name "
                          f"{job_name!r}") from exc
    if result.returncode != 0:
        raise SubmitError(_one_line(result.stderr or result.stdout)
                          or f"sbatch failed with exit code {result.returncode}")
    return parse_sbatch(result.stdout)


def parse_sbatch(text: str) -> str:
    """The job id from ``sbatch --parsable`` output ('123' or '123;cluster')."""
    for line in reversed(text.strip().splitlines()):
        match = re.fullmatch(r"\s*(\d+(?:_\d+)?)(?:;\S+)?\s*", line)
        if match:
            return match.group(1)
    raise SubmitError(f"sbatch printed no job id: {text.strip()[:200]!r}")


# --- running commands ----------------------------------------------------------------------


@attrs.frozen
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], float], CommandResult]


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    """Run ``argv`` (never through a shell); a missing program is returncode 127."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError:
        return CommandResult(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired as exc:
        raise SchedulerError(f"{argv[0]} did not answer within {timeout:g} s") from exc
    return CommandResult(done.returncode, done.stdout, done.stderr)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class SlurmScheduler:
    """SLURM through its commands: sbatch, squeue, scontrol, sacct (when accounting works), scancel.

    ``runner`` runs one argv with a timeout (tests pass a fake one that replays captured
    output); ``use_sacct`` None asks ``scontrol show config`` whether accounting is stored.
    """

    name = "slurm"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, runner: Runner = run_command,
                 use_sacct: bool | None = None) -> None:
        self.timeout = timeout
        self._run = runner
        self._use_sacct = use_sacct

    def _call(self, *argv: str) -> CommandResult:
        return self._run(list(argv), self.timeout)

    def ping(self) -> bool:
        try:
            result = self._call("scontrol", "ping")
        except SchedulerError:
            return False
        return result.returncode == 0 and " UP" in result.stdout

    @property
    def sacct_works(self) -> bool:
        """Whether job accounting is stored (``accounting_storage/none``: sacct cannot answer)."""
        if self._use_sacct is None:
            try:
                result = self._call("scontrol", "show", "config")
            except SchedulerError:
                return False  # ask again next time
            storage = parse_accounting_storage(result.stdout) if result.returncode == 0 else None
            self._use_sacct = storage is not None and storage != "accounting_storage/none"
        return self._use_sacct

    def submit(self, script: Path, job_name: str, workdir: Path) -> str:
        _check_job_name(job_name)
        return sbatch_job_id(lambda: self._call(
            "sbatch", "--parsable", f"--job-name={job_name}",
            f"--chdir={Path(workdir).resolve()}", str(Path(script).resolve())), job_name)

    def _squeue(self, *selector: str) -> dict[str, JobInfo]:
        result = self._call("squeue", "--noheader", "--states=all", f"--format={SQUEUE_FORMAT}",
                            *selector)
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return {}  # none of the ids is known any more
            raise SchedulerError(f"squeue: {_one_line(result.stderr)}")
        return parse_squeue(result.stdout)

    def _scontrol(self, job_id: str) -> JobInfo | None:
        result = self._call("scontrol", "--oneliner", "show", "job", job_id)
        if result.returncode != 0:
            return None
        return parse_scontrol_jobs(result.stdout).get(job_id)

    def _sacct(self, *selector: str) -> dict[str, JobInfo]:
        result = self._call("sacct", "--noheader", "--parsable2", "--allocations",
                            f"--format={SACCT_FIELDS}", *selector)
        if result.returncode != 0:
            return {}
        return parse_sacct(result.stdout)

    def sacct_states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        """What accounting says about ``job_ids`` ({} when sacct does not work here)."""
        if not job_ids or not self.sacct_works:
            return {}
        known: dict[str, JobInfo] = {}
        for chunk in _chunks([str(j) for j in job_ids]):
            known.update(self._sacct(f"--jobs={','.join(chunk)}"))
        return known

    def _with_exit_codes(self, jobs: dict[str, JobInfo]) -> dict[str, JobInfo]:
        """squeue knows no exit codes: ask scontrol about the jobs that have finished."""
        detailed = dict(jobs)
        for job_id, info in jobs.items():
            if info.finished:
                better = self._scontrol(job_id)
                if better is not None and better.state is not None:
                    detailed[job_id] = better
        return detailed

    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        ids = [str(j) for j in dict.fromkeys(job_ids)]
        if not ids:
            return {}
        for job_id in ids:
            _check_slurm_id(job_id)
        queued: dict[str, JobInfo] = {}
        if len(ids) > IDS_PER_CALL:
            # One listing of this user's jobs (array tasks one a line) instead of a call per
            # 1,000 ids: squeue filtering by --jobs took ~0.3 s a call with 10,000 jobs in the
            # table, the whole listing 0.1 s (bench/bench_watcher_scale.py).
            wanted = set(ids)
            queued = {j: info for j, info in self._squeue("--me", "--array").items()
                      if j in wanted}
        else:
            for chunk in _chunks(ids):
                queued.update(self._squeue(f"--jobs={','.join(chunk)}"))
        known = self._with_exit_codes(queued)
        known.update(self.sacct_states([j for j in ids if j not in known]))
        return {j: known.get(j, JobInfo(job_id=j)) for j in ids}

    def find(self, job_name: str) -> list[JobInfo]:
        _check_job_name(job_name)
        jobs = {j: info for j, info in self._squeue(f"--name={job_name}").items()
                if info.name == job_name}
        jobs = self._with_exit_codes(jobs)
        if self.sacct_works:
            for job_id, info in self._sacct(f"--name={job_name}", "--starttime=now-14days").items():
                if info.name == job_name:
                    jobs.setdefault(job_id, info)
        return sorted(jobs.values(), key=lambda i: _id_sort_key(i.job_id))

    def cancel(self, job_id: str) -> None:
        result = self._call("scancel", _check_slurm_id(str(job_id)))
        if result.returncode != 0 and "already completing or completed" not in result.stderr:
            raise SchedulerError(f"scancel {job_id}: {_one_line(result.stderr)}")


# Job ids per squeue/sacct call: 23,000 active jobs in one --jobs= list overflowed the
# kernel's argument limit (E2BIG) and stopped the watcher's cycle; 1,000 ids are ~8 kB.
IDS_PER_CALL = 1000


def _chunks(ids: list[str], size: int = IDS_PER_CALL) -> list[list[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def _check_slurm_id(job_id: str) -> str:
    """A SLURM job id ('123', array task '123_4'); anything else could be read as an option."""
    if not re.fullmatch(r"\d+(?:_\d+)?", job_id):
        raise ValueError(f"{job_id!r} is not a SLURM job id")
    return job_id


def _check_job_name(job_name: str) -> None:
    if not job_name or any(ch in job_name for ch in "\n\r\x00,") or len(job_name) > 200:
        raise SubmitError(f"job name {job_name!r}: must be non-empty, one line, without commas")


def _id_sort_key(job_id: str) -> tuple[int, str]:
    digits = re.findall(r"\d+", job_id)
    return (int(digits[-1]) if digits else -1, job_id)


# --- the local executor --------------------------------------------------------------------

# The runner that the local executor starts for each job (its own session, so it outlives the
# submitting process). Like slurmstepd it starts the script in a process group of its own,
# sends USR1 to the script before the time limit (from `#SBATCH --signal=B:USR1@N`), TERM to
# the group at the limit or when cancelled (SIGTERM to the runner), KILL after `kill_wait`, and
# writes the exit status to a small JSON file at the end.
_RUNNER_CODE = r"""
import json, os, signal, subprocess, sys, time
exit_path, script = sys.argv[1], sys.argv[2]
limit, warn, kill_wait = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
extra = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
child = subprocess.Popen(["bash", script], **extra)
flags = {"cancelled": False, "timed_out": False}
kill_at = []
def stop(reason):
    if kill_at:
        return
    flags[reason] = True
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except OSError:
        pass
    kill_at.append(time.monotonic() + kill_wait)
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, lambda *_: stop("cancelled"))
start = time.monotonic()
warned = False
while True:
    try:
        returncode = child.wait(timeout=0.2)
        break
    except subprocess.TimeoutExpired:
        pass
    elapsed = time.monotonic() - start
    if limit > 0 and warn > 0 and not warned and elapsed >= limit - warn:
        warned = True
        try:
            child.send_signal(signal.SIGUSR1)
        except OSError:
            pass
    if limit > 0 and elapsed >= limit:
        stop("timed_out")
    if kill_at and time.monotonic() >= kill_at[0]:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except OSError:
            pass
try:
    os.killpg(child.pid, signal.SIGKILL)  # what the script left behind ends with the job
except OSError:
    pass
record = dict(flags, returncode=returncode,
              finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
tmp = exit_path + ".tmp"
with open(tmp, "w") as handle:
    json.dump(record, handle)
os.replace(tmp, exit_path)
"""

_LOCAL_ID = re.compile(r"^local-(\d+)$")


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux /proc), to tell a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)  # our own child (this process submitted it)?
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is not None:
        now = _process_start(pid)
        if now is not None and now != started:
            return False  # the pid was reused
    return True


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class LocalExecutor:
    """Runs job scripts in the background on this machine, answering like SLURM.

    Jobs are ``local-1``, ``local-2``, ... (ids reserved with O_EXCL files, so two processes
    never get the same one). Per job, ``state_dir/local/`` holds ``<id>.json`` (name, pid,
    workdir) and, once it ended, ``<id>.exit.json`` from the runner. Output goes to
    ``slurm-<id>.out`` in the job folder, as SLURM's would. ``kill_wait`` is the grace between
    TERM and KILL, like SLURM's KillWait.
    """

    name = "local"

    def __init__(self, state_dir: Path, kill_wait: float = 5.0) -> None:
        self.root = Path(state_dir) / "local"
        self.kill_wait = kill_wait

    def ping(self) -> bool:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        return os.access(self.root, os.W_OK)

    def _record_path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.json"

    def _exit_path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.exit.json"

    def _allocate_id(self) -> str:
        ids = self.root / "ids"
        ids.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in ids.iterdir() if (m := _LOCAL_ID.match(p.name))]
        number = max(numbers, default=0) + 1
        while True:
            try:
                os.close(os.open(ids / f"local-{number}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                number += 1
                continue
            return f"local-{number}"

    def submit(self, script: Path, job_name: str, workdir: Path) -> str:
        _check_job_name(job_name)
        script, workdir = Path(script).resolve(), Path(workdir).resolve()
        if not workdir.is_dir():
            raise SubmitError(f"{workdir}: job folder does not exist")
        try:
            text = script.read_text(errors="replace")
        except OSError as exc:
            raise SubmitError(f"{script}: cannot read the job script: {exc.strerror}") from exc
        directives = read_directives(text)
        try:
            limit = walltime_seconds(directives["time"]) if "time" in directives else 0
        except ValueError as exc:
            raise SubmitError(f"{script}: {exc}") from exc
        warn = signal_warning_seconds(directives.get("signal", "")) or 0
        job_id = self._allocate_id()
        env = dict(os.environ, **{LOCAL_JOB_ID_VARIABLE: job_id})
        argv = [sys.executable, "-c", _RUNNER_CODE, str(self._exit_path(job_id)), str(script),
                str(limit), str(warn), str(self.kill_wait)]
        with (workdir / f"slurm-{job_id}.out").open("ab") as out:
            try:
                process = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True)
            except OSError as exc:
                raise SubmitError(f"cannot start the local runner: {exc}") from exc
        _write_json(self._record_path(job_id), {
            "job_id": job_id, "name": job_name, "pid": process.pid,
            "process_start": _process_start(process.pid), "workdir": str(workdir),
            "script": str(script), "submitted_at": _utc_now(), "time_limit_s": limit,
        })
        return job_id

    def _info(self, job_id: str) -> JobInfo:
        if not _LOCAL_ID.match(job_id):
            return JobInfo(job_id=job_id)
        record = _read_json(self._record_path(job_id))
        if record is None:
            return JobInfo(job_id=job_id)
        name, node = record.get("name"), os.uname().nodename
        finished = _read_json(self._exit_path(job_id))
        if finished is None:
            if _process_alive(int(record["pid"]), record.get("process_start")):
                return JobInfo(job_id=job_id, name=name, state=RUNNING, node=node)
            finished = _read_json(self._exit_path(job_id))  # it may have ended just now
            if finished is None:
                return JobInfo(job_id=job_id, name=name, state=NODE_FAIL, node=node,
                               reason="the local runner vanished without an exit record")
        returncode = int(finished.get("returncode", -1))
        exit_code, sig = (returncode, None) if returncode >= 0 else (0, -returncode)
        if finished.get("timed_out"):
            state, reason = TIMEOUT, "TimeLimit"
        elif finished.get("cancelled"):
            state, reason = CANCELLED, "cancelled"
        elif returncode == 0:
            state, reason = COMPLETED, None
        else:
            state, reason = FAILED, "NonZeroExitCode"
        return JobInfo(job_id=job_id, name=name, state=state, exit_code=exit_code, signal=sig,
                       reason=reason, node=node)

    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        return {j: self._info(j) for j in dict.fromkeys(str(j) for j in job_ids)}

    def _job_ids(self) -> Iterable[str]:
        if not self.root.is_dir():
            return []
        ids = []
        for path in self.root.glob("local-*.json"):
            job_id = path.name[: -len(".json")]
            if _LOCAL_ID.match(job_id):
                ids.append(job_id)
        return sorted(ids, key=_id_sort_key)

    def find(self, job_name: str) -> list[JobInfo]:
        found = []
        for job_id in self._job_ids():
            record = _read_json(self._record_path(job_id))
            if record is not None and record.get("name") == job_name:
                found.append(self._info(job_id))
        return found

    def cancel(self, job_id: str) -> None:
        record = _read_json(self._record_path(job_id)) if _LOCAL_ID.match(job_id) else None
        if record is None:
            raise SchedulerError(f"{job_id}: no such local job")
        if self._exit_path(job_id).exists():
            return
        pid = int(record["pid"])
        if not _process_alive(pid, record.get("process_start")):
            return
        try:
            os.killpg(pid, signal.SIGTERM)  # the runner's group: it stops the job like SLURM
        except ProcessLookupError:
            return

    def wait(self, job_id: str, timeout: float, poll: float = 0.2) -> JobInfo:
        """Poll until ``job_id`` has finished or ``timeout`` seconds passed (tests, CLI)."""
        deadline = time.monotonic() + timeout
        info = self._info(job_id)
        while not info.finished and time.monotonic() < deadline:
            time.sleep(poll)
            info = self._info(job_id)
        return info


# --- choosing --------------------------------------------------------------------------------

EXECUTORS = ("slurm", "local", "auto")


def choose_scheduler(executor: str, state_dir: Path, slurm: SlurmScheduler | None = None, *,
                     timeout: float = DEFAULT_TIMEOUT,
                     kill_wait: float = 5.0) -> tuple[Scheduler, str]:
    """The scheduler for config ``executor: slurm | local | auto``, and a sentence saying why.

    ``auto`` takes SLURM when ``scontrol ping`` answers, else runs jobs locally. ``timeout``
    bounds every SLURM command and ``kill_wait`` is the local executor's TERM-to-KILL grace
    (config/cluster.yaml ``scheduler.command_timeout_s`` and ``scheduler.local_kill_wait_s``).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    slurm = slurm if slurm is not None else SlurmScheduler(timeout=timeout)
    local = LocalExecutor(state_dir, kill_wait=kill_wait)
    if executor == "slurm":
        if slurm.ping():
            return slurm, "Using SLURM (executor: slurm); scontrol ping answers."
        return slurm, ("Using SLURM (executor: slurm), but scontrol ping does not answer: "
                       "submissions will fail until the controller is up.")
    if executor == "local":
        return local, f"Running jobs on this machine (executor: local), state in {local.root}."
    if slurm.ping():
        return slurm, "Using SLURM (executor: auto): scontrol ping answers."
    return local, ("Running jobs on this machine (executor: auto): no SLURM controller answers "
                   "scontrol ping.")
