"""The local executor: the same behaviours as SLURM, on a machine without it (always run).

Jobs are rendered from the real template, so these also test the script's completion record
under the local runner (USR1 before the limit, TERM at it, TERM on cancel).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from eventflow.core.jobscript import RECORD_NAME, JobSpec, Resources
from eventflow.core.kinds import kind_from_scheduler_state
from eventflow.shell.scheduler import (
    LocalExecutor,
    SchedulerError,
    SlurmScheduler,
    SubmitError,
    choose_scheduler,
)
from tests.integration.helpers import wait_for
from tests.jobfolders import read_record, write_job_script

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
WAIT = 120.0  # an upper bound on waiting for a job, never a timing assertion


def _job(tmp_path: Path, name: str, commands: list[list[str]],
         resources: Resources | None = None) -> tuple[Path, Path]:
    job_dir = tmp_path / name
    job_dir.mkdir(parents=True)
    spec = JobSpec(job_dir=str(job_dir), idempotency_key=f"key-{name}", commands=commands,
                   resources=resources or Resources(time="10"))
    return job_dir, write_job_script(job_dir, spec)


def _wait_for(path: Path, timeout: float = WAIT) -> None:
    wait_for(path.exists, f"{path.name} to appear", timeout, every=0.05)


@pytest.fixture
def executor(tmp_path: Path) -> LocalExecutor:
    return LocalExecutor(tmp_path / "state", kill_wait=2.0)


def test_a_job_runs_and_leaves_its_record(tmp_path: Path, executor: LocalExecutor) -> None:
    name = f"ef-{uuid.uuid4().hex[:8]}"
    job_dir, script = _job(tmp_path, "ok", [["bash", "-c", "echo to-stdout; echo done > out"]])
    job_id = executor.submit(script, name, job_dir)
    assert job_id.startswith("local-")
    info = executor.wait(job_id, WAIT)
    assert (info.state, info.exit_code, info.name) == ("COMPLETED", 0, name)
    record = read_record(job_dir)
    assert record["job_id"] == job_id
    assert record["exit_code"] == 0
    assert record["idempotency_key"] == "key-ok"
    assert (job_dir / "out").read_text() == "done\n"
    assert "to-stdout" in (job_dir / f"slurm-{job_id}.out").read_text()
    assert [i.job_id for i in executor.find(name)] == [job_id]
    assert executor.find("no-such-name") == []


def test_a_failing_job_is_failed_with_its_exit_code(tmp_path: Path,
                                                    executor: LocalExecutor) -> None:
    job_dir, script = _job(tmp_path, "fail", [["bash", "-c", "exit 3"]])
    job_id = executor.submit(script, "ef-fail", job_dir)
    info = executor.wait(job_id, WAIT)
    assert (info.state, info.exit_code) == ("FAILED", 3)
    assert kind_from_scheduler_state(info.state) is None  # the program's output must say why
    assert read_record(job_dir)["exit_code"] == 3


def test_states_answers_for_many_ids_and_unknown_ones(tmp_path: Path,
                                                      executor: LocalExecutor) -> None:
    job_dir, script = _job(tmp_path, "two", [["true"]])
    job_id = executor.submit(script, "ef-two", job_dir)
    executor.wait(job_id, WAIT)
    states = executor.states([job_id, "local-999"])
    assert states[job_id].state == "COMPLETED"
    assert states["local-999"].state is None


def test_cancel_stops_the_job_and_the_record_says_so(tmp_path: Path,
                                                     executor: LocalExecutor) -> None:
    job_dir, script = _job(tmp_path, "cancel", [["bash", "-c", "touch started; sleep 600"]])
    job_id = executor.submit(script, "ef-cancel", job_dir)
    _wait_for(job_dir / "started")
    assert executor.states([job_id])[job_id].state == "RUNNING"
    executor.cancel(job_id)
    info = executor.wait(job_id, WAIT)
    assert info.state == "CANCELLED"
    assert kind_from_scheduler_state(info.state) == "cancelled"
    record = read_record(job_dir)
    assert (record["reason"], record["signal"]) == ("terminated", signal.SIGTERM)
    executor.cancel(job_id)  # already over: nothing to do, no error


def test_the_time_limit_is_enforced_with_a_warning_first(tmp_path: Path,
                                                         executor: LocalExecutor) -> None:
    """--time=0:10 with the warning at half time: USR1 at ~5 s, TERM at ~10 s (like SLURM)."""
    job_dir, script = _job(tmp_path, "limit", [["bash", "-c", "echo partial > partial; sleep 600"]],
                           Resources(time="0:10"))
    job_id = executor.submit(script, "ef-limit", job_dir)
    info = executor.wait(job_id, WAIT)
    assert info.state == "TIMEOUT"
    assert kind_from_scheduler_state(info.state) == "walltime"
    record = read_record(job_dir)
    assert record["reason"] == "time_limit"
    assert record["signal"] == signal.SIGUSR1
    assert record["exit_code"] != 0
    assert (job_dir / "partial").read_text() == "partial\n"


def test_ten_jobs_run_at_the_same_time(tmp_path: Path, executor: LocalExecutor) -> None:
    """Each job waits until all ten have started; they can only all succeed together."""
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    wait_for_all = (f'touch "{meeting}/$1"; for i in $(seq 600); do '
                    f'[ "$(ls "{meeting}" | wc -l)" -ge 10 ] && exit 0; sleep 0.1; done; exit 1')
    ids = []
    for n in range(10):
        job_dir, script = _job(tmp_path, f"par{n}", [["bash", "-c", wait_for_all, "_", str(n)]])
        ids.append(executor.submit(script, f"ef-par-{n}", job_dir))
    assert len(set(ids)) == 10
    for job_id in ids:
        info = executor.wait(job_id, WAIT)
        assert (info.state, info.exit_code) == ("COMPLETED", 0), job_id


def test_ids_are_unique_across_processes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code = ("import sys; from pathlib import Path; from eventflow.shell.scheduler import "
            "LocalExecutor; e = LocalExecutor(Path(sys.argv[1])); "
            "print(' '.join(e._allocate_id() for _ in range(10)))")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(state)], stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(6)]
    ids = [i for p in procs for i in p.communicate(timeout=WAIT)[0].split()]
    assert len(ids) == 60
    assert len(set(ids)) == 60


def test_find_works_from_another_process(tmp_path: Path, executor: LocalExecutor) -> None:
    """After a crash the id may never have been recorded: a new process finds the job by name."""
    job_dir, script = _job(tmp_path, "found", [["bash", "-c", "sleep 600"]])
    job_id = executor.submit(script, "ef-found-by-name", job_dir)
    code = ("import sys, json; from pathlib import Path; from eventflow.shell.scheduler import "
            "LocalExecutor; e = LocalExecutor(Path(sys.argv[1])); "
            "print(json.dumps([[i.job_id, i.state] for i in e.find('ef-found-by-name')]))")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state")], env=env,
                         capture_output=True, text=True, timeout=WAIT, check=True).stdout
    assert json.loads(out) == [[job_id, "RUNNING"]]
    executor.cancel(job_id)
    assert executor.wait(job_id, WAIT).state == "CANCELLED"


def test_a_runner_killed_outright_is_reported_as_a_node_failure(
        tmp_path: Path, executor: LocalExecutor) -> None:
    """SIGKILL of the runner (a reboot, an OOM killer on a laptop) leaves no exit record."""
    job_dir, script = _job(tmp_path, "vanish",
                           [["bash", "-c", "echo $$ > pid; touch started; sleep 600"]])
    job_id = executor.submit(script, "ef-vanish", job_dir)
    _wait_for(job_dir / "started")
    record = json.loads((tmp_path / "state" / "local" / f"{job_id}.json").read_text())
    os.killpg(record["pid"], signal.SIGKILL)  # the runner only: the script has its own group
    info = executor.wait(job_id, WAIT)
    assert info.state == "NODE_FAIL"
    assert kind_from_scheduler_state(info.state) == "node_failure"
    # Clean up: the orphaned script still answers TERM with its record.
    os.killpg(os.getpgid(int((job_dir / "pid").read_text())), signal.SIGTERM)
    _wait_for(job_dir / RECORD_NAME)
    assert read_record(job_dir)["reason"] == "terminated"


def test_submit_refuses_missing_folders_and_scripts(tmp_path: Path,
                                                    executor: LocalExecutor) -> None:
    with pytest.raises(SubmitError, match="job folder does not exist"):
        executor.submit(tmp_path / "job.sh", "ef-x", tmp_path / "missing")
    with pytest.raises(SubmitError, match="cannot read the job script"):
        executor.submit(tmp_path / "missing.sh", "ef-x", tmp_path)
    with pytest.raises(SchedulerError, match="no such local job"):
        executor.cancel("local-404")
    with pytest.raises(SchedulerError, match="no such local job"):
        executor.cancel("../../etc/passwd")
    assert executor.states(["../local/local-1"])["../local/local-1"].state is None


class _DeadSlurm(SlurmScheduler):
    def ping(self) -> bool:
        return False


def test_choose_scheduler_says_what_it_chose_and_why(tmp_path: Path) -> None:
    chosen, why = choose_scheduler("local", tmp_path)
    assert isinstance(chosen, LocalExecutor) and "executor: local" in why
    chosen, why = choose_scheduler("auto", tmp_path, slurm=_DeadSlurm())
    assert isinstance(chosen, LocalExecutor) and "no SLURM controller answers" in why
    chosen, why = choose_scheduler("slurm", tmp_path, slurm=_DeadSlurm())
    assert isinstance(chosen, SlurmScheduler) and "does not answer" in why
    with pytest.raises(ValueError, match="executor 'pbs'"):
        choose_scheduler("pbs", tmp_path)
