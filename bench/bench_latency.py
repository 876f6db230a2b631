"""Reaction latency of ``eventflow watch``: a completion record written -> the follow-up submitted.

A project of materials on the built-in workflow ``test`` (step A, then B once A succeeded,
code ``noop``) is watched by a real ``eventflow watch`` daemon (its own process, started from
this file with ``--serve``). One at a time, in random order and after a random pause (so the
polling observer's phase is random), A's completion record of a material is written the way
job scripts write it (a temporary file, then a rename); the daemon parses it, records it, runs
the policy and submits B. Latency = the moment B's submission is issued minus the moment A's
record appeared.

* Default: the daemon's scheduler is a stand-in whose ``submit`` only notes the time and
  returns an id. That measures eventflow's own reaction (watchdog delivery, the cycle, the
  log appends, writing B's job folder), without sbatch's own time in it; A's jobs never run
  and the benchmark writes their records itself.
* ``--slurm``: also the real thing on a running SLURM: one material at a time is registered
  while the daemon runs; its A is a real job (``true``) whose script writes the record, and
  the daemon calls the real ``sbatch`` for B (noted just before sbatch runs). Latency is
  measured from the record's mtime (the file system's clock, a few ms coarse).

Baseline: watchdog alone (the same observer, inotify or polling at 1 s) noting when the same
kind of rename becomes visible to a handler: the floor any watchdog-based reaction has.

Then a burst: N (default 10,000) materials whose only step is submitted (the log generated
with append_many), a daemon watching, and N completion records written as fast as this
process can rename them. Every one must be recorded exactly once (none missed, none twice);
the time until the last is recorded is reported for information.

Run: ``python bench/bench_latency.py [--quick] [--samples 200] [--burst 10000] [--slurm]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import Result, print_table

from eventflow.core import events as ev
from eventflow.shell.api import Tracker
from eventflow.shell.jobs import job_name
from eventflow.shell.project import Project
from eventflow.shell.projections import Projections
from eventflow.shell.scheduler import JobInfo, SlurmScheduler
from eventflow.shell.store import EventStore, NewEvent

RECORD = "eventflow-done.json"
SI = Path(__file__).resolve().parents[1] / "tests" / "data" / "structures" / "Si.cif"


# --- the daemon side (python bench_latency.py --serve ...) ---------------------------------------


class StampingScheduler:
    """Stand-in scheduler: ``submit`` notes (job name, time) and returns a fresh id; every job
    it gave out stays PENDING (it never runs: the benchmark writes its record itself)."""

    name = "bench"

    def __init__(self, stamps: Path) -> None:
        self.stamps = stamps.open("a", buffering=1)
        self.n = 0

    def ping(self) -> bool:
        return True

    def submit(self, script: Path, job_name: str, workdir: Path) -> str:
        self.stamps.write(f"{job_name} {time.time():.6f}\n")
        self.n += 1
        return f"bench-{os.getpid()}-{self.n}"

    def states(self, job_ids: list[str]) -> dict[str, JobInfo]:
        return {j: JobInfo(job_id=j, state="PENDING") for j in job_ids}

    def find(self, job_name: str) -> list[JobInfo]:
        return []

    def cancel(self, job_id: str) -> None:
        return None


class StampingSlurm(SlurmScheduler):
    """The real SLURM scheduler, noting the moment each sbatch is issued."""

    def __init__(self, stamps: Path) -> None:
        super().__init__()
        self.stamps = stamps.open("a", buffering=1)

    def submit(self, script: Path, job_name: str, workdir: Path) -> str:
        self.stamps.write(f"{job_name} {time.time():.6f}\n")
        return super().submit(script, job_name, workdir)


def serve(project: Path, stamps: Path, poll: float | None, slurm: bool) -> int:
    from eventflow.shell.watcher import Watcher, setup_logging

    with Tracker.open(project) as tracker:
        setup_logging(tracker.project.state_dir / "watcher.log", as_json=False, echo=False)
        scheduler = StampingSlurm(stamps) if slurm else StampingScheduler(stamps)
        return Watcher(tracker, poll=poll, scheduler=scheduler).run()


class Daemon:
    def __init__(self, project: Path, stamps: Path, poll: float | None, slurm: bool) -> None:
        self.project = project
        args = [sys.executable, __file__, "--serve", str(project), "--stamps", str(stamps)]
        if poll is not None:
            args += ["--poll", str(poll)]
        if slurm:
            args.append("--slurm")
        self.errors = project.parent / "daemon.err"
        with self.errors.open("w") as errors:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=errors)

    def wait_watching(self, timeout: float = 600) -> None:
        log = Project.at(self.project).state_dir / "watcher.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited: {self.errors.read_text()[-2000:]}")
            if log.exists() and "watching" in log.read_text():
                return
            time.sleep(0.05)
        raise SystemExit("the daemon did not start watching")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(timeout=600) != 0:
            raise SystemExit(f"the daemon failed: {self.errors.read_text()[-2000:]}")


# --- helpers ---------------------------------------------------------------------------------


def write_record(folder: Path, job_id: str) -> float:
    """Write a completion record as the job script does; return when it became visible."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp = folder / f".{RECORD}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"job_id": job_id, "exit_code": 0, "signal": None,
                               "reason": "completed", "started_at": now, "finished_at": now,
                               "host": "bench"}))
    os.replace(tmp, folder / RECORD)
    return time.time()


