"""A simulated SLURM cluster and the job folders its jobs write.

It answers the runner through the same interface as the real schedulers
(:class:`eventflow.shell.scheduler.Scheduler`), in SLURM's vocabulary, with SLURM's faults:
sbatch refusing, timing out before or after the job was created, squeue failing, lagging or
(without accounting) forgetting finished jobs, slow commands. Jobs wait, run and end as the
seed says: the program's own outcome (a real corpus output), the time limit, out of memory,
node failure, preemption, an administrator's scancel. At the end a job writes what the real
job script writes - the program's output and ``eventflow-done.json`` - with the job folder's
faults: a record written late, half-written, twice or never, an output cut short.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import attrs

from eventflow.shell import clock
from eventflow.shell.jobs import RECORD, STARTED
from eventflow.shell.parsing import plugins
from eventflow.shell.scheduler import JobInfo, SchedulerError, SubmitError
from eventflow.sim.corpus import Corpus
from eventflow.sim.faults import Dice

START = 1_900_000_000.0  # the simulated clock starts here (2030-03-17)
MIN_JOB_AGE_S = 300.0  # SLURM's MinJobAge: how long squeue still lists a finished job
ACTIVE = ("PENDING", "RUNNING")
# How a job ends when the scheduler ends it: (SLURM state, record exit code, signal, reason)
ENDINGS = {
    "time_limit": ("TIMEOUT", 138, 10, "time_limit"),
    "out_of_memory": ("OUT_OF_MEMORY", 137, None, None),
    "node_failure": ("NODE_FAIL", None, None, None),  # the node died: no record
    "preempted": ("PREEMPTED", 143, 15, "terminated"),
    "admin_cancel": ("CANCELLED", 143, 15, "terminated"),
}


class SimClock:
    """The simulated time, seconds since the epoch."""

    def __init__(self, start: float = START) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@attrs.define
class SimJob:
    job_id: str
    name: str
    folder: Path
    submitted: float
    start_at: float
    end_at: float
    ending: str  # "program" (its own outcome) or a key of ENDINGS
    output: tuple[int, str, dict[str, str]]  # the corpus outcome row
    main_output: str  # the file the step's program writes
    history: list[tuple[float, str]] = attrs.field(factory=list)  # (time, state)
    ended_at: float | None = None
    cancelled: bool = False

    def state_at(self, t: float) -> str | None:
        state = None
        for when, s in self.history:
            if when <= t:
                state = s
        return state

    @property
    def state(self) -> str:
        return self.history[-1][1]


@attrs.define
class PendingWrite:
    at: float
    path: Path
    data: bytes


class SimCluster:
    """The scheduler the runner talks to (the Scheduler protocol), and the world's jobs."""

    name = "slurm"

    def __init__(self, dice: Dice, sim_clock: SimClock, corpus: Corpus, *,
                 accounting: bool, effect: Callable[[str], None],
                 code_of: Callable[[str], tuple[str, str]]) -> None:
        self.dice = dice
        self.clock = sim_clock
        self.corpus = corpus
        self.accounting = accounting  # sacct works: finished jobs are never forgotten
        self.effect = effect  # called between effects: crashes and other processes happen here
        self.code_of = code_of  # job folder -> (code, step)
        self.jobs: dict[str, SimJob] = {}
        self.writes: list[PendingWrite] = []
        self.next_id = 1000
        self.calls = 0

    # -- the Scheduler protocol ------------------------------------------------------------
    def ping(self) -> bool:
        return True

    def _command(self, fails: str | None) -> None:
        self.calls += 1
        if self.dice.fault("slow_command"):
            self.clock.advance(self.dice.uniform(5, 40))
        if fails is not None and self.dice.fault(fails):
            raise SchedulerError(f"{fails.split('_')[0]}: Socket timed out on send/recv operation")

    def submit(self, script: Path, job_name: str, workdir: Path) -> str:
        self.effect("before sbatch")
        self.calls += 1
        if self.dice.fault("slow_command"):
            self.clock.advance(self.dice.uniform(5, 40))
        if self.dice.fault("sbatch_refused"):
            raise SubmitError("sbatch: error: Batch job submission failed: "
                              "Resource temporarily unavailable")
        if self.dice.fault("sbatch_timeout_before"):
            raise SubmitError("sbatch timed out; the job may have been submitted: "
                              f"look for it by name {job_name!r}")
        job = self._create(job_name, Path(workdir))
        if self.dice.fault("sbatch_timeout_after"):
            raise SubmitError("sbatch timed out; the job may have been submitted: "
                              f"look for it by name {job_name!r}")
        self.effect("after sbatch")
        return job.job_id

    def find(self, job_name: str) -> list[JobInfo]:
        self._command("find_fails")
        now = self.clock()
        return [self._info(j, j.state) for j in self.jobs.values()
                if j.name == job_name and self._known(j, now)]

    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        self._command("squeue_fails")
        now = self.clock()
        when = now - self.dice.uniform(1, 120) if self.dice.fault("squeue_lags") else now
        out = {}
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            state = job.state_at(when) if job is not None and self._known(job, now) else None
            out[job_id] = self._info(job, state) if job is not None else JobInfo(job_id=job_id)
        return out

    def cancel(self, job_id: str) -> None:
        self.effect("before scancel")
        self._command("scancel_fails")
        job = self.jobs.get(job_id)
        if job is not None and job.state in ACTIVE:
            job.cancelled = True
            self._end(job, "CANCELLED", 143 if job.state == "RUNNING" else None, 15, "terminated",
                      ran=job.state == "RUNNING")
        self.effect("after scancel")

    # -- the world -------------------------------------------------------------------------
    def _known(self, job: SimJob, now: float) -> bool:
        if self.accounting or job.ended_at is None:
            return True
        return now - job.ended_at < MIN_JOB_AGE_S

    @staticmethod
    def _info(job: SimJob, state: str | None) -> JobInfo:
        return JobInfo(job_id=job.job_id, name=job.name, state=state,
                       node=f"node{int(job.job_id) % 4}" if state == "RUNNING" else None)

    def _create(self, name: str, folder: Path) -> SimJob:
        self.next_id += 1
        now = self.clock()
        start = now + self.dice.uniform(0, 300)
        end = start + self.dice.uniform(60, 3000)
        ending = "program"
        for kind in ENDINGS:
            if self.dice.fault(kind):
                ending = kind
                break
        code, step = self.code_of(str(folder))
        rows = self.corpus.outcomes(code, step)
        output = self.dice.weighted(rows) if rows else (1, "", {})
        job = SimJob(str(self.next_id), name, folder, now, start, end, ending,
                     output, plugins()[code].main_output(step),  # type: ignore[arg-type]
                     history=[(now, "PENDING")])
        self.jobs[job.job_id] = job
        return job

    def active(self) -> list[SimJob]:
        return [j for j in self.jobs.values() if j.state in ACTIVE]

    def tick(self) -> None:
        """Start and end the jobs whose time has come; write the records that were late."""
        now = self.clock()
        for job in self.active():
            if job.state == "PENDING" and job.start_at <= now:
                job.history.append((job.start_at, "RUNNING"))
                _write(job.folder / STARTED, f"{job.job_id}\n".encode(), job.start_at)
            if job.state == "RUNNING" and job.end_at <= now:
                if job.ending == "program":
                    self._end(job, "COMPLETED", 0, None, None, ran=True)
                else:
                    state, code, sig, reason = ENDINGS[job.ending]
                    self._end(job, state, code, sig, reason, ran=True)
        due = [w for w in self.writes if w.at <= now]
        self.writes = [w for w in self.writes if w.at > now]
        for write in due:
            _write(write.path, write.data, write.at)

    def _end(self, job: SimJob, state: str, exit_code: int | None, sig: int | None,
             reason: str | None, *, ran: bool) -> None:
        now = min(self.clock(), job.end_at) if not job.cancelled else self.clock()
        job.ended_at = now
        program_failed = False
        if ran:
            weight, relative, companions = job.output
            if relative:
                data = self.corpus.read(relative)
                complete = state == "COMPLETED"
                if not complete or self.dice.fault("output_truncated"):
                    data = data[: int(len(data) * self.dice.uniform(0.2, 0.9))]
                main = job.folder / job.main_output
                _write(main, data, now)
                if complete and relative.startswith("qe/"):
                    # what pw.x leaves for the next step: its save folder
                    _write(job.folder / "out" / "pwscf.save" / "data-file-schema.xml",
                           b"<qes:espresso/>\n", now)
                if complete:
                    for name, companion in companions.items():
                        _write(job.folder / name, self.corpus.read(companion), now)
                program_failed = "FAIL" in relative or "NOT" in relative or "ERROR" in relative
        if state == "COMPLETED" and program_failed:
            state, exit_code = "FAILED", 1
        job.history.append((now, state))
        if not ran or state == "NODE_FAIL" or self.dice.fault("record_never"):
            return
        record = {"job_id": job.job_id, "exit_code": exit_code, "signal": sig, "reason": reason,
                  "command_index": 1, "started_at": clock.iso(job.start_at)[:19] + "Z",
                  "finished_at": clock.iso(now)[:19] + "Z", "host": "node1",
                  "idempotency_key": job.name, "scratch_dir": None}
        data = json.dumps(record).encode()
        path = job.folder / RECORD
        if self.dice.fault("record_late"):
            self.writes.append(PendingWrite(now + self.dice.uniform(10, 900), path, data))
            return
        if self.dice.fault("record_half"):
            _write(path, data[: len(data) // 2], now)
            if self.dice.chance(0.7):
                self.writes.append(PendingWrite(now + self.dice.uniform(1, 600), path, data))
            return
        _write(path, data, now)
        if self.dice.fault("record_twice"):
            again = dict(record, finished_at=clock.iso(now + 1)[:19] + "Z")
            self.writes.append(PendingWrite(now + self.dice.uniform(1, 300), path,
                                            json.dumps(again).encode()))


def _write(path: Path, data: bytes, at: float) -> None:
    """Write ``data`` (whole, not atomically: a half record is a fault we inject on purpose)
    and date it at simulated time ``at`` (the runner measures a record's age by its mtime)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (at, at))
