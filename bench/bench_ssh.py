"""Jobs through an SSH cluster: eventflow's remote scheduler against a plain ssh loop.

N trivial jobs (``true``, the ``noop`` code, 1 task, 200 MB) on the loopback sshd
(slurm/local-sshd) in front of the real local SLURM, two ways, alternating in rounds:

* **eventflow**: N one-step materials placed on the cluster (cluster.yaml ``cluster: bench``),
  then the real watcher daemon (``eventflow watch --remote-poll POLL``, its own process) until
  the log holds N verdicts, timed from the moment it says it is watching. One cycle's
  submissions go up in one round trip (every job folder in one tar, checked against its
  sha256 manifest there, then sbatch per job); every ``--poll`` seconds one round trip per
  cluster asks squeue and lists the finished records, one rsync brings the finished folders
  back, and every fact is recorded in the log.
* **floor**: a loop of ``ssh host sbatch`` (the scripts already in place on the remote side,
  nothing copied), then ``ssh host squeue`` every ``--poll`` seconds until none of its jobs is
  pending or running. Both use the same ssh options and ControlMaster socket kind, so the
  difference is what eventflow does, not how it connects.

Reported: jobs/minute of each (goal: eventflow >= 0.9x the floor), the reaction to a remote
completion (from the remote record's write to its JobFinished in the log; goal: p50 under
the polling interval + 0.5 s), SSH round trips (ssh or rsync processes started: counted by
``ssh``/``rsync`` shims first on the daemon's PATH) per job lifecycle (goal <= 3 on average),
and what one poll costs with ``--poll-jobs`` (1,000; --quick 100) held jobs of one cluster
(round trips, seconds; the jobs are cancelled at the end).

Run: ``python bench/bench_ssh.py [--quick] [--jobs 100] [--rounds 2] [--poll 0.5]`` with
``slurm/local-cluster start`` and ``slurm/local-sshd start`` done.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import Result, parse_args, print_table

from eventflow.core import events as ev
from eventflow.shell import clusters
from eventflow.shell.api import Tracker
from eventflow.shell.remote import RemoteScheduler
from eventflow.shell.remote_batch import poll
from eventflow.shell.ssh import SSH_CONFIG_ENV, SshConnection

SI = Path(__file__).resolve().parents[1] / "tests" / "data" / "structures" / "Si.cif"
SSHD_DIR = Path(os.environ.get("EVENTFLOW_SSHD_DIR", "/tmp/eventflow-sshd"))
ALIAS = "eventflow-local-ssh"
REACTIONS: list[float] = []  # seconds from a remote record's write to its JobFinished
VERDICTS: list[float] = []  # ... and to its CalculationSucceeded (parsed, judged)

# Counting shims: each ssh or rsync the daemon starts appends a line; an ssh that rsync
# starts itself is part of that rsync's round trip.
SSH_SHIM = '#!/bin/sh\n[ -n "$EF_BENCH_IN_RSYNC" ] || echo ssh >> "$EF_BENCH_TRIPS"\n' \
           'exec {real} "$@"\n'
RSYNC_SHIM = '#!/bin/sh\necho rsync >> "$EF_BENCH_TRIPS"\nEF_BENCH_IN_RSYNC=1 exec {real} "$@"\n'


def _cluster(workdir: Path) -> ev.ClusterAdded:
    return ev.ClusterAdded(name="bench", host="127.0.0.1", ssh_config_host=ALIAS,
                           workdir=str(workdir))


def _shims(folder: Path) -> dict[str, str]:
    """A PATH whose ssh and rsync count themselves into ``folder``/trips."""
    folder.mkdir()
    for name, text in (("ssh", SSH_SHIM), ("rsync", RSYNC_SHIM)):
        real = shutil.which(name)
        assert real, f"no {name} on PATH"
        (folder / name).write_text(text.format(real=real))
        (folder / name).chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}",
            "EF_BENCH_TRIPS": str(folder / "trips")}


def run_eventflow(base: Path, n: int, poll_s: float) -> tuple[float, float]:
    """(seconds, ssh round trips) for n jobs through eventflow's SSH cluster and its daemon."""
    project, remote = base / "proj", base / "remote"
    Tracker.init(project).close()
    (project / "config" / "cluster.yaml").write_text(
        "executor: slurm\nmax_jobs: 1000\nmax_submit: 1000\ncluster: bench\n"
        "defaults: {time: '00:10:00', mem: 200M}\n")
    with Tracker.open(project) as t:
        clusters.add(t, _cluster(remote))
        for i in range(n):
            t.create_material(SI, material_id=f"m{i}", workflow="single", code="noop",
                              params={"command": ["true"]})
        watcher_log = t.project.state_dir / "watcher.log"
    env = {**os.environ, **_shims(base / "shims")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "eventflow.shell.cli", "--project", str(project), "watch",
         "--quiet", "--remote-poll", str(poll_s)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        while not (watcher_log.exists() and "watching" in watcher_log.read_text()):
            assert daemon.poll() is None, "the daemon exited"
            time.sleep(0.02)
        t0 = time.monotonic()
        with Tracker.open(project) as t:
            while t.store.db.execute("SELECT count(*) FROM events "
                                     "WHERE type = 'CalculationSucceeded'").fetchone()[0] < n:
                assert daemon.poll() is None, "the daemon exited"
                time.sleep(0.05)
        seconds = time.monotonic() - t0
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    trips = len((base / "shims" / "trips").read_text().splitlines())
    for line in watcher_log.read_text().splitlines():  # what went wrong, if anything did
        if " WARNING " in line or " ERROR " in line:
            print(f"  daemon: {line}", file=sys.stderr)
    with Tracker.open(project) as t:
        # Reaction: from the remote record's write (its mtime; one clock here) to the
        # JobFinished that the record became in the log.
        for rec in t.store.read(types=["JobFinished", "CalculationSucceeded"]):
            calc = t.state(rec.stream).calcs[rec.event.calculation_id]  # type: ignore[attr-defined]
            written = (remote / str(calc.directory) / "eventflow-done.json").stat().st_mtime
            recorded = datetime.strptime(rec.recorded_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=timezone.utc).timestamp()
            sink = REACTIONS if isinstance(rec.event, ev.JobFinished) else VERDICTS
            sink.append(recorded - written)
    RemoteScheduler(_cluster(remote), project, project / ".eventflow" / "ssh").close()
    return seconds, trips


def poll_cost(base: Path, n: int) -> tuple[float, float, int]:
    """(seconds of one poll, of the rsync of 10% finished folders, round trips of the poll)
    for ``n`` held jobs of one cluster; the jobs are cancelled before returning."""
    root, workdir = base / "proj", base / "remote"
    remote = RemoteScheduler(_cluster(workdir), root, base / "ctl")
    script = workdir / "job.sh"
    workdir.mkdir(parents=True)
    script.write_text("#!/bin/sh\ntrue\n")
    folders = [root / "calcs" / f"m{i}" / "SP" / "1" for i in range(n)]
    for i in range(n):
        twin = workdir / "calcs" / f"m{i}" / "SP" / "1"
        twin.mkdir(parents=True)
        (twin / "SP.out").write_text("done\n")
        if i % 10 == 0:
            (twin / "eventflow-done.json").write_text('{"exit_code": 0}\n')
    tag = f"efpoll{os.getpid()}"
    out = remote.ssh.run(["sh", "-c", 'i=0; while [ "$i" -lt "$1" ]; do sbatch --parsable '
                          '--hold --job-name="$2" --mem=100M --time=00:01:00 "$3" || exit 1; '
                          'i=$((i+1)); done', "submit", str(n), tag, str(script)], 600)
    ids = [line.split(";")[0] for line in out.stdout.split()]
    try:
        assert len(ids) == n, f"submitted {len(ids)} of {n}: {out.stderr[-300:]}"
        jobs = list(zip(ids, folders, strict=True))
        times, fetches = [], []
        for _ in range(3):
            before = remote.ssh.round_trips
            t0 = time.monotonic()
            polled = poll(remote, jobs)
            times.append(time.monotonic() - t0)
            trips = remote.ssh.round_trips - before
            assert len(polled.finished) == len(range(0, n, 10))
            assert all(polled.infos[j].state == "PENDING" for j in ids)
            shutil.rmtree(root / "calcs", ignore_errors=True)
            t0 = time.monotonic()
            remote.fetch(polled.finished)
            fetches.append(time.monotonic() - t0)
    finally:
        for i in range(0, len(ids), 500):
            remote.ssh.run(["scancel", *ids[i:i + 500]], 120)
        remote.close()
    return statistics.median(times), statistics.median(fetches), trips


def run_floor(base: Path, n: int, poll: float) -> tuple[float, float]:
    """(seconds, ssh round trips) for n jobs by ssh sbatch + ssh squeue polling."""
    folder = base / "floor"
    folder.mkdir()
    script = folder / "job.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    ssh = SshConnection(_cluster(folder), base / "ctl")
    tag = f"floor{os.getpid()}{time.monotonic_ns() % 10**6}"
    t0 = time.monotonic()
    ids = []
    for i in range(n):
        out = ssh.run(["sbatch", "--parsable", f"--job-name={tag}-{i}", f"--chdir={folder}",
                       "--ntasks=1", "--mem=200M", "--time=00:10:00", str(script)], 30)
        ids.append(out.stdout.strip().split(";")[0])
    while True:
        out = ssh.run(["squeue", "--noheader", "--format=%i",
                       "--states=PENDING,CONFIGURING,RUNNING", f"--jobs={','.join(ids)}"], 30)
        if not out.stdout.split():
            break
        time.sleep(poll)
    seconds = time.monotonic() - t0
    ssh.close()
    return seconds, ssh.round_trips


def main() -> None:
    def extra(parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--jobs", type=int, default=100)
        parser.add_argument("--rounds", type=int, default=2)
        parser.add_argument("--poll", type=float, default=0.5)
        parser.add_argument("--poll-jobs", type=int, default=1000)

    args = parse_args(__doc__.splitlines()[0], extra)
    n = 10 if args.quick else args.jobs
    rounds = 1 if args.quick else args.rounds
    poll_jobs = 100 if args.quick else args.poll_jobs
    os.environ.setdefault(SSH_CONFIG_ENV, str(SSHD_DIR / "ssh_config"))
    ours, floors = [], []
    for _ in range(rounds):
        for label, fn, sink in (("eventflow", run_eventflow, ours), ("floor", run_floor, floors)):
            base = Path(tempfile.mkdtemp(prefix=f"bench-ssh-{label}-"))
            try:
                sink.append(fn(base, n, args.poll))
                print(f"{label}: {sink[-1][0]:.1f} s, {sink[-1][1]:.0f} round trips",
                      file=sys.stderr)
            finally:
                shutil.rmtree(base, ignore_errors=True)
    base = Path(tempfile.mkdtemp(prefix="bench-ssh-pollcost-"))
    try:
        poll_s, fetch_s, poll_trips = poll_cost(base, poll_jobs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rate = statistics.median(60 * n / s for s, _ in ours)
    floor_rate = statistics.median(60 * n / s for s, _ in floors)
    trips = statistics.median(t / n for _, t in ours)
    floor_trips = statistics.median(t / n for _, t in floors)
    p50 = statistics.median(REACTIONS)
    p90 = statistics.quantiles(REACTIONS, n=10)[-1]
    title = (f"{n} trivial jobs through an SSH cluster ({rounds} round(s), poll {args.poll} s, "
             f"load {os.getloadavg()[0]:.1f})")
    print_table(title, [
        Result(f"{n} jobs, jobs/minute", rate, floor_rate, "ssh sbatch + ssh squeue loop",
               ">= 0.9x", rate >= 0.9 * floor_rate, unit="jobs/min"),
        Result("reaction to a remote completion, p50", p50, None, "",
               f"< poll + 0.5 = {args.poll + 0.5:g} s", p50 < args.poll + 0.5, unit="s",
               note=f"p90 {p90:.2f} s; to the verdict (CalculationSucceeded) p50 "
                    f"{statistics.median(VERDICTS):.2f} s, p90 "
                    f"{statistics.quantiles(VERDICTS, n=10)[-1]:.2f} s"),
        Result("ssh round trips per job lifecycle", trips, None, "", "<= 3", trips <= 3,
               unit="trips", note=f"eventflow {trips:.2f}, the loop {floor_trips:.2f} "
                                  f"(ssh or rsync processes started / jobs)"),
        Result(f"one poll of {poll_jobs} active jobs on one cluster", poll_s, None, "", "-",
               None, unit="s", note=f"{poll_trips} round trip (squeue + record listing); "
                                    f"copying back the {len(range(0, poll_jobs, 10))} finished "
                                    f"folders: one rsync, {fetch_s:.2f} s"),
    ], args.json)


if __name__ == "__main__":
    main()
