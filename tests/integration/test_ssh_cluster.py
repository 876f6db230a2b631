"""A "remote" cluster through the real loopback sshd (slurm/local-sshd) in front of the real
local SLURM: jobs go up with rsync, run under sbatch over SSH, come back as events.

The remote work folder is a different folder from the project, so nothing is shared by
accident: the job runs in its remote copy and its results arrive only by rsync.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.core.clusters import ClusterError
from eventflow.shell import clusters
from eventflow.shell.api import Tracker
from eventflow.shell.remote import RemoteScheduler
from eventflow.shell.ssh import SshConnection, Unreachable
from eventflow.shell.watcher import run_once
from tests.conftest import SSH_ALIAS
from tests.integration.helpers import SI as SI_CIF
from tests.integration.helpers import add, count, eventflow, unique, wait_for

pytestmark = pytest.mark.usefixtures("need_slurm", "need_sshd")


def _cluster(name: str, workdir: Path) -> ev.ClusterAdded:
    return ev.ClusterAdded(name=name, host="127.0.0.1", ssh_config_host=SSH_ALIAS,
                           workdir=str(workdir))


def _project(tmp_path: Path) -> tuple[Path, Path]:
    project, remote = tmp_path / "proj", tmp_path / "remote side"  # a space on purpose
    Tracker.init(project).close()
    (project / "config" / "cluster.yaml").write_text(
        "executor: slurm\nmax_jobs: 100\nmax_submit: 100\ncluster: loop\n"
        "remote: {fetch_exclude: ['big.*']}\ndefaults: {time: '00:10:00', mem: 200M}\n")
    with Tracker.open(project) as t:
        clusters.add(t, _cluster("loop", remote))
    return project, remote


def _cycle_until(project: Path, done: str, timeout: float = 120, at_least: int = 1) -> None:
    """Run watcher cycles until the log holds ``at_least`` events of type ``done``."""
    def step() -> bool:
        with Tracker.open(project) as t:
            run_once(t)
        return count(project, done) >= at_least

    wait_for(step, f"{at_least} {done}", timeout=timeout, every=0.5)


def test_a_job_runs_on_the_ssh_cluster_and_its_result_comes_back(tmp_path: Path) -> None:
    project, remote = _project(tmp_path)
    mid = unique("ssh")
    add(project, mid, ["bash", "-c", "hostname > where.txt; head -c 4096 /dev/zero > big.scr; "
                                     "echo done > SP.out"])
    _cycle_until(project, "CalculationSucceeded")
    with Tracker.open(project) as t:
        state = t.state(mid)
        (calc,) = state.calcs.values()
        assert calc.scheduler == "loop" and calc.state == "completed"
        folder = project / calc.directory
    twin = remote / calc.directory
    assert (twin / "eventflow-done.json").is_file()  # written remotely by the job ...
    assert (folder / "eventflow-done.json").is_file()  # ... and copied back
    assert (folder / "where.txt").read_text() == (twin / "where.txt").read_text()
    assert (twin / "big.scr").is_file() and not (folder / "big.scr").exists()  # stays there
    script = (twin / "job.sh").read_text()
    assert f"EF_JOB_DIR='{twin}'" in script  # the job ran in the remote copy
    assert count(project, "JobSubmitted") == 1
    assert eventflow(project, "verify").returncode == 0


def _master_pid(ssh: SshConnection) -> int | None:
    out = subprocess.run(["ssh", *ssh.ssh_options(), "-O", "check", "--", ssh.destination],
                         capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    match = re.search(r"pid=(\d+)", out.stderr)
    return int(match.group(1)) if match else None


def test_a_connection_dropped_after_sbatch_never_submits_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch really runs over SSH; then the ControlMaster is killed (SIGKILL) before its
    answer is read. Only the answer's loss is staged (the real sbatch answers in
    milliseconds, too fast to cut in between): ssh's exit is replaced by Unreachable."""
    project, _ = _project(tmp_path)
    mid = unique("drop")
    add(project, mid, ["bash", "-c", "echo done > SP.out"])
    real_run = SshConnection.run
    submitted: list[str] = []

    def dropping_run(self: SshConnection, argv, timeout, stdin=None):  # type: ignore[no-untyped-def]
        result = real_run(self, argv, timeout, stdin)
        if "sbatch" in argv and not submitted:
            submitted.append(result.stdout.split()[-1])  # the batch's answer: "ok NAME ID"
            pid = _master_pid(self)
            assert pid is not None, "no ControlMaster: commands would not share one connection"
            os.kill(pid, signal.SIGKILL)
            raise Unreachable(f"{self.cluster.name}: mux_client_read_packet: Broken pipe")
        return result

    monkeypatch.setattr(SshConnection, "run", dropping_run)
    with Tracker.open(project) as t:
        report = run_once(t)
    assert report.submit_failures == 1 and submitted and submitted[0].isdigit()
    assert count(project, "JobSubmitted") == 0
    time.sleep(10.5)  # the first retry of a failed submission is due after 10 s
    _cycle_until(project, "CalculationSucceeded")
    with Tracker.open(project) as t:
        (calc,) = t.state(mid).calcs.values()
        assert calc.job_id == submitted[0]  # found by name, not submitted again
        name_rows = t.store.db.execute(
            "SELECT count(*) FROM events WHERE type = 'JobSubmitted'").fetchone()[0]
    assert name_rows == 1
    from eventflow.shell.jobs import job_name

    with Tracker.open(project) as t:
        jobs = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i",
                               f"--name={job_name(t.project.project_id, calc.id)}"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert jobs == [submitted[0]]


