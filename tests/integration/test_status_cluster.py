"""`eventflow status` names the cluster of each material's latest job, from its JobSubmitted:
the ``cluster`` column of the materials projection, the same in projections.db and in the
tables beside a PostgreSQL log (and added to projections made before it existed)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from eventflow.core import events as ev
from eventflow.shell.api import Tracker
from tests.integration.helpers import SI, eventflow

CLUSTER_OF = {"far": "hpc", "near": "slurm", "moved": "hpc2", "unsent": None}


def _project(tmp_path: Path, log_location: str) -> Path:
    """Four materials: one job on cluster hpc, one on the local SLURM, one whose second
    attempt went to another cluster than its first, and one never submitted."""
    project = tmp_path / "proj"
    store = None if log_location.endswith(".db") else log_location
    Tracker.init(project, store=store).close()
    with Tracker.open(project) as t:
        for mid in CLUSTER_OF:
            t.create_material(SI, material_id=mid, workflow="single", code="noop")
        submissions = {"far": [("hpc", 1)], "near": [("slurm", 1)],
                       "moved": [("hpc", 1), ("hpc2", 2)]}
        for mid, jobs in submissions.items():
            for cluster, attempt in jobs:
                cid = f"{mid}/SP/{attempt}"
                events: list[ev.Event] = []
                if attempt > 1:
                    events.append(ev.SubmissionRequested(cid, "SP", attempt, reason="api"))
                events.append(ev.JobSubmitted(cid, str(100 + attempt), cluster))
                if attempt == 1 and len(jobs) > 1:
                    events.append(ev.JobLost(cid, "101", "NODE_FAIL", "node_failure", []))
                t.append(mid, events, key=f"test:{cid}")
    return project


def _check(project: Path) -> None:
    shown = json.loads(eventflow(project, "status", "--json").stdout)["materials"]
    assert {m["id"]: m["cluster"] for m in shown} == CLUSTER_OF
    table = eventflow(project, "status", env={"COLUMNS": "160"}).stdout
    assert "cluster" in table
    for mid, cluster in CLUSTER_OF.items():
        line = next(line for line in table.splitlines() if f" {mid} " in line)
        assert cluster is None or f" {cluster} " in line, line


def test_status_shows_each_materials_cluster_on_either_store(tmp_path: Path,
                                                             log_location: str) -> None:
    project = _project(tmp_path, log_location)
    _check(project)
    eventflow(project, "replay")  # a full rebuild gives the same column
    _check(project)
    last = json.loads(eventflow(project, "status", "--json").stdout)["last_seq"]
    past = eventflow(project, "replay", "--until", str(last), env={"COLUMNS": "160"}).stdout
    assert " hpc2 " in past  # the status of the past names the clusters too
    assert eventflow(project, "verify").returncode == 0
    with Tracker.open(project) as t:
        columns = [d[0] for d in t.projections.db.execute(
            "SELECT * FROM materials LIMIT 0").description]
    sqlite_columns = [r[1] for r in sqlite3.connect(":memory:").executescript(
        _schema()).execute("PRAGMA table_info(materials)")]
    assert columns == sqlite_columns and columns[-1] == "cluster"


def test_projections_made_before_the_cluster_column_get_it(tmp_path: Path,
                                                          log_location: str) -> None:
    project = _project(tmp_path, log_location)
    eventflow(project, "status")
    with Tracker.open(project) as t:  # as an older eventflow left them
        t.projections.db.execute("ALTER TABLE materials DROP COLUMN cluster")
    _check(project)
    assert eventflow(project, "verify").returncode == 0


def _schema() -> str:
    from eventflow.resources import data_text

    return data_text("projections", "schema.sql")
