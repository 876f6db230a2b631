"""The watcher at scale: the daemon's memory with 100,000 materials, and a cycle over 10,000
real active jobs.

The project: 100,000 materials (``--quick``: 10,000), every one with its job folders on disk
(calcs/<material>/<step>/<attempt>, about 4 folders a material). All but ``--active`` of them
are finished (done, retried then done, lost then done, given up, held: bench/make_project.py's
histories; the log is cached); the other ``--active`` (default 10,000, or as many as SLURM's
MaxJobCount leaves room for) are `submitted` on REAL jobs of the local SLURM cluster, submitted
``--hold`` by this benchmark (``sbatch --hold --wrap=true``) and scancelled at the end.
Submissions are off (``max_submit: 0``), so nothing else reaches the cluster.

Measured, each as its own process:

1. ``eventflow watch --once``: one cycle over the project, asking SLURM about every active job
   (squeue, 1,000 ids a call); its wall and CPU. Then the same cycle in a process of its own
   with every scheduler command timed, and that process's peak RSS (VmHWM: wait4's ru_maxrss
   of a child spawned from this big process carries this process's peak); against the
   baseline of one bare ``squeue --me`` listing (what any watcher must pay to ask), and for
   comparison squeue asked by id, 1,000 ids a call (what the cycle did before).
2. before this (no job yet submitted): what the daemon's watch used to cost, watchdog's
   recursive inotify observer on the whole calcs/ tree, as a process of its own;
3. ``eventflow watch`` (the daemon; inotify, then ``--poll 1``) with ``--reconcile 12``:
   started, left to run two cycles (18 s; a record written during a cycle waits for its end),
   then one active job's completion record is written and the
   daemon must record it (JobFinished) through its watch; its peak RSS (VmHWM), its RSS, and the
   inotify watches it holds (from /proc). Baseline: the own peak RSS of the one-cycle process.

Goal (issue: simulation and soak): the daemon's RSS with 100,000 materials < 150 MB.

Run: ``python bench/bench_watcher_scale.py [--quick] [--active N]`` on the real SLURM cluster
(``slurm/local-cluster start``). It fills SLURM's job table for a minute or two: not while
others run integration tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_project import (  # noqa: E402
    History,
    _full_done,
    _gave_up,
    _held,
    _lost_then_ok,
    _sp_done,
    _sp_retry_done,
    batches,
    bench_root,
)

from eventflow.core import events as ev  # noqa: E402
from eventflow.shell.store import EventStore, NewEvent  # noqa: E402

CLI = [sys.executable, "-m", "eventflow.shell.cli"]
FINISHED = ((40, _sp_done), (12, _sp_retry_done), (7, _full_done), (6, _lost_then_ok),
            (6, _gave_up), (5, _held))
JOB_NAME = f"eventflow-bench-scale-{os.getpid()}"
CHUNK = 1000  # ids per squeue / scancel call, as the watcher does
WAIT = 600.0
SPARE = 1000  # room left in SLURM's job table for others (finished jobs stay there 300 s)


# --- the project ------------------------------------------------------------------------------


def finished_log(n: int) -> Path:
    """A cached log of ``n`` finished materials (mp-000001 ...)."""
    path = bench_root() / f"scale-finished-v1-{n}m.db"
    if not path.exists():
        print(f"generating {n:,} finished materials into {path} (cached)...", file=sys.stderr,
              flush=True)
        rng = random.Random(13)
        weights = [w for w, _ in FINISHED]
        tmp = path.with_name(path.name + ".partial")
        for stale in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            stale.unlink(missing_ok=True)

        def items():
            for i in range(n):
                mid = f"mp-{i + 1:06d}"
                scenario = rng.choices(FINISHED, weights)[0][1]
                for event in scenario(History(mid, rng)).events:
                    yield NewEvent(mid, event, meta={"actor": "bench"})

        with EventStore(tmp, create=True, synchronous="NORMAL") as store:
            for batch in batches(items()):
                store.append_many(batch)
        os.replace(tmp, path)
    return path


def make_finished_project(folder: Path, finished: int) -> tuple[Path, int]:
    """The project of ``finished`` finished materials (the cached log), every calculation's
    folder on disk, projections built. Returns (project, folders made)."""
    from eventflow.shell.api import Tracker
    from eventflow.shell.projections import Projections

    Tracker.init(folder).close()
    (folder / "config" / "cluster.yaml").write_text(
        "executor: slurm\nmax_jobs: 100000\nmax_submit: 0\n")
    with Tracker.open(folder) as tracker:
        log, projections = tracker.project.log_path, tracker.project.projections_path
    for path in (log, projections):
        for extra in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            extra.unlink(missing_ok=True)
    shutil.copyfile(finished_log(finished), log)
    with EventStore(log) as store:
        views = Projections(projections, create=True)
        views.rebuild(store)
        directories = [row[0] for row in views.db.execute(
            "SELECT directory FROM calculations WHERE directory != ''")]
        views.close()
    return folder, _make_folders(folder, directories)


def add_active(folder: Path, job_ids: list[str]) -> int:
    """One `submitted` material per real job id (appended, projections caught up), with its
    folder; returns the folders made."""
    from eventflow.shell.projections import Projections

    rng = random.Random(17)
    directories = []

    def active():
        for i, job_id in enumerate(job_ids):
            mid = f"active-{i + 1:06d}"
            h = History(mid, rng).register("scf_only")
            cid = f"{mid}/SP/1"
            directories.append(f"calcs/{cid}")
            h.events.append(ev.SubmissionRequested(cid, "SP", 1, directory=f"calcs/{cid}",
                                                   reason="workflow"))
            h.events.append(ev.JobSubmitted(cid, job_id))
            for event in h.events:
                yield NewEvent(mid, event, meta={"actor": "bench"})

    state = folder / ".eventflow"
    with EventStore(state / "events.db") as store:
        for batch in batches(active()):
            store.append_many(batch)
        views = Projections(state / "projections.db")
        views.catch_up(store)
        views.close()
    return _make_folders(folder, directories)


def _make_folders(folder: Path, directories: list[str]) -> int:
    made = set()
    for directory in directories:
        path = folder / directory
        path.mkdir(parents=True, exist_ok=True)
        made.update((path, path.parent, path.parent.parent))
    return len(made)


# --- SLURM ------------------------------------------------------------------------------------


def room_in_slurm(wanted: int) -> tuple[int, str]:
    """How many held jobs fit under MaxJobCount beside what the table holds now, leaving
    SPARE for the other users of a shared cluster."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                            check=True).stdout
    match = re.search(r"^MaxJobCount\s*=\s*(\d+)", config, re.M)
    limit = int(match.group(1)) if match else 10_000
    in_table = len(subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i"],
                                  capture_output=True, text=True, check=True).stdout.split())
    fits = max(0, min(wanted, limit - in_table - SPARE))
    return fits, f"MaxJobCount {limit}, {in_table} jobs in the table before"