HOSTILE = ["a b", "it's", 'say "hi"', "x; touch pwned", "$(touch pwned)", "`touch pwned`",
           "-rf", "--help", "*", "~root", "new\\nline", "ends with \\"]


def test_hostile_words_reach_the_remote_command_as_literal_words(tmp_path: Path) -> None:
    ssh = SshConnection(_cluster("loop", tmp_path), tmp_path / "ctl")
    try:
        result = ssh.run(["sh", "-c", 'cd "$1" && shift && printf "%s\\n" "$@"', "sh",
                          str(tmp_path), *HOSTILE], 30)
    finally:
        ssh.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == HOSTILE
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_remote_paths_outside_the_work_folder_are_refused(tmp_path: Path) -> None:
    project, _ = _project(tmp_path)
    with Tracker.open(project) as t:
        remote = RemoteScheduler(clusters.defined(t.store)["loop"], project, tmp_path / "ctl")
    with pytest.raises(Exception, match="not inside the project"):
        remote.remote_dir(tmp_path / "elsewhere")
    with pytest.raises(ClusterError, match="leaves the work folder"):
        from eventflow.core.clusters import remote_path

        remote_path(str(tmp_path / "remote side"), "calcs/../../etc")


def test_a_cluster_with_active_jobs_cannot_be_removed(tmp_path: Path) -> None:
    project, _ = _project(tmp_path)
    mid = unique("busy")
    add(project, mid, ["bash", "-c", "while [ ! -e go ]; do sleep 0.1; done"])
    with Tracker.open(project) as t:
        run_once(t)
    proc = eventflow(project, "cluster", "remove", "loop", check=False)
    assert proc.returncode == 1 and "active job" in proc.stderr
    with Tracker.open(project) as t:
        (calc,) = t.state(mid).calcs.values()
    (tmp_path / "remote side" / calc.directory / "go").touch()
    _cycle_until(project, "CalculationSucceeded")
    assert eventflow(project, "cluster", "remove", "loop").returncode == 0
    out = eventflow(project, "cluster", "list", "--json").stdout
    assert '"clusters": []' in out


def test_cluster_check_talks_to_slurm_through_ssh(tmp_path: Path) -> None:
    project, _ = _project(tmp_path)
    proc = eventflow(project, "cluster", "check", "loop", "--json")
    assert '"ok": true' in proc.stdout and "slurm" in proc.stdout


def test_cancel_reaches_the_job_on_the_ssh_cluster(tmp_path: Path) -> None:
    project, _ = _project(tmp_path)
    mid = unique("cancel")
    add(project, mid, ["bash", "-c", "while true; do sleep 0.1; done"])
    with Tracker.open(project) as t:
        run_once(t)
        (calc,) = t.state(mid).calcs.values()
    assert calc.job_id and calc.scheduler == "loop"
    eventflow(project, "cancel", mid)

    def cancelled() -> bool:
        out = subprocess.run(["scontrol", "--oneliner", "show", "job", calc.job_id],
                             capture_output=True, text=True, check=False).stdout
        return "JobState=CANCELLED" in out

    wait_for(cancelled, f"job {calc.job_id} cancelled through ssh", timeout=60)


