"""Parsing what SLURM's commands print, on real output captured from slurm/local-cluster.

tests/data/slurm/ holds the output of real jobs (capture.sh there made it; README.md says
how). The expected states come from what each job was made to do - its name says it
(ef-capture-exit3 exits 3, ef-capture-oom outgrows --mem=100M, ...) - not from this parser.
A fake runner replays the captured text to SlurmScheduler, so the calls it makes and the way
it combines squeue, scontrol and sacct are tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from eventflow.shell.scheduler import (
    CommandResult,
    JobInfo,
    SlurmScheduler,
    SubmitError,
    normalize_state,
    parse_accounting_storage,
    parse_exit_code,
    parse_sacct,
    parse_sbatch,
    parse_scontrol_jobs,
    parse_scontrol_record,
    parse_squeue,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"

# What each capture job was made to do (capture.sh), as SLURM states.
MADE_TO = {
    "ef-capture-completed": "COMPLETED",
    "ef-capture-exit3": "FAILED",
    "ef-capture-oom": "OUT_OF_MEMORY",
    "ef-capture-running": "RUNNING",
    "ef-capture-pending": "PENDING",
    "ef-capture-time_limit": "RUNNING",  # still inside its minute when squeue was asked
}


def _text(name: str) -> str:
    return (DATA / name).read_text()


def _by_name(jobs: dict[str, JobInfo]) -> dict[str, JobInfo]:
    return {info.name: info for info in jobs.values() if info.name}


def test_squeue_rows_give_each_jobs_state() -> None:
    jobs = _by_name(parse_squeue(_text("squeue_states.txt")))
    assert {name: info.state for name, info in jobs.items()} == MADE_TO
    pending = jobs["ef-capture-pending"]
    assert (pending.reason, pending.node) == ("Resources", None)  # 16 CPUs asked, some busy
    assert jobs["ef-capture-exit3"].reason == "NonZeroExitCode"
    assert jobs["ef-capture-completed"].reason is None  # squeue prints "None"


def test_scontrol_lines_give_exit_codes_and_signals() -> None:
    jobs = _by_name(parse_scontrol_jobs(_text("scontrol_jobs.txt")))
    assert (jobs["ef-capture-exit3"].state, jobs["ef-capture-exit3"].exit_code) == ("FAILED", 3)
    assert jobs["ef-capture-exit3"].signal is None
    completed = jobs["ef-capture-completed"]
    assert (completed.exit_code, completed.signal) == (0, None)
    assert jobs["ef-capture-oom"].state == "OUT_OF_MEMORY"
    assert jobs["ef-capture-oom"].reason == "OutOfMemory"
    assert jobs["ef-capture-pending"].state == "PENDING"
    assert jobs["ef-capture-running"].state == "RUNNING"
    assert jobs["ef-capture-running"].node


def test_scontrol_after_scancel_timeout_and_node_failure() -> None:
    cancelled = _by_name(parse_scontrol_jobs(_text("scontrol_cancelled.txt")))
    assert cancelled["ef-capture-running"].state == "CANCELLED"
    assert cancelled["ef-capture-running"].signal == 15  # scancel sends SIGTERM
    assert cancelled["ef-capture-pending"].state == "CANCELLED"
    (timeout,) = parse_scontrol_jobs(_text("scontrol_timeout.txt")).values()
    assert (timeout.name, timeout.state, timeout.reason) == (
        "ef-capture-time_limit", "TIMEOUT", "TimeLimit")
    (node_fail,) = parse_scontrol_jobs(_text("scontrol_node_fail.txt")).values()
    assert (node_fail.state, node_fail.reason) == ("NODE_FAIL", "NodeDown")


def test_scontrol_values_may_hold_spaces() -> None:
    line = "JobId=7 JobName=my job name UserId=root(0) Reason=Some reason ExitCode=2:0"
    fields = parse_scontrol_record(line)
    assert fields["JobName"] == "my job name"
    assert fields["Reason"] == "Some reason"
    assert parse_scontrol_jobs(line)["7"].exit_code == 2


def test_accounting_storage_is_read_from_show_config() -> None:
    assert parse_accounting_storage(_text("scontrol_show_config.txt")) == "accounting_storage/none"
    assert parse_accounting_storage("nothing here") is None


@pytest.mark.parametrize(
    ("raw", "state"),
    [("COMPLETED", "COMPLETED"), ("CANCELLED by 0", "CANCELLED"), ("CANCELLED+", "CANCELLED"),
     ("COMPLETING", "RUNNING"), ("REQUEUED", "PENDING"), ("OUT_OF_MEMORY", "OUT_OF_MEMORY"),
     ("SPECIAL_EXIT", "FAILED"), ("", None), ("UNKNOWN", None), ("BOGUS", None)],
)
def test_states_are_folded_into_the_vocabulary(raw: str, state: str | None) -> None:
    """Forms per squeue(1)/sacct(1) JOB STATE CODES; 'CANCELLED by 0' as sacct prints it."""
    assert normalize_state(raw) == state


@pytest.mark.parametrize(
    ("text", "pair"),
    [("0:0", (0, None)), ("3:0", (3, None)), ("0:15", (0, 15)), ("143:0", (143, None)),
     ("", (None, None)), ("x", (None, None))],
)
def test_exit_code_pairs(text: str, pair: tuple[int | None, int | None]) -> None:
    assert parse_exit_code(text) == pair


def test_sbatch_parsable_output() -> None:
    """sbatch --parsable prints 'jobid' or 'jobid;cluster' (sbatch(1))."""
    assert parse_sbatch("42\n") == "42"
    assert parse_sbatch("42;eventflow\n") == "42"
    assert parse_sbatch("sbatch: warning: something\n43\n") == "43"
    with pytest.raises(SubmitError, match="no job id"):
        parse_sbatch("Submitted batch job 44\n")


class Replay:
    """A runner that answers each command with captured text and records what was asked."""

    def __init__(self, answers: dict[str, CommandResult]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult:
        assert timeout > 0
        self.calls.append(list(argv))
        for prefix, result in self.answers.items():
            if " ".join(argv).startswith(prefix):
                return result
        return CommandResult(1, "", f"unexpected call {argv}")


def _scontrol_line(name: str, file: str = "scontrol_jobs.txt") -> str:
    return next(line for line in _text(file).splitlines() if f"JobName={name} " in line)


def test_states_uses_squeue_then_scontrol_for_finished_jobs_only() -> None:
    squeue = _text("squeue_states.txt")
    ids = {info.name: job_id for job_id, info in parse_squeue(squeue).items()}
    exit3 = ids["ef-capture-exit3"]
    running = ids["ef-capture-running"]
    replay = Replay({
        "squeue": CommandResult(0, squeue, ""),
        f"scontrol --oneliner show job {exit3}": CommandResult(
            0, _scontrol_line("ef-capture-exit3") + "\n", ""),
        "scontrol show config": CommandResult(0, _text("scontrol_show_config.txt"), ""),
    })
    slurm = SlurmScheduler(runner=replay)
    states = slurm.states([exit3, running, "999999"])
    assert (states[exit3].state, states[exit3].exit_code) == ("FAILED", 3)
    assert states[running].state == "RUNNING"
    assert states["999999"] == JobInfo(job_id="999999")
    squeue_calls = [c for c in replay.calls if c[0] == "squeue"]
    assert len(squeue_calls) == 1
    assert f"--jobs={exit3},{running},999999" in squeue_calls[0]
    assert not any(c[0] == "sacct" for c in replay.calls)  # accounting_storage/none
    asked = [c[-1] for c in replay.calls if c[:3] == ["scontrol", "--oneliner", "show"]]
    assert running not in asked  # a running job needs no exit code


def test_states_of_only_unknown_ids_survives_squeues_error() -> None:
    replay = Replay({"squeue": CommandResult(1, "", _text("squeue_unknown_id.txt")),
                     "scontrol show config": CommandResult(0, _text("scontrol_show_config.txt"),
                                                           "")})
    states = SlurmScheduler(runner=replay).states(["999999"])
    assert states == {"999999": JobInfo(job_id="999999")}


@pytest.mark.parametrize("job_id", ["12; rm -rf ~", "--user=root", "-1", "", "12 13"])
def test_what_is_not_a_job_id_never_reaches_squeue_or_scancel(job_id: str) -> None:
    """'--user=root' given to scancel would cancel every job of root."""
    replay = Replay({})
    with pytest.raises(ValueError, match="not a SLURM job id"):
        SlurmScheduler(runner=replay).states([job_id])
    with pytest.raises(ValueError, match="not a SLURM job id"):
        SlurmScheduler(runner=replay).cancel(job_id)
    assert replay.calls == []


def test_find_matches_the_exact_name() -> None:
    replay = Replay({"squeue": CommandResult(0, _text("squeue_by_name.txt"), ""),
                     "scontrol show config": CommandResult(0, _text("scontrol_show_config.txt"),
                                                           "")})
    slurm = SlurmScheduler(runner=replay)
    found = slurm.find("ef-capture-running")
    assert [(i.name, i.state) for i in found] == [("ef-capture-running", "RUNNING")]
    assert slurm.find("ef-capture-runnin") == []  # squeue's answer is filtered by exact name
    assert ["squeue", "--noheader", "--states=all", "--format=%i|%T|%r|%N|%j",
            "--name=ef-capture-running"] in replay.calls


def test_submit_passes_name_and_folder_as_arguments(tmp_path: Path) -> None:
    replay = Replay({"sbatch": CommandResult(0, "57;eventflow\n", "")})
    job_id = SlurmScheduler(runner=replay).submit(tmp_path / "job.sh", "ef-x; rm -rf ~", tmp_path)
    assert job_id == "57"
    assert replay.calls == [["sbatch", "--parsable", "--job-name=ef-x; rm -rf ~",
                             f"--chdir={tmp_path}", str(tmp_path / "job.sh")]]


def test_submit_errors_carry_sbatchs_words(tmp_path: Path) -> None:
    message = "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
    replay = Replay({"sbatch": CommandResult(1, "", message)})
    with pytest.raises(SubmitError, match="Invalid partition name specified"):
        SlurmScheduler(runner=replay).submit(tmp_path / "job.sh", "ef-x", tmp_path)


SACCT_MADE_TO = {
    "ef-capture-node_failure": "NODE_FAIL",
    "ef-capture-completed": "COMPLETED",
    "ef-capture-exit3": "FAILED",
    "ef-capture-running": "CANCELLED",  # scancel'd while running
    "ef-capture-oom": "OUT_OF_MEMORY",
    "ef-capture-time_limit": "TIMEOUT",
    "ef-capture-pending": "CANCELLED",  # scancel'd while pending
}


def test_sacct_rows_give_each_jobs_final_state() -> None:
    """Captured with accounting (EVENTFLOW_SLURM_ACCOUNTING=yes slurm/local-cluster start)."""
    jobs = _by_name(parse_sacct(_text("sacct_jobs.txt")))
    assert {name: info.state for name, info in jobs.items()} == SACCT_MADE_TO
    assert jobs["ef-capture-exit3"].exit_code == 3
    assert jobs["ef-capture-pending"].node is None  # sacct prints "None assigned"
    assert jobs["ef-capture-completed"].reason is None


def test_sacct_step_rows_are_not_jobs() -> None:
    with_steps = parse_sacct(_text("sacct_with_steps.txt"))
    assert with_steps == parse_sacct(_text("sacct_jobs.txt"))
    assert "batch" not in {info.name for info in with_steps.values()}


def _accounting_replay(extra: dict[str, CommandResult]) -> Replay:
    return Replay({
        "scontrol show config": CommandResult(0, _text("scontrol_show_config_accounting.txt"), ""),
        **extra,
    })


def test_sacct_answers_for_jobs_that_left_slurmctlds_memory() -> None:
    """After MinJobAge squeue and scontrol forget a job; with accounting, sacct still knows."""
    sacct = _text("sacct_jobs.txt")
    ids = {info.name: job_id for job_id, info in parse_sacct(sacct).items()}
    timeout, exit3 = ids["ef-capture-time_limit"], ids["ef-capture-exit3"]
    replay = _accounting_replay({
        "squeue": CommandResult(1, "", _text("squeue_unknown_id.txt")),
        "sacct": CommandResult(0, sacct, ""),
    })
    slurm = SlurmScheduler(runner=replay)
    assert slurm.sacct_works is True
    states = slurm.states([timeout, exit3])
    assert states[timeout].state == "TIMEOUT"
    assert (states[exit3].state, states[exit3].exit_code) == ("FAILED", 3)
    sacct_calls = [c for c in replay.calls if c[0] == "sacct"]
    assert len(sacct_calls) == 1
    assert f"--jobs={timeout},{exit3}" in sacct_calls[0]
    assert "--allocations" in sacct_calls[0]


def test_find_asks_sacct_too_when_accounting_works() -> None:
    replay = _accounting_replay({
        "squeue": CommandResult(0, "", ""),
        "sacct": CommandResult(0, _text("sacct_by_name.txt"), ""),
    })
    found = SlurmScheduler(runner=replay).find("ef-capture-exit3")
    assert [(i.name, i.state, i.exit_code) for i in found] == [("ef-capture-exit3", "FAILED", 3)]
    (sacct_call,) = [c for c in replay.calls if c[0] == "sacct"]
    assert "--name=ef-capture-exit3" in sacct_call
