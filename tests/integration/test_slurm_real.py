"""SLURM for real: rendered job scripts submitted with sbatch to a running cluster.

Start one with ``slurm/local-cluster start``. The job folders are under pytest's tmp_path,
on the same machine as slurmd. Each test waits for its jobs with a generous upper bound;
nothing asserts how long anything took.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from eventflow.codes.slurm import parse as parse_scheduler_log
from eventflow.core.jobscript import RECORD_NAME, JobSpec, Resources
from eventflow.core.kinds import kind_from_scheduler_state
from eventflow.shell.scheduler import (
    JobInfo,
    SlurmScheduler,
    SubmitError,
    choose_scheduler,
    run_command,
)
from tests.integration.helpers import wait_for
from tests.jobfolders import read_record, write_job_script

WAIT = 240.0  # upper bound on waiting for one job; never a timing assertion

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("need_slurm")]


@pytest.fixture
def slurm() -> SlurmScheduler:
    return SlurmScheduler()


def _name(label: str) -> str:
    return f"ef-test-{label}-{uuid.uuid4().hex[:8]}"


def _submit(slurm: SlurmScheduler, tmp_path: Path, label: str, commands: list[list[str]],
            resources: Resources | None = None) -> tuple[str, str, Path]:
    job_dir = tmp_path / label
    job_dir.mkdir(parents=True)
    name = _name(label)
    spec = JobSpec(job_dir=str(job_dir), idempotency_key=f"{name}:1", commands=commands,
                   resources=resources or Resources(time="5", mem="200M"))
    return slurm.submit(write_job_script(job_dir, spec), name, job_dir), name, job_dir


def _wait(slurm: SlurmScheduler, job_id: str, timeout: float = WAIT) -> JobInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = slurm.states([job_id])[job_id]
        if info.finished:
            return info
        assert time.monotonic() < deadline, f"job {job_id} still {info.state}"
        time.sleep(0.5)


def _wait_for(path: Path, timeout: float = WAIT) -> None:
    wait_for(path.exists, f"{path} to appear", timeout)


def _log(job_dir: Path, job_id: str) -> str:
    return (job_dir / f"slurm-{job_id}.out").read_text(errors="replace")


def test_a_rendered_job_runs_and_leaves_its_record(slurm: SlurmScheduler, tmp_path: Path) -> None:
    job_id, name, job_dir = _submit(slurm, tmp_path, "ok",
                                    [["bash", "-c", "echo hello > greeting.txt"]])
    assert job_id.isdigit()
    info = _wait(slurm, job_id)
    assert (info.state, info.exit_code, info.signal, info.name) == ("COMPLETED", 0, None, name)
    assert info.node
    record = read_record(job_dir)
    assert record["job_id"] == job_id
    assert record["exit_code"] == 0
    assert record["reason"] == "completed"
    assert record["idempotency_key"] == f"{name}:1"
    assert record["host"].split(".")[0] == info.node  # `hostname` may add the domain
    assert (job_dir / "greeting.txt").read_text() == "hello\n"
    found = slurm.find(name)
    assert [(i.job_id, i.state) for i in found] == [(job_id, "COMPLETED")]
    assert parse_scheduler_log(_log(job_dir, job_id)).status == "ok"


def test_states_asks_for_many_jobs_and_names_unknown_ones(slurm: SlurmScheduler,
                                                          tmp_path: Path) -> None:
    first, _, _ = _submit(slurm, tmp_path, "a", [["true"]])
    second, _, _ = _submit(slurm, tmp_path, "b", [["true"]])
    _wait(slurm, first)
    _wait(slurm, second)
    states = slurm.states([first, second, "999999"])
    assert states[first].state == states[second].state == "COMPLETED"
    assert states["999999"] == JobInfo(job_id="999999")
    assert slurm.states(["999999"])["999999"].state is None  # squeue errors for a lone unknown id


def test_a_job_that_exits_3_is_failed_with_exit_code_3(slurm: SlurmScheduler,
                                                       tmp_path: Path) -> None:
    job_id, _, job_dir = _submit(slurm, tmp_path, "exit3", [["bash", "-c", "exit 3"]])
    info = _wait(slurm, job_id)
    assert (info.state, info.exit_code) == ("FAILED", 3)
    assert kind_from_scheduler_state(info.state) is None
    record = read_record(job_dir)
    assert (record["exit_code"], record["reason"]) == (3, "command_failed")


def test_scancel_of_a_running_job_is_cancelled_with_a_record(slurm: SlurmScheduler,
                                                              tmp_path: Path) -> None:
    job_id, name, job_dir = _submit(slurm, tmp_path, "cancel",
                                    [["bash", "-c", "touch started; sleep 600"]])
    _wait_for(job_dir / "started")
    running = slurm.find(name)
    assert [(i.job_id, i.state) for i in running] == [(job_id, "RUNNING")]
    slurm.cancel(job_id)
    info = _wait(slurm, job_id)
    assert info.state == "CANCELLED"
    assert kind_from_scheduler_state(info.state) == "cancelled"
    _wait_for(job_dir / RECORD_NAME)
    record = read_record(job_dir)
    assert (record["reason"], record["signal"]) == ("terminated", signal.SIGTERM)
    assert parse_scheduler_log(_log(job_dir, job_id)).error_kind == "cancelled"
    slurm.cancel(job_id)  # a finished job: nothing to do, no error


@pytest.mark.slow
def test_the_time_limit_leaves_a_record_through_the_usr1_trap(slurm: SlurmScheduler,
                                                              tmp_path: Path) -> None:
    """--time=1 (the 1-minute minimum) with the warning 30 s before; the job sleeps longer."""
    job_id, _, job_dir = _submit(
        slurm, tmp_path, "limit",
        [["bash", "-c", "echo partial > partial.txt; sleep 600"]],
        Resources(time="1", mem="200M", scratch_root=str(tmp_path / "scratch")))
    info = _wait(slurm, job_id)
    assert info.state == "TIMEOUT"
    assert kind_from_scheduler_state(info.state) == "walltime"
    record = read_record(job_dir)
    assert record["reason"] == "time_limit"
    assert record["signal"] == signal.SIGUSR1
    assert record["exit_code"] != 0
    assert record["copied_back"] is True
    assert (job_dir / "partial.txt").read_text() == "partial\n"
    parsed = parse_scheduler_log(_log(job_dir, job_id))
    assert parsed.error_kind == "walltime"
    assert f"JOB {job_id} ON" in parsed.errors[0].text


def test_ten_jobs_run_at_the_same_time(slurm: SlurmScheduler, tmp_path: Path) -> None:
    """Each job waits until all ten have started: they can only all succeed together."""
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    wait_for_all = (f'touch "{meeting}/$1"; for i in $(seq 1200); do '
                    f'[ "$(ls "{meeting}" | wc -l)" -ge 10 ] && exit 0; sleep 0.1; done; exit 1')
    ids = [_submit(slurm, tmp_path, f"par{n}", [["bash", "-c", wait_for_all, "_", str(n)]])[0]
           for n in range(10)]
    for job_id in ids:
        info = _wait(slurm, job_id)
        assert (info.state, info.exit_code) == ("COMPLETED", 0), job_id


def _memory_enforced_by_cgroup() -> bool:
    config = run_command(["scontrol", "show", "config"], 30).stdout
    return any(line.split("=", 1)[0].strip() == "TaskPlugin" and "task/cgroup" in line
               for line in config.splitlines())


def test_a_job_over_its_memory_is_killed_and_recognised(slurm: SlurmScheduler,
                                                        tmp_path: Path) -> None:
    """--mem=100M and a program that grows to ~1 GB. With task/cgroup the kernel's OOM killer
    ends it and SLURM says OUT_OF_MEMORY; with OverMemoryKill polling (no cgroup) SLURM kills
    the job and says FAILED, and only the log tells why."""
    grow = ("import time\nblocks = []\nfor _ in range(50):\n"
            "    blocks.append(bytearray(20 * 1024 * 1024)); time.sleep(0.2)\n")
    job_id, _, job_dir = _submit(slurm, tmp_path, "oom", [["python3", "-c", grow]],
                                 Resources(time="5", mem="100M"))
    info = _wait(slurm, job_id)
    parsed = parse_scheduler_log(_log(job_dir, job_id))
    assert parsed.error_kind == "out_of_memory"
    if _memory_enforced_by_cgroup():
        assert info.state == "OUT_OF_MEMORY"
        assert kind_from_scheduler_state(info.state) == "out_of_memory"
        record = read_record(job_dir)  # the script outlives its OOM-killed program
        assert record["exit_code"] == 128 + signal.SIGKILL
    else:
        assert info.state in {"FAILED", "OUT_OF_MEMORY"}


def test_sbatch_refusals_carry_slurms_message(slurm: SlurmScheduler, tmp_path: Path) -> None:
    job_dir = tmp_path / "refused"
    job_dir.mkdir()
    spec = JobSpec(job_dir=str(job_dir), idempotency_key="k", commands=[["true"]],
                   resources=Resources(partition="no-such-partition", time="1"))
    with pytest.raises(SubmitError, match="invalid partition"):
        slurm.submit(write_job_script(job_dir, spec), _name("refused"), job_dir)


def test_accounting_is_detected_and_used_only_when_it_works(slurm: SlurmScheduler,
                                                           tmp_path: Path) -> None:
    """slurm/local-cluster runs without accounting by default (sacct cannot answer) and with
    it under EVENTFLOW_SLURM_ACCOUNTING=yes; the scheduler must tell which, and use sacct then."""
    config = run_command(["scontrol", "show", "config"], 30).stdout
    storage = next(line.split("=", 1)[1].strip() for line in config.splitlines()
                   if line.startswith("AccountingStorageType"))
    assert slurm.sacct_works is (storage != "accounting_storage/none")
    job_id, name, _ = _submit(slurm, tmp_path, "acct", [["bash", "-c", "exit 2"]])
    _wait(slurm, job_id)
    if not slurm.sacct_works:
        assert slurm.sacct_states([job_id]) == {}
        return
    # slurmctld sends job records to slurmdbd asynchronously: for a moment after a short job
    # sacct may show no row, or a placeholder row named "allocation" (seen here).
    deadline = time.monotonic() + WAIT
    while True:
        info = slurm.sacct_states([job_id]).get(job_id)
        if info is not None and info.finished and info.name == name:
            break
        assert time.monotonic() < deadline, f"sacct never showed the finished job: {info}"
        time.sleep(1)
    assert (info.state, info.exit_code) == ("FAILED", 2)


def test_auto_chooses_the_running_cluster(tmp_path: Path) -> None:
    chosen, why = choose_scheduler("auto", tmp_path)
    assert isinstance(chosen, SlurmScheduler)
    assert chosen.ping()
    assert "scontrol ping answers" in why


def test_asking_about_tens_of_thousands_of_jobs_stays_within_the_argument_limit(
        slurm: SlurmScheduler, tmp_path: Path) -> None:
    """Found by the soak (bench/soak.py's 100,000-material log): one squeue with the ids of
    23,000 active jobs in its --jobs list failed with E2BIG ("Argument list too long") and
    stopped the watcher's cycle. The ids now go in chunks; a real job among 30,000 ids
    that SLURM does not know is still found, and every unknown one comes back unknown."""
    job_id, _, _ = _submit(slurm, tmp_path, "many", [["true"]])
    unknown = [str(n) for n in range(90_000_000, 90_030_000)]
    states = slurm.states([*unknown[:15_000], job_id, *unknown[15_000:]])
    assert len(states) == 30_001
    assert states[job_id].state is not None
    assert all(states[j].state is None for j in unknown)


def test_asking_about_more_than_a_thousand_jobs_is_one_listing(tmp_path: Path) -> None:
    """Past 1,000 ids the scheduler lists this user's jobs once (squeue filtering by --jobs
    cost ~0.3 s per 1,000 ids with 10,000 jobs in the table): held jobs, array tasks among
    them, are found by id; unknown ids come back unknown."""
    import subprocess

    calls: list[list[str]] = []

    def counting(argv: list[str], timeout: float):  # the real command, counted
        calls.append(argv)
        return run_command(argv, timeout)

    name = _name("listing")
    submitted = [subprocess.run(["sbatch", "--hold", "--parsable", f"--job-name={name}",
                                 "--output=/dev/null", "--time=1", "--mem=10M", *extra,
                                 "--wrap=true"], capture_output=True, text=True,
                                check=True).stdout.strip().split(";")[0]
                 for extra in ([], ["--array=0-1"])]
    try:
        single, array = submitted
        known = [single, f"{array}_0", f"{array}_1"]
        unknown = [str(n) for n in range(90_000_000, 90_001_500)]
        states = SlurmScheduler(runner=counting).states([*unknown, *known])
        assert [states[j].state for j in known] == ["PENDING"] * 3
        assert all(states[j].state is None for j in unknown)
        squeues = [argv for argv in calls if argv[0] == "squeue"]
        assert len(squeues) == 1 and "--me" in squeues[0]
    finally:
        subprocess.run(["scancel", *submitted], capture_output=True)