def test_an_unreachable_cluster_delays_submission_and_work_resumes_when_it_answers(
        tmp_path: Path) -> None:
    project, remote = _project(tmp_path)
    with Tracker.open(project) as t:
        clusters.remove(t, "loop")
        # Nothing listens on port 1 of the loopback address: ssh's connection is refused.
        clusters.add(t, ev.ClusterAdded(name="loop", host="127.0.0.1", port=1,
                                        workdir=str(remote)))
    mid, other, here = unique("down"), unique("down2"), unique("here")
    add(project, mid, ["bash", "-c", "echo done > SP.out"])
    add(project, other, ["bash", "-c", "echo done > SP.out"])
    with Tracker.open(project) as t:  # a third one on the local SLURM goes on meanwhile
        t.create_material(SI_CIF, material_id=here, workflow="single", code="noop",
                          params={"command": ["true"], "cluster": "local"})
    with Tracker.open(project) as t:
        report = run_once(t)
        (calc,) = t.state(mid).calcs.values()
        assert t.state(here).calcs[f"{here}/SP/1"].scheduler == "slurm"
    assert calc.state == "requested" and calc.job_id is None
    # One failed try marks the cluster down for the cycle: the second is not tried at all.
    assert report.submit_failures == 1 and report.submitted == 1
    failed = count(project, "SubmissionFailed", '%loop%')
    assert failed == 1  # the reason names the cluster
    # While its cluster is down the material waits, with the reason (not failed, not lost).
    with Tracker.open(project) as t:
        down = t.state(mid)
        assert t.state(here).state == "running"
    assert down.state == "waiting" and "submission failed" in down.reason
    assert "loop" in down.reason
    with Tracker.open(project) as t:  # the cluster answers again (its address corrected)
        clusters.remove(t, "loop")
        clusters.add(t, _cluster("loop", remote))
    time.sleep(10.5)  # the first retry of a failed submission is due after 10 s

    _cycle_until(project, "CalculationSucceeded", at_least=3)
    assert count(project, "CalculationSucceeded") == 3
    assert count(project, "JobSubmitted") == 3
    with Tracker.open(project) as t:  # every job once, and the material no longer waits
        jobs = [c.job_id for m in (mid, other, here) for c in t.state(m).calcs.values()]
        assert t.state(mid).state != "waiting" and t.state(mid).reason == ""
    assert len(jobs) == 3 and len(set(jobs)) == 3 and None not in jobs
    assert eventflow(project, "verify").returncode == 0
    # show names the cluster each job ran on, from its submission.
    import json
    for material, where in ((mid, "loop"), (here, "slurm")):
        shown = json.loads(eventflow(project, "show", material, "--json").stdout)
        assert [c["cluster"] for c in shown["calculations"]] == [where]
    assert "loop" in eventflow(project, "show", mid).stdout


def test_an_upload_that_does_not_match_its_checksums_is_not_submitted(tmp_path: Path) -> None:
    import io
    import tarfile

    from eventflow.shell.remote import _UNPACK_AND_RUN, MANIFEST, upload_bundle

    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "in.txt").write_text("the real input\n")
    good = upload_bundle(folder)
    # The same bundle with in.txt's bytes changed after the manifest was made.
    bad = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(good)) as members, \
            tarfile.open(fileobj=bad, mode="w") as tar:
        for member in members.getmembers():
            data = members.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith("in.txt"):
                data = b"the real inpuT\n"
            tar.addfile(member, io.BytesIO(data))
    ssh = SshConnection(_cluster("loop", tmp_path), tmp_path / "ctl")
    try:
        argv = ["sh", "-c", _UNPACK_AND_RUN, "t", str(tmp_path / "up ok"), "echo", "ran"]
        ok = ssh.run(argv, 30, stdin=good)
        argv[4] = str(tmp_path / "up bad")
        refused = ssh.run(argv, 30, stdin=bad.getvalue())
    finally:
        ssh.close()
    assert ok.returncode == 0 and ok.stdout == "ran\n"
    assert (tmp_path / "up ok" / MANIFEST).is_file()
    assert refused.returncode != 0 and "ran" not in refused.stdout
    assert "in.txt" in refused.stderr


def test_add_cluster_places_one_material_on_the_ssh_cluster(tmp_path: Path) -> None:
    project, remote = _project(tmp_path)
    (project / "config" / "cluster.yaml").write_text(  # local by default now
        "executor: slurm\nmax_jobs: 100\nmax_submit: 100\n"
        "defaults: {time: '00:10:00', mem: 200M}\n")
    from tests.integration.helpers import SI

    bad = eventflow(project, "add", str(SI), "--code", "noop", "--cluster", "nowhere",
                    check=False)
    assert bad.returncode == 1 and "no cluster 'nowhere'" in bad.stderr
    mid = unique("placed")
    eventflow(project, "add", str(SI), "--id", mid, "--code", "noop", "--workflow", "single",
              "--cluster", "loop", "--set", "command=[bash, -c, 'echo done > SP.out']")
    _cycle_until(project, "CalculationSucceeded")
    with Tracker.open(project) as t:
        (calc,) = t.state(mid).calcs.values()
    assert calc.scheduler == "loop" and (remote / calc.directory / "SP.out").is_file()


