"""What-if replay, retry and recovery statistics on a real project log.

The histories are recorded through the Tracker (the policy reacting as in production);
the runner's part (submissions, outcomes, the tick that ends a wait) is played by the
test with the events the runner and watcher append.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.core.recovery import due, units
from eventflow.shell import cli
from eventflow.shell.api import Tracker
from eventflow.shell.project import Project
from eventflow.shell.store import utc_now
from eventflow.shell.whatif import compare_log, load_other_policy, run_what_if

CIF = Path(__file__).resolve().parents[1] / "data" / "structures" / "Si.cif"
RUNNER = {"actor": "runner"}


def _run(t: Tracker, mid: str, outcome: str) -> None:
    """The runner submits the requested attempt; the watcher records how it ended."""
    calc = next(c for c in t.state(mid).calcs.values() if c.state == "requested")
    t.append(mid, [ev.JobSubmitted(calc.id, "42")], meta=RUNNER)
    t.append(mid, [ev.JobStarted(calc.id, "42", host="node3")], meta=RUNNER)
    if outcome == "ok":
        t.append(mid, [ev.CalculationSucceeded(calc.id, "test/1")], meta=RUNNER)
    else:
        t.append(mid, [ev.CalculationFailed(calc.id, outcome, [{"line": 1, "text": outcome}],
                                            "test/1")], meta=RUNNER)


def _tick(t: Tracker, mid: str) -> None:
    """The runner's tick once the wait is over: what ``recovery.due`` owes the material."""
    state = t.state(mid)
    assert state.state == "waiting"
    while not units.not_after(state.wait_until, utc_now()):
        time.sleep(0.05)
    for command in due(state, utc_now(), t.policy):
        t.execute(command)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("whatif")
    Tracker.init(root).close()
    config = root / "config" / "recovery.yaml"
    config.write_text(config.read_text().replace("delay: 2m", "delay: 1s"))  # a short wait
    with Tracker.open(root) as t:
        for mid, outcomes in {
            "scf": ["scf_not_converged", "scf_not_converged", "ok"],
            "oom": ["out_of_memory", "ok"],
            "fine": ["ok"],
            "node": ["node_failure", "ok"],
            "broken": ["input_error"],
        }.items():
            t.create_material(CIF, material_id=mid, workflow="single")
            for outcome in outcomes:
                _run(t, mid, outcome)
                if t.state(mid).state == "waiting":
                    _tick(t, mid)
        assert t.state("scf").state == "completed" and t.state("node").state == "completed"
        assert t.state("broken").state == "needs_attention"
    return root


def _other(project: Path, old: str, new: str) -> Path:
    text = (project / "config" / "recovery.yaml").read_text()
    assert old in text
    path = project / f"other-{hashlib.sha1(new.encode()).hexdigest()[:8]}.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def _compare(project: Path, policy: Path) -> dict[str, object]:
    p = Project.at(project)
    with Tracker.open(project) as t:
        report = compare_log(t.store, load_other_policy(p, policy))
    return {d.material: d for d in report.divergences}


def test_the_same_policy_reports_no_difference(project: Path) -> None:
    assert _compare(project, project / "config" / "recovery.yaml") == {}


def test_a_changed_scf_rule_affects_exactly_the_scf_material(project: Path) -> None:
    other = _other(project, "set: {electrons.mixing_beta: 0.3}",
                   "set: {electrons.mixing_beta: 0.2}")
    found = _compare(project, other)
    assert set(found) == {"scf"}
    d = found["scf"]
    assert d.trigger == "CalculationFailed scf/SP/1 scf_not_converged"
    would = [c for c in d.would if c["type"] == "RequestStep"]
    assert would[0]["changes"]["electrons.mixing_beta"] == 0.2
    recorded = [e for e in d.recorded if e["type"] == "SubmissionRequested"]
    assert recorded[0]["changes"]["electrons.mixing_beta"] == 0.3


def test_a_changed_memory_factor_affects_exactly_the_oom_material(project: Path) -> None:
    found = _compare(project, _other(project, "resources: {mem: 1.5}", "resources: {mem: 2}"))
    assert set(found) == {"oom"}
    (request,) = [c for c in found["oom"].would if c["type"] == "RequestStep"]
    assert request["resources"] == {"mem": "4G"}  # the default 2G, doubled


def test_a_changed_delay_shows_at_the_wait(project: Path) -> None:
    found = _compare(project, _other(project, "delay: 1s", "delay: 10m"))
    assert set(found) == {"node"}
    assert [c["type"] for c in found["node"].would] == ["RecordRecovery", "WaitUntil"]


def test_escalating_instead_of_recovering_affects_only_those(project: Path) -> None:
    other = _other(project, "max_recoveries_per_material: 12", "max_recoveries_per_material: 0")
    assert set(_compare(project, other)) == {"scf", "oom", "node"}


