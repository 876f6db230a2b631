"""Several "hosts" (project folders of their own) on ONE PostgreSQL log, each watcher acting
for its own clusters: no effect doubled.

Real components: the shared test PostgreSQL server (a schema of the test's own), the local
SLURM, and the loopback sshd in front of it as a second cluster ("loop"). Every sbatch the
watchers run locally goes through a PATH shim that counts it; SLURM itself is asked which jobs
exist under each host's job names (it remembers finished jobs for MinJobAge). Server restarts
are not staged here (tests/integration/test_postgres_restart.py does that on a private
server): the lock's session is ended with pg_terminate_backend, which is what a restart does
to it, and touches no other session of the shared server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from eventflow.core import events as ev
from eventflow.shell import clusters
from eventflow.shell.api import Tracker
from eventflow.shell.lock import LockLost
from eventflow.shell.lock_pg import PgWatcherLock
from eventflow.shell.project import Project
from eventflow.shell.runner import Runner
from eventflow.shell.store import open_store
from eventflow.shell.watcher import _scheduler_for
from tests.conftest import SSH_ALIAS
from tests.integration.helpers import CLI, SI, eventflow, unique, wait_for

pytestmark = pytest.mark.usefixtures("need_slurm")
WAIT = 120.0
JOB = ["bash", "-c", "sleep 1; echo done > SP.out"]


def _host(tmp_path: Path, name: str, url: str) -> tuple[Path, dict[str, str], Path]:
    """A project folder on the shared log (as on a host of its own); its env puts an sbatch
    shim first on PATH, logging each call to the returned file."""
    project = tmp_path / name
    subprocess.run([*CLI, "init", str(project), "--store", url], check=True,
                   capture_output=True, text=True, timeout=WAIT)
    (project / "config" / "cluster.yaml").write_text(
        "executor: slurm\nmax_jobs: 100\nmax_submit: 100\n"
        "defaults: {time: '00:10:00', mem: 200M}\n")
    shim, calls = tmp_path / f"{name}-shim", tmp_path / f"{name}-sbatch.log"
    shim.mkdir()
    real = shutil.which("sbatch")
    assert real is not None
    (shim / "sbatch").write_text(f'#!/bin/sh\necho "$$" >> "{calls}"\nexec "{real}" "$@"\n')
    (shim / "sbatch").chmod(0o755)
    return project, {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}, calls


def _watch(project: Path, env: dict[str, str], out: Path, *args: str) -> subprocess.Popen:
    with out.open("w") as sink:
        return subprocess.Popen([*CLI, "--project", str(project), "watch", "--reconcile", "1",
                                 *args], stdout=sink, stderr=subprocess.STDOUT, env=env)


def _calls(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _slurm_names(prefixes: list[str]) -> Counter[str]:
    """Job names SLURM knows (queued, running or finished within MinJobAge) under the prefixes."""
    out = subprocess.run(["squeue", "--all", "--states=all", "--noheader", "--format=%j"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return Counter(n.strip() for n in out.splitlines() if n.strip().startswith(tuple(prefixes)))


def _add(project: Path, mid: str, cluster: str | None = None) -> None:
    params: dict = {"command": JOB}
    if cluster:
        params["cluster"] = cluster
    with Tracker.open(project) as t:
        t.create_material(SI, material_id=mid, workflow="single", code="noop", params=params)


def _pair(first: subprocess.Popen, second: subprocess.Popen, outs: tuple[Path, Path]
          ) -> tuple[int, int]:
    """Of two watchers started together for one cluster: (the one running, the one that
    refused). The refusal is one line naming the holder's host and pid, and exits 0."""
    wait_for(lambda: first.poll() is not None or second.poll() is not None,
             "one of two watchers for one cluster to step back", WAIT)
    time.sleep(1.0)  # the winner goes on running
    running = [i for i, p in enumerate((first, second)) if p.poll() is None]
    assert len(running) == 1, [o.read_text() for o in outs]
    winner, loser = running[0], 1 - running[0]
    proc = (first, second)[loser]
    assert proc.returncode == 0
    text = outs[loser].read_text().strip()
    assert len(text.splitlines()) == 1 and "already running" in text, text
    assert f"pid {(first, second)[winner].pid}" in text, text
    return winner, loser


