"""The projections of a PostgreSQL log live beside it, in the same database: the reading
commands give the same answers as on SQLite for the same history, and psql users see the
same tables."""

from __future__ import annotations

import json
import random
from pathlib import Path

import psycopg

from eventflow.core import events as ev
from eventflow.shell.api import Tracker
from eventflow.shell.store import EventStore, NewEvent
from tests.integration.helpers import eventflow
from tests.integration.test_replay import _items


def _odd_numbers(mid: str) -> list[ev.Event]:
    """Property values whose types must survive: an int, an integral float, a tiny float."""
    cid = f"{mid}/scf/1"
    return [ev.MaterialRegistered(mid, "Si2", "t"),
            ev.SubmissionRequested(cid, "scf", 1, reason="workflow"),
            ev.JobSubmitted(cid, "77"), ev.JobStarted(cid, "77", host="n1"),
            ev.JobFinished(cid, "77", exit_code=0), ev.CalculationSucceeded(cid, parser="qe"),
            ev.PropertiesExtracted(cid, {"n_iterations": {"value": 12, "unit": ""},
                                         "energy": {"value": -3.0, "unit": "Ry"},
                                         "force": {"value": 1e-05, "unit": "Ry/bohr"},
                                         "big": {"value": 1.5e300, "unit": ""}})]


def _answers(project: Path, shown: list[str], until: int) -> dict[str, object]:
    """What the reading commands print (as JSON), for one store."""
    out: dict[str, object] = {
        "status": json.loads(eventflow(project, "status", "--json").stdout),
        "failed": json.loads(eventflow(project, "status", "--json", "--state",
                                       "needs_attention").stdout),
        "until": json.loads(eventflow(project, "replay", "--until", str(until), "--json").stdout),
        "verify": eventflow(project, "verify").stdout,
    }
    for mid in shown:
        out[mid] = json.loads(eventflow(project, "show", mid, "--json").stdout)
    out["replay"] = json.loads(eventflow(project, "replay", "--json").stdout)
    out["status after replay"] = json.loads(eventflow(project, "status", "--json").stdout)
    return out


def test_status_show_replay_and_verify_answer_the_same_on_sqlite_and_postgresql(
        tmp_path: Path, need_postgres: str) -> None:
    project = tmp_path / "proj"
    Tracker.init(project).close()
    items = _items() + [NewEvent("x1", e) for e in _odd_numbers("x1")]
    with EventStore(project / ".eventflow" / "events.db") as log:
        log.append_many(items[:2000])  # the projections follow the log in two steps
    eventflow(project, "status")
    with EventStore(project / ".eventflow" / "events.db") as log:
        log.append_many(items[2000:])
    shown = ["x1", "m0003", "m0120", "m0299"]
    until = len(items) // 3
    on_sqlite = _answers(project, shown, until)
    eventflow(project, "migrate-store", "--to", need_postgres)
    on_postgres = _answers(project, shown, until)
    assert on_postgres == on_sqlite
    assert on_sqlite["status"]["last_seq"] == len(items)
    props = {p["name"]: p["value"] for p in on_postgres["x1"]["properties"]}
    assert props == {"n_iterations": 12, "energy": -3.0, "force": 1e-05, "big": 1.5e300}
    assert [type(props[n]) for n in ("n_iterations", "energy")] == [int, float]

    # The tables are the server's, beside the log: any client reads them, not the file.
    (project / ".eventflow" / "projections.db").unlink()
    with psycopg.connect(need_postgres) as db:
        rows = db.execute("SELECT id, state FROM materials ORDER BY id").fetchall()
        at = db.execute("SELECT last_seq FROM projection_state").fetchone()[0]
        tables = {r[0] for r in db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema()")}
    assert rows == [(m["id"], m["state"]) for m in
                    sorted(on_postgres["status"]["materials"], key=lambda m: m["id"])]
    assert at == len(items)
    assert tables == {"events", "eventflow_schema", "materials", "calculations", "properties",
                      "errors", "projection_state"}


def test_postgres_projections_catch_up_with_appends_from_another_host(
        tmp_path: Path, need_postgres: str) -> None:
    project = tmp_path / "proj"
    eventflow(tmp_path, "init", str(project), "--store", need_postgres)
    rng = random.Random(3)
    with Tracker.open(project) as t:  # another writer, as on another host
        t.store.append_many([NewEvent("x1", e) for e in _odd_numbers("x1")])
    status = json.loads(eventflow(project, "status", "--json").stdout)
    assert status["counts"] == {"ready": 1} and status["last_seq"] == 7
    with Tracker.open(project) as t:
        t.hold("x1", f"reason {rng.random()}")
    shown = json.loads(eventflow(project, "show", "x1", "--json").stdout)
    assert shown["material"]["state"] == "held" and shown["material"]["last_seq"] == 8
    assert not (project / ".eventflow" / "projections.db").exists()
    assert "ok:" in eventflow(project, "verify").stdout
