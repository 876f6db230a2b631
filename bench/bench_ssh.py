"""Jobs through an SSH cluster: eventflow's remote scheduler against a plain ssh loop.

N trivial jobs (``true``, the ``noop`` code, 1 task, 200 MB) on the loopback sshd
(slurm/local-sshd) in front of the real local SLURM, two ways, alternating in rounds:

* **eventflow**: N one-step materials placed on the cluster (cluster.yaml ``cluster: bench``),
  then watcher cycles in this process (``Runner.cycle``, one every ``--poll`` seconds) until
  the log holds N verdicts. Each job's folder goes up by rsync, sbatch runs over ssh, one
  squeue and one record listing per cycle cover every job, each finished folder comes back by
  rsync, and every fact is recorded in the log.
* **floor**: a loop of ``ssh host sbatch`` (the scripts already in place on the remote side,
  nothing copied), then ``ssh host squeue`` every ``--poll`` seconds until none of its jobs is
  pending or running. Both use the same ssh options and ControlMaster socket kind, so the
  difference is what eventflow does, not how it connects.

Reported: jobs/minute of each (goal: eventflow >= 0.9x the floor), the reaction to a remote
completion (from the remote record's write to its JobFinished in the log; goal: p50 under
the polling interval + 0.5 s) and SSH round trips (ssh or rsync processes started) per job
lifecycle (goal <= 3 on average).

Run: ``python bench/bench_ssh.py [--quick] [--jobs 100] [--rounds 2] [--poll 0.5]`` with
``slurm/local-cluster start`` and ``slurm/local-sshd start`` done.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import Result, parse_args, print_table

from eventflow.core import events as ev
from eventflow.shell import clusters
from eventflow.shell.api import Tracker
from eventflow.shell.runner import Runner
from eventflow.shell.scheduler import SlurmScheduler
from eventflow.shell.ssh import SSH_CONFIG_ENV, SshConnection

SI = Path(__file__).resolve().parents[1] / "tests" / "data" / "structures" / "Si.cif"
SSHD_DIR = Path(os.environ.get("EVENTFLOW_SSHD_DIR", "/tmp/eventflow-sshd"))
ALIAS = "eventflow-local-ssh"
REACTIONS: list[float] = []  # seconds from a remote record's write to its JobFinished


def _cluster(workdir: Path) -> ev.ClusterAdded:
    return ev.ClusterAdded(name="bench", host="127.0.0.1", ssh_config_host=ALIAS,
                           workdir=str(workdir))


def run_eventflow(base: Path, n: int, poll: float) -> tuple[float, float]:
    """(seconds, ssh round trips) for n jobs through eventflow's SSH cluster."""
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
    with Tracker.open(project) as t:
        runner = Runner(t, SlurmScheduler())
        t0 = time.monotonic()
        while True:
            runner.cycle()
            done = t.store.db.execute(
                "SELECT count(*) FROM events WHERE type = 'CalculationSucceeded'").fetchone()[0]
            if done >= n:
                break
            time.sleep(poll)
        seconds = time.monotonic() - t0
        trips = sum(r.ssh.round_trips for r in runner.clusters.remotes_in_use())
        for r in runner.clusters.remotes_in_use():
            r.close()
        # Reaction: from the remote record's write (its mtime; one clock here) to the
        # JobFinished that the record became in the log.
        reactions = []
        for rec in t.store.read(types=["JobFinished"]):
            calc = t.state(rec.stream).calcs[rec.event.calculation_id]  # type: ignore[attr-defined]
            written = (remote / str(calc.directory) / "eventflow-done.json").stat().st_mtime
            recorded = datetime.strptime(rec.recorded_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=timezone.utc).timestamp()
            reactions.append(recorded - written)
    REACTIONS.extend(reactions)
    return seconds, trips


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

    args = parse_args(__doc__.splitlines()[0], extra)
    n = 10 if args.quick else args.jobs
    rounds = 1 if args.quick else args.rounds
    os.environ.setdefault(SSH_CONFIG_ENV, str(SSHD_DIR / "ssh_config"))
    ours, floors = [], []
    for _ in range(rounds):
        for label, fn, sink in (("eventflow", run_eventflow, ours), ("floor", run_floor, floors)):
            base = Path(tempfile.mkdtemp(prefix=f"bench-ssh-{label}-"))
            try:
                sink.append(fn(base, n, args.poll))
            finally:
                shutil.rmtree(base, ignore_errors=True)
    rate = statistics.median(60 * n / s for s, _ in ours)
    floor_rate = statistics.median(60 * n / s for s, _ in floors)
    trips = statistics.median(t / n for _, t in ours)
    floor_trips = statistics.median(t / n for _, t in floors)
    title = f"{n} trivial jobs through an SSH cluster ({rounds} round(s), poll {args.poll} s)"
    print_table(title, [
        Result(f"{n} jobs, jobs/minute", rate, floor_rate, "ssh sbatch + ssh squeue loop",
               ">= 0.9x", rate >= 0.9 * floor_rate, unit="jobs/min"),
        Result("reaction to a remote completion, p50", statistics.median(REACTIONS), None, "",
               f"< poll + 0.5 = {args.poll + 0.5:g} s",
               statistics.median(REACTIONS) < args.poll + 0.5, unit="s",
               note=f"p90 {statistics.quantiles(REACTIONS, n=10)[-1]:.2f} s"),
        Result("ssh round trips per job lifecycle", trips, None, "", "<= 3", trips <= 3,
               unit="trips", note=f"eventflow {trips:.2f}, the loop {floor_trips:.2f} "
                                  f"(ssh or rsync processes started / jobs)"),
    ], args.json)


if __name__ == "__main__":
    main()