def submit_held(n: int) -> tuple[list[str], float]:
    """``n`` held trivial jobs; their ids and the wall time it took. Stops at the first refusal
    (the table full): what was submitted is returned, to be measured and cancelled."""
    ids: list[str] = []
    start = time.perf_counter()
    for _ in range(n):
        out = subprocess.run(["sbatch", "--hold", "--parsable", f"--job-name={JOB_NAME}",
                              "--output=/dev/null", "--time=00:01:00", "--mem=10M",
                              "--wrap=true"], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"sbatch refused after {len(ids)} jobs: {out.stderr.strip()}",
                  file=sys.stderr)
            break
        ids.append(out.stdout.strip().split(";")[0])
    return ids, time.perf_counter() - start


def cancel(ids: list[str]) -> None:
    for i in range(0, len(ids), CHUNK):
        subprocess.run(["scancel", *ids[i:i + CHUNK]], capture_output=True)


def bare_squeue(ids: list[str]) -> tuple[float, int]:
    """The baseline: squeue about ``ids``, 1,000 a call, output read and nothing else."""
    start = time.perf_counter()
    calls = 0
    for i in range(0, len(ids), CHUNK):
        subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%r|%N|%j",
                        f"--jobs={','.join(ids[i:i + CHUNK])}"], capture_output=True, check=True)
        calls += 1
    return time.perf_counter() - start, calls


