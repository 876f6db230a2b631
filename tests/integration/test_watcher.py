"""``eventflow watch`` as a daemon: one per project, clean stops, waking on completion records.

The daemons run as real processes (``python -m eventflow.shell.cli watch``) on a real
project; their jobs run under the local executor (always) and under the real SLURM cluster
(``need_slurm``). Every wait polls the log with a generous upper bound: nothing asserts how
long anything took. The jobs run the ``noop`` code (a plain command), so these tests are
about orchestration, not about a DFT program.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventflow.shell.api import Tracker
from eventflow.shell.project import Project
from eventflow.shell.watcher import LOG_BACKUPS, LOG_MAX_BYTES, setup_logging
from tests.integration import helpers
from tests.integration.helpers import (
    CLI,
    SI,
    add,
    count,
    eventflow,
    make_project,
    unique,
    waiting_command,
)

WAIT = 120.0  # upper bound on any wait; never a timing assertion


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    helpers.wait_for(predicate, what, timeout)




# --- helpers ------------------------------------------------------------------------------------


def operational_log(project: Path) -> Path:
    return Project.at(project).state_dir / "watcher.log"


def lock_file(project: Path) -> Path:
    return Project.at(project).lock_path


class Daemon:
    """An ``eventflow watch`` process; output to files so it never blocks on a pipe."""

    def __init__(self, project: Path, *args: str) -> None:
        self.project = project
        self.out = project.parent / f"daemon-{time.monotonic_ns()}.out"
        with self.out.open("w") as out:
            self.proc = subprocess.Popen([*CLI, "--project", str(project), "watch", *args],
                                         stdout=out, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self) -> None:
        """Until it holds the lock and its observer runs (its log says 'watching')."""
        def ready() -> bool:
            assert self.proc.poll() is None, f"daemon exited early: {self.output()}"
            try:
                holder = json.loads(lock_file(self.project).read_text())
                text = operational_log(self.project).read_text()
            except (OSError, ValueError):
                return False
            return holder.get("pid") == self.proc.pid and "watching" in text
        wait_for(ready, "the daemon to start watching")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=WAIT)

    def output(self) -> str:
        return self.out.read_text(errors="replace")


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts; any still running at the end are stopped."""
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=30)


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def executor(request: pytest.FixtureRequest) -> str:
    if request.param == "slurm":
        request.getfixturevalue("need_slurm")
    return request.param


# --- one daemon per project -----------------------------------------------------------------------


def test_a_second_daemon_says_who_runs_and_exits_0(tmp_path: Path,
                                                   daemons: list[Daemon]) -> None:
    project = make_project(tmp_path, "local")
    first = Daemon(project, "--quiet")
    daemons.append(first)
    first.wait_ready()
    second = eventflow(project, "watch", "--quiet", timeout=WAIT)
    assert second.returncode == 0
    assert "already running" in second.stdout
    assert f"host {socket.gethostname()}" in second.stdout
    assert f"pid {first.proc.pid}" in second.stdout
    assert first.proc.poll() is None  # the first one is untouched
    holder = json.loads(lock_file(project).read_text())
    assert (holder["pid"], holder["role"]) == (first.proc.pid, "daemon")
    assert first.stop() == 0


