"""Cluster definitions, remote paths and the ssh command line: what may reach a remote shell."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.core.clusters import (
    ClusterError,
    check_added,
    fold_clusters,
    remote_path,
)
from eventflow.core.state import CalcState, MaterialState
from eventflow.shell.clusters import placement
from eventflow.shell.ssh import SshConnection

HOSTILE = ["-oProxyCommand=touch pwned", "a b", "it's", "x;y", "$(id)", "`id`", "", "\n"]


def _cluster(**kw: object) -> ev.ClusterAdded:
    base: dict[str, object] = {"name": "hpc", "host": "login.example.org", "workdir": "/scratch/u"}
    base.update(kw)
    return ev.ClusterAdded(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_hosts_users_and_aliases_are_refused(bad: str) -> None:
    for field in ("host", "user", "ssh_config_host"):
        with pytest.raises(ClusterError):
            check_added(_cluster(**{field: bad}))


@pytest.mark.parametrize("bad", ["relative/path", "/", "/a\nb", "", "/x\x00"])
def test_work_folders_must_be_absolute_and_clean(bad: str) -> None:
    with pytest.raises(ClusterError):
        check_added(_cluster(workdir=bad))


@pytest.mark.parametrize("name", ["local", "slurm", "-x", "a b", "1abc", "x" * 41])
def test_cluster_names_are_plain_words(name: str) -> None:
    with pytest.raises(ClusterError):
        check_added(_cluster(name=name))


@pytest.mark.parametrize("relative", ["../x", "calcs/../../x", "/etc/passwd", "a\nb", " "])
def test_remote_paths_stay_inside_the_work_folder(relative: str) -> None:
    with pytest.raises(ClusterError):
        remote_path("/scratch/u", relative)


def test_remote_paths_join_below_the_work_folder() -> None:
    assert remote_path("/scratch/u/", "calcs/Si/SP/1") == "/scratch/u/calcs/Si/SP/1"
    assert remote_path("/scratch/u", "calcs/a b;$(x)/SP/1") == "/scratch/u/calcs/a b;$(x)/SP/1"


def test_fold_keeps_the_last_definition_and_forgets_removed_ones() -> None:
    a1, a2, b = _cluster(host="one"), _cluster(host="two"), _cluster(name="other")
    assert fold_clusters([a1, b, a2]) == {"hpc": a2, "other": b}
    assert fold_clusters([a1, b, ev.ClusterRemoved("hpc")]) == {"other": b}


def test_the_remote_command_is_one_word_per_argument(tmp_path: Path) -> None:
    ssh = SshConnection(_cluster(user="alice", port=2200), tmp_path)
    argv = ["printf", "%s\\n", *HOSTILE]
    command = ssh.command(argv)
    assert command[0] == "ssh" and command[-2] == "login.example.org"
    assert command[-3] == "--"  # nothing after it can be read as an ssh option
    assert shlex.split(command[-1]) == argv  # what the remote shell will see
    assert command[command.index("-l"):command.index("-l") + 2] == ["-l", "alice"]
    assert "ControlMaster=auto" in command and "BatchMode=yes" in command


def test_an_ssh_config_alias_takes_the_place_of_host_user_and_port(tmp_path: Path) -> None:
    ssh = SshConnection(_cluster(user="alice", port=2200, ssh_config_host="hpc-login"), tmp_path)
    command = ssh.command(["true"])
    assert command[-2] == "hpc-login" and "-l" not in command and "-p" not in command


def _calc(step: str) -> CalcState:
    return CalcState(ev.SubmissionRequested(f"Si/{step}/1", step, 1), "2026-01-01T00:00:00Z")


def test_placement_by_step_then_workflow_then_default() -> None:
    state = MaterialState("Si")
    state.workflow = "full_characterization"
    calc = _calc("BAND")
    assert placement({}, state, calc) == "local"
    assert placement({"cluster": "hpc"}, state, calc) == "hpc"
    config = {"cluster": {"default": "a", "workflows": {"full_characterization": "b"},
                          "steps": {"BAND": "c"}}}
    assert placement(config, state, calc) == "c"
    assert placement(config, state, _calc("SP")) == "b"
    with pytest.raises(ClusterError):
        placement({"cluster": ["x"]}, state, calc)


def test_a_cluster_parameter_wins_over_cluster_yaml() -> None:
    state = MaterialState("Si")
    config = {"cluster": {"default": "a", "steps": {"BAND": "c"}}}
    assert placement(config, state, _calc("BAND"), {"cluster": "mine"}) == "mine"
    assert placement(config, state, _calc("BAND"), {"other": 1}) == "c"
