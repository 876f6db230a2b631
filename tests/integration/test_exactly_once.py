"""Exactly-once submission against the real SLURM cluster.

Ten jobs finish at the same moment while ten `eventflow watch --once` run at
once; a watcher is killed -9 at each point of the submit path. Counted in the
log and in the scheduler itself. The jobs run the `noop` code (a plain command),
so these tests are about orchestration, not about a DFT program.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eventflow.shell.api import Tracker
from eventflow.shell.jobs import job_name
from eventflow.shell.scheduler import SlurmScheduler
from tests.integration.helpers import SI, count, eventflow, slurm_project, unique, wait_for

pytestmark = pytest.mark.slurm


def pid(project: Path) -> str:
    from eventflow.shell.project import Project

    return Project.at(project).project_id


def test_ten_simultaneous_finishes_and_ten_watchers_give_ten_follow_ups(
    tmp_path: Path, need_slurm: None
) -> None:
    project = slurm_project(tmp_path)
    go = tmp_path / "go"
    waiter = ["bash", "-c", f"while [ ! -e {go} ]; do sleep 0.2; done"]
    mids = [unique(f"m{i}") for i in range(10)]
    with Tracker.open(project) as t:
        for mid in mids:
            t.create_material(SI, material_id=mid, workflow="test", code="noop",
                              params={"command": waiter})
    eventflow(project, "watch", "--once", "--quiet")
    assert count(project, "JobSubmitted") == 10
    slurm = SlurmScheduler()

    def all_running() -> bool:
        infos = [slurm.find(job_name(pid(project), f"{m}/A/1")) for m in mids]
        return all(len(i) == 1 and i[0].state == "RUNNING" for i in infos)

    wait_for(all_running, "10 jobs running at once", 120)
    go.touch()  # all ten finish now
    wait_for(lambda: all((project / "calcs" / m / "A" / "1" / "eventflow-done.json").exists()
                         for m in mids), "10 completion records", 60)
    watchers = [subprocess.Popen([sys.executable, "-m", "eventflow.shell.cli", "--project",
                                  str(project), "watch", "--once", "--quiet"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(10)]
    for w in watchers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    # The B jobs may finish (and be ingested by a later watcher) within this window too.
    assert count(project, "JobFinished", '%/A/1"%') == 10
    assert count(project, "CalculationSucceeded", '%/A/1"%') == 10
    assert count(project, "JobFinished", '%/B/1"%') <= 10
    assert count(project, "SubmissionRequested", '%"step":"B"%') == 10
    assert count(project, "JobSubmitted", '%/B/1"%') == 10
    for mid in mids:  # and SLURM itself has exactly one job per follow-up
        assert len(slurm.find(job_name(pid(project), f"{mid}/B/1"))) == 1, mid
    with Tracker.open(project) as t:
        _, problems = t.store.verify_chain()
        assert problems == []


@pytest.mark.parametrize("point", ["before_sbatch", "after_sbatch", "after_record"])
def test_a_watcher_killed_in_the_submit_path_never_loses_or_doubles_a_job(
    tmp_path: Path, need_slurm: None, point: str
) -> None:
    project = slurm_project(tmp_path)
    mid = unique(f"crash-{point.replace('_', '-')}")
    with Tracker.open(project) as t:
        t.create_material(SI, material_id=mid, workflow="single", code="noop",
                          params={"command": ["sleep", "2"]})
    crashed = eventflow(project, "watch", "--once", "--quiet",
                        env={"EVENTFLOW_TEST_CRASH_AT": point}, check=False)
    assert crashed.returncode == -9, crashed.stderr  # really killed at that point
    eventflow(project, "watch", "--once", "--quiet")  # restart: takes over the stale lock
    slurm = SlurmScheduler()
    jobs = slurm.find(job_name(pid(project), f"{mid}/SP/1"))
    assert len(jobs) == 1, f"{point}: {jobs}"
    with Tracker.open(project) as t:
        calc = t.state(mid).calcs[f"{mid}/SP/1"]
        assert calc.job_id == jobs[0].job_id
    assert count(project, "JobSubmitted") == 1
    wait_for(lambda: (project / "calcs" / mid / "SP" / "1" / "eventflow-done.json").exists(),
             "the job to finish", 120)
    eventflow(project, "watch", "--once", "--quiet")
    status = json.loads(eventflow(project, "status", "--json").stdout)
    assert status["materials"][0]["state"] == "completed"


def test_scancel_and_a_failing_script_are_recorded_with_their_reasons(
    tmp_path: Path, need_slurm: None
) -> None:
    project = slurm_project(tmp_path)
    cancelme, fails = unique("cancelme"), unique("fails")
    with Tracker.open(project) as t:
        t.create_material(SI, material_id=cancelme, workflow="single", code="noop",
                          params={"command": ["bash", "-c", "touch started; sleep 300"]})
        t.create_material(SI, material_id=fails, workflow="single", code="noop",
                          params={"command": ["bash", "-c", "exit 3"], "fail_kind": "input_error"})
    eventflow(project, "watch", "--once", "--quiet")
    slurm = SlurmScheduler()
    name = job_name(pid(project), f"{cancelme}/SP/1")
    wait_for(lambda: [j.state for j in slurm.find(name)] == ["RUNNING"], "the job to run", 60)
    # RUNNING comes before the job script has set its traps; the command's mark comes after.
    wait_for(lambda: (project / "calcs" / cancelme / "SP" / "1" / "started").exists(),
             "the command to start", 60)
    job = slurm.find(name)[0].job_id
    subprocess.run(["scancel", job], check=True)
    wait_for(lambda: (project / "calcs" / cancelme / "SP" / "1" / "eventflow-done.json")
             .exists() and (project / "calcs" / fails / "SP" / "1" / "eventflow-done.json")
             .exists(), "completion records", 60)
    wait_for(lambda: slurm.states([job])[job].state == "CANCELLED", "CANCELLED", 30)
    eventflow(project, "watch", "--once", "--quiet")
    with Tracker.open(project) as t:
        cancelled = t.state(cancelme).calcs[f"{cancelme}/SP/1"]
        failed = t.state(fails).calcs[f"{fails}/SP/1"]
        assert (cancelled.state, cancelled.error_kind) == ("failed", "cancelled")
        assert (failed.state, failed.error_kind, failed.exit_code) == ("failed", "input_error", 3)
        finished = [r.event for r in t.store.read(stream=fails, types=["JobFinished"])]
        assert finished[0].exit_code == 3 and finished[0].reason == "command_failed"
