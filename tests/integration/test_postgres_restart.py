"""A real PostgreSQL restart while `eventflow watch` and 4 appender processes run on its log;
and a real full disk under the server (a small tmpfs).

The server is a private one (scripts/local-postgres with its own folder), not the shared test
server: it is stopped (``pg_ctl -m fast``) and started again mid-run. Afterwards every
appender's events are in the log exactly once, seqs are gapless, `eventflow verify` passes,
and the watcher is still running, having said what it waited for instead of dying. Nothing
here asserts how long anything took; every wait has a generous upper bound.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.shell.project import Project
from eventflow.shell.store import open_store
from tests.conftest import REPO, require
from tests.integration.helpers import CLI, eventflow, wait_for

APPENDERS = 4
EVENTS = 120  # appends per appender, each one registration + hold in one transaction
WAIT = 60.0

# One appender: its own streams, one idempotency key per append; on a clear error (the log's
# server is gone) it says so on one line and retries the same append with the same key.
APPENDER = """
import sys, time
from eventflow.core import events as ev
from eventflow.errors import LogUnavailableError
from eventflow.shell.store import open_store
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store, k = None, 0
while k < n:
    mid = f"{name}-{k:04d}"
    try:
        if store is None:
            store = open_store(url)
        store.append(mid, [ev.MaterialRegistered(mid, "Si2", "restart test"),
                           ev.MaterialHeld("restart test")], idempotency_key=f"{mid}:add")
        k += 1
        print("appended", k, flush=True)
        time.sleep(0.01)
    except LogUnavailableError as exc:
        print("retry:", exc, flush=True)
        time.sleep(0.1)
