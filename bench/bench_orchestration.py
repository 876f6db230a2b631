"""Orchestration cost on a real SLURM: trivial jobs through ``eventflow watch`` against a floor.

Two workloads of 50 trivial jobs (``true``, 1 task, 200 MB, the ``noop`` code), each run by
eventflow and by the floor, alternating in rounds:

* **independent**: 50 one-step materials (workflow ``single``), all submitted at once.
* **chains**: 25 materials of two steps (workflow ``test``: B after A succeeded): each B is
  submitted in reaction to its A's end, so detection and the next submission are timed too.

eventflow: the materials are registered (not timed), then ``eventflow watch`` (the real CLI,
its own process, inotify) is started; the clock runs from its start until the log holds every
verdict (CalculationSucceeded), read from the log every 0.1 s; then it is stopped with SIGTERM.
The floor: a bare loop in its own process that calls ``sbatch --parsable`` for each job and
polls ``squeue`` every 0.25 s until none of its jobs is pending or running (COMPLETING counts
as done; for chains, each B is submitted as soon as its A is done), with the same resources and
a one-line job script. It parses nothing,
records nothing and survives no crash: the least any orchestration can do.

Reported: jobs/minute (goal >= 0.95x the floor), CPU seconds per job lifecycle of the whole
eventflow process including its sbatch/squeue children and its own start-up (goal <= 0.05;
the floor's for comparison), and the time to hand 50 submissions over to SLURM: from starting
the daemon to the 50th JobSubmitted in the log (goal < 2 s; the floor: its 50 sbatch calls).

Run: ``python bench/bench_orchestration.py [--quick] [--jobs 50] [--rounds 3]`` with SLURM
running (``slurm/local-cluster start``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import Result, print_table

from eventflow.core import events as ev
from eventflow.shell.api import Tracker
from eventflow.shell.project import Project
from eventflow.shell.store import EventStore, NewEvent

SI = Path(__file__).resolve().parents[1] / "tests" / "data" / "structures" / "Si.cif"
RESOURCES = ["--ntasks=1", "--cpus-per-task=1", "--mem=200M", "--time=00:10:00"]
FLOOR_POLL_S = 0.25


# --- the floor (python bench_orchestration.py --floor ...) ---------------------------------------


def _sbatch(folder: Path, name: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", f"--job-name={name}", f"--chdir={folder}",
                          *RESOURCES, str(folder / "job.sh")], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip().split(";")[0]


def _active(job_ids: list[str]) -> set[str]:
    """The jobs still pending or running. A COMPLETING job counts as done: its script has
    ended (the strongest floor; SLURM may list it for seconds more while it cleans up)."""
    out = subprocess.run(["squeue", "--noheader", "--format=%i",
                          "--states=PENDING,CONFIGURING,RUNNING", f"--jobs={','.join(job_ids)}"],
                         capture_output=True, text=True)
    return set(out.stdout.split())


def floor(base: Path, n_jobs: int, chains: bool, tag: str) -> dict[str, float]:
    """sbatch + squeue, nothing else. Returns its own timings."""
    n_first = n_jobs // 2 if chains else n_jobs
    t0 = time.time()
    first = {}
    for i in range(n_first):
        folder = base / f"j{i}" / "A"
        first[_sbatch(folder, f"floor-{tag}-{i}-A")] = i
    handed_over = time.time() - t0
    waiting = dict(first)  # job id -> material index
    while waiting:
        time.sleep(FLOOR_POLL_S)
        active = _active(list(waiting))
        for job_id in [j for j in waiting if j not in active]:
            i = waiting.pop(job_id)
            if chains and job_id in first:
                waiting[_sbatch(base / f"j{i}" / "B", f"floor-{tag}-{i}-B")] = i
    return {"handover_s": handed_over, "wall_s": time.time() - t0}


def run_floor(work: Path, n_jobs: int, chains: bool) -> dict[str, float]:
    base = work / "floor"
    for i in range(n_jobs):
        for step in ("A", "B"):
            folder = base / f"j{i}" / step
            folder.mkdir(parents=True)
            (folder / "job.sh").write_text("#!/bin/bash\ntrue\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "--floor", str(base), "--jobs", str(n_jobs),
                           *(["--chains"] if chains else []), "--tag", work.name],
                          capture_output=True, text=True, check=True)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = json.loads(proc.stdout)
    return {"wall_s": wall, "handover_s": own["handover_s"],
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


# --- eventflow ----------------------------------------------------------------------------------


def _log_count(db: sqlite3.Connection, type_: str) -> int:
    return db.execute("SELECT count(*) FROM events WHERE type = ?", (type_,)).fetchone()[0]


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _new_project(work: Path) -> Path:
    project = work / "proj"
    Tracker.init(project).close()
    (project / "config" / "cluster.yaml").write_text(
        "executor: slurm\nmax_jobs: 1000\nmax_submit: 1000\n"
        "defaults: {time: '00:10:00', mem: 200M, ntasks: 1, cpus_per_task: 1}\n")
    return project


def _work_items(work: Path, n_materials: int, chains: bool) -> list[NewEvent]:
    """What registering the materials records: MaterialRegistered and, as the policy reacts,
    the first step's SubmissionRequested (with the keys the API and the policy use)."""
    workflow, step = ("test", "A") if chains else ("single", "SP")
    items = []
    for i in range(n_materials):
        mid = f"{work.name}-m{i:03d}"
        cid = f"{mid}/{step}/1"
        items += [NewEvent(mid, ev.MaterialRegistered(mid, "Si2", workflow, "noop", "bench",
                                                      params={"command": ["true"]}),
                           f"register:{mid}", {"actor": "bench"}),
                  NewEvent(mid, ev.SubmissionRequested(cid, step, 1, directory=f"calcs/{cid}",
                                                       reason="workflow"),
                           f"request:{cid}", {"actor": "policy"})]
    return items


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of ``pid`` (its reaped children included), in ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])


