"""Faults around the runner: bad files, refusals, hostile names, jobs that end badly or vanish.

Each test drives a real project through ``eventflow watch --once`` (or a daemon) with jobs
under the local executor (always) and the real SLURM cluster (``need_slurm``). Waits poll
with generous upper bounds; nothing asserts how long anything took. Where this machine's
cluster cannot produce a fault for real (a node failure would take down the one node that
everyone's tests share) the runner is fed the exact text SLURM printed when it happened
here (tests/data/slurm, see its README) and the test says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from eventflow.core.ids import check_material_id
from eventflow.shell.api import Tracker
from eventflow.shell.interpret import MAX_OUTPUT_BYTES, _read
from eventflow.shell.jobs import job_name, read_completion
from eventflow.shell.project import Project
from eventflow.shell.scheduler import JobInfo, LocalExecutor, SlurmScheduler, parse_scontrol_jobs
from eventflow.shell.watcher import run_once
from tests.integration.helpers import (
    CLI,
    SI,
    add,
    eventflow,
    make_project,
    unique,
    wait_for,
    waiting_command,
)

TESTS = Path(__file__).resolve().parents[1]
SLURM_DATA = TESTS / "data" / "slurm"
WAIT = 240.0  # upper bound on any wait; never a timing assertion
RECORD = "eventflow-done.json"


# --- helpers ------------------------------------------------------------------------------------


def events(project: Path, type_: str, mid: str | None = None) -> list:
    with Tracker.open(project) as t:
        return [r.event for r in t.store.read(stream=mid, types=[type_])]


def recorded(project: Path, type_: str) -> list:
    """(recorded_at, event) of every event of ``type_``."""
    with Tracker.open(project) as t:
        return [(r.recorded_at, r.event) for r in t.store.read(types=[type_])]


def n_events(project: Path) -> int:
    with Tracker.open(project) as t:
        return t.store.last_seq()


def calc(project: Path, mid: str, cid: str):  # noqa: ANN201 - a CalcState
    with Tracker.open(project) as t:
        return t.state(mid).calcs[cid]


def _running_job(tmp_path: Path, projects: list[Path], executor: str,
                 label: str) -> tuple[Path, str, Path]:
    """A project with one material whose SP job is running (it waits for ``go``): the
    project, the material and the job's folder."""
    project = make_project(tmp_path, executor)
    projects.append(project)
    mid = unique(label)
    add(project, mid, waiting_command())
    eventflow(project, "watch", "--once", "--quiet")
    job_dir = project / "calcs" / mid / "SP" / "1"
    wait_for(lambda: (job_dir / "started").exists(), "the job to start")
    return project, mid, job_dir


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def cancel_all(project: Path) -> None:
    """Cancel whatever jobs of this project still run (retries the policy submitted)."""
    proj = Project.at(project)
    local = LocalExecutor(proj.state_dir)
    for path in (proj.state_dir / "local").glob("local-*.json"):
        if not path.name.endswith(".exit.json"):
            local.cancel(path.name[: -len(".json")])
    if subprocess.run(["which", "squeue"], capture_output=True).returncode == 0:
        listed = subprocess.run(["squeue", "--noheader", "--format=%i|%j"], capture_output=True,
                                text=True, timeout=60).stdout
        prefix = f"ef.{proj.project_id}."
        for line in listed.splitlines():
            job_id, _, name = line.strip().partition("|")
            if name.startswith(prefix):
                subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


@pytest.fixture
def projects() -> Iterator[list[Path]]:
    """Projects a test makes; their leftover jobs are cancelled at the end."""
    made: list[Path] = []
    yield made
    for project in made:
        cancel_all(project)


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def executor(request: pytest.FixtureRequest) -> str:
    if request.param == "slurm":
        request.getfixturevalue("need_slurm")
    return request.param


# --- completion records and outputs that are not what they should be --------------------------


