"""Shared fixtures and the rule for tests that need real programs.

A test that needs SLURM or pw.x skips on a laptop without them, but in CI
(``CI=true``) a missing program is a failure: such a test must run there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REPO = Path(__file__).resolve().parents[1]


def require(condition: bool, reason: str) -> None:
    """Skip with ``reason`` unless ``condition``; in CI, fail instead of skipping."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def slurm_available() -> bool:
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "UP" in out.stdout


@pytest.fixture
def need_slurm() -> None:
    require(slurm_available(), "no running SLURM cluster (start one: slurm/local-cluster start)")


SSHD_DIR = Path(os.environ.get("EVENTFLOW_SSHD_DIR", "/tmp/eventflow-sshd"))
SSH_ALIAS = "eventflow-local-ssh"  # the Host of slurm/local-sshd's ssh config


def sshd_available() -> bool:
    config = SSHD_DIR / "ssh_config"
    if shutil.which("ssh") is None or shutil.which("rsync") is None or not config.is_file():
        return False
    try:
        out = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", SSH_ALIAS, "true"],
                             capture_output=True, timeout=15, check=False,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


@pytest.fixture
def need_sshd(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project's loopback sshd (slurm/local-sshd start); its ssh config for eventflow."""
    require(sshd_available(), "no loopback sshd (start one: slurm/local-sshd start)")
    config = SSHD_DIR / "ssh_config"
    monkeypatch.setenv("EVENTFLOW_SSH_CONFIG", str(config))
    return config


@pytest.fixture
def need_pwx() -> None:
    require(shutil.which("pw.x") is not None, "no pw.x (apt-get install quantum-espresso)")


def postgres_url() -> str | None:
    """The test server's URL ($EVENTFLOW_TEST_PG, or scripts/local-postgres's default), if it
    answers."""
    url = os.environ.get("EVENTFLOW_TEST_PG") or subprocess.run(
        [str(REPO / "scripts" / "local-postgres"), "url"], capture_output=True, text=True,
        check=False).stdout.strip()
    try:
        import psycopg
    except ImportError:
        return None
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error:
        return None
    return url


@pytest.fixture(scope="session")
def postgres_server() -> str | None:
    return postgres_url()


@pytest.fixture
def need_postgres(postgres_server: str | None) -> str:
    """A URL of an empty schema of its own on the test PostgreSQL server (dropped after)."""
    require(postgres_server is not None,
            "no PostgreSQL server with psycopg (start one: scripts/local-postgres start)")
    import uuid

    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")  # a fixed-format name, no user text
    sep = "&" if "?" in postgres_server else "?"
    yield f"{postgres_server}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(postgres_server, autocommit=True) as db:
        db.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def need_psycopg() -> None:
    """The PostgreSQL driver alone (no server): for the errors a client gives."""
    import importlib.util

    require(importlib.util.find_spec("psycopg") is not None,
            "no psycopg (pip install 'eventflow[postgresql]')")


@pytest.fixture(params=["sqlite", "postgresql"])
def log_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh event log goes, once per store: a SQLite file, or an empty schema on the
    test PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "events.db")
    return request.getfixturevalue("need_postgres")
