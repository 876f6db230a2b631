"""Faults of a PostgreSQL log on the real test server: a role without rights on the log, and a
connection cut (``pg_terminate_backend``) in the middle of a large batch. Each gives a
one-line error naming the store and the problem, and leaves nothing half-written."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.errors import EventflowError, LogUnavailableError
from eventflow.shell.project import Project, set_store
from eventflow.shell.projections_pg import PostgresProjections
from eventflow.shell.store import NewEvent, open_store
from eventflow.shell.store_pg import redacted
from tests.integration.helpers import SI, eventflow

BATCH = 50_000  # large enough that its COPY is still running when the cut comes


def _registered(mid: str) -> ev.MaterialRegistered:
    return ev.MaterialRegistered(mid, "Si2", "test")


def _admin(url: str):  # noqa: ANN202 - a psycopg connection
    import psycopg

    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def limited_role(need_postgres: str) -> Iterator[tuple[str, str]]:
    """A log with 3 events in a fresh schema, and a role of its own (LOGIN, USAGE on the
    schema, no rights on the tables): (the owner's URL, the role's name); dropped after."""
    with open_store(need_postgres, create=True) as store:
        for mid in ("a", "b", "c"):
            store.append(mid, [_registered(mid)])
    role = f"ef_limited_{uuid.uuid4().hex[:10]}"  # a fixed-format name, no user text
    schema = need_postgres.rsplit("search_path%3D", 1)[1]
    with _admin(need_postgres) as db:
        db.execute(f"CREATE ROLE {role} LOGIN")
        db.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    yield need_postgres, role
    with _admin(need_postgres) as db:
        db.execute(f"DROP OWNED BY {role}")
        db.execute(f"DROP ROLE {role}")


def _as(url: str, role: str) -> str:
    assert "user=eventflow" in url
    return url.replace("user=eventflow", f"user={role}")


def _project_on(tmp_path: Path, url: str) -> Path:
    project = tmp_path / "proj"
    eventflow(tmp_path, "init", str(project))
    set_store(Project.at(project), url)
    return project


def _one_line_error(proc, *words: str) -> str:  # noqa: ANN001
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eventflow: error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_role_without_rights_gets_one_line_and_a_non_zero_exit(
        tmp_path: Path, limited_role: tuple[str, str]) -> None:
    owner, role = limited_role
    url = _as(owner, role)
    with pytest.raises(EventflowError, match=f"role '{role}' lacks rights on the log"):
        open_store(url)
    project = _project_on(tmp_path, url)
    for command in (["status"], ["verify"], ["add", str(SI)]):
        _one_line_error(eventflow(project, *command, check=False), redacted(url),
                        f"role '{role}' lacks rights", "permission denied")
    with open_store(owner) as store:
        assert store.last_seq() == 3 and store.verify_chain() == (3, [])


def test_a_role_that_may_read_but_not_append_writes_nothing(
        tmp_path: Path, limited_role: tuple[str, str]) -> None:
    owner, role = limited_role
    with _admin(owner) as db:
        db.execute(f"GRANT SELECT ON eventflow_schema, events TO {role}")
    url = _as(owner, role)
    project = _project_on(tmp_path, url)
    with open_store(url) as store:  # reading the log is allowed
        assert store.verify_chain() == (3, [])
    # The commands open the projection tables beside the log, which this role may not make.
    _one_line_error(eventflow(project, "status", check=False), redacted(url),
                    "may not make the projection tables")
    PostgresProjections(owner).close()  # made by the owner, readable by the role
    with _admin(owner) as db:
        db.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {owner.rsplit('search_path%3D')[1]} "
                   f"TO {role}")
    _one_line_error(eventflow(project, "add", str(SI), check=False), redacted(url),
                    "lacks rights", "permission denied for table events")
    with open_store(url) as store:  # a batch (COPY) is refused the same way
        with pytest.raises(EventflowError, match="lacks rights") as refused:
            store.append_many([NewEvent(f"m{i}", _registered(f"m{i}")) for i in range(10)])
        assert "\n" not in str(refused.value)
    with open_store(owner) as store:
        assert store.last_seq() == 3 and store.verify_chain() == (3, [])


def test_a_connection_cut_mid_batch_writes_nothing_and_the_store_reconnects(
        need_postgres: str) -> None:
    store = open_store(need_postgres, create=True)
    store.append("a", [_registered("a")])
    pid = store.db.info.backend_pid
    cut: list[bool] = []

    def cut_the_copy() -> None:
        """Terminate the store's backend once its COPY runs (seen in pg_stat_activity)."""
        with _admin(need_postgres) as db:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                row = db.execute("SELECT query FROM pg_stat_activity WHERE pid = %s AND "
                                 "state = 'active'", (pid,)).fetchone()
                if row and row[0].startswith("COPY"):
                    cut.append(db.execute("SELECT pg_terminate_backend(%s)",
                                          (pid,)).fetchone()[0])
                    return
                time.sleep(0.005)

    cutter = threading.Thread(target=cut_the_copy)
    cutter.start()
    items = [NewEvent(f"m{i:06d}", _registered(f"m{i:06d}"), f"k{i}") for i in range(BATCH)]
    try:
        with pytest.raises(LogUnavailableError) as lost:
            store.append_many(items)
    finally:
        cutter.join()
    assert cut == [True]
    message = str(lost.value)
    assert "\n" not in message and message.startswith(f"{redacted(need_postgres)}: lost the "
                                                      "connection to the log's server")
    with open_store(need_postgres) as other:  # nothing of the batch is in the log
        assert other.last_seq() == 1 and other.verify_chain() == (1, [])
    # The same store connects again for its next append; the retried batch goes in whole.
    assert len(store.append_many(items[:1000])) == 1000
    assert store.last_seq() == 1001 and store.verify_chain() == (1001, [])
    store.close()


def test_a_server_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql:///eventflow?host={tmp_path}&port=5999&user=eventflow"
    proc = eventflow(tmp_path, "init", str(tmp_path / "proj"), "--store", url, check=False)
    _one_line_error(proc, url, "cannot reach the log's server")