def test_watch_once_beside_a_daemon_leaves_the_work_to_it(tmp_path: Path,
                                                         daemons: list[Daemon]) -> None:
    """A cron job or a callback running `watch --once` while a daemon holds the lock must not
    wait for it (the daemon never lets go): it says so and exits 0, and the daemon does it."""
    project = make_project(tmp_path, "local")
    daemon = Daemon(project, "--quiet", "--reconcile", "3600")
    daemons.append(daemon)
    daemon.wait_ready()
    add(project, "m1", ["true"])
    once = eventflow(project, "watch", "--once", timeout=WAIT)
    assert "it processes everything" in once.stdout
    assert f"pid {daemon.proc.pid}" in once.stdout
    wait_for(lambda: count(project, "CalculationSucceeded") == 1, "the daemon to run m1")
    assert daemon.stop() == 0
    assert count(project, "JobSubmitted") == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_daemon_stops_cleanly_and_a_restart_goes_on_from_the_log(
    tmp_path: Path, daemons: list[Daemon], sig: int
) -> None:
    project = make_project(tmp_path, "local")
    add(project, "m1", ["true"])
    first = Daemon(project, "--quiet", "--reconcile", "1")
    daemons.append(first)
    first.wait_ready()
    wait_for(lambda: count(project, "CalculationSucceeded") == 1, "m1 to succeed")
    assert first.stop(sig) == 0, first.output()
    assert not lock_file(project).exists()  # the lock is released
    assert "Traceback" not in first.output()
    assert operational_log(project).read_text().rstrip().endswith("watcher stopped")

    # Registered while no daemon runs: the restarted daemon reads where things stand from the
    # log, submits m2 and leaves m1 alone.
    add(project, "m2", ["true"])
    with Tracker.open(project) as t:
        assert t.state("m2").calcs["m2/SP/1"].state == "requested"
    second = Daemon(project, "--quiet", "--reconcile", "1")
    daemons.append(second)
    second.wait_ready()
    wait_for(lambda: count(project, "CalculationSucceeded") == 2, "m2 to succeed")
    assert second.stop(sig) == 0, second.output()
    assert count(project, "JobSubmitted") == 2  # m1 was not submitted again
    assert count(project, "JobFinished") == 2
    with Tracker.open(project) as t:
        assert [t.state(m).state for m in ("m1", "m2")] == ["completed", "completed"]
        _, problems = t.store.verify_chain()
        assert problems == []