def test_a_half_written_record_is_ignored_until_it_is_complete(
    tmp_path: Path, projects: list[Path], executor: str
) -> None:
    """A writer that does not write-then-rename (or NFS showing a file mid-write): half the
    JSON must be read as 'not there yet', never as a finished job nor as a lost one."""
    project, mid, job_dir = _running_job(tmp_path, projects, executor, "half")
    job_id = calc(project, mid, f"{mid}/SP/1").job_id
    whole = json.dumps({"job_id": job_id, "exit_code": 0, "signal": None, "reason": "completed",
                        "started_at": "2026-01-01T00:00:00Z",
                        "finished_at": "2026-01-01T00:00:07Z", "host": "node-from-the-test"})
    (job_dir / RECORD).write_text(whole[: len(whole) // 2])
    eventflow(project, "watch", "--once", "--quiet")
    assert events(project, "JobFinished") == []
    assert events(project, "JobLost") == []
    assert calc(project, mid, f"{mid}/SP/1").state in ("submitted", "running")

    (job_dir / RECORD).write_text(whole)
    eventflow(project, "watch", "--once", "--quiet")
    finished = events(project, "JobFinished")
    assert [(f.exit_code, f.finished_at, f.host) for f in finished] == [
        (0, "2026-01-01T00:00:07Z", "node-from-the-test")]
    assert calc(project, mid, f"{mid}/SP/1").state == "completed"
    (job_dir / "go").touch()  # the job's own record replaces ours: read once only
    wait_for(lambda: (read_completion(job_dir / RECORD) or {}).get("host")
             not in (None, "node-from-the-test"), "the job's own record")
    eventflow(project, "watch", "--once", "--quiet")
    assert len(events(project, "JobFinished")) == 1


def test_outputs_that_cannot_be_read_normally_do_not_stop_the_watcher(
    tmp_path: Path, projects: list[Path], executor: str
) -> None:
    """The step's main output (SP.out for the noop code) replaced by a folder, by a FIFO
    (opening it for reading would block forever) or by a 1 TiB sparse file. Tests run as root,
    so chmod 000 would not stop a read: these are the unreadable cases that remain. The watcher
    must judge every job and exit."""
    project = make_project(tmp_path, executor)
    projects.append(project)
    odd = {
        unique("dir-out"): ["mkdir", "SP.out"],
        unique("fifo-out"): ["mkfifo", "SP.out"],
        unique("huge-out"): ["truncate", "-s", "1T", "SP.out"],
        unique("plain-out"): ["bash", "-c", "echo fine > SP.out"],
    }
    for mid, command in odd.items():
        add(project, mid, command)
    eventflow(project, "watch", "--once", "--quiet")
    folders = [project / "calcs" / mid / "SP" / "1" for mid in odd]
    wait_for(lambda: all(read_completion(f / RECORD) for f in folders), "four records")
    done = eventflow(project, "watch", "--once", "--quiet", timeout=WAIT)
    assert done.returncode == 0
    assert len(events(project, "JobFinished")) == 4
    assert len(events(project, "CalculationSucceeded")) == 4  # noop: exit 0 is success
    assert (folders[1] / "SP.out").is_fifo() and (folders[0] / "SP.out").is_dir()


def test_reading_outputs_skips_what_would_block_and_bounds_what_is_huge(tmp_path: Path) -> None:
    """The reader itself: None for a folder and a FIFO (at once, not blocking), the head and
    the end of a file bigger than MAX_OUTPUT_BYTES, and a huge 'record' is no record."""
    folder = tmp_path / "SP.out"
    folder.mkdir()
    fifo = tmp_path / "fifo.out"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.out"
    with huge.open("wb") as handle:
        handle.write(b"HEAD OF THE OUTPUT\n")
        handle.truncate(4 * MAX_OUTPUT_BYTES)
        handle.seek(4 * MAX_OUTPUT_BYTES)
        handle.write(b"\nJOB DONE.\n")
    assert _read(folder) is None
    assert _read(fifo) is None
    text = _read(huge)
    assert text is not None and len(text) <= MAX_OUTPUT_BYTES + 1
    assert text.startswith("HEAD OF THE OUTPUT") and text.rstrip().endswith("JOB DONE.")
    record = tmp_path / RECORD
    with record.open("wb") as handle:
        handle.write(b'{"exit_code": 0, "pad": "')
        handle.truncate(1 << 33)  # 8 GiB, sparse: must not be read into memory
    assert read_completion(record) is None
    os.unlink(record)
    os.mkfifo(record)
    assert read_completion(record) is None


@pytest.mark.parametrize("odd", ["fifo", "huge"])
def test_a_record_path_taken_by_something_else_is_ignored_until_the_job_writes(
    tmp_path: Path, projects: list[Path], executor: str, odd: str
) -> None:
    project, mid, job_dir = _running_job(tmp_path, projects, executor, f"record-{odd}")
    if odd == "fifo":
        os.mkfifo(job_dir / RECORD)
    else:
        with (job_dir / RECORD).open("wb") as handle:
            handle.truncate(1 << 34)  # 16 GiB of nothing
    eventflow(project, "watch", "--once", "--quiet", timeout=WAIT)
    assert events(project, "JobFinished") == []
    (job_dir / "go").touch()  # the script's rename replaces whatever is there
    wait_for(lambda: read_completion(job_dir / RECORD) is not None, "the job's record")
    eventflow(project, "watch", "--once", "--quiet")
    assert calc(project, mid, f"{mid}/SP/1").state == "completed"


# --- sbatch refusing --------------------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_refusal_is_recorded_retried_with_backoff_then_submitted_once(
    tmp_path: Path, projects: list[Path], need_slurm: None
) -> None:
    project = make_project(tmp_path, "slurm", defaults=", partition: nosuchpartition")
    projects.append(project)
    mid = unique("refused")
    add(project, mid, ["true"])
    eventflow(project, "watch", "--once", "--quiet")
    failures = recorded(project, "SubmissionFailed")
    assert len(failures) == 1
    at, first = failures[0]
    assert "invalid partition" in first.message.lower()  # SLURM's own words
    assert "nosuchpartition" in first.message
    assert parse_time(first.retry_at) > parse_time(at)
    assert events(project, "JobSubmitted") == []

    # Before retry_at nothing is tried again (when this run surely starts before it).
    if datetime.now(timezone.utc) < parse_time(first.retry_at) - _seconds(3):
        eventflow(project, "watch", "--once", "--quiet")
        assert len(events(project, "SubmissionFailed")) == 1
    _sleep_until(first.retry_at)
    eventflow(project, "watch", "--once", "--quiet")  # still refused: a longer wait now
    failures = recorded(project, "SubmissionFailed")
    assert len(failures) == 2
    at2, second = failures[1]
    assert (parse_time(second.retry_at) - parse_time(at2)) > (
        parse_time(first.retry_at) - parse_time(at))

    config = project / "config" / "cluster.yaml"
    config.write_text(config.read_text().replace(", partition: nosuchpartition", ""))
    _sleep_until(second.retry_at)
    eventflow(project, "watch", "--once", "--quiet")
    eventflow(project, "watch", "--once", "--quiet")
    submitted = events(project, "JobSubmitted")
    assert len(submitted) == 1
    jobs = SlurmScheduler().find(job_name(Project.at(project).project_id, f"{mid}/SP/1"))
    assert [j.job_id for j in jobs] == [submitted[0].job_id]


def _seconds(n: float):  # noqa: ANN202
    from datetime import timedelta

    return timedelta(seconds=n)


def _sleep_until(iso: str) -> None:
    delay = (parse_time(iso) - datetime.now(timezone.utc)).total_seconds()
    time.sleep(max(0.0, delay) + 0.5)


# --- hostile names ------------------------------------------------------------------------------

HOSTILE = ["; rm -rf ~", "$(reboot)", "`reboot -f`", "a\nb", "-rf", "../../etc", "x;touch PWNED"]


def _tree(root: Path, skip: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if skip not in p.parents and p != skip}


def test_hostile_ids_are_refused_in_one_line(tmp_path: Path) -> None:
    project = make_project(tmp_path, "local")
    before = n_events(project)
    for bad in HOSTILE:
        proc = eventflow(project, "add", str(SI), "--code", "noop", "--workflow", "single",
                         f"--id={bad}", check=False, cwd=tmp_path)
        assert proc.returncode == 1, bad
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("eventflow: error: invalid material id")
        assert "Traceback" not in proc.stderr
    assert n_events(project) == before
    assert not (project / "calcs").exists() or not any((project / "calcs").iterdir())


def test_hostile_file_names_are_made_harmless_and_nothing_runs(
    tmp_path: Path, projects: list[Path], executor: str
) -> None:
    """Structure files named like shell commands go all the way through a job. ~ is a folder
    of the test's with a sentinel in it, `reboot` is a fake that leaves a mark and `touch
    PWNED` would leave a file, so if any of it ever reached a shell the test would see it
    (and the machine would survive)."""
    project = make_project(tmp_path, executor)
    projects.append(project)
    home = tmp_path / "home"
    home.mkdir()
    (home / "sentinel").write_text("still here\n")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    reboot = fake_bin / "reboot"
    reboot.write_text(f"#!/bin/sh\necho \"$@\" >> {marks}/reboot\n")
    reboot.chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    inputs = tmp_path / "inputs"
    deep = inputs / "a" / "b"
    deep.mkdir(parents=True)
    names = [n for n in HOSTILE if "/" not in n]
    for name in names:
        (inputs / f"{name}.cif").write_bytes(SI.read_bytes())
    (inputs / "etc.cif").write_bytes(SI.read_bytes())
    outside_before = _tree(tmp_path, project)

    ids = []
    for name in names:
        proc = eventflow(project, "add", "--code", "noop", "--workflow", "single",
                         "--set", "command=[\"true\"]", "--", f"{name}.cif", env=env, cwd=inputs)
        ids.append(proc.stdout.split(":")[0])
    proc = eventflow(project, "add", "--code", "noop", "--workflow", "single",
                     "--set", "command=[\"true\"]", "../../etc.cif", env=env, cwd=deep)
    ids.append(proc.stdout.split(":")[0])
    assert len(set(ids)) == len(ids)
    for mid in ids:
        assert check_material_id(mid) == mid  # a safe id, whatever the file was called
        assert (project / "calcs" / mid / "structure.cif").is_file()

    eventflow(project, "watch", "--once", "--quiet", env=env)
    wait_for(lambda: all(read_completion(project / "calcs" / m / "SP" / "1" / RECORD)
                         for m in ids), "every job's record")
    eventflow(project, "watch", "--once", "--quiet", env=env)
    assert len(events(project, "CalculationSucceeded")) == len(ids)
    assert sorted(os.listdir(marks)) == []  # reboot never ran
    assert (home / "sentinel").read_text() == "still here\n"  # nor rm -rf ~
    assert list(tmp_path.rglob("PWNED")) == []  # nor touch PWNED
    assert _tree(tmp_path, project) == outside_before  # nothing written outside the project
    assert not any("\n" in path.name for path in project.rglob("*"))


# --- jobs that end badly ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_over_its_time_limit_is_a_walltime_failure(
    tmp_path: Path, projects: list[Path], executor: str
) -> None:
    """A step with `time: "00:01:00"` running `sleep 300`: the USR1 warning (half the
    walltime before the end, at most) makes the script write its record with reason
    time_limit; the runner records that and judges it a walltime failure."""
    project = make_project(tmp_path, executor)
    projects.append(project)
    (project / "config" / "workflows.yaml").write_text(
        'workflows:\n  timed:\n    steps:\n      SP:\n'
        '        resources: {time: "00:01:00", mem: 200M}\n')
    mid = unique("timed")
    add(project, mid, ["sleep", "300"], workflow="timed")
    eventflow(project, "watch", "--once", "--quiet")
    job_dir = project / "calcs" / mid / "SP" / "1"
    assert "--time=00:01:00" in (job_dir / "job.sh").read_text()
    wait_for(lambda: read_completion(job_dir / RECORD) is not None, "the time-limit record")
    eventflow(project, "watch", "--once", "--quiet")
    finished = [e for e in events(project, "JobFinished") if e.calculation_id == f"{mid}/SP/1"]
    assert [e.reason for e in finished] == ["time_limit"]
    failed = [e for e in events(project, "CalculationFailed")
              if e.calculation_id == f"{mid}/SP/1"]
    assert [e.error_kind for e in failed] == ["walltime"]


