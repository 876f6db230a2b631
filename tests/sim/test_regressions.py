"""Bugs eventflow-sim found, each pinned by a test of its own (outside the simulator).

The scheduler here is a small in-memory one: the point is a crash at one exact place,
which the real SLURM cluster cannot be made to do on cue (the simulator's SimCluster is
the same idea, driven by a seed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eventflow.shell.api import Tracker
from eventflow.shell.runner import Runner
from eventflow.shell.scheduler import JobInfo, SubmitError
from tests.integration.helpers import add, make_project


class Died(BaseException):
    """The runner process is killed here."""


class DiesAfterSbatch:
    """sbatch creates the job, then the process dies before the id is recorded."""

    name = "slurm"

    def __init__(self) -> None:
        self.jobs: dict[str, str] = {}  # job id -> name
        self.die = True

    def ping(self) -> bool:
        return True

    def submit(self, script: Path, job_name: str, workdir: Path) -> str:
        job_id = str(100 + len(self.jobs))
        self.jobs[job_id] = job_name
        if self.die:
            raise Died()
        return job_id

    def find(self, job_name: str) -> list[JobInfo]:
        return [JobInfo(job_id=j, name=n, state="PENDING") for j, n in self.jobs.items()
                if n == job_name]

    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        return {j: JobInfo(job_id=j, name=self.jobs.get(j), state="PENDING") for j in job_ids}

    def cancel(self, job_id: str) -> None:
        return None


def test_a_job_submitted_just_before_a_crash_is_recorded_while_the_material_is_held(
        tmp_path: Path) -> None:
    """eventflow-sim --seed 23: the runner died after sbatch; the user held the material;
    the restarted runner skipped held materials altogether, so the job ran and ended with
    the log knowing nothing of it (nor of its result) for as long as the hold lasted."""
    project = make_project(tmp_path, "local")
    add(project, "m", ["true"])
    scheduler = DiesAfterSbatch()
    with Tracker.open(project) as tracker, pytest.raises(Died):
        Runner(tracker, scheduler).cycle()
    with Tracker.open(project) as tracker:
        tracker.hold("m", "held by a user")
        scheduler.die = False
        Runner(tracker, scheduler).cycle()
        state = tracker.state("m")
        assert state.state == "held"
        assert state.calcs["m/SP/1"].job_id == "100"
        assert state.calcs["m/SP/1"].state == "submitted"
    assert list(scheduler.jobs) == ["100"]  # and nothing submitted a second time


def test_a_held_material_gets_no_new_submission(tmp_path: Path) -> None:
    project = make_project(tmp_path, "local")
    add(project, "m", ["true"])
    scheduler = DiesAfterSbatch()
    scheduler.die = False
    with Tracker.open(project) as tracker:
        tracker.hold("m", "held by a user")
        Runner(tracker, scheduler).cycle()
        assert tracker.state("m").calcs["m/SP/1"].state == "requested"
    assert scheduler.jobs == {}


def _project_whose_job_folder_cannot_be_made(tmp_path: Path) -> tuple[Path, DiesAfterSbatch]:
    """Material m, whose job folder's place is taken by a file; and a scheduler that works."""
    project = make_project(tmp_path, "local")
    add(project, "m", ["true"])
    (project / "calcs" / "m" / "SP").mkdir(parents=True)
    (project / "calcs" / "m" / "SP" / "1").write_text("not a folder")
    scheduler = DiesAfterSbatch()
    scheduler.die = False
    return project, scheduler


def test_a_job_that_can_never_be_prepared_fails_its_attempt_instead_of_retrying_for_ever(
        tmp_path: Path) -> None:
    """eventflow-sim --seed 2: a CRYSTAL BAND retry after a time limit carries GUESSP, which a
    properties deck cannot take; preparing the job failed every hour for ever and the
    material never reached a state a human would look at. Here the job folder's place is
    taken by a file, which no retry can fix either."""
    from eventflow.shell import clock
    from eventflow.shell.runner import PREPARE_TRIES

    project, scheduler = _project_whose_job_folder_cannot_be_made(tmp_path)
    now = [clock.now()]
    with clock.using(lambda: now[0]), Tracker.open(project) as tracker:
        runner = Runner(tracker, scheduler)
        for _ in range(PREPARE_TRIES):
            runner.cycle()
            now[0] += 4000  # past the submission back-off
        state = tracker.state("m")
        calc = state.calcs["m/SP/1"]
        assert (calc.state, calc.error_kind) == ("failed", "input_error")
        assert calc.submit_failures == PREPARE_TRIES - 1
        assert state.state == "needs_attention"
        runner.cycle()
        assert tracker.state("m").calcs["m/SP/1"].submit_failures == PREPARE_TRIES - 1
    assert scheduler.jobs == {}


