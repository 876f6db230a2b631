"""A project whose log is on the real PostgreSQL server: init --store, migrate-store, and the
reading commands (status, show, tail -f, replay, verify) working on it as on SQLite."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from eventflow.shell.api import Tracker
from eventflow.shell.store import EventStore, open_store
from tests.integration.helpers import CLI, SI, eventflow


def _project_with_materials(tmp_path: Path, n: int) -> Path:
    project = tmp_path / "proj"
    with Tracker.init(project) as t:
        for i in range(n):
            t.create_material(SI, material_id=f"Si{i}", workflow="single", code="noop",
                              params={"command": ["true"]})
        t.hold("Si0", "kept for the test")
    return project


def test_migrate_store_copies_every_row_and_the_commands_read_it(
        tmp_path: Path, need_postgres: str) -> None:
    project = _project_with_materials(tmp_path, 3)
    with EventStore(project / ".eventflow" / "events.db") as sqlite_log:
        before = list(sqlite_log.query("SELECT * FROM events ORDER BY seq"))
    out = eventflow(project, "migrate-store", "--to", need_postgres).stdout
    assert f"copied {len(before)} events" in out and "hash chain intact" in out
    with open_store(need_postgres) as pg:
        assert [tuple(r) for r in pg.query("SELECT * FROM events ORDER BY seq")] == before
    assert "store:" in (project / "config" / "project.yaml").read_text()

    again = eventflow(project, "migrate-store", "--to", need_postgres, check=False)
    assert again.returncode == 1 and "not empty" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    eventflow(project, "hold", "Si1", "--reason", "on the server")
    status = json.loads(eventflow(project, "status", "--json").stdout)
    states = {m["id"]: m["state"] for m in status["materials"]}
    assert states["Si0"] == states["Si1"] == "held"
    shown = json.loads(eventflow(project, "show", "Si1", "--json").stdout)
    assert shown["events"][-1]["type"] == "MaterialHeld"
    assert "ok:" in eventflow(project, "verify").stdout
    assert "rebuilt" in eventflow(project, "replay").stdout
    with open_store(need_postgres) as pg:
        assert pg.last_seq() == len(before) + 1  # the hold went to PostgreSQL
    with EventStore(project / ".eventflow" / "events.db") as sqlite_log:
        assert sqlite_log.last_seq() == len(before)  # and not to the old file


def test_init_with_a_store_url_keeps_the_log_on_the_server(
        tmp_path: Path, need_postgres: str) -> None:
    project = tmp_path / "proj"
    eventflow(tmp_path, "init", str(project), "--store", need_postgres)
    assert not (project / ".eventflow" / "events.db").exists()
    with Tracker.open(project) as t:  # another writer, as from another host
        t.create_material(SI, material_id="Si9", workflow="single", code="noop",
                          params={"command": ["true"]})
    lines = eventflow(project, "tail", "-n", "5", "--json").stdout.splitlines()
    assert json.loads(lines[0])["stream"] == "Si9"
    with open_store(need_postgres) as pg:
        assert pg.stream_version("Si9") >= 1


def test_a_password_in_the_store_url_is_refused(tmp_path: Path) -> None:
    proc = eventflow(tmp_path, "init", str(tmp_path / "p"), "--store",
                     "postgresql://me:secret@db.example/log", check=False)
    assert proc.returncode == 1 and ".pgpass" in proc.stderr
    assert "secret" not in (tmp_path / "p" / "config" / "project.yaml").read_text()


def test_eventflow_store_names_an_unreachable_server_in_one_line(tmp_path: Path,
                                                                need_psycopg: None) -> None:
    project = tmp_path / "proj"
    Tracker.init(project).close()
    proc = eventflow(project, "status", check=False, env={
        "EVENTFLOW_STORE": f"postgresql:///x?host={tmp_path}&port=5999"})
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "cannot reach the log's server" in proc.stderr


def test_tail_follow_prints_another_writers_append(tmp_path: Path, need_postgres: str) -> None:
    """tail -f on PostgreSQL wakes by LISTEN/NOTIFY on an append from another process."""
    project = tmp_path / "proj"
    eventflow(tmp_path, "init", str(project), "--store", need_postgres)
    tail = subprocess.Popen([*CLI, "--project", str(project), "tail", "-f", "-n", "0", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(60, tail.kill)  # a bound on waiting: a hang fails, not blocks
    guard.start()
    try:
        time.sleep(1.5)  # tail has read the head (an append before that is not "new")
        with Tracker.open(project) as t:
            t.create_material(SI, material_id="Si9", workflow="single", code="noop",
                              params={"command": ["true"]})
        event = json.loads(tail.stdout.readline())
        assert event["stream"] == "Si9" and event["type"] == "MaterialRegistered"
    finally:
        guard.cancel()
        tail.terminate()
        tail.wait(timeout=10)
