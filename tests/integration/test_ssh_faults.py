"""Faults of the remote cluster itself, on a PRIVATE sshd (slurm/local-sshd on a port and folder
of this test's own, never the shared one) in front of the real local SLURM:

* the sshd is killed (SIGKILL, with every session it serves) while the job folder is being
  unpacked there, after sbatch ran but before its answer came back, and while the results
  are being copied back;
* the remote work folder is read-only (a read-only tmpfs);
* the remote disk is full (a small tmpfs filled to its last byte).

After each: the affected material waits with a one-line reason (not failed, not lost); once
the fault is lifted every job exists exactly once, every result arrives once, `verify` passes.

To kill the sshd at an exact point, its sessions find small wrappers first in PATH (the
sshd's own SetEnv, through slurm/local-sshd's sshd_config.d): when a flag file exists,
``tar``, ``sbatch`` (after submitting) or the remote ``rsync`` touch a "reached" file and
sleep, and the test kills the sshd then. The real programs do the work; only the timing is
held.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.shell import clock, clusters
from eventflow.shell.api import Tracker
from eventflow.shell.jobs import job_name
from eventflow.shell.watcher import run_once
from tests.conftest import SSH_ALIAS, require
from tests.integration.helpers import add, count, eventflow, unique, wait_for

pytestmark = pytest.mark.usefixtures("need_slurm", "need_sshd")

REPO = Path(__file__).resolve().parents[2]
HELD = ("tar", "sbatch", "rsync")  # the remote commands a test can hold at a point
RETRY_S = 10.5  # the first retry of a failed submission is due after 10 s


@contextlib.contextmanager
def _retry_due() -> Iterator[None]:
    """The runner's clock RETRY_S ahead, so a failed submission's retry is due at once (the
    log's own order is by seq; no assertion here reads the recorded times)."""
    with clock.using(lambda: time.time() + RETRY_S):
        yield


class PrivateSshd:
    """slurm/local-sshd on a free port with a state folder of its own."""

    def __init__(self, state: Path, port: int) -> None:
        self.state, self.port = state, port
        self.flags = state / "flags"

    def script(self, verb: str) -> None:
        env = {**os.environ, "EVENTFLOW_SSHD_DIR": str(self.state),
               "EVENTFLOW_SSHD_PORT": str(self.port)}
        done = subprocess.run([str(REPO / "slurm" / "local-sshd"), verb], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr

    def hold(self, command: str) -> Path:
        """From now on ``command`` stops at its point there; the file it touches then."""
        (self.flags / f"hold-{command}").touch()
        return self.flags / f"reached-{command}"

    def release(self) -> None:
        for flag in self.flags.iterdir():
            flag.unlink()

    def kill(self) -> None:
        """SIGKILL the sshd and every session process it serves: every connection drops."""
        pid = int((self.state / "sshd.pid").read_text())
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc: no procps needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _wrappers(bin_dir: Path, flags: Path) -> None:
    for command in HELD:
        real = shutil.which(command)
        assert real is not None, f"no {command}"
        if command == "sbatch":  # the job is submitted, then its answer is held back
            body = (f'out=$({real} "$@"); rc=$?\n'
                    f'if [ -e {flags}/hold-sbatch ]; then touch {flags}/reached-sbatch; '
                    f"sleep 8; fi\nprintf '%s\\n' \"$out\"; exit $rc\n")
        else:
            body = (f"if [ -e {flags}/hold-{command} ]; then touch {flags}/reached-{command}; "
                    f'sleep 8; fi\nexec {real} "$@"\n')
        path = bin_dir / command
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)


@pytest.fixture(scope="module")
def private_sshd() -> Iterator[PrivateSshd]:
    require(shutil.which("sshd") is not None or Path("/usr/sbin/sshd").exists(),
            "no sshd (slurm/local-sshd start installs openssh-server)")
    state = Path(tempfile.mkdtemp(prefix="ef-sshd-", dir="/tmp"))  # short: socket paths
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sshd = PrivateSshd(state, port)
    sshd.flags.mkdir()
    (state / "bin").mkdir()
    _wrappers(state / "bin", sshd.flags)
    (state / "sshd_config.d").mkdir()
    (state / "sshd_config.d" / "held.conf").write_text(
        f"SetEnv PATH={state / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
        "/sbin:/bin\n")
    sshd.script("start")
    try:
        yield sshd
    finally:
        with contextlib.suppress(AssertionError):
            sshd.script("stop")
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def on_private(private_sshd: PrivateSshd, need_sshd: Path,
               monkeypatch: pytest.MonkeyPatch) -> PrivateSshd:
    monkeypatch.setenv("EVENTFLOW_SSH_CONFIG", str(private_sshd.state / "ssh_config"))
    private_sshd.release()
    private_sshd.script("start")  # again, if the last test killed it
    return private_sshd


def _project(tmp_path: Path, workdir: Path) -> Path:
    project = tmp_path / "proj"
    Tracker.init(project).close()
    (project / "config" / "cluster.yaml").write_text(
        "executor: slurm\nmax_jobs: 100\nmax_submit: 100\ncluster: far\n"
        "defaults: {time: '00:10:00', mem: 200M}\n")
    with Tracker.open(project) as t:
        clusters.add(t, ev.ClusterAdded(name="far", host="127.0.0.1",
                                        ssh_config_host=SSH_ALIAS, workdir=str(workdir)))
    return project


def _cycle_until(project: Path, done: str, timeout: float = 120) -> None:
    def step() -> bool:
        with Tracker.open(project) as t:
            run_once(t)
        return count(project, done) >= 1

    wait_for(step, done, timeout=timeout, every=0.5)


def _cycle_in_background(project: Path) -> threading.Thread:
    errors: list[BaseException] = []

    def cycle() -> None:
        try:
            with Tracker.open(project) as t:
                run_once(t)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=cycle, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def _join(thread: threading.Thread) -> None:
    thread.join(timeout=120)
    assert not thread.is_alive(), "the cycle did not return after the sshd died"
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]