def test_a_job_never_seen_running_that_left_no_record_can_be_judged_by_its_output() -> None:
    """eventflow-sim --seed 1208: squeue lagged and failed while the job ran, so nobody saw it
    RUNNING; it ended COMPLETED without a record. The runner judged it by its output, but
    the lifecycle refused PropertiesExtracted from ``submitted``: the whole verdict was
    skipped and the attempt stayed ``submitted`` for ever."""
    from eventflow.core import events as ev
    from eventflow.core.state import MaterialState, apply, would_accept

    state = MaterialState("m")
    history = [ev.MaterialRegistered("m", "Si2", "single", "qe"),
               ev.SubmissionRequested("m/SP/1", "SP", 1, directory="calcs/m/SP/1"),
               ev.JobSubmitted("m/SP/1", "7", "slurm")]
    verdict = [ev.PropertiesExtracted("m/SP/1", {"total_energy_ev": {"value": -1.0,
                                                                     "unit": "eV"}}, "qe/1"),
               ev.CalculationSucceeded("m/SP/1", "qe/1")]
    for n, event in enumerate(history + verdict, start=1):
        would_accept(state, event)
        apply(state, ev.Recorded(n, "m", n, event, "2030-01-01T00:00:00.000000Z", {}))
    assert state.calcs["m/SP/1"].state == "completed"


def test_a_watcher_whose_lock_was_taken_over_does_not_submit_again(tmp_path: Path) -> None:
    """eventflow-sim --seed 308 (runner_interleaved): a watcher paused past the lock's
    stale_after had its lock taken over; the new holder submitted the attempt, and when the
    first resumed mid-cycle it called sbatch for the same attempt: two jobs. The runner now
    checks the lock (ProjectLock.fence) right before sbatch and stops instead."""
    import json

    from eventflow.shell.lock import LockLost, ProjectLock

    project = make_project(tmp_path, "local")
    add(project, "m", ["true"])
    scheduler = DiesAfterSbatch()
    scheduler.die = False
    with Tracker.open(project) as tracker:
        lock = ProjectLock(tracker.project.lock_path)
        assert lock.try_acquire("daemon")
        runner = Runner(tracker, scheduler)
        runner.fence = lock.fence
        taken_over = {"host": "another-login-node", "pid": 4242, "role": "daemon"}
        tracker.project.lock_path.write_text(json.dumps(taken_over))
        with pytest.raises(LockLost, match="another-login-node"):
            runner.cycle()
        assert scheduler.jobs == {}  # no sbatch once the lock is someone else's
        assert not lock.held
        tracker.project.lock_path.unlink()
        assert lock.try_acquire("daemon")  # ours again: the same attempt is submitted once
        runner.cycle()
        assert list(scheduler.jobs.values()) == [f"ef.{tracker.project.project_id}.m.SP.1"]


def test_a_job_given_up_as_unpreparable_does_not_stop_the_other_submissions(
        tmp_path: Path) -> None:
    """The give-up branch of Runner._submit returned None, which its caller reads as "the
    cluster did not answer": one job whose folder could never be written stopped every other
    submission to that cluster for the rest of the cycle."""
    from eventflow.shell import clock
    from eventflow.shell.runner import PREPARE_TRIES

    project, scheduler = _project_whose_job_folder_cannot_be_made(tmp_path)
    now = [clock.now()]
    with clock.using(lambda: now[0]), Tracker.open(project) as tracker:
        runner = Runner(tracker, scheduler)
        for _ in range(PREPARE_TRIES - 1):
            runner.cycle()
            now[0] += 4000  # past the submission back-off
        add(project, "z", ["true"])  # pending in the cycle where m is given up
        runner.cycle()
        assert tracker.state("m").calcs["m/SP/1"].state == "failed"
        assert tracker.state("z").calcs["z/SP/1"].state == "submitted"
    assert list(scheduler.jobs.values()) == [f"ef.{tracker.project.project_id}.z.SP.1"]


class ParserWithABug:
    """The real noop plugin, whose parser raises on one material's output. The parser bug
    the simulator found is fixed, and no real parser raises on cue, so this one is made."""

    def __init__(self, real: object) -> None:
        self.real = real

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def interpret(self, text: str | None, exit_code: int | None, params: dict) -> object:
        if "parser-bug" in params.get("command", []):
            raise IndexError("list index out of range")
        return self.real.interpret(text, exit_code, params)  # type: ignore[attr-defined]