def _wait_verdicts(db: sqlite3.Connection, n_jobs: int, daemon: subprocess.Popen,
                   work: Path) -> None:
    deadline = time.monotonic() + 1800
    while sum(_log_count(db, t) for t in ("CalculationSucceeded", "CalculationFailed",
                                           "JobLost")) < n_jobs:
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"eventflow watch stopped early: see {work / 'daemon.err'}")
        time.sleep(0.1)


def run_eventflow(work: Path, n_jobs: int, chains: bool, warm: bool) -> dict[str, float]:
    """cold: the materials are registered, then the clock starts with the daemon's process.
    warm: the daemon runs (idle) first; the clock starts when the work is appended to the log
    (one transaction), which the daemon notices through its watch on the log."""
    project = _new_project(work)
    n_materials = n_jobs // 2 if chains else n_jobs
    items = _work_items(work, n_materials, chains)
    log_path = Project.at(project).log_path
    if not warm:
        with EventStore(log_path) as store:
            store.append_many(items)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    errors = (work / "daemon.err").open("w")
    daemon = subprocess.Popen([sys.executable, "-m", "eventflow.shell.cli", "--project",
                               str(project), "watch", "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=errors)
    db = sqlite3.connect(f"file:{log_path}?mode=ro", uri=True, timeout=30)
    try:
        if warm:
            log = Project.at(project).state_dir / "watcher.log"
            while not (log.exists() and "watching" in log.read_text()):
                time.sleep(0.05)
            time.sleep(1.0)  # its first (empty) cycle is over
            ticks = _cpu_ticks(daemon.pid)
            t0 = time.time()
            with EventStore(log_path) as store:
                store.append_many(items)
        _wait_verdicts(db, n_jobs, daemon, work)
        wall = time.time() - t0
        if warm:
            cpu = (_cpu_ticks(daemon.pid) - ticks) / os.sysconf("SC_CLK_TCK")
        failed = _log_count(db, "CalculationFailed") + _log_count(db, "JobLost")
        submitted = [_stamp(r[0]) for r in db.execute(
            "SELECT recorded_at FROM events WHERE type = 'JobSubmitted' ORDER BY seq")]
    finally:
        db.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=600)
        errors.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not warm:
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if failed:
        raise SystemExit(f"{failed} of eventflow's jobs failed: see {project}")
    return {"wall_s": wall, "handover_s": max(submitted[:n_materials]) - t0, "cpu_s": cpu}


def startup_cpu(work: Path) -> float:
    """CPU seconds of `eventflow watch --once` on an empty project: start-up and one cycle."""
    project = work / "empty"
    Tracker.init(project).close()
    (project / "config" / "cluster.yaml").write_text("executor: slurm\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "eventflow.shell.cli", "--project", str(project),
                    "watch", "--once", "--quiet"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 jobs, 1 round (a smoke run)")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per workload (default 50)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--chains", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n_jobs = args.jobs or (10 if args.quick else 50)
    if args.floor is not None:
        print(json.dumps(floor(args.floor, n_jobs, args.chains, args.tag)))
        return 0
    if subprocess.run(["scontrol", "ping"], capture_output=True, text=True).returncode != 0:
        print("no SLURM controller answers `scontrol ping`: start one with "
              "slurm/local-cluster start", file=sys.stderr)
        return 1
    rounds = args.rounds or (1 if args.quick else 3)
    root = Path(tempfile.mkdtemp(prefix="eventflow-orchestration-"))
    results: list[Result] = []
    try:
        start_cpu = startup_cpu(root)
        for chains in (False, True):
            shape = (f"{n_jobs // 2} chains of 2 steps" if chains
                     else f"{n_jobs} independent jobs")
            runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "floor": []}
            for r in range(rounds):
                order = list(runs) if r % 2 == 0 else list(reversed(runs))
                for who in order:
                    work = root / f"{'c' if chains else 'i'}{r}{who}"
                    work.mkdir()
                    if who == "floor":
                        runs[who].append(run_floor(work, n_jobs, chains))
                    else:
                        runs[who].append(run_eventflow(work, n_jobs, chains, who == "warm"))
            for who, done in runs.items():
                print(f"{shape}, {who}: " + "; ".join(
                    f"{x['wall_s']:.2f} s wall, {x['cpu_s']:.2f} CPU-s, hand-over "
                    f"{x['handover_s']:.2f} s" for x in done), file=sys.stderr)
            med = {who: {k: statistics.median(x[k] for x in done) for k in done[0]}
                   for who, done in runs.items()}
            base = med["floor"]
            floor_rate = n_jobs / base["wall_s"] * 60
            for who, label in (("warm", "daemon already running"),
                               ("cold", "daemon started with the work")):
                rate = n_jobs / med[who]["wall_s"] * 60
                results.append(Result(f"{shape}, {label}: jobs/minute (median of {rounds})",
                                      rate, floor_rate, "sbatch + squeue loop",
                                      ">= 0.95x floor", rate >= 0.95 * floor_rate,
                                      unit="jobs/min"))
            for who, label in (("warm", "daemon already running: its CPU for the work"),
                               ("cold", "daemon started with the work: whole process incl. "
                                        f"start-up ({start_cpu:.2f} CPU-s)")):
                per_job = med[who]["cpu_s"] / n_jobs
                results.append(Result(
                    f"{shape}, CPU-s per job lifecycle, {label}, incl. sbatch/squeue",
                    per_job, base["cpu_s"] / n_jobs, "sbatch + squeue loop", "<= 0.05 CPU-s",
                    per_job <= 0.05, unit="CPU-s"))
            if not chains:
                for who, label in (("warm", "work appended -> last JobSubmitted"),
                                   ("cold", "daemon start -> last JobSubmitted")):
                    results.append(Result(
                        f"hand over {n_jobs} submissions, {label}", med[who]["handover_s"],
                        base["handover_s"], f"{n_jobs} bare sbatch calls", "< 2 s",
                        med[who]["handover_s"] < 2.0, unit="s"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for r in results:  # CPU-s and jobs/min print as plain numbers: make them readable
        if r.unit == "CPU-s":
            r.unit = "s"
    print_table("Orchestration on SLURM (bench_orchestration.py)", results, args.json)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
