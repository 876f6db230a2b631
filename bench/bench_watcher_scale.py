"""The watcher at scale: its memory with 100,000 materials in the log, and what a cycle costs.

The project is bench/make_project.py's (1,000,000 events of 100,000 materials; about 23,000
of them `running` on made-up job ids that no SLURM knows), copied afresh, with submissions
capped at one per cycle so the measurement does not flood the cluster. Then, each as its
own process on the real SLURM (``slurm/local-cluster start``), timed with its peak RSS:

1. ``eventflow watch --once``: the first cycle, which asks SLURM about every active job (in
   chunks of 1,000 ids), finds them all gone and records each loss and the policy's decision;
2. ``eventflow watch --once`` again: a cycle with nothing new, over the same 100,000 materials;
3. ``SlurmScheduler.states`` for 10,000 job ids: what one cycle's question to SLURM about
   10,000 active jobs costs (the ids are unknown to SLURM; a known job costs squeue the same).

Goal (issue: simulation and soak): the watcher's RSS with 100,000 materials < 150 MB.

Run: ``python bench/bench_watcher_scale.py [--quick]`` (``--quick``: 10,000 materials).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_project import make_project  # noqa: E402

CLI = [sys.executable, "-m", "eventflow.shell.cli"]


def _timed(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[3:])}: exit {os.waitstatus_to_exitcode(status)}: "
                         f"{process.stderr.read().decode()[-500:] if process.stderr else ''}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _events(project: Path) -> int:
    with sqlite3.connect(project / ".eventflow" / "events.db") as db:
        return db.execute("SELECT count(*) FROM events").fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    materials, events = (10_000, 100_000) if args.quick else (100_000, 1_000_000)
    if shutil.which("squeue") is None:
        raise SystemExit("bench_watcher_scale: SLURM not found (slurm/local-cluster start)")
    with tempfile.TemporaryDirectory(prefix="eventflow-watcher-scale-") as tmp:
        project = make_project(Path(tmp) / "proj", materials, events)
        (project / "config" / "cluster.yaml").write_text(
            "executor: slurm\nmax_jobs: 1\nmax_submit: 1\n")
        before = _events(project)
        watch = [*CLI, "--project", str(project), "watch", "--once", "--quiet"]
        first = _timed(watch)
        appended = _events(project) - before
        second = _timed(watch)
        ask = [sys.executable, "-c",
               "from eventflow.shell.scheduler import SlurmScheduler\n"
               "SlurmScheduler().states([str(n) for n in range(90_000_000, 90_010_000)])"]
        question = _timed(ask)
    flag = " --quick" if args.quick else ""
    print(f"### The watcher at scale (bench/bench_watcher_scale.py{flag})\n")
    print("| what | wall | CPU | peak RSS | goal | met |")
    print("|---|---:|---:|---:|---|---|")
    print(f"| first cycle over {materials:,} materials ({events:,} events): every active job "
          f"found gone, {appended:,} events appended | {first[0]:.1f} s | {first[1]:.1f} s | "
          f"{first[2]:.0f} MB | < 150 MB | {'yes' if first[2] < 150 else 'no'} |")
    print(f"| next cycle, nothing new, same {materials:,} materials | {second[0]:.2f} s | "
          f"{second[1]:.2f} s | {second[2]:.0f} MB | < 150 MB | "
          f"{'yes' if second[2] < 150 else 'no'} |")
    print(f"| asking SLURM about 10,000 jobs (10 squeue calls), whole process | "
          f"{question[0]:.2f} s | {question[1]:.2f} s | {question[2]:.0f} MB | - | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