def _waits_with_one_line_reason(project: Path, mid: str, *words: str) -> str:
    with Tracker.open(project) as t:
        state = t.state(mid)
        (calc,) = state.calcs.values()
    assert state.state == "waiting", (state.state, state.reason)
    assert calc.state == "requested" and calc.job_id is None
    reason = state.reason
    assert reason and "\n" not in reason and "far" in reason, reason
    for word in words:
        assert word in reason, reason
    shown = eventflow(project, "status", env={"COLUMNS": "200"}).stdout
    assert "waiting" in shown
    return reason


def _jobs_named(project: Path, mid: str) -> list[str]:
    with Tracker.open(project) as t:
        name = job_name(t.project.project_id, f"{mid}/SP/1")
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i",
                          f"--name={name}"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def _working_in(folder: Path) -> list[int]:
    """The processes whose working folder is ``folder`` (from /proc)."""
    found = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        with contextlib.suppress(OSError):
            if os.readlink(cwd) == str(folder):
                found.append(int(cwd.parent.name))
    return found


def _each_once(project: Path, mid: str, remote: Path) -> None:
    """Every job exactly once, every result once, and the log verifies; asked only once no
    process is left in the job's remote folder (a submit script that outlived its sshd would
    otherwise call sbatch after this looked)."""
    with Tracker.open(project) as t:
        (calc,) = t.state(mid).calcs.values()
        assert t.state(mid).state == "completed", t.state(mid).reason
    wait_for(lambda: not _working_in(remote / calc.directory), "the remote folder left",
             timeout=60, every=0.2)
    assert count(project, "JobSubmitted") == 1
    assert count(project, "JobFinished") == 1 and count(project, "CalculationSucceeded") == 1
    assert _jobs_named(project, mid) == [calc.job_id]
    assert (project / calc.directory / "SP.out").read_text() == "done\n"
    assert eventflow(project, "verify").returncode == 0


@pytest.mark.parametrize("point", ["tar", "sbatch"])
def test_the_sshd_killed_mid_submission_never_doubles_nor_loses_the_job(
        tmp_path: Path, on_private: PrivateSshd, point: str) -> None:
    """``tar``: killed while the job folder is unpacked there (sbatch never ran);
    ``sbatch``: killed after sbatch submitted the job, before its answer came back."""
    remote = tmp_path / "remote"
    project = _project(tmp_path, remote)
    mid = unique(f"kill-{point}")
    add(project, mid, ["bash", "-c", "echo done > SP.out"])
    reached = on_private.hold(point)
    cycle = _cycle_in_background(project)
    wait_for(reached.exists, f"{point} reached on the cluster", timeout=60, every=0.05)
    on_private.kill()
    _join(cycle)
    assert count(project, "SubmissionFailed") == 1 and count(project, "JobSubmitted") == 0
    _waits_with_one_line_reason(project, mid, "submission failed")
    assert len(_jobs_named(project, mid)) == (1 if point == "sbatch" else 0)

    on_private.release()
    on_private.script("start")
    with _retry_due():
        _cycle_until(project, "CalculationSucceeded")
    _each_once(project, mid, remote)