@pytest.mark.usefixtures("need_sshd")
def test_two_hosts_on_one_log_submit_every_job_once(tmp_path: Path, need_postgres: str) -> None:
    url = need_postgres
    hosts = [_host(tmp_path, name, url) for name in ("hostA", "hostB")]
    with Tracker.open(hosts[0][0]) as t:
        clusters.add(t, ev.ClusterAdded(name="loop", host="127.0.0.1", ssh_config_host=SSH_ALIAS,
                                        workdir=str(tmp_path / "remote side")))
    procs: list[subprocess.Popen] = []
    try:
        # The same cluster from both hosts at once: one watcher acts, the other steps back.
        outs = (tmp_path / "A-local.out", tmp_path / "B-local.out")
        pair = (_watch(hosts[0][0], hosts[0][1], outs[0], "--cluster", "local"),
                _watch(hosts[1][0], hosts[1][1], outs[1], "--cluster", "local"))
        procs += pair
        local, _ = _pair(*pair, outs)
        # The other cluster, again from both hosts at once: side by side with `local`.
        outs2 = (tmp_path / "A-loop.out", tmp_path / "B-loop.out")
        pair2 = (_watch(hosts[0][0], hosts[0][1], outs2[0], "--cluster", "loop"),
                 _watch(hosts[1][0], hosts[1][1], outs2[1], "--cluster", "loop"))
        procs += pair2
        loop, _ = _pair(*pair2, outs2)
        # A watcher for every cluster, and a --once, while those two run: nothing to do.
        every = eventflow(hosts[1][0], "watch", env=hosts[1][1], timeout=WAIT)
        assert "already running" in every.stdout and "every cluster" in every.stdout
        once = eventflow(hosts[0][0], "watch", "--once", "--cluster", "local", env=hosts[0][1],
                         timeout=WAIT)
        assert "nothing to do" in once.stdout

        # Materials for both clusters, registered from both hosts, all finishing together.
        tag = unique("pgw")
        local_ids = [f"{tag}-l{i}" for i in range(4)]
        loop_ids = [f"{tag}-r{i}" for i in range(3)]
        for i, mid in enumerate(local_ids):
            _add(hosts[i % 2][0], mid)
        for i, mid in enumerate(loop_ids):
            _add(hosts[i % 2][0], mid, "loop")
        with open_store(url) as store:
            def succeeded() -> int:
                return sum(1 for _ in store.read(types=["CalculationSucceeded"]))

            wait_for(lambda: succeeded() == len(local_ids) + len(loop_ids),
                     "every job to finish and be judged", WAIT)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=WAIT) for proc in procs]
    assert codes == [0, 0, 0, 0]

    # Every sbatch exactly once: the local cluster's through the shim of the host that acts for
    # it (none from the other host), and SLURM holds one job per calculation under each host's
    # job names (the loop cluster's sbatch ran over SSH, not through the shim).
    assert _calls(hosts[local][2]) == len(local_ids) and _calls(hosts[1 - local][2]) == 0
    project_ids = [Project.at(h[0]).project_id for h in hosts]
    names = _slurm_names([f"ef.{pid}." for pid in project_ids])
    assert set(names.values()) == {1} and len(names) == len(local_ids) + len(loop_ids)
    assert sum(n.startswith(f"ef.{project_ids[local]}.") for n in names) >= len(local_ids)
    assert sum(n.startswith(f"ef.{project_ids[loop]}.") for n in names) >= len(loop_ids)

    # No duplicate events: each calculation submitted, finished and judged once, on its cluster.
    with open_store(url) as store:
        rows = list(store.read())
    by_type: dict[str, Counter[str]] = {}
    placed: dict[str, str] = {}
    for r in rows:
        cid = getattr(r.event, "calculation_id", None)
        if cid is not None:
            by_type.setdefault(r.event.TYPE, Counter())[cid] += 1
        if isinstance(r.event, ev.JobSubmitted):
            placed[r.stream] = r.event.scheduler
    for kind in ("InputsPrepared", "JobSubmitted", "JobFinished", "CalculationSucceeded"):
        assert set(by_type[kind].values()) == {1}, (kind, by_type[kind])
        assert len(by_type[kind]) == len(local_ids) + len(loop_ids), kind
    assert {placed[m] for m in loop_ids} == {"loop"}
    assert "loop" not in {placed[m] for m in local_ids}
    keys = Counter(r.idempotency_key for r in rows if r.idempotency_key)
    assert set(keys.values()) == {1}
    for project, env, _ in hosts:
        assert eventflow(project, "verify", env=env).stdout.startswith(f"ok: {len(rows)} events")