def one_listing() -> tuple[float, int]:
    """For comparison: one squeue listing every job of this user (no --jobs filter)."""
    start = time.perf_counter()
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%r|%N|%j",
                          "--me"], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, len(out.stdout.splitlines())


# --- measurements -----------------------------------------------------------------------------


def timed(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and ru_maxrss (MB; see above) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[3:])}: exit {os.waitstatus_to_exitcode(status)}: "
                         f"{process.stderr.read().decode()[-500:] if process.stderr else ''}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def cycle_in_process(project: Path) -> dict[str, float]:
    """One Runner.cycle in a process of its own (``--cycle PROJECT``), every scheduler command
    timed; with that process's own peak RSS (its squeue children not counted)."""
    out = subprocess.run([sys.executable, __file__, "--cycle", str(project)], check=True,
                         capture_output=True, text=True, timeout=WAIT)
    return json.loads(out.stdout.splitlines()[-1])


def _cycle_child(project: Path) -> None:
    from eventflow.shell.api import Tracker
    from eventflow.shell.runner import Runner
    from eventflow.shell.scheduler import SlurmScheduler, run_command

    spent = {"calls": 0, "seconds": 0.0}

    def timed_command(argv: list[str], timeout: float):
        start = time.perf_counter()
        try:
            return run_command(argv, timeout)
        finally:
            spent["calls"] += 1
            spent["seconds"] += time.perf_counter() - start

    result: dict[str, float] = {}
    with Tracker.open(project) as tracker:
        runner = Runner(tracker, SlurmScheduler(runner=timed_command))
        # The first cycle of a process also reads every JobSubmitted of the log (which cluster
        # holds each job); the next one is what a running daemon pays each time.
        for which in ("first", "next"):
            spent.update(calls=0, seconds=0.0)
            start = time.perf_counter()
            report = runner.cycle()
            result[f"{which}_wall"] = time.perf_counter() - start
            result[f"{which}_calls"], result[f"{which}_seconds"] = spent["calls"], spent["seconds"]
            if report.busy():
                raise SystemExit(f"the cycle over held jobs recorded something: {report}")
    wall = result["first_wall"]
    # VmHWM, not getrusage: a child spawned by vfork (subprocess) has its parent's peak folded
    # into its ru_maxrss at exec, so the benchmark's own peak would show up in every child's.
    rss = _status(os.getpid())["VmHWM"] / 1024
    print(json.dumps({"wall": wall, "rss": rss, **result}))


# The daemon's watch before it watched only active folders: watchdog's inotify observer on the
# whole calcs/ tree (its watches are added when it starts); the observer process's peak RSS.
WHOLE_TREE = """
import pathlib, sys, time
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
observer = Observer()
observer.schedule(FileSystemEventHandler(), sys.argv[1], recursive=True)
observer.start()
time.sleep(2)
watches = 0
for fd in list(pathlib.Path("/proc/self/fdinfo").iterdir()):
    try:
        watches += fd.read_text().count("inotify wd:")
    except OSError:
        pass
print(next(int(line.split()[1]) for line in
           pathlib.Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM")),
      watches)
observer.stop()
"""