def test_a_connection_dropped_during_copy_back_brings_the_result_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ControlMaster is killed (SIGKILL) just before the first copy-back, which then
    fails as ssh would (staged: a real rsync after the kill would simply reconnect)."""
    project, _ = _project(tmp_path)
    mid = unique("back")
    add(project, mid, ["bash", "-c", "echo done > SP.out"])
    real_rsync = SshConnection.rsync
    dropped: list[bool] = []

    def dropping_rsync(self: SshConnection, sources, dest, timeout, extra=()):  # type: ignore[no-untyped-def]
        if not dropped:
            dropped.append(True)
            pid = _master_pid(self)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            raise Unreachable(f"{self.cluster.name}: rsync: connection unexpectedly closed")
        return real_rsync(self, sources, dest, timeout, extra)

    monkeypatch.setattr(SshConnection, "rsync", dropping_rsync)
    _cycle_until(project, "CalculationSucceeded")
    assert dropped == [True]
    assert count(project, "JobFinished") == 1 and count(project, "CalculationSucceeded") == 1
    assert count(project, "JobSubmitted") == 1
    assert eventflow(project, "verify").returncode == 0


def test_an_unwritable_remote_folder_fails_the_submission_with_the_reason(
        tmp_path: Path) -> None:
    project, _ = _project(tmp_path)
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder\n")
    with Tracker.open(project) as t:  # the work folder cannot be made: its parent is a file
        clusters.remove(t, "loop")
        clusters.add(t, _cluster("loop", blocker / "work"))
    mid = unique("ro")
    add(project, mid, ["true"])
    with Tracker.open(project) as t:
        report = run_once(t)
        (calc,) = t.state(mid).calcs.values()
    assert report.submit_failures == 1 and calc.job_id is None
    assert count(project, "SubmissionFailed", "%Not a directory%") == 1
    assert count(project, "JobSubmitted") == 0


@pytest.mark.usefixtures("need_pwx")
def test_qe_workflow_of_si_on_the_ssh_cluster_and_locally_at_once(tmp_path: Path) -> None:
    """OPT -> SP -> BAND || DOS with real pw.x: one Si through the SSH cluster, one locally."""
    project, remote = _project(tmp_path)
    (project / "config" / "cluster.yaml").write_text("executor: slurm\n")  # local by default
    fast = {"ecutwfc": 12, "kpoint_density": 1.5}
    with Tracker.open(project) as t:
        t.create_material(SI_CIF, material_id="Si-remote", workflow="full_characterization",
                          params={**fast, "cluster": "loop"})
        t.create_material(SI_CIF, material_id="Si-local", workflow="full_characterization",
                          params=fast)

    def settled() -> bool:
        with Tracker.open(project) as t:
            run_once(t)
            states = [m["state"] for m in t.materials()]
        return all(s in ("completed", "needs_attention", "cancelled") for s in states)

    wait_for(settled, "both Si workflows settled", timeout=400, every=1.0)
    with Tracker.open(project) as t:
        gaps = {}
        for mid in ("Si-remote", "Si-local"):
            state = t.state(mid)
            assert state.state == "completed", state.reason
            assert {c.step for c in state.calcs.values()} == {"OPT", "SP", "BAND", "DOS"}
            expected = "loop" if mid == "Si-remote" else "slurm"
            assert {c.scheduler for c in state.calcs.values()} == {expected}
            props = {(p["calculation_id"], p["name"]): p["value"]
                     for p in t.projections.properties(mid)}
            gaps[mid] = props[(f"{mid}/BAND/1", "band_gap_ev")]
        assert 0.2 < gaps["Si-remote"] < 1.2
        assert abs(gaps["Si-remote"] - gaps["Si-local"]) < 1e-6  # same physics either way
    assert (remote / "calcs" / "Si-remote" / "BAND" / "1" / "eventflow-done.json").is_file()
    assert not (remote / "calcs" / "Si-local").exists()
    assert count(project, "JobSubmitted") == 8
    assert eventflow(project, "verify").returncode == 0


def test_a_clusters_max_jobs_holds_back_further_submissions(tmp_path: Path) -> None:
    project, remote = _project(tmp_path)
    with Tracker.open(project) as t:
        clusters.remove(t, "loop")
        clusters.add(t, ev.ClusterAdded(name="loop", host="127.0.0.1",
                                        ssh_config_host=SSH_ALIAS, workdir=str(remote),
                                        max_jobs=1))
    first, second = unique("max1"), unique("max2")
    for mid in (first, second):
        add(project, mid, ["bash", "-c", "while [ ! -e go ]; do sleep 0.1; done"])
    with Tracker.open(project) as t:
        report = run_once(t)
        running = [m for m in (first, second) if t.state(m).calcs[f"{m}/SP/1"].job_id]
    assert report.submitted == 1 and len(running) == 1
    for mid in (first, second):
        folder = remote / "calcs" / mid / "SP" / "1"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "go").touch()  # the later job's folder gets it on upload (not overwritten)

    _cycle_until(project, "CalculationSucceeded", at_least=2)
    assert count(project, "CalculationSucceeded") == 2
    assert count(project, "JobSubmitted") == 2


def test_a_failing_remote_job_is_judged_with_the_clusters_verdict(tmp_path: Path) -> None:
    project, _ = _project(tmp_path)
    mid = unique("fails")
    add(project, mid, ["bash", "-c", "echo partial > SP.out; exit 3"])
    _cycle_until(project, "CalculationFailed")
    with Tracker.open(project) as t:
        (calc,) = [c for c in t.state(mid).calcs.values() if c.attempt == 1]
        finished = [r.event for r in t.store.read(stream=mid, types=["JobFinished"])]
    assert calc.state == "failed" and calc.scheduler == "loop"
    assert [f.exit_code for f in finished][:1] == [3]
    assert count(project, "CalculationFailed", f"%{mid}/SP/1%") == 1
    assert (project / calc.directory / "SP.out").read_text() == "partial\n"


def test_a_cycles_jobs_go_up_in_one_round_trip_and_a_bad_upload_fails_only_its_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three requests of one cycle: one ssh call unpacks all three folders and runs sbatch for
    each; the folder whose manifest does not match (one checksum altered on its way) is not
    submitted, and only its job's submission fails, with the reason."""
    from eventflow.shell import remote as remote_module

    project, remote = _project(tmp_path)
    mids = [unique("batch") for _ in range(3)]
    for mid in mids:
        add(project, mid, ["bash", "-c", "echo done > SP.out"])
    real_sha = remote_module.sha256_of
    monkeypatch.setattr(remote_module, "sha256_of", lambda p: (
        "0" * 64 if mids[1] in str(p) and p.name == "job.sh" else real_sha(p)))
    real_run = SshConnection.run
    calls: list[list[str]] = []

    def counting_run(self: SshConnection, argv, timeout, stdin=None):  # type: ignore[no-untyped-def]
        calls.append(list(argv))
        return real_run(self, argv, timeout, stdin)

    monkeypatch.setattr(SshConnection, "run", counting_run)
    with Tracker.open(project) as t:
        report = run_once(t)
        calcs = {mid: next(iter(t.state(mid).calcs.values())) for mid in mids}
    assert len([argv for argv in calls if "sbatch" in argv]) == 1
    assert report.submitted == 2 and report.submit_failures == 1
    assert calcs[mids[1]].job_id is None
    assert count(project, "SubmissionFailed", "%does not match its checksums%") == 1
    ids = [calcs[m].job_id for m in (mids[0], mids[2])]
    assert None not in ids and len(set(ids)) == 2
    assert (remote / calcs[mids[0]].directory / "job.sh").is_file()


def test_the_daemon_sees_a_remote_completion_at_its_remote_poll(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The remote record makes no local file event, and the daemon reconciles only once an
    hour here: only the remote poll (every second) can bring the result back."""
    from tests.integration.helpers import CLI

    project, _ = _project(tmp_path)
    mid = unique("polled")
    add(project, mid, ["bash", "-c", "sleep 3; echo done > SP.out"])
    out = (tmp_path / "daemon.out").open("w")
    daemon = subprocess.Popen([*CLI, "--project", str(project), "watch", "--quiet",
                               "--reconcile", "3600", "--remote-poll", "1"],
                              stdout=out, stderr=subprocess.STDOUT)
    request.addfinalizer(lambda: (daemon.poll() is None and daemon.kill(), daemon.wait(30)))
    wait_for(lambda: count(project, "CalculationSucceeded") == 1, "the remote job's result",
             timeout=120, every=0.5)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0
    assert count(project, "JobSubmitted") == 1 and count(project, "JobFinished") == 1
    bad = eventflow(project, "watch", "--remote-poll", "0", check=False)
    assert bad.returncode != 0 and "--remote-poll" in bad.stderr