def _lock_session(url: str, pid: int) -> int:
    """The server-side pid of the watcher lock session of process ``pid``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s",
                         (f"eventflow-watcher % {pid} %",)).fetchone()
    assert row is not None, f"no lock session of process {pid}"
    return int(row[0])


def _terminate(url: str, backend: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SELECT pg_terminate_backend(%s)", (backend,))


def test_a_watcher_whose_lock_session_died_and_was_taken_over_stops(
        tmp_path: Path, need_postgres: str) -> None:
    """The lock's session ends (as in a server restart) and another holder takes the lock
    before the watcher's next cycle: the watcher stops with one line naming the new holder,
    having submitted nothing; once the lock is free again, a watcher submits the job once."""
    url = need_postgres
    project, env, calls = _host(tmp_path, "hostA", url)
    out = tmp_path / "watch.out"
    watcher = _watch(project, env, out, "--cluster", "local")
    log = Project.at(project).state_dir / "watcher.log"
    other = PgWatcherLock(url, ["local"])
    try:
        wait_for(lambda: any("watching" in line for line in _lines(log)), "the watcher", WAIT)
        deadline = time.monotonic() + WAIT
        while not other.try_acquire("daemon"):  # the watcher may take it back first: again
            assert time.monotonic() < deadline, "could not take the lock over"
            _terminate(url, _lock_session(url, watcher.pid))
        mid = unique("taken")
        _add(project, mid)
        assert watcher.wait(timeout=WAIT) == 1, out.read_text()
        text = out.read_text()
        assert "another eventflow watcher holds the lock for cluster local" in text
        assert f"pid {os.getpid()}" in text and "Traceback" not in text
        assert _calls(calls) == 0
        with open_store(url) as store:
            assert not list(store.read(stream=mid, types=["JobSubmitted"]))
    finally:
        other.release()
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(timeout=WAIT)
    eventflow(project, "watch", "--once", "--cluster", "local", env=env, timeout=WAIT)
    assert _calls(calls) == 1
    with open_store(url) as store:
        assert len(list(store.read(stream=mid, types=["JobSubmitted"]))) == 1


def test_the_fence_stops_a_submission_once_the_lock_session_is_gone(
        tmp_path: Path, need_postgres: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mid-cycle: the lock's session ends between the cycle's start and its sbatch; the fence
    (checked right before sbatch) raises LockLost and sbatch is never called."""
    url = need_postgres
    project, env, calls = _host(tmp_path, "hostA", url)
    monkeypatch.setenv("PATH", env["PATH"])
    _add(project, unique("fenced"))
    lock = PgWatcherLock(url, ["local"])
    assert lock.try_acquire("daemon")
    try:
        with Tracker.open(project) as tracker:
            scheduler, _ = _scheduler_for(tracker)
            runner = Runner(tracker, scheduler)
            runner.fence = lock.fence
            _terminate(url, lock._conn.info.backend_pid)
            with pytest.raises(LockLost, match="was lost"):
                runner.cycle()
        assert _calls(calls) == 0 and not lock.held
        assert lock.regain()  # nobody took it meanwhile: held again
    finally:
        lock.release()


