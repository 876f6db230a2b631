"""`eventflow tail -f` on a PostgreSQL log whose server restarts while appends go on.

A private server (scripts/local-postgres with its own folder, as in test_postgres_restart) is
stopped (``pg_ctl -m fast``: sessions cut) and started again while `tail -f --json` runs and
another process appends one event at a time. tail says on stderr what it waits for, LISTENs
again on a new connection, and prints every event exactly once, in seq order. No timing is
asserted; every wait has a generous upper bound.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from eventflow.shell.store import open_store
from tests.integration.helpers import CLI, wait_for
from tests.integration.test_postgres_restart import _local_postgres, private_server  # noqa: F401

EVENTS = 150
WAIT = 60.0

# One event per append, each with its own key; on a clear error (the server is gone) it says
# so on one line and retries the same append with the same key (so none goes in twice).
APPENDER = """
import sys, time
from eventflow.core import events as ev
from eventflow.errors import LogUnavailableError
from eventflow.shell.store import open_store
url, n = sys.argv[1], int(sys.argv[2])
store, k = None, 0
while k < n:
    try:
        if store is None:
            store = open_store(url)
        store.append(f"m{k % 7}", [ev.MaterialHeld(f"event {k}")], idempotency_key=f"e{k}")
        k += 1
        print("appended", k, flush=True)
        time.sleep(0.01)
    except LogUnavailableError as exc:
        print("retry:", exc, flush=True)
        time.sleep(0.1)
store.close()
"""


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_tail_f_goes_on_after_a_server_restart_without_skipping_or_repeating(
        tmp_path: Path, private_server: tuple[Path, str]) -> None:  # noqa: F811
    state, url = private_server
    project = tmp_path / "proj"
    subprocess.run([*CLI, "init", str(project), "--store", url], check=True,
                   capture_output=True, text=True, timeout=WAIT)
    with open_store(url) as store:
        start = store.last_seq()
    out, err, log = tmp_path / "tail.out", tmp_path / "tail.err", tmp_path / "appender.out"
    with out.open("w") as stdout, err.open("w") as stderr:
        tail = subprocess.Popen([*CLI, "--project", str(project), "tail", "-f", "-n", "0",
                                 "--json"], stdout=stdout, stderr=stderr)
    try:
        wait_for(lambda: tail.poll() is not None or _tail_listening(url),
                 "tail -f to LISTEN", WAIT)
        assert tail.poll() is None, err.read_text()
        with log.open("w") as sink:
            appender = subprocess.Popen([*CLI[:1], "-c", APPENDER, url, str(EVENTS)],
                                        stdout=sink, stderr=subprocess.STDOUT)
        wait_for(lambda: len(_lines(out)) >= 30, "tail to print the first appends", WAIT)
        stopped = _local_postgres(state, "stop")
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: any("waiting for the log's server" in line for line in _lines(err)),
                 "tail to notice the outage", WAIT)
        wait_for(lambda: any(line.startswith("retry:") for line in _lines(log)),
                 "the appender to meet the outage", WAIT)
        started = _local_postgres(state, "start")
        assert started.returncode == 0, started.stderr
        assert appender.wait(timeout=WAIT) == 0, log.read_text()[-2000:]
        wait_for(lambda: len(_lines(out)) >= EVENTS, "tail to print every append", WAIT)
        assert tail.poll() is None, err.read_text()[-2000:]
        # LISTENing again: one more append is printed (not only found by a later poll).
        with open_store(url) as store:
            from eventflow.core import events as ev

            store.append("last", [ev.MaterialHeld("after the restart")])
        wait_for(lambda: len(_lines(out)) >= EVENTS + 1, "tail to print the last", WAIT)
    finally:
        if tail.poll() is None:
            tail.send_signal(signal.SIGINT)
        tail.wait(timeout=WAIT)

    printed = [json.loads(line) for line in _lines(out)]
    seqs = [row["seq"] for row in printed]
    assert seqs == list(range(start + 1, start + EVENTS + 2)), seqs
    keys = [row["idempotency_key"] for row in printed[:-1]]
    assert keys == [f"e{k}" for k in range(EVENTS)]
    errors = _lines(err)
    assert any("the log's server answers again" in line for line in errors), errors
    assert not any("Traceback" in line for line in errors), errors
    for line in errors:  # one line per wait, naming the store
        assert line.startswith("eventflow: "), line


def _tail_listening(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as db:
            return db.execute("SELECT count(*) FROM pg_stat_activity "
                              "WHERE query = 'LISTEN eventflow_appended'").fetchone()[0] > 0
    except psycopg.Error:
        return False
