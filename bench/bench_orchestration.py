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
polls ``squeue`` every 0.25 s until its jobs have left the queue (for chains, submitting each B
when its A has left), with the same resources and a one-line job script. It parses nothing,
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

from eventflow.shell.api import Tracker
from eventflow.shell.project import Project

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
    out = subprocess.run(["squeue", "--noheader", "--format=%i", f"--jobs={','.join(job_ids)}"],
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


def run_eventflow(work: Path, n_jobs: int, chains: bool) -> dict[str, float]:
    project = work / "proj"
    Tracker.init(project).close()
    (project / "config" / "cluster.yaml").write_text(
        "executor: slurm\nmax_jobs: 1000\nmax_submit: 1000\n"
        "defaults: {time: '00:10:00', mem: 200M, ntasks: 1, cpus_per_task: 1}\n")
    n_materials = n_jobs // 2 if chains else n_jobs
    with Tracker.open(project) as t:
        for i in range(n_materials):
            t.create_material(SI, material_id=f"{work.name}-m{i:03d}",
                              workflow="test" if chains else "single", code="noop",
                              params={"command": ["true"]})
    log_path = Project.at(project).log_path
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    daemon = subprocess.Popen([sys.executable, "-m", "eventflow.shell.cli", "--project",
                               str(project), "watch", "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    db = sqlite3.connect(f"file:{log_path}?mode=ro", uri=True, timeout=30)
    try:
        deadline = time.monotonic() + 1800
        while _log_count(db, "CalculationSucceeded") + _log_count(db, "CalculationFailed") \
                + _log_count(db, "JobLost") < n_jobs:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"eventflow watch stopped early: {daemon.stderr.read()}")
            time.sleep(0.1)
        wall = time.time() - t0
        failed = _log_count(db, "CalculationFailed") + _log_count(db, "JobLost")
        submitted = [_stamp(r[0]) for r in db.execute(
            "SELECT recorded_at FROM events WHERE type = 'JobSubmitted' ORDER BY seq")]
    finally:
        db.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if failed:
        raise SystemExit(f"{failed} of eventflow's jobs failed: see {project}")
    first_wave = submitted[:n_materials]
    return {"wall_s": wall, "handover_s": max(first_wave) - t0,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


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
            ef_runs, floor_runs = [], []
            for r in range(rounds):
                order = ("ef", "floor") if r % 2 == 0 else ("floor", "ef")
                for who in order:
                    work = root / f"{'c' if chains else 'i'}{r}{who}"
                    work.mkdir()
                    if who == "ef":
                        ef_runs.append(run_eventflow(work, n_jobs, chains))
                    else:
                        floor_runs.append(run_floor(work, n_jobs, chains))
            for name, runs in (("eventflow", ef_runs), ("floor", floor_runs)):
                print(f"{shape}, {name}: " + "; ".join(
                    f"{x['wall_s']:.1f} s wall, {x['cpu_s']:.2f} CPU-s, hand-over "
                    f"{x['handover_s']:.2f} s" for x in runs), file=sys.stderr)
            med = {k: statistics.median(x[k] for x in ef_runs) for k in ef_runs[0]}
            base = {k: statistics.median(x[k] for x in floor_runs) for k in floor_runs[0]}
            rate, floor_rate = n_jobs / med["wall_s"] * 60, n_jobs / base["wall_s"] * 60
            results.append(Result(f"{shape}: jobs/minute (median of {rounds})", rate,
                                  floor_rate, "sbatch + squeue loop", ">= 0.95x floor",
                                  rate >= 0.95 * floor_rate, unit="jobs/min"))
            per_job = med["cpu_s"] / n_jobs
            results.append(Result(
                f"{shape}: CPU-s per job lifecycle, whole process incl. start-up and "
                f"sbatch/squeue", per_job, base["cpu_s"] / n_jobs, "sbatch + squeue loop",
                "<= 0.05 CPU-s", per_job <= 0.05, unit="CPU-s"))
            results.append(Result(
                f"{shape}: the same less one start-up ({start_cpu:.2f} CPU-s)",
                max(0.0, med["cpu_s"] - start_cpu) / n_jobs, None, "", "(information)", None,
                unit="CPU-s"))
            if not chains:
                results.append(Result(
                    f"hand over {n_jobs} submissions: daemon start -> last JobSubmitted",
                    med["handover_s"], base["handover_s"], f"{n_jobs} bare sbatch calls",
                    "< 2 s", med["handover_s"] < 2.0, unit="s"))
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