class Stamps:
    """Reads the daemon's (job name -> submit time) notes as they are appended."""

    def __init__(self, path: Path) -> None:
        path.touch()
        self.handle = path.open()
        self.seen: dict[str, float] = {}
        self._partial = ""

    def poll(self) -> None:
        chunk = self._partial + self.handle.read()
        lines = chunk.split("\n")
        self._partial = lines.pop()
        for line in lines:
            name, _, stamp = line.rpartition(" ")
            self.seen.setdefault(name, float(stamp))

    def wait(self, name: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while name not in self.seen:
            if time.monotonic() > deadline:
                raise SystemExit(f"no submission of {name} within {timeout} s")
            time.sleep(0.001)
            self.poll()
        return self.seen[name]

    def wait_count(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(self.seen)} of {n} submissions within {timeout} s")
            time.sleep(0.01)
            self.poll()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def new_project(root: Path, executor: str = "local") -> Path:
    project = root / "proj"
    Tracker.init(project).close()
    (project / "config" / "cluster.yaml").write_text(
        f"executor: {executor}\nmax_jobs: 100000\nmax_submit: 100000\n"
        "defaults: {time: '00:10:00', mem: 200M}\n")
    return project


# --- reaction latency ---------------------------------------------------------------------------


def latency(root: Path, samples: int, poll: float | None, slurm: bool) -> list[float]:
    """``samples`` latencies (seconds), each record written after the previous reaction."""
    project = new_project(root, "slurm" if slurm else "local")
    mids = [f"lat{i:04d}" for i in range(samples)]
    stamps_path = root / "stamps.txt"
    stamps = Stamps(stamps_path)
    rng = random.Random(7)
    pause = 1.0 if poll else 0.25
    out = []
    if slurm:
        # One material at a time, registered while the daemon runs (it watches the log): A
        # runs `true` at once and writes its record; B's sbatch is the reaction. Waiting jobs
        # would hold the node's CPUs, so none is kept waiting.
        daemon = Daemon(project, stamps_path, poll, slurm)
        try:
            daemon.wait_watching()
            with Tracker.open(project) as t:
                project_id = t.project.project_id
                for mid in mids:
                    time.sleep(rng.uniform(0, pause))
                    t.create_material(SI, material_id=mid, workflow="test", code="noop",
                                      params={"command": ["true"]})
                    submitted = stamps.wait(job_name(project_id, f"{mid}/B/1"), timeout=300)
                    record = project / "calcs" / mid / "A" / "1" / RECORD
                    out.append(submitted - record.stat().st_mtime_ns / 1e9)
        finally:
            daemon.stop()
        return out
    with Tracker.open(project) as t:
        for mid in mids:
            t.create_material(SI, material_id=mid, workflow="test", code="noop",
                              params={"command": ["true"]})
        project_id = t.project.project_id
    daemon = Daemon(project, stamps_path, poll, slurm)
    try:
        daemon.wait_watching()
        stamps.wait_count(samples, timeout=600)  # every A submitted
        with Tracker.open(project) as t:
            job_ids = {m: t.state(m).calcs[f"{m}/A/1"].job_id for m in mids}
        order = mids[:]
        rng.shuffle(order)
        for mid in order:
            time.sleep(rng.uniform(0, pause))
            written = write_record(project / "calcs" / mid / "A" / "1", str(job_ids[mid]))
            submitted = stamps.wait(job_name(project_id, f"{mid}/B/1"), timeout=300)
            out.append(submitted - written)
    finally:
        daemon.stop()
    return out


def watchdog_floor(root: Path, samples: int, poll: float | None) -> list[float]:
    """The same renames seen by a bare watchdog observer's handler."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    base = root / "floor"
    folders = [base / f"m{i:04d}" / "A" / "1" for i in range(samples)]
    for f in folders:
        f.mkdir(parents=True)
    seen: dict[str, float] = {}
    arrived = threading.Event()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            path = str(getattr(event, "dest_path", "") or event.src_path)
            if path.endswith(RECORD):
                seen.setdefault(path, time.time())
                arrived.set()

    observer = PollingObserver(timeout=poll) if poll else Observer()
    observer.schedule(Handler(), str(base), recursive=True)
    observer.start()
    rng = random.Random(7)
    out = []
    try:
        time.sleep(0.5)
        for folder in folders:
            time.sleep(rng.uniform(0, 1.0 if poll else 0.25))
            arrived.clear()
            written = write_record(folder, "x")
            key = str(folder / RECORD)
            deadline = time.monotonic() + 60
            while key not in seen and time.monotonic() < deadline:
                arrived.wait(0.01)
            out.append(seen[key] - written)
    finally:
        observer.stop()
        observer.join()
    return out


# --- the burst ------------------------------------------------------------------------------------


def burst_project(root: Path, n: int) -> Path:
    """``n`` materials, each with step SP submitted to the stand-in scheduler (append_many)."""
    project = new_project(root)
    proj = Project.at(project)
    items = []
    for i in range(n):
        mid = f"b{i:05d}"
        cid = f"{mid}/SP/1"
        items += [
            NewEvent(mid, ev.MaterialRegistered(mid, "Si2", "single", "noop", "bench",
                                                params={"command": ["true"]}),
                     f"register:{mid}", {"actor": "bench"}),
            NewEvent(mid, ev.SubmissionRequested(cid, "SP", 1, directory=f"calcs/{cid}",
                                                 reason="workflow"),
                     f"request:{cid}", {"actor": "bench"}),
            NewEvent(mid, ev.JobSubmitted(cid, f"burst-{i}", "bench"), f"submitted:{cid}",
                     {"actor": "bench"}),
        ]
        (project / "calcs" / mid / "SP" / "1").mkdir(parents=True)
    with EventStore(proj.log_path) as store:
        for start in range(0, len(items), 3000):
            store.append_many(items[start:start + 3000])
        views = Projections(proj.projections_path, create=True)
        views.rebuild(store)
        views.close()
    return project


def count_in_log(project: Path, type_: str) -> tuple[int, int]:
    """(events of ``type_``, distinct calculations among them), read-only."""
    db = sqlite3.connect(f"file:{Project.at(project).log_path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(
            "SELECT count(*), count(DISTINCT json_extract(data, '$.calculation_id')) "
            "FROM events WHERE type = ?", (type_,)).fetchone()
    finally:
        db.close()


def burst(root: Path, n: int, poll: float | None) -> dict[str, float]:
    project = burst_project(root, n)
    daemon = Daemon(project, root / "burst-stamps.txt", poll, slurm=False)
    try:
        daemon.wait_watching()
        time.sleep(1.0)
        t0 = time.time()
        for i in range(n):
            write_record(project / "calcs" / f"b{i:05d}" / "SP" / "1", f"burst-{i}")
        written = time.time()
        last, stalled = -1, time.monotonic()
        while True:
            done, _ = count_in_log(project, "JobFinished")
            if done >= n:
                break
            if done != last:
                last, stalled = done, time.monotonic()
            elif time.monotonic() - stalled > 300:
                break  # no progress for 5 minutes: report what is missing
            time.sleep(0.5)
        finished_all = time.time()
    finally:
        daemon.stop()
    finished, distinct = count_in_log(project, "JobFinished")
    succeeded, _ = count_in_log(project, "CalculationSucceeded")
    return {"n": n, "write_s": written - t0, "all_recorded_s": finished_all - t0,
            "finished": finished, "distinct": distinct, "succeeded": succeeded}


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--samples", type=int, default=None,
                        help="latency samples with inotify (default 200; polling: a quarter)")
    parser.add_argument("--burst", type=int, default=None, help="burst size (default 10,000)")
    parser.add_argument("--slurm", action="store_true",
                        help="also measure with real sbatch on a running SLURM")
    parser.add_argument("--burst-poll", action="store_true",
                        help="also run the burst with the polling observer at 1 s")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stamps", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--poll", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        return serve(args.serve, args.stamps, args.poll, args.slurm)

    samples = args.samples or (20 if args.quick else 200)
    poll_samples = max(8, samples // 4)
    n_burst = args.burst or (500 if args.quick else 10_000)
    results: list[Result] = []
    root = Path(tempfile.mkdtemp(prefix="eventflow-latency-"))
    try:
        modes: list[tuple[str, float | None, bool, int]] = [
            ("inotify", None, False, samples), ("polling 1 s", 1.0, False, poll_samples)]
        if args.slurm:
            modes.append(("inotify, real sbatch", None, True, max(10, samples // 4)))
        for label, poll, slurm, n in modes:
            work = root / label.replace(" ", "_").replace(",", "")
            work.mkdir()
            ef = latency(work, n, poll, slurm)
            floor = watchdog_floor(work, n, poll)
            for q, name in ((0.5, "p50"), (0.95, "p95")):
                goal = "< 100 ms" if (poll is None and q == 0.5) else "(information)"
                met = (pct(ef, q) < 0.1) if goal.startswith("<") else None
                results.append(Result(
                    f"record written -> follow-up submitted, {label}, {name} ({n} samples)",
                    pct(ef, q) * 1e3, pct(floor, q) * 1e3, "watchdog alone", goal, met,
                    unit="ms"))
            print(f"{label}: eventflow mean {statistics.mean(ef) * 1e3:.1f} ms, max "
                  f"{max(ef) * 1e3:.1f} ms; watchdog alone mean "
                  f"{statistics.mean(floor) * 1e3:.1f} ms", file=sys.stderr)
        bursts = [("inotify", None)] + ([("polling 1 s", 1.0)] if args.burst_poll else [])
        for label, poll in bursts:
            work = root / f"burst-{label.replace(' ', '_')}"
            work.mkdir()
            b = burst(work, n_burst, poll)
            ok = b["finished"] == b["distinct"] == b["succeeded"] == n_burst
            results.append(Result(
                f"burst of {n_burst:,} completion records, {label}: recorded (each once)",
                b["distinct"], None, "", f"all {n_burst:,}, none twice", ok, unit="records",
                note=f"JobFinished {b['finished']:,}, distinct {b['distinct']:,}"))
            results.append(Result(
                f"burst, {label}: time until the last was recorded (records written in "
                f"{b['write_s']:.1f} s)", b["all_recorded_s"], None, "", "(information)", None,
                unit="s"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table("Reaction latency (bench_latency.py)", results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