def test_the_sshd_killed_during_copy_back_brings_the_result_once(
        tmp_path: Path, on_private: PrivateSshd) -> None:
    remote = tmp_path / "remote"
    project = _project(tmp_path, remote)
    mid = unique("kill-back")
    add(project, mid, ["bash", "-c", "echo done > SP.out"])
    with Tracker.open(project) as t:
        run_once(t)
        (calc,) = t.state(mid).calcs.values()
    assert calc.job_id
    wait_for((remote / calc.directory / "eventflow-done.json").exists, "the remote record",
             timeout=120, every=0.2)
    reached = on_private.hold("rsync")
    cycle = _cycle_in_background(project)
    wait_for(reached.exists, "the copy-back under way", timeout=60, every=0.05)
    on_private.kill()
    _join(cycle)
    assert count(project, "JobFinished") == 0  # nothing judged on half a copy
    with Tracker.open(project) as t:
        state = t.state(mid)
    assert state.calcs[calc.id].state in ("submitted", "running")  # not failed, not lost
    assert state.state == "running"
    assert not (project / calc.directory / "eventflow-done.json").exists()
    # Its job cannot move while the cluster is down: status says why, in one line.
    assert count(project, "ClusterUnreachable", '%"name":"far"%') == 1
    shown = json.loads(eventflow(project, "status", "--json").stdout)["materials"]
    (row,) = [m for m in shown if m["id"] == mid]
    assert row["cluster"] == "far" and row["state"] == "running"
    assert row["reason"].startswith("cluster far does not answer since ")
    assert "\n" not in row["reason"]
    shown = json.loads(eventflow(project, "show", mid, "--json").stdout)["material"]
    assert shown["reason"] == row["reason"]  # show says it as status does
    with Tracker.open(project) as t:
        run_once(t)  # still down: the outage is not recorded again
    assert count(project, "ClusterUnreachable") == 1

    on_private.release()
    on_private.script("start")
    _cycle_until(project, "CalculationSucceeded")
    _each_once(project, mid, remote)
    assert count(project, "ClusterAnswered") == 1  # the outage's end, once
    shown = json.loads(eventflow(project, "status", "--json").stdout)["materials"]
    assert [m["reason"] for m in shown if m["id"] == mid] == [""]
    assert json.loads(eventflow(project, "show", mid, "--json").stdout)["material"][
        "reason"] == ""


@contextlib.contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                             capture_output=True, text=True, timeout=60, check=False)
    require(mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=60)


def test_a_read_only_remote_work_folder_makes_the_material_wait_until_it_is_writable(
        tmp_path: Path, on_private: PrivateSshd) -> None:
    with _tmpfs(tmp_path / "remote", "ro,size=4m") as remote:
        project = _project(tmp_path, remote)
        mid = unique("ro")
        add(project, mid, ["bash", "-c", "echo done > SP.out"])
        with Tracker.open(project) as t:
            run_once(t)
        _waits_with_one_line_reason(project, mid, "Read-only file system")
        assert _jobs_named(project, mid) == []

        subprocess.run(["mount", "-o", "remount,rw", str(remote)], check=True, timeout=60)
        with _retry_due():
            _cycle_until(project, "CalculationSucceeded")
        _each_once(project, mid, remote)


def test_a_full_remote_disk_makes_the_material_wait_until_there_is_room(
        tmp_path: Path, on_private: PrivateSshd) -> None:
    with _tmpfs(tmp_path / "remote", "size=1m") as remote:
        project = _project(tmp_path, remote)
        filler = remote / "filler"
        with filler.open("wb") as out, contextlib.suppress(OSError):
            while True:  # to the last byte (ENOSPC ends it)
                out.write(b"\0" * 65536)
                out.flush()
        with contextlib.suppress(OSError), filler.open("ab") as out:
            while True:
                out.write(b"\0")
                out.flush()
        mid = unique("full")
        add(project, mid, ["bash", "-c", "echo done > SP.out"])
        with Tracker.open(project) as t:
            run_once(t)
        _waits_with_one_line_reason(project, mid, "No space left on device")
        assert _jobs_named(project, mid) == []

        filler.unlink()
        with _retry_due():
            _cycle_until(project, "CalculationSucceeded")
        _each_once(project, mid, remote)