@pytest.mark.slurm
def test_a_job_over_its_memory_is_an_out_of_memory_failure_through_the_daemon(
    tmp_path: Path, projects: list[Path], need_slurm: None
) -> None:
    """--mem=100M and a program growing to ~1 GB, under SLURM's own enforcement (task/cgroup:
    the kernel kills it, SLURM says OUT_OF_MEMORY; or OverMemoryKill in the plain mode). The
    daemon reacts to the record at once, while SLURM may still list the job: the verdict must
    still be out_of_memory, not a generic failure."""
    project = make_project(tmp_path, "slurm")
    projects.append(project)
    (project / "config" / "workflows.yaml").write_text(
        'workflows:\n  hungry:\n    steps:\n      SP:\n'
        '        resources: {time: "00:05:00", mem: 100M}\n')
    grow = ("import time\nblocks = []\nfor _ in range(50):\n"
            "    blocks.append(bytearray(20 * 1024 * 1024)); time.sleep(0.2)\n")
    mid = unique("oom")
    add(project, mid, ["python3", "-c", grow], workflow="hungry")
    out = (tmp_path / "daemon.out").open("w")
    daemon = subprocess.Popen([*CLI, "--project", str(project), "watch", "--quiet",
                               "--reconcile", "5"], stdout=out, stderr=subprocess.STDOUT)
    try:
        cid = f"{mid}/SP/1"

        def judged() -> bool:
            return calc(project, mid, cid).state in ("failed", "lost")

        wait_for(judged, "the first attempt to be judged")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=WAIT) == 0
        out.close()
    first = calc(project, mid, cid)
    assert first.error_kind == "out_of_memory"
    finished = [e for e in events(project, "JobFinished") if e.calculation_id == cid]
    if finished:  # cgroup mode: the script outlived its killed program and wrote the record
        assert finished[0].exit_code == 128 + signal.SIGKILL
        failed = [e for e in events(project, "CalculationFailed") if e.calculation_id == cid]
        assert "the scheduler ended the job: out_of_memory" in json.dumps(failed[0].evidence)