def test_a_watcher_holds_its_lock_again_after_a_real_server_restart(
        tmp_path: Path, postgres_server: str | None) -> None:
    """A private server (it is stopped): the lock's session dies with it; once the server is
    back, the watcher takes its lock again and submits a new job exactly once."""
    from tests.integration.test_postgres_restart import _local_postgres, _private_server

    with _private_server(postgres_server) as (state, url):
        project, env, calls = _host(tmp_path, "hostA", url)
        out = tmp_path / "watch.out"
        watcher = _watch(project, env, out, "--cluster", "local")
        log = Project.at(project).state_dir / "watcher.log"
        try:
            wait_for(lambda: any("watching" in line for line in _lines(log)), "the watcher",
                     WAIT)
            assert _local_postgres(state, "stop").returncode == 0
            wait_for(lambda: any("waiting for the log's server" in line for line in _lines(log)),
                     "the watcher to notice", WAIT)
            assert _local_postgres(state, "start").returncode == 0
            wait_for(lambda: any("holding the watcher lock for cluster local again" in line
                                 for line in _lines(log)), "the lock held again", WAIT)
            mid = unique("after")
            _add(project, mid)
            wait_for(lambda: _calls(calls) >= 1, "the submission", WAIT)
            with open_store(url) as store:
                wait_for(lambda: bool(list(store.read(stream=mid, types=["JobSubmitted"]))),
                         "JobSubmitted", WAIT)
            assert watcher.poll() is None, out.read_text()
            assert PgWatcherLock(url, ["local"]).try_acquire() is False  # still its lock
        finally:
            if watcher.poll() is None:
                watcher.send_signal(signal.SIGTERM)
            code = watcher.wait(timeout=WAIT)
        assert code == 0 and _calls(calls) == 1, out.read_text()


@pytest.mark.usefixtures("need_sshd")
def test_hosts_that_place_steps_differently_still_submit_each_once(
        tmp_path: Path, need_postgres: str) -> None:
    """Host A's config/cluster.yaml places every step on `local`, host B's on `loop`; A
    watches local, B loop. Each watcher thinks every step is its own: the first InputsPrepared
    appended for a calculation (a unique key in the log) decides, the other watcher steps back,
    and every calculation is submitted once, on one cluster."""
    url = need_postgres
    hosts = [_host(tmp_path, name, url) for name in ("hostA", "hostB")]
    for (project, _, _), cluster in zip(hosts, ("local", "loop"), strict=True):
        path = project / "config" / "cluster.yaml"
        path.write_text(path.read_text() + f"cluster: {cluster}\n")
    with Tracker.open(hosts[0][0]) as t:
        clusters.add(t, ev.ClusterAdded(name="loop", host="127.0.0.1", ssh_config_host=SSH_ALIAS,
                                        workdir=str(tmp_path / "remote side")))
    tag = unique("split")
    mids = [f"{tag}-{i}" for i in range(4)]
    for i, mid in enumerate(mids):
        _add(hosts[i % 2][0], mid)
    outs = (tmp_path / "A.out", tmp_path / "B.out")
    procs = [_watch(hosts[0][0], hosts[0][1], outs[0], "--cluster", "local"),
             _watch(hosts[1][0], hosts[1][1], outs[1], "--cluster", "loop")]
    try:
        with open_store(url) as store:
            wait_for(lambda: sum(1 for _ in store.read(types=["CalculationSucceeded"]))
                     == len(mids), "every job to finish", WAIT)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=WAIT) for proc in procs]
    assert codes == [0, 0], [o.read_text()[-2000:] for o in outs]
    with open_store(url) as store:
        submitted = [r for r in store.read(types=["JobSubmitted"])]
        prepared = {r.event.calculation_id: r.meta.get("cluster")  # type: ignore[attr-defined]
                    for r in store.read(types=["InputsPrepared"])}
    assert sorted(r.stream for r in submitted) == sorted(mids)  # each once
    on_local = [r for r in submitted if r.event.scheduler != "loop"]  # type: ignore[attr-defined]
    for r in submitted:  # submitted on the cluster that claimed it
        claimed = prepared[r.event.calculation_id]  # type: ignore[attr-defined]
        assert (claimed == "loop") == (r.event.scheduler == "loop"), (claimed, r.event)  # type: ignore[attr-defined]
    assert _calls(hosts[0][2]) == len(on_local) and _calls(hosts[1][2]) == 0
    project_ids = [Project.at(h[0]).project_id for h in hosts]
    names = _slurm_names([f"ef.{pid}." for pid in project_ids])
    assert set(names.values()) == {1} and len(names) == len(mids), names