def whole_tree_observer(calcs: Path) -> str:
    """Peak RSS of a process holding watchdog's recursive inotify watch on ``calcs`` and its
    inotify watches, or why it could not watch them all (the kernel's watch limit)."""
    out = subprocess.run([sys.executable, "-c", WHOLE_TREE, str(calcs)], capture_output=True,
                         text=True, timeout=WAIT)
    if out.returncode != 0:
        limit = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
        error = (out.stderr.strip().splitlines() or ["?"])[-1]
        return f"failed (fs.inotify.max_user_watches = {limit}): {error}"
    hwm, watches = out.stdout.split()[-2:]
    return f"{int(hwm) / 1024:.0f} MB, {int(watches):,} inotify watches"


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def _inotify_watches(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            count += fd.read_text().count("inotify wd:")
        except OSError:
            continue
    return count


def _job_finished(project: Path) -> int:
    import sqlite3

    with sqlite3.connect(project / ".eventflow" / "events.db") as db:
        return db.execute("SELECT count(*) FROM events WHERE type = 'JobFinished'").fetchone()[0]


def daemon(project: Path, observer: list[str], settle: float, target: str) -> dict[str, float]:
    """Run the daemon, let it cycle for ``settle`` s, write ``target``'s record and wait for
    its JobFinished; its memory, its watches, and how long the record took to be recorded."""
    state = project / ".eventflow"
    (state / "watcher.log").unlink(missing_ok=True)
    proc = subprocess.Popen([*CLI, "--project", str(project), "watch", "--quiet",
                             "--reconcile", "12", *observer],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT
        while "watching" not in _read(state / "watcher.log"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start: {_read(state / 'watcher.log')}")
            time.sleep(0.2)
        time.sleep(settle)
        watches = _inotify_watches(proc.pid)
        before = _job_finished(project)
        folder = project / target
        (folder / ".rec.tmp").write_text(json.dumps({"exit_code": 0, "job_id": "bench"}))
        written = time.perf_counter()
        os.replace(folder / ".rec.tmp", folder / "eventflow-done.json")
        while _job_finished(project) == before:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the record was not taken up: {_read(state / 'watcher.log')}")
            time.sleep(0.01)
        reaction = time.perf_counter() - written
        time.sleep(2)  # the cycle that took it up ends, and the next sync drops the watch
        memory = _status(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return {"hwm": memory["VmHWM"] / 1024, "rss": memory["VmRSS"] / 1024, "watches": watches,
            "reaction": reaction}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# --- report -----------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def report(materials: int, finished_folders: int, folders: int, ids: list[str], why: str,
           submit_s: float, whole_tree: str, first: tuple[float, float, float],
           again: tuple[float, float, float], inside: dict[str, float], bare: float, calls: int,
           listing: tuple[float, int], inotify: dict[str, float], polling: dict[str, float],
           quick: bool) -> str:
    n = len(ids)
    lines = [
        f"### The watcher at scale (bench/bench_watcher_scale.py{' --quick' if quick else ''})",
        "",
        f"{materials:,} materials, {folders:,} job folders on disk, {n:,} real held SLURM jobs "
        f"active ({why}; submitted in {submit_s:.0f} s, then scancelled).",
        "",
        "| what | measured | baseline | ratio | goal | met |",
        "|---|---:|---:|---:|---|---|",
        f"| one cycle with {n:,} active jobs, `watch --once` process: wall (CPU {again[1]:.2f} s;"
        f" the first run {first[0]:.2f} s) | {again[0]:.2f} s | {listing[0]:.2f} s (one bare "
        f"`squeue --me`, {listing[1]:,} jobs) | {again[0] / listing[0]:.1f}x | (information) | - |",
        f"| the same cycle in process, the first of a process (Runner.cycle; that process's own"
        f" peak RSS {inside['rss']:.0f} MB) | {inside['first_wall']:.2f} s | {listing[0]:.2f} s "
        f"| {inside['first_wall'] / listing[0]:.1f}x | (information) | - |",
        f"| ... of which scheduler commands ({inside['first_calls']:.0f} calls) | "
        f"{inside['first_seconds']:.2f} s | {listing[0]:.2f} s | "
        f"{inside['first_seconds'] / listing[0]:.1f}x | (information) | - |",
        f"| the next cycle in that process (a running daemon's cycle) | {inside['next_wall']:.2f}"
        f" s | {listing[0]:.2f} s | {inside['next_wall'] / listing[0]:.1f}x | (information) | - |",
        f"| ... of which scheduler commands ({inside['next_calls']:.0f} calls) | "
        f"{inside['next_seconds']:.2f} s | {listing[0]:.2f} s | "
        f"{inside['next_seconds'] / listing[0]:.1f}x | (information) | - |",
        f"| for comparison: squeue by id, 1,000 ids a call ({calls} calls; the cycle did this "
        f"before) | {bare:.2f} s | {listing[0]:.2f} s | {bare / listing[0]:.1f}x | "
        f"(information) | - |",
        f"| before this change: watchdog's recursive inotify observer on calcs/ (the "
        f"{finished_folders:,} folders of finished jobs), that process alone: peak RSS | "
        f"{whole_tree} | - | - | (information) | - |",
    ]
    for name, d in (("inotify", inotify), ("polling every 1 s", polling)):
        met = "yes" if d["hwm"] < 150 else "no"
        lines.append(f"| daemon ({name}), peak RSS (VmHWM; RSS at the end {d['rss']:.0f} MB, "
                     f"{d['watches']:,.0f} inotify watches) | {d['hwm']:.0f} MB | "
                     f"{inside['rss']:.0f} MB (one cycle, no observer) | "
                     f"{d['hwm'] / inside['rss']:.2f}x | < 150 MB | {met} |")
        lines.append(f"| daemon ({name}): record written -> JobFinished | "
                     f"{d['reaction'] * 1000:.0f} ms | - | - | (information) | - |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cycle", type=Path, help=argparse.SUPPRESS)  # the child of step 1
    parser.add_argument("--active", type=int, default=None,
                        help="real held jobs (default 10,000; --quick 200)")
    args = parser.parse_args()
    if args.cycle is not None:
        _cycle_child(args.cycle)
        return 0
    materials = 10_000 if args.quick else 100_000
    wanted = args.active if args.active is not None else (200 if args.quick else 10_000)
    if shutil.which("squeue") is None:
        raise SystemExit("bench_watcher_scale: SLURM not found (slurm/local-cluster start)")
    # A RAM-backed folder where there is one: 400,000 folders take many minutes to make and to
    # remove on a slow disk, and neither inotify nor the daemon's memory depends on where.
    scratch = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="eventflow-watcher-scale-", dir=scratch) as tmp:
        # Everything that needs no job id first: the held jobs fill SLURM's table only for the
        # measurement itself (a few minutes).
        project, finished_folders = make_finished_project(Path(tmp) / "proj", materials - wanted)
        folders = finished_folders
        say(f"{finished_folders:,} folders of finished jobs made; the whole-tree observer...")
        whole_tree = whole_tree_observer(project / "calcs")
        fits, why = room_in_slurm(wanted)
        ids: list[str] = []
        try:
            say(f"submitting {fits:,} held jobs ({why})...")
            ids, submit_s = submit_held(fits)
            if not ids:
                raise SystemExit(f"no room in SLURM for held jobs ({why})")
            folders += add_active(project, ids)
            say("one cycle (watch --once, then in process), then the daemons...")
            once = [*CLI, "--project", str(project), "watch", "--once", "--quiet"]
            first = timed(once)
            again = timed(once)
            inside = cycle_in_process(project)
            bare, calls = bare_squeue(ids)
            listing = one_listing()
            inotify = daemon(project, [], 18.0, "calcs/active-000001/SP/1")
            polling = daemon(project, ["--poll", "1"], 18.0, "calcs/active-000002/SP/1")
        finally:
            cancel(ids)
        print(report(materials - wanted + len(ids), finished_folders, folders, ids, why, submit_s,
                     whole_tree, first, again, inside, bare, calls, listing, inotify, polling,
                     args.quick), flush=True)  # before the folders are removed (minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