# --- jobs that vanish ---------------------------------------------------------------------------


def _kill_local_job(project: Path, job_id: str) -> None:
    """SIGKILL the local runner and the job script's process group: no trap, no record."""
    record = json.loads((Project.at(project).state_dir / "local" / f"{job_id}.json").read_text())
    runner = int(record["pid"])
    children = Path(f"/proc/{runner}/task/{runner}/children").read_text().split()
    for child in children:
        os.killpg(int(child), signal.SIGKILL)  # the script leads its own process group
    os.kill(runner, signal.SIGKILL)


def _kill_slurm_job(job_id: str) -> None:
    """SIGKILL every process of the job, found with `scontrol listpids`: no trap runs.

    (`scancel --signal=KILL --full` is no way to do this: SLURM ends the job as it does any
    cancellation, TERM first, so the script's trap still writes a record - seen here.)
    """
    listed = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True,
                            check=True, timeout=60).stdout
    for line in listed.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(fields[0]), signal.SIGKILL)


@pytest.mark.parametrize("how", ["local-kill-9", pytest.param("kill-9", marks=pytest.mark.slurm)])
def test_a_job_that_vanishes_without_a_record_is_lost_never_left_running(
    tmp_path: Path, projects: list[Path], how: str, request: pytest.FixtureRequest
) -> None:
    executor = "local" if how.startswith("local") else "slurm"
    if executor == "slurm":
        request.getfixturevalue("need_slurm")
    project, mid, job_dir = _running_job(tmp_path, projects, executor, "vanish")
    cid = f"{mid}/SP/1"
    job_id = calc(project, mid, cid).job_id
    if executor == "local":
        _kill_local_job(project, job_id)
        scheduler = LocalExecutor(Project.at(project).state_dir)
    else:
        _kill_slurm_job(job_id)
        scheduler = SlurmScheduler()
    wait_for(lambda: scheduler.states([job_id])[job_id].finished, "the job to leave the queue")
    said = scheduler.states([job_id])[job_id].state
    eventflow(project, "watch", "--once", "--quiet")
    assert not (job_dir / RECORD).exists()
    lost = [e for e in events(project, "JobLost") if e.calculation_id == cid]
    assert len(lost) == 1
    assert (lost[0].job_id, lost[0].scheduler_state) == (job_id, said)
    if executor == "local":  # the local runner itself vanished: the executor's node failure
        assert (lost[0].scheduler_state, lost[0].reason) == ("NODE_FAIL", "node_failure")
    else:  # killed from inside the node: SLURM says FAILED (signal 9) and names no cause
        assert (lost[0].scheduler_state, lost[0].reason) == ("FAILED", "truncated")
    assert calc(project, mid, cid).state != "running"
    eventflow(project, "watch", "--once", "--quiet")  # asked again: recorded once only
    assert len([e for e in events(project, "JobLost") if e.calculation_id == cid]) == 1