store.close()
"""


def _local_postgres(state: Path, verb: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EVENTFLOW_PG_DIR": str(state), "EVENTFLOW_PG_PORT": "5434"}
    return subprocess.run([str(REPO / "scripts" / "local-postgres"), verb], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@contextlib.contextmanager
def _private_server(postgres_server: str | None, disk: str | None = None
                    ) -> Iterator[tuple[Path, str]]:
    """A PostgreSQL server of the test's own (its folder, its URL), removed after; with
    ``disk``, its folder is a tmpfs of that size."""
    require(postgres_server is not None and os.geteuid() == 0,
            "a private PostgreSQL server needs PostgreSQL installed and root "
            "(scripts/local-postgres start)")
    # Not under pytest's tmp_path: the server runs as `postgres`, which must reach the folder.
    state = Path(tempfile.mkdtemp(prefix="eventflow-pg-", dir="/tmp"))
    if disk is not None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={disk}", "tmpfs", str(state)],
                       check=True, timeout=60)
        state.chmod(0o755)
    try:
        started = _local_postgres(state, "start")
        assert started.returncode == 0, started.stderr
        yield state, started.stdout.strip().splitlines()[-1]
    finally:
        _local_postgres(state, "stop")
        if disk is not None:
            subprocess.run(["umount", str(state)], check=False, timeout=60)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def private_server(postgres_server: str | None) -> Iterator[tuple[Path, str]]:
    with _private_server(postgres_server) as server:
        yield server


@pytest.fixture
def server_on_a_small_disk(postgres_server: str | None) -> Iterator[tuple[Path, str]]:
    with _private_server(postgres_server, disk="120m") as server:
        yield server


def test_a_full_disk_refuses_a_batch_whole_and_the_log_goes_on_when_there_is_room(
        server_on_a_small_disk: tuple[Path, str]) -> None:
    """The server's disk fills up (a filler file takes the tmpfs's last byte), then a batch
    of 50,000 events is appended: one line saying the server has no disk space, nothing of
    the batch in the log; once the filler is gone the same store appends again."""
    from eventflow.errors import LogUnavailableError
    from eventflow.shell.store import NewEvent

    state, url = server_on_a_small_disk
    store = open_store(url, create=True)
    try:
        store.append_many([NewEvent(f"a{i}", ev.MaterialRegistered(f"a{i}", "Si2", "before"))
                           for i in range(100)])
        filler = state / "filler"
        with filler.open("wb") as handle, pytest.raises(OSError, match="No space left"):
            while True:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
                os.fsync(handle.fileno())
        batch = [NewEvent(f"b{i}", ev.MaterialRegistered(f"b{i}", "Si2", "x" * 500))
                 for i in range(50_000)]
        with pytest.raises(LogUnavailableError, match="no disk space left") as refused:
            store.append_many(batch)
        assert "\n" not in str(refused.value) and "host=" in str(refused.value)
        filler.unlink()
        assert store.last_seq() == 100 and store.verify_chain() == (100, [])
        store.append_many([NewEvent(f"c{i}", ev.MaterialRegistered(f"c{i}", "Si2", "after"))
                           for i in range(10)])
        assert store.last_seq() == 110 and store.verify_chain() == (110, [])
    finally:
        store.close()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_server_restart_mid_append_loses_nothing_and_the_watcher_waits(
        tmp_path: Path, private_server: tuple[Path, str]) -> None:
    state, url = private_server
    project = tmp_path / "proj"
    subprocess.run([*CLI, "init", str(project), "--store", url], check=True,
                   capture_output=True, text=True, timeout=WAIT)
    watcher_log = Project.at(project).state_dir / "watcher.log"
    out = tmp_path / "watch.out"
    with out.open("w") as sink:
        watcher = subprocess.Popen([*CLI, "--project", str(project), "watch",
                                    "--reconcile", "0.3"], stdout=sink, stderr=subprocess.STDOUT)
    appenders: list[tuple[subprocess.Popen, Path]] = []
    try:
        wait_for(lambda: any("watching" in line for line in _lines(watcher_log)),
                 "the watcher to start", WAIT)
        for i in range(APPENDERS):
            path = tmp_path / f"appender{i}.out"
            with path.open("w") as sink:
                appenders.append((subprocess.Popen(
                    [*CLI[:1], "-c", APPENDER, url, f"w{i}", str(EVENTS)],
                    stdout=sink, stderr=subprocess.STDOUT), path))

        def appended(path: Path) -> int:
            return sum(line.startswith("appended") for line in _lines(path))

        wait_for(lambda: all(appended(p) >= 10 for _, p in appenders),
                 "every appender to be under way", WAIT)
        assert all(proc.poll() is None for proc, _ in appenders), "stopped too late"
        stopped = _local_postgres(state, "stop")  # pg_ctl -m fast: sessions are cut
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: any("waiting for the log's server" in line
                             for line in _lines(watcher_log)), "the watcher to notice", WAIT)
        wait_for(lambda: all(any(line.startswith("retry:") for line in _lines(p))
                             for _, p in appenders), "every appender to meet the outage", WAIT)
        started = _local_postgres(state, "start")
        assert started.returncode == 0, started.stderr
        for proc, path in appenders:
            assert proc.wait(timeout=WAIT) == 0, path.read_text()[-2000:]
        wait_for(lambda: any("answers again" in line for line in _lines(watcher_log)),
                 "the watcher to carry on", WAIT)
        assert watcher.poll() is None, out.read_text()[-2000:]
    finally:
        for proc, _ in appenders:
            if proc.poll() is None:
                proc.kill()
        if watcher.poll() is None:
            watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=WAIT) == 0, out.read_text()[-2000:]

    # The appenders' errors: one line each, naming the store and the problem.
    for _, path in appenders:
        for line in _lines(path):
            if line.startswith("retry:"):
                assert "log's server" in line and "host=" in line and "5434" in line, line
    # The watcher said what it waited for, on one line, and never dumped a traceback.
    text = out.read_text()
    assert "waiting for the log's server" in text and "Traceback" not in text

    with open_store(url) as store:
        rows = list(store.read())
        count, problems = store.verify_chain()
    assert problems == [] and count == len(rows) == APPENDERS * EVENTS * 2
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    keys = Counter(r.idempotency_key for r in rows if r.idempotency_key is not None)
    expected = {f"w{i}-{k:04d}:add" for i in range(APPENDERS) for k in range(EVENTS)}
    assert set(keys) == expected and set(keys.values()) == {1}
    for r in rows:
        assert r.version == (1 if isinstance(r.event, ev.MaterialRegistered) else 2)
    verified = eventflow(project, "verify")
    assert verified.stdout.startswith(f"ok: {len(rows)} events")
