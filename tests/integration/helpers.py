"""Small helpers the integration tests share."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from eventflow.shell.api import Tracker
from eventflow.shell.store import GENESIS, LogBase, canonical, row_hash

SI = Path(__file__).resolve().parents[1] / "data" / "structures" / "Si.cif"
CLI = [sys.executable, "-m", "eventflow.shell.cli"]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 240.0, *,
             every: float = 0.2) -> None:
    """Poll ``predicate`` until it holds; a bound on waiting, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def unique(name: str) -> str:
    """SLURM remembers finished jobs for minutes: ids must differ between runs."""
    return f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**8}"


def append_unknown_event(store: LogBase, stream: str) -> int:
    """An event a newer eventflow wrote, inserted as it would have (chain intact); on either
    store (``query`` takes the same SQL on both)."""
    seq = store.last_seq() + 1
    version = store.stream_version(stream) + 1
    prev = store.query("SELECT hash FROM events WHERE seq = ?", (seq - 1,)).fetchone()[0]
    data, meta, at = canonical({"x": 1}).decode(), "{}", "2030-01-01T00:00:00.000000Z"
    h = row_hash(prev or GENESIS, seq, stream, version, "FutureThing", 1, data, meta, at, None)
    store.query("INSERT INTO events VALUES (?,?,?,'FutureThing',1,?,?,?,NULL,?)",
                (seq, stream, version, data, meta, at, h))
    return seq


def eventflow(project: Path, *args: str, check: bool = True, env: dict | None = None,
              cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``eventflow --project PROJECT ARGS`` as a process; a failure fails the test (``check``)."""
    proc = subprocess.run([*CLI, "--project", str(project), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"eventflow {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def make_project(tmp_path: Path, executor: str, defaults: str = "") -> Path:
    """A project whose jobs run under ``executor``, small default resources (+ ``defaults``)."""
    project = tmp_path / "proj"
    Tracker.init(project).close()
    (project / "config" / "cluster.yaml").write_text(
        f"executor: {executor}\nmax_jobs: 100\nmax_submit: 100\n"
        f"defaults: {{time: '00:10:00', mem: 200M{defaults}}}\n")
    return project


def add(project: Path, mid: str, command: list[str], workflow: str = "single") -> None:
    """Register ``mid`` (Si) whose steps run ``command`` (the noop code: a plain command)."""
    with Tracker.open(project) as t:
        t.create_material(SI, material_id=mid, workflow=workflow, code="noop",
                          params={"command": command})


def count(project: Path, type_: str, like: str = "%") -> int:
    """How many events of ``type_`` (whose data matches ``like``) the log holds."""
    with Tracker.open(project) as t:
        return t.store.db.execute(
            "SELECT count(*) FROM events WHERE type = ? AND data LIKE ?", (type_, like)
        ).fetchone()[0]


def waiting_command(job_go: str = "go") -> list[str]:
    """Says it started (a file in its job folder), then runs until ``go`` appears there."""
    return ["bash", "-c", f"touch started; while [ ! -e {job_go} ]; do sleep 0.1; done"]


def slurm_project(tmp_path: Path) -> Path:
    """A project whose jobs go to SLURM, with the default resources of config/."""
    project = tmp_path / "proj"
    Tracker.init(project).close()
    (project / "config" / "cluster.yaml").write_text("executor: slurm\nmax_jobs: 100\n"
                                                     "max_submit: 100\n")
    return project