class ReplayedNodeFailure:
    """A scheduler that answers about job 228 with what SLURM printed when that job's node
    was set DOWN on this machine (tests/data/slurm/scontrol_node_fail.txt). Setting the one
    node of the shared test cluster down would kill every other test's jobs, so the runner is
    fed the real text instead."""

    name = "slurm"
    JOB = "228"

    def __init__(self) -> None:
        self.after = parse_scontrol_jobs((SLURM_DATA / "scontrol_node_fail.txt").read_text())
        self.node_down = False

    def ping(self) -> bool:
        return True

    def submit(self, script: Path, job_name: str, workdir: Path) -> str:
        return self.JOB

    def find(self, job_name: str) -> list[JobInfo]:
        return []

    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        running = JobInfo(job_id=self.JOB, state="RUNNING", node="vm")
        return {j: (self.after[j] if self.node_down else running) if j == self.JOB
                else JobInfo(job_id=j) for j in job_ids}

    def cancel(self, job_id: str) -> None:
        return None


def test_a_node_failure_is_lost_with_slurms_reason_and_evidence(tmp_path: Path) -> None:
    project = make_project(tmp_path, "local")
    add(project, "nf", ["sleep", "300"])
    scheduler = ReplayedNodeFailure()
    with Tracker.open(project) as tracker:
        report = run_once(tracker, scheduler=scheduler)
        assert report.submitted == 1
        run_once(tracker, scheduler=scheduler)
        assert tracker.state("nf").calcs["nf/SP/1"].state == "running"  # JobStarted
        scheduler.node_down = True
        stderr = (SLURM_DATA / "node_failure_stderr.txt").read_text()
        (project / "calcs" / "nf" / "SP" / "1" / "slurm-228.out").write_text(stderr)
        report = run_once(tracker, scheduler=scheduler)
        assert report.lost == 1
        lost = [r.event for r in tracker.store.read(stream="nf", types=["JobLost"])]
    assert len(lost) == 1
    assert (lost[0].scheduler_state, lost[0].reason) == ("NODE_FAIL", "node_failure")
    assert any(re.search(r"DUE TO NODE FAILURE", line) for line in lost[0].evidence)