def test_the_cli_writes_nothing_and_prints_json(project: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    log = Project.at(project).log_path
    before = hashlib.sha256(log.read_bytes()).hexdigest()
    other = _other(project, "resources: {mem: 1.5}", "resources: {mem: 1.25}")
    args = argparse.Namespace(policy=str(other), json=True)
    assert run_what_if(Project.at(project), args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["material"] for d in out["divergences"]] == ["oom"]
    assert out["materials"] == 5 and out["events"] > 0
    assert hashlib.sha256(log.read_bytes()).hexdigest() == before
    args = argparse.Namespace(policy=str(other), json=False)
    run_what_if(Project.at(project), args)
    text = capsys.readouterr().out
    assert "1 material(s) would differ" in text and "oom: first divergence" in text


def test_what_if_needs_a_policy_file(project: Path) -> None:
    from eventflow.errors import EventflowError

    with pytest.raises(EventflowError, match="--what-if needs --policy"):
        run_what_if(Project.at(project), argparse.Namespace(policy=None, json=False))
    with pytest.raises(EventflowError, match="cannot read"):
        run_what_if(Project.at(project), argparse.Namespace(policy="/nonexistent.yaml",
                                                            json=False))


# --- retry and stats through the CLI ------------------------------------------------------------


@pytest.fixture
def main() -> object:
    """The CLI's main, with ``retry`` and ``stats`` (registered by cli_recovery.register)."""
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert {"retry", "stats"} <= set(sub.choices)
    return cli.main


def test_stats_recovery_counts_tries_and_successes(project: Path, main: object,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["--project", str(project), "stats", "recovery", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {(s["error_kind"], s["stage"]): s for s in out["stages"]}
    # scf: stage 1 was followed by another failure, stage 2 by a success
    assert rows[("scf_not_converged", 1)]["tried"] == 1
    assert rows[("scf_not_converged", 1)]["failed"] == 1
    assert rows[("scf_not_converged", 2)]["succeeded"] == 1
    assert rows[("scf_not_converged", 2)]["correction"] == "local-TF mixing"
    assert rows[("out_of_memory", 1)]["succeeded"] == 1
    assert rows[("node_failure", 1)]["succeeded"] == 1
    kinds = {k["error_kind"]: k for k in out["kinds"]}
    assert kinds["input_error"]["escalated"] == 1
    assert main(["--project", str(project), "stats", "recovery"]) == 0
    assert "local-TF mixing" in capsys.readouterr().out


def test_retry_appends_the_next_attempt_with_changes(tmp_path: Path, main: object,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with Tracker.init(tmp_path) as t:
        t.create_material(CIF, material_id="x", workflow="single")
        _run(t, "x", "scf_not_converged")
        _run(t, "x", "input_error")
        assert t.state("x").state == "needs_attention"
    assert main(["--project", str(tmp_path), "retry", "x", "--set",
                 "system.ecutwfc=45", "--set", "electrons.mixing_mode=plain"]) == 0
    assert "requested x/SP/3" in capsys.readouterr().out
    with Tracker.open(tmp_path) as t:
        last = list(t.store.read(stream="x"))[-1]
        assert last.meta["actor"] == "user"
        e = last.event
        assert isinstance(e, ev.SubmissionRequested) and e.attempt == 3
        # the earlier correction stays, the restart marker of attempt 2 does not
        assert e.changes == {"electrons.mixing_beta": 0.3, "system.ecutwfc": 45,
                             "electrons.mixing_mode": "plain"}
        assert e.reason == "user retry" and t.state("x").state == "running"


def test_retry_errors_are_one_line(tmp_path: Path, main: object,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with Tracker.init(tmp_path) as t:
        t.create_material(CIF, material_id="y", workflow="single")
    cases = {
        ("retry", "y"): "no step has failed",
        ("retry", "y", "--step", "SP"): "is still requested",
        ("retry", "y", "--step", "SP", "--set", "mixing_beta=0.1"): "unknown input change",
        ("retry", "nobody"): "no material 'nobody'",
    }
    for argv, words in cases.items():
        assert main(["--project", str(tmp_path), *argv]) == 1, argv
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, (argv, err)


def test_the_commands_work_as_a_user_runs_them(project: Path) -> None:
    """Through a real process (``python -m eventflow.shell.cli``), not the in-process main."""
    import subprocess
    import sys

    other = _other(project, "resources: {mem: 1.5}", "resources: {mem: 3}")
    for argv, check in (
        (["stats", "recovery", "--json"], lambda out: "stages" in json.loads(out)),
        (["replay", "--what-if", "--policy", str(other), "--json"],
         lambda out: [d["material"] for d in json.loads(out)["divergences"]] == ["oom"]),
    ):
        proc = subprocess.run([sys.executable, "-m", "eventflow.shell.cli", *argv], cwd=project,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        assert check(proc.stdout), proc.stdout
