"""The command line as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.shell.api import Tracker
from eventflow.shell.cli import build_parser

CIF = Path(__file__).resolve().parents[1] / "data" / "structures" / "Si.cif"


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "eventflow.shell.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}): {proc.stderr}")
    return proc


@pytest.fixture
def project(tmp_path: Path) -> Path:
    run("init", str(tmp_path), cwd=tmp_path)
    return tmp_path


def test_every_command_has_help_text() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, action in sub.choices.items():
        helps = {c.dest: c.help for c in sub._choices_actions}
        assert helps.get(name), f"command {name} has no help"
        for arg in action._actions:
            if arg.dest != "help":
                assert arg.help, f"{name} {arg.dest} has no help"


def test_init_writes_editable_config(project: Path) -> None:
    assert (project / ".eventflow" / "events.db").is_file()
    assert (project / "config" / "workflows.yaml").is_file()
    assert "full_characterization" in (project / "config" / "workflows.yaml").read_text()


def test_outside_a_project_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run("status", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "eventflow init" in proc.stderr


def test_wrong_usage_exits_2(project: Path) -> None:
    assert run("status", "--no-such-flag", cwd=project, check=False).returncode == 2


def test_bad_material_id_is_refused(project: Path) -> None:
    for bad in ("../../etc", "-rf", "a/b", "$(reboot)", "a b"):
        proc = run("show", "--", bad, cwd=project, check=False)
        assert proc.returncode == 1, bad
        assert "invalid material id" in proc.stderr


def _populate(project: Path, n: int = 3) -> None:
    with Tracker.open(project) as t:
        for i in range(n):
            t.create_material(CIF, material_id=f"Si{i}", workflow="test")
        t.append("Si0", [ev.JobSubmitted("Si0/A/1", "77")])
        t.append("Si0", [ev.CalculationSucceeded("Si0/A/1", "manual")])


def test_status_show_json_and_filters(project: Path) -> None:
    _populate(project)
    status = json.loads(run("status", "--json", cwd=project).stdout)
    assert {m["id"] for m in status["materials"]} == {"Si0", "Si1", "Si2"}
    assert status["counts"] == {"running": 3}
    only = json.loads(run("status", "--state", "running", "--json", cwd=project).stdout)
    assert len(only["materials"]) == 3
    show = json.loads(run("show", "Si0", "--json", cwd=project).stdout)
    assert [c["id"] for c in show["calculations"]] == ["Si0/A/1", "Si0/B/1"]
    assert show["calculations"][0]["state"] == "completed"
    assert [e["type"] for e in show["events"]][:2] == ["MaterialRegistered", "SubmissionRequested"]


def test_replay_until_does_not_touch_live_projections(project: Path) -> None:
    _populate(project)
    live = project / ".eventflow" / "projections.db"
    before = live.read_bytes()
    past = json.loads(run("replay", "--until", "2", "--json", cwd=project).stdout)
    assert past["last_seq"] == 2
    assert [m["id"] for m in past["materials"]] == ["Si0"]
    out = project / "past.db"
    run("replay", "--until", "2", "--output", str(out), cwd=project)
    rows = sqlite3.connect(out).execute("SELECT id, state FROM materials").fetchall()
    assert rows == [("Si0", "running")]
    assert live.read_bytes() == before
    later = json.loads(
        run("replay", "--until", "2099-01-01T00:00:00", "--json", cwd=project).stdout
    )
    assert len(later["materials"]) == 3


def test_verify_names_a_stale_projection(project: Path) -> None:
    _populate(project)
    assert run("verify", cwd=project).returncode == 0
    db = sqlite3.connect(project / ".eventflow" / "projections.db")
    db.execute("UPDATE materials SET state = 'completed' WHERE id = 'Si1'")
    db.commit()
    db.close()
    proc = run("verify", cwd=project, check=False)
    assert proc.returncode == 1 and "materials" in proc.stderr
    run("replay", cwd=project)
    assert run("verify", cwd=project).returncode == 0


def test_an_event_from_a_newer_eventflow_gives_one_line_and_exit_1(project: Path) -> None:
    from eventflow.shell.store import EventStore
    from tests.integration.helpers import append_unknown_event

    _populate(project)
    run("replay", "--workers", "2", cwd=project)
    with EventStore(project / ".eventflow" / "events.db") as store:
        seq = append_unknown_event(store, "Si1")
    for command in (["status"], ["replay"], ["replay", "--workers", "2"]):
        proc = run(*command, cwd=project, check=False)
        assert proc.returncode == 1, command
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert f"seq {seq} (FutureThing of Si1)" in proc.stderr and "upgrade" in proc.stderr
    assert run("replay", "--workers", "0", cwd=project, check=False).returncode == 2


def test_deleted_projections_say_what_to_do(project: Path) -> None:
    _populate(project)
    (project / ".eventflow" / "projections.db").unlink()
    proc = run("status", cwd=project, check=False)
    assert proc.returncode == 1 and "eventflow replay" in proc.stderr
    run("replay", cwd=project)
    assert len(json.loads(run("status", "--json", cwd=project).stdout)["materials"]) == 3


def test_backup_and_restore_refuses_to_overwrite_a_newer_log(project: Path) -> None:
    _populate(project, 1)
    backup = project / "b.db"
    run("backup", str(backup), cwd=project)
    _populate_more = Tracker.open(project)
    _populate_more.hold("Si0")
    _populate_more.close()
    proc = run("restore", str(backup), cwd=project, check=False)
    assert proc.returncode == 1 and "--force" in proc.stderr
    run("restore", str(backup), "--force", cwd=project)
    status = json.loads(run("status", "--json", cwd=project).stdout)
    assert status["materials"][0]["state"] == "running"  # the hold is gone with the newer log


def test_tail_follow_prints_what_another_process_appends(project: Path) -> None:
    _populate(project, 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventflow.shell.cli", "tail", "-f", "-n", "0", "--json"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1.5)
        writer = subprocess.run(
            [sys.executable, "-c",
             "import eventflow; t = eventflow.open('.'); t.hold('Si0', 'from another process')"],
            cwd=project, capture_output=True, text=True, timeout=60)
        assert writer.returncode == 0, writer.stderr
        line = proc.stdout.readline()
        event = json.loads(line)
        assert event["type"] == "MaterialHeld"
        assert event["data"]["reason"] == "from another process"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def test_help_is_fast_enough_to_not_import_ase() -> None:
    """No timing assert: check that --help does not import the heavy modules at all."""
    code = ("import sys, eventflow.shell.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY:' + ','.join(m for m in ('ase', 'matplotlib', 'sqlite_utils', "
            "'watchdog') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ}, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:"


def test_doctor_names_a_broken_config_file_and_fails(project: Path) -> None:
    proc = run("doctor", cwd=project, check=False)
    assert "config workflows.yaml" in proc.stdout and "log filesystem" in proc.stdout
    (project / "config" / "workflows.yaml").write_text(
        "workflows:\n  loop:\n    steps:\n      A: {after_ok: [B]}\n      B: {after_ok: [A]}\n"
    )
    broken = run("doctor", cwd=project, check=False)
    assert broken.returncode == 1
    line = next(x for x in broken.stdout.splitlines() if "config workflows.yaml" in x)
    assert line.startswith("FAIL") and "cycle" in line


def test_parse_exits_0_for_a_failed_run_and_1_for_an_unreadable_file(tmp_path: Path) -> None:
    corpus = Path(__file__).resolve().parents[1] / "data" / "corpus"
    failed = corpus / "crystal" / "c17_nio_afm_scf_TOO_MANY_CYCLES.out"
    proc = run("parse", str(failed), "--json", cwd=tmp_path)  # no project needed
    result = json.loads(proc.stdout)
    assert (result["code"], result["status"], result["error_kind"]) == (
        "crystal", "error", "scf_not_converged")
    assert result["errors"][0]["line"] > 0
    binary = tmp_path / "junk.out"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    for bad in (binary, tmp_path / "missing.out", tmp_path):
        proc = run("parse", str(bad), cwd=tmp_path, check=False)
        assert proc.returncode == 1 and str(bad) in proc.stderr
        assert proc.stderr.count("\n") == 1
