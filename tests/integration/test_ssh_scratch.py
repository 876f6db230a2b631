"""The scratch clean-up of a succeeded remote job happens on the cluster: the configured
globs are removed from the job's remote folder (recorded as ScratchCleanupDecided first), and
a clean-up the cluster did not answer is sent again at the next cycle (idempotent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventflow.shell.api import Tracker
from eventflow.shell.ssh import SshConnection, Unreachable
from eventflow.shell.watcher import run_once
from tests.integration.helpers import add, count, eventflow, unique
from tests.integration.test_ssh_cluster import _cycle_until, _project

pytestmark = pytest.mark.usefixtures("need_slurm", "need_sshd")


def test_remote_scratch_is_removed_on_the_cluster_once_its_step_succeeded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project, remote = _project(tmp_path)
    config = project / "config" / "cluster.yaml"
    config.write_text(config.read_text() + "cleanup: {noop: ['big.*', 'tmp dir/*.wfc']}\n")
    mid = unique("scratch")
    add(project, mid, ["bash", "-c", "head -c 65536 /dev/zero > big.scr; mkdir 'tmp dir'; "
                                     "echo 1 > 'tmp dir/a.wfc'; echo 1 > 'tmp dir/keep.dat'; "
                                     "ln -s where.txt big.link; hostname > where.txt; "
                                     "echo done > SP.out"])
    real_run = SshConnection.run
    cut: list[list[str]] = []

    def first_cleanup_unanswered(self, argv, timeout, stdin=None):  # type: ignore[no-untyped-def]
        if "eventflow-clean" in argv and not cut:
            cut.append(list(argv))  # staged: the cluster does not answer this one call
            raise Unreachable(f"{self.cluster.name}: Connection closed by remote host")
        return real_run(self, argv, timeout, stdin)

    monkeypatch.setattr(SshConnection, "run", first_cleanup_unanswered)
    _cycle_until(project, "CalculationSucceeded")
    with Tracker.open(project) as t:
        (calc,) = t.state(mid).calcs.values()
    twin = remote / calc.directory
    assert count(project, "ScratchCleanupDecided") == 1  # the intent, recorded first
    assert (twin / "big.scr").is_file()  # removed at the start of the next cycle ...
    with Tracker.open(project) as t:
        run_once(t)
    assert len(cut) == 1 and (twin / "big.scr").is_file()  # ... which the cluster missed
    assert count(project, "RemoteScratchRemoved") == 0
    with Tracker.open(project) as t:
        run_once(t)  # a later cycle (here: another process) sends it again
    assert not (twin / "big.scr").exists() and not (twin / "tmp dir" / "a.wfc").exists()
    assert (twin / "tmp dir" / "keep.dat").is_file() and (twin / "where.txt").is_file()
    assert (twin / "big.link").is_symlink()  # a link is never followed nor removed
    assert (twin / "eventflow-done.json").is_file()
    assert count(project, "RemoteScratchRemoved", '%"removed":2%') == 1
    sent: list[list[str]] = []
    monkeypatch.setattr(SshConnection, "run", lambda self, argv, *a, **k: (
        sent.append(argv), real_run(self, argv, *a, **k))[1])
    with Tracker.open(project) as t:
        run_once(t)  # done: nothing more is sent, nothing recorded twice
    assert not [argv for argv in sent if "eventflow-clean" in argv]
    assert count(project, "ScratchCleanupDecided") == 1
    assert count(project, "RemoteScratchRemoved") == 1
    assert eventflow(project, "verify").returncode == 0

def test_a_cleanup_glob_that_leaves_the_job_folder_is_refused() -> None:
    from eventflow.errors import EventflowError
    from eventflow.shell.remote_scratch import check_glob

    assert check_glob("out/*.wfc*") == "out/*.wfc*"
    for bad in ("../x", "/etc/*", "a/../../b", "", "a//b"):
        with pytest.raises(EventflowError, match="inside the job folder"):
            check_glob(bad)