def _with_cleanup(project: Path, globs: str) -> None:
    cluster = project / "config" / "cluster.yaml"
    cluster.write_text(cluster.read_text() + f"cleanup: {{noop: {globs}}}\n")


def test_the_scratch_clean_up_removes_only_files_inside_the_job_folder(tmp_path: Path) -> None:
    """A succeeded step's scratch goes; a folder the job linked in (its glob passes through
    the link) keeps its files, and so does everything outside the job folder."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.dat").write_text("not the job's\n")
    project = make_project(tmp_path, "local")
    _with_cleanup(project, "['scratch/*', 'shared/*']")
    add(project, "clean", ["bash", "-c", "mkdir scratch && echo big > scratch/big.tmp && "
                           f"echo kept > SP.out && ln -s {precious} shared"])
    job_dir = project / "calcs" / "clean" / "SP" / "1"

    def done() -> bool:
        eventflow(project, "watch", "--once", "--quiet")
        return calc(project, "clean", "clean/SP/1").state == "completed"

    wait_for(done, "the step to complete")
    assert not (job_dir / "scratch" / "big.tmp").exists()
    assert (job_dir / "SP.out").read_text() == "kept\n"
    assert (precious / "keep.dat").read_text() == "not the job's\n"
    assert [e.patterns for e in events(project, "ScratchCleanupDecided")] == [
        ["scratch/*", "shared/*"]]


@pytest.mark.parametrize("globs", ["['../*']", "['/tmp/*']", "['out/../../*']", "'*.tmp'"])
def test_a_clean_up_glob_that_could_leave_the_job_folder_stops_the_watcher_in_one_line(
        tmp_path: Path, globs: str) -> None:
    project = make_project(tmp_path, "local")
    _with_cleanup(project, globs)
    add(project, "g", ["true"])
    before = n_events(project)
    proc = eventflow(project, "watch", "--once", "--quiet", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cluster.yaml: cleanup" in lines[0], proc.stderr
    assert n_events(project) == before  # nothing submitted, nothing recorded


def test_a_material_cancelled_while_its_sbatch_runs_has_its_new_job_cancelled(
        tmp_path: Path, projects: list[Path], executor: str) -> None:
    """`eventflow cancel` while the watcher is between recording the inputs and sbatch's
    answer finds no job to scancel; the job sbatch then makes belongs to a cancelled
    calculation (the log refuses its JobSubmitted), so the watcher cancels it. The real
    scheduler runs the job; only the moment of the user's cancel is placed, by running it
    from inside the submit call."""
    from eventflow.shell.config import scheduler_for

    project = make_project(tmp_path, executor)
    projects.append(project)
    mid = unique("cancel-race")
    add(project, mid, waiting_command())
    made: list[str] = []
    with Tracker.open(project) as tracker:
        real, _ = scheduler_for(tracker.project)

        class CancelledMeanwhile(type(real)):  # type: ignore[misc]
            def submit(self, script: Path, job_name: str, workdir: Path) -> str:
                with Tracker.open(project) as user:  # another process's connection
                    assert user.cancel(mid, "changed my mind") == []  # no job yet
                made.append(super().submit(script, job_name, workdir))
                return made[-1]

        scheduler = CancelledMeanwhile.__new__(CancelledMeanwhile)
        scheduler.__dict__.update(real.__dict__)
        report = run_once(tracker, scheduler=scheduler)
        assert report.submitted == 0
        assert len(made) == 1
        assert tracker.state(mid).state == "cancelled"

        def ended() -> bool:
            info = real.states(made).get(made[0])
            return info is None or info.state is None or info.finished

        wait_for(ended, "the job to be cancelled")  # it waits for `go`, which never comes
        if executor == "slurm":  # (the local executor's runner, killed this early, is gone
            # before it can write its exit record: it reads as vanished, which also ends it)
            assert real.states(made)[made[0]].state == "CANCELLED"
    assert events(project, "JobSubmitted", mid) == []