def test_a_daemon_killed_outright_leaves_a_lock_the_next_one_takes_over(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    project = make_project(tmp_path, "local")
    first = Daemon(project, "--quiet")
    daemons.append(first)
    first.wait_ready()
    first.proc.kill()  # SIGKILL: no handler runs, the lock file stays
    first.proc.wait(timeout=WAIT)
    assert json.loads(lock_file(project).read_text())["pid"] == first.proc.pid
    add(project, "m1", ["true"])
    second = Daemon(project, "--quiet", "--reconcile", "1")
    daemons.append(second)
    second.wait_ready()  # it took the dead one's lock over
    wait_for(lambda: count(project, "CalculationSucceeded") == 1, "m1 to succeed")
    assert second.stop() == 0


# --- waking on completion records -------------------------------------------------------------


@pytest.mark.parametrize("observer", [[], ["--poll", "0.5"]], ids=["inotify", "poll-0.5"])
def test_a_completion_record_wakes_the_daemon(tmp_path: Path, daemons: list[Daemon],
                                              executor: str, observer: list[str]) -> None:
    """With --reconcile 3600 the daemon asks the scheduler only at start: the job's end can
    reach it only through its completion record appearing in calcs/ (inotify, or the
    polling observer)."""
    project = make_project(tmp_path, executor)
    mid = unique("wake")
    add(project, mid, waiting_command())
    daemon = Daemon(project, "--quiet", "--reconcile", "3600", *observer)
    daemons.append(daemon)
    daemon.wait_ready()
    job_dir = project / "calcs" / mid / "SP" / "1"
    wait_for(lambda: (job_dir / "started").exists(), "the job to start")
    assert count(project, "JobFinished") == 0
    (job_dir / "go").touch()  # the job ends and writes its record
    wait_for(lambda: count(project, "CalculationSucceeded") == 1, "the record to be processed")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    assert count(project, "JobFinished") == 1
    with Tracker.open(project) as t:
        assert t.state(mid).state == "completed"


def test_a_chain_of_steps_runs_through_without_polling_the_scheduler(
    tmp_path: Path, daemons: list[Daemon], executor: str
) -> None:
    """Workflow `test` (A, then B after A): B is submitted in reaction to A's record."""
    project = make_project(tmp_path, executor)
    mids = [unique(f"chain{i}") for i in range(3)]
    for mid in mids:
        add(project, mid, ["true"], workflow="test")
    daemon = Daemon(project, "--quiet", "--reconcile", "3600")
    daemons.append(daemon)
    daemon.wait_ready()
    wait_for(lambda: count(project, "MaterialCompleted") == 3, "three chains to complete")
    assert daemon.stop() == 0
    assert count(project, "JobSubmitted") == 6
    assert count(project, "JobSubmitted", '%/B/1"%') == 3


def test_work_added_while_the_daemon_runs_is_taken_up_without_waiting_to_reconcile(
    tmp_path: Path, daemons: list[Daemon], executor: str
) -> None:
    """`eventflow add` (another process) appends to the log; the daemon watches the log too,
    so with --reconcile 3600 the new material still runs now, not in an hour."""
    project = make_project(tmp_path, executor)
    daemon = Daemon(project, "--quiet", "--reconcile", "3600")
    daemons.append(daemon)
    daemon.wait_ready()
    mid = unique("added")
    proc = eventflow(project, "add", str(SI), "--code", "noop", "--workflow", "single",
                     f"--id={mid}", "--set", 'command=["true"]')
    assert "registered" in proc.stdout
    wait_for(lambda: count(project, "CalculationSucceeded") == 1, "the new material to run")
    assert daemon.stop() == 0
    assert count(project, "JobSubmitted") == 1


def test_a_daemon_whose_stderr_nobody_reads_does_not_go_deaf(tmp_path: Path) -> None:
    """A cycle that writes many job folders at once made watchdog's inotify observer print
    huge warnings on stderr; with stderr a pipe nobody reads (nohup, a service), the observer
    thread blocked and the daemon heard no more records (seen with 200 materials)."""
    project = make_project(tmp_path, "local")
    with Tracker.open(project) as t:
        for i in range(150):
            t.create_material(SI, material_id=f"m{i:03d}", workflow="single", code="noop",
                              params={"command": ["true"]})
    daemon = subprocess.Popen([*CLI, "--project", str(project), "watch", "--quiet",
                               "--reconcile", "3600"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        wait_for(lambda: count(project, "CalculationSucceeded") == 150, "150 verdicts",
                 timeout=600)
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=WAIT)
    assert daemon.returncode == 0
    assert b"Callback with id" not in err
    assert len(out) + len(err) < 10_000


# --- the operational log ----------------------------------------------------------------------


def test_log_json_lines_carry_material_calculation_and_job(tmp_path: Path,
                                                           executor: str) -> None:
    project = make_project(tmp_path, executor)
    mid = unique("jsonlog")
    add(project, mid, ["true"])
    eventflow(project, "watch", "--once", "--quiet", "--log-json")
    job_dir = project / "calcs" / mid / "SP" / "1"
    wait_for(lambda: (job_dir / "eventflow-done.json").exists(), "the job's record")
    eventflow(project, "watch", "--once", "--quiet", "--log-json")
    with Tracker.open(project) as t:
        job_id = t.state(mid).calcs[f"{mid}/SP/1"].job_id
    lines = [json.loads(line) for line in operational_log(project).read_text().splitlines()]
    assert lines
    for line in lines:
        assert {"time", "level", "message", "material", "calculation", "job"} <= set(line)
    about_the_job = [line for line in lines if line["job"] is not None]
    messages = " | ".join(line["message"] for line in about_the_job)
    assert "submitted" in messages and "finished" in messages and "succeeded" in messages
    for line in about_the_job:
        assert (line["material"], line["calculation"], line["job"]) == (
            mid, f"{mid}/SP/1", job_id)


def test_the_text_log_names_the_ids_too(tmp_path: Path) -> None:
    project = make_project(tmp_path, "local")
    add(project, "m1", ["true"])
    eventflow(project, "watch", "--once", "--quiet")
    text = operational_log(project).read_text()
    with pytest.raises(ValueError):
        json.loads(text.splitlines()[0])  # readable text by default, not JSON
    assert "[material=m1 calculation=m1/SP/1 job=local-1]" in text


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_the_operational_log_rotates_by_size(tmp_path: Path, as_json: bool) -> None:
    path = tmp_path / "watcher.log"
    root = logging.getLogger("eventflow")
    try:
        setup_logging(path, as_json=as_json, echo=False)
        handlers = [h for h in root.handlers
                    if isinstance(h, logging.handlers.RotatingFileHandler)]
        assert len(handlers) == 1
        handler = handlers[0]
        assert Path(handler.baseFilename) == path
        assert (handler.maxBytes, handler.backupCount) == (LOG_MAX_BYTES, LOG_BACKUPS)
        assert 0 < handler.maxBytes <= 100_000_000 and handler.backupCount >= 1
        # The same handler with a small size really rotates (rather than writing 10 MB).
        handler.maxBytes = 2_000
        for i in range(200):
            logging.getLogger("eventflow.test").info("line %d of a long run", i,
                                                     extra={"material": f"m{i}"})
        assert (tmp_path / "watcher.log.1").exists()
        assert path.stat().st_size <= 2_000
        rotated = sorted(tmp_path.glob("watcher.log.*"))
        assert len(rotated) == handler.backupCount  # the oldest are dropped, not kept forever
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