def test_an_output_a_parser_raises_on_does_not_stop_the_other_materials(
        tmp_path: Path) -> None:
    """eventflow-sim --seed 4230: the CRYSTAL parser raised on an output cut inside a geometry
    block, and the exception ended the runner's whole cycle, so no other material moved on
    for as long as that output stayed. Now that one job is skipped (nothing recorded, an
    error logged) and a fixed parser reads it at a later cycle."""
    import time

    from eventflow.shell.parsing import plugins
    from eventflow.shell.scheduler import LocalExecutor

    project = make_project(tmp_path, "local")
    add(project, "good", ["true"])
    add(project, "bad", ["echo", "parser-bug"])
    with Tracker.open(project) as tracker:
        runner = Runner(tracker, LocalExecutor(tracker.project.state_dir))
        runner._plugins = {**plugins(), "noop": ParserWithABug(plugins()["noop"])}
        # First where the scheduler says the jobs left the queue (as when a record appears
        # after the cycle listed the records: this path was seen flaky before it was covered),
        listed = runner._with_records
        runner._with_records = lambda: []  # type: ignore[method-assign]
        unreadable = 0
        deadline = time.monotonic() + 60
        while tracker.state("good").state != "completed" or not unreadable:
            assert time.monotonic() < deadline, (tracker.state("good").state, unreadable)
            unreadable += runner.cycle().unreadable
            time.sleep(0.1)
        # ... then where the cycle lists the completion records.
        runner._with_records = listed  # type: ignore[method-assign]
        assert runner.cycle().unreadable == 1
        bad = tracker.state("bad")
        assert [c.state for c in bad.calcs.values()] in (["submitted"], ["running"])
        runner._plugins = plugins()  # the parser, fixed
        assert runner.cycle().unreadable == 0
        assert tracker.state("bad").state == "completed"


class TimesOutThenForgets(DiesAfterSbatch):
    """sbatch makes the job, then times out before saying its id; the job runs, writes its
    completion record and ends, and this cluster (no accounting, past MinJobAge) forgets it."""

    def __init__(self, trace: str) -> None:
        super().__init__()
        self.die = False
        self.forgotten: set[str] = set()
        self.trace = trace

    def submit(self, script: Path, job_name: str, workdir: Path) -> str:
        job_id = super().submit(script, job_name, workdir)
        if len(self.jobs) == 1:
            (workdir / "eventflow-started").write_text(f"{job_id}\n")
            if self.trace == "record":
                (workdir / "eventflow-done.json").write_text(
                    f'{{"job_id": "{job_id}", "exit_code": 0, "signal": null, "reason": null}}\n')
            self.forgotten.add(job_id)
            raise SubmitError(f"sbatch timed out; the job may have been submitted: "
                              f"look for it by name {job_name!r}")
        return job_id

    def find(self, job_name: str) -> list[JobInfo]:
        return [j for j in super().find(job_name) if j.job_id not in self.forgotten]

    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        return {j: (JobInfo(job_id=j) if j in self.forgotten else info)
                for j, info in super().states(job_ids).items()}


@pytest.mark.parametrize("trace", ["record", "started marker only"])
def test_a_job_made_by_a_timed_out_sbatch_and_forgotten_since_is_not_submitted_again(
        tmp_path: Path, trace: str) -> None:
    """eventflow-sim --seed 4734 (and 5167, 6890, 7640 in the long run): sbatch timed out
    after making the job; the job ended, and by the retry squeue had forgotten it and there
    was no accounting for sacct, so the look-up by name found nothing and a second job was
    made for the same attempt. Its completion record, with its id, was in the folder; a job
    killed outright writes none, but every job writes its id at its start."""
    from eventflow.shell import clock

    project = make_project(tmp_path, "local")
    add(project, "m", ["true"])
    scheduler = TimesOutThenForgets(trace)
    now = [clock.now()]
    with clock.using(lambda: now[0]), Tracker.open(project) as tracker:
        runner = Runner(tracker, scheduler)
        runner.cycle()
        assert tracker.state("m").calcs["m/SP/1"].submit_failures == 1
        now[0] += 4000  # past the submission back-off
        runner.cycle()
        runner.cycle()
        calc = tracker.state("m").calcs["m/SP/1"]
        assert calc.job_id == "100"
        assert calc.state == ("completed" if trace == "record" else "lost")
    assert list(scheduler.jobs) == ["100"]
