"""Soak on the real SLURM cluster: many materials through ``eventflow watch`` under chaos.

Every material is CRYSTAL, run by the stand-in (tests/standin/crystal) that replays real
corpus outputs, so the real parsers and the real recovery policy run on every job: MgO goes
OPT -> SP -> BAND + DOS (four jobs); NiO's SP replays the real "TOO MANY CYCLES" output, is
resubmitted with more cycles and GUESSP by the policy, and replays the real restart (two jobs).

While the work runs, a chaos loop (seeded) does, at random:
* SIGKILLs the watcher (``eventflow watch``, its own process) and starts a new one;
* runs bursts of two or three ``eventflow watch --once`` at the same moment;
* ``scancel``s one of the project's jobs;
* appends from other processes: ``eventflow hold`` / ``release`` and new materials.

At the end (every material completed, cancelled, or waiting/held/needs_attention, and no job
of the project left in SLURM): every ``sbatch`` call, counted by a shim put first on the
watcher's PATH, against the JobSubmitted events in the log; duplicate jobs (one scheduler
job name, which is one calculation attempt, run twice: SLURM's own job-completion log);
attempts requested but never submitted; ``eventflow verify``; the watchers' peak RSS and
the wall time.

Run: ``python bench/soak.py [--materials 1000] [--seed 1] [--timeout 7200] [--keep DIR]``
(``--quick``: 40 materials) with SLURM running (``slurm/local-cluster start``).
Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "standin" / "crystal"
CORPUS = "crystal/"
RULES = [  # first match wins (see tests/standin/crystal)
    {"program": "properties", "when": ["BAND"], "output": CORPUS + "p17_mgo_band.outp",
     "files": {"BAND.DAT": CORPUS + "p17_mgo_BAND.DAT"}},
    {"program": "properties", "when": ["DOSS"], "output": CORPUS + "p17_mgo_newk_doss.outp",
     "files": {"fort.25": CORPUS + "p17_mgo_doss.fort25"}},
    {"program": "crystal", "when": ["ATOMSPIN", "GUESSP"],
     "output": CORPUS + "c17_nio_afm_scf_restart_converged.out"},
    {"program": "crystal", "when": ["ATOMSPIN"],
     "output": CORPUS + "c17_nio_afm_scf_TOO_MANY_CYCLES.out"},
    {"program": "crystal", "when": ["OPTGEOM"],
     "output": CORPUS + "c17_mgo_sto3g_opt_converged.out"},
    {"program": "crystal", "output": CORPUS + "c17_mgo_sto3g_scf_converged.out"},
]
CLI = [sys.executable, "-m", "eventflow.shell.cli"]
QUIET = {"completed", "cancelled", "waiting", "held", "needs_attention"}


def eventflow(project: Path, *args: str, env: dict[str, str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*CLI, "--project", str(project), *args], capture_output=True,
                            text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise RuntimeError(f"eventflow {' '.join(args)}: {result.stderr.strip()}")
    return result


def make_project(folder: Path, shim_log: Path) -> tuple[Path, dict[str, str]]:
    import yaml
    from ase.build import bulk
    from ase.io import write

    sys.path.insert(0, str(ROOT))
    from tests.structures import nio_afm

    from eventflow.shell.api import Tracker

    project = folder / "proj"
    Tracker.init(project).close()
    (project / "config" / "cluster.yaml").write_text(
        "executor: slurm\nmax_jobs: 200\nmax_submit: 200\n")
    table = project / "standin-replay.json"
    table.write_text(json.dumps({"rules": RULES}, indent=1))
    config_path = project / "config" / "crystal.yaml"
    config = yaml.safe_load(config_path.read_text())
    standin = [str(STANDIN), "--replay", str(table)]
    config.update(executables={"crystal": standin, "properties": standin}, launcher=[])
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    write(folder / "MgO.cif", bulk("MgO", "rocksalt", a=4.21))
    write(folder / "NiO.xyz", nio_afm(), format="extxyz")

    # The shim: every sbatch the watcher runs is logged, then the real one runs.
    shim = folder / "shim"
    shim.mkdir()
    real = shutil.which("sbatch")
    if real is None:
        raise SystemExit("soak: sbatch not found; start SLURM with slurm/local-cluster start")
    (shim / "sbatch").write_text(f'#!/bin/sh\necho "$$" >> "{shim_log}"\nexec "{real}" "$@"\n')
    (shim / "sbatch").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim}{os.pathsep}{os.environ['PATH']}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                      os.environ.get("PYTHONPATH")]))
    return project, env


def _material(i: int, folder: Path) -> tuple[str, Path, str, dict[str, int]]:
    """A third NiO (one recovery each), the rest MgO (four steps)."""
    if i % 3 == 2:
        return f"nio-{i:05d}", folder / "NiO.xyz", "scf_only", {"maxcycle": 10}
    return f"mgo-{i:05d}", folder / "MgO.cif", "full_characterization", {}


def add_materials(project: Path, folder: Path, count: int) -> list[str]:
    """The first materials, through the Python API in this process (before any watcher)."""
    from eventflow.shell.api import Tracker

    added = []
    with Tracker.open(project) as tracker:
        for i in range(count):
            mid, structure, workflow, params = _material(i, folder)
            tracker.create_material(structure, material_id=mid, workflow=workflow,
                                    code="crystal", params=params)
            added.append(mid)
    return added


def add_late(project: Path, folder: Path, first: int, count: int, env: dict[str, str]
             ) -> list[str]:
    """More materials from other processes (``eventflow add``) while the watcher runs."""
    added = []
    for i in range(first, first + count):
        mid, structure, workflow, params = _material(i, folder)
        sets = [arg for key, value in params.items() for arg in ("--set", f"{key}={value}")]
        eventflow(project, "add", str(structure), "--id", mid, "--code", "crystal",
                  "--workflow", workflow, *sets, env=env)
        added.append(mid)
    return added


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def project_jobs(project_id: str) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--format=%i %j"], capture_output=True,
                         text=True, timeout=60).stdout
    return [line.split()[0] for line in out.splitlines()
            if len(line.split()) == 2 and line.split()[1].startswith(f"ef.{project_id}.")]


def states(project: Path, env: dict[str, str]) -> Counter:
    shown = json.loads(eventflow(project, "status", "--json", "--all", env=env).stdout)
    rows = shown["materials"] if isinstance(shown, dict) else shown
    return Counter(row["state"] for row in rows)


def jobcomp_names(project_id: str) -> Counter:
    """Job names in SLURM's job-completion log (JobCompType=jobcomp/filetxt)."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                            timeout=60).stdout
    location = next((line.split("=", 1)[1].strip() for line in config.splitlines()
                     if line.startswith("JobCompLoc")), "")
    names: Counter = Counter()
    if location and Path(location).is_file():
        for line in Path(location).read_text(errors="replace").splitlines():
            for field in line.split():
                if field.startswith(f"Name=ef.{project_id}."):
                    names[field[5:]] += 1
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--materials", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="40 materials")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=7200, help="seconds")
    parser.add_argument("--keep", help="make the project in this (new) folder and keep it")
    args = parser.parse_args()
    n = 40 if args.quick else args.materials
    rng = random.Random(args.seed)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="eventflow-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    shim_log = folder / "sbatch-calls.log"
    project, env = make_project(folder, shim_log)
    late = max(1, n // 10)  # added by another process while the watcher runs
    materials = add_materials(project, folder, n - late)
    project_id = (project / ".eventflow" / "project-id").read_text().strip()
    print(f"soak: {n} materials in {project} (seed {args.seed})", flush=True)

    counts: Counter = Counter()
    peak = 0.0
    start = time.monotonic()
    log = (folder / "watcher.log").open("a")

    def start_watcher() -> subprocess.Popen[str]:
        return subprocess.Popen([*CLI, "--project", str(project), "watch", "--quiet",
                                 "--reconcile", "5"], env=env, stdout=log, stderr=log, text=True)

    watcher = start_watcher()
    held: list[str] = []
    try:
        while True:
            time.sleep(rng.uniform(0.5, 2))
            peak = max(peak, peak_rss_mb(watcher.pid))
            roll = rng.random()
            if roll < 0.15:
                watcher.send_signal(signal.SIGKILL)
                watcher.wait()
                counts["watcher SIGKILLed"] += 1
                watcher = start_watcher()
            elif roll < 0.25:
                burst = [subprocess.Popen([*CLI, "--project", str(project), "watch", "--once",
                                           "--quiet"],
                                          env=env, stdout=log, stderr=log)
                         for _ in range(rng.randint(2, 3))]
                for process in burst:
                    process.wait(timeout=600)
                counts["watch --once bursts"] += 1
            elif roll < 0.35:
                jobs = project_jobs(project_id)
                if jobs:
                    subprocess.run(["scancel", rng.choice(jobs)], timeout=60)
                    counts["scancel"] += 1
            elif roll < 0.45 and materials:
                mid = rng.choice(materials)
                if eventflow(project, "hold", mid, "--reason", "soak", env=env,
                             check=False).returncode == 0:
                    held.append(mid)
                    counts["hold"] += 1
            elif roll < 0.55 and held:
                mid = held.pop(rng.randrange(len(held)))
                eventflow(project, "release", mid, env=env, check=False)
                counts["release"] += 1
            elif roll < 0.7 and late:
                batch = min(late, rng.randint(1, 10))
                materials += add_late(project, folder, len(materials), batch, env)
                late -= batch
                counts["materials added late"] += batch
            if late == 0 and not held:
                now = states(project, env)
                active = sum(v for k, v in now.items() if k not in QUIET)
                if active == 0 and not project_jobs(project_id):
                    break
                print(f"  {time.monotonic() - start:6.0f} s: {dict(now)}", flush=True)
            elif not late and held:  # release what is held, so the work can end
                for mid in held:
                    eventflow(project, "release", mid, env=env, check=False)
                    counts["release"] += 1
                held.clear()
            if time.monotonic() - start > args.timeout:
                print("soak: timed out", flush=True)
                break
    finally:
        peak = max(peak, peak_rss_mb(watcher.pid))
        watcher.send_signal(signal.SIGTERM)
        try:
            watcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            watcher.kill()
    wall = time.monotonic() - start
    return report(project, project_id, env, shim_log, counts, peak, wall, len(materials))


def report(project: Path, project_id: str, env: dict[str, str], shim_log: Path,
           counts: Counter, peak: float, wall: float, n: int) -> int:
    from eventflow.shell.api import Tracker

    with Tracker.open(project) as tracker:
        events = list(tracker.store.read())
    submitted = [r.event for r in events if r.type == "JobSubmitted"]
    requested = {r.event.calculation_id for r in events if r.type == "SubmissionRequested"}
    ended = {r.event.calculation_id for r in events
             if r.type in ("JobSubmitted", "SubmissionFailed",
                           "CalculationCancelled")}
    sbatch_calls = len(shim_log.read_text().splitlines()) if shim_log.exists() else 0
    per_attempt = Counter(e.calculation_id for e in submitted)
    twice_in_log = [c for c, k in per_attempt.items() if k > 1]
    ran = jobcomp_names(project_id)
    twice_in_slurm = [name for name, k in ran.items() if k > 1]
    final = states(project, env)
    unsubmitted = sorted(requested - ended)
    verify = eventflow(project, "verify", env=env, check=False)
    print(f"\nsoak: {n} materials, {wall:.0f} s wall, watchers' peak RSS {peak:.0f} MB")
    print(f"  chaos: {dict(counts)}")
    print(f"  final states: {dict(final)}")
    print(f"  sbatch calls (PATH shim): {sbatch_calls}; JobSubmitted in the log: "
          f"{len(submitted)}; jobs in SLURM's completion log: {sum(ran.values())}")
    print(f"  duplicates: {len(twice_in_log)} in the log, {len(twice_in_slurm)} in SLURM")
    print(f"  requested and never submitted (nor cancelled): {len(unsubmitted)}")
    print(f"  verify: exit {verify.returncode} {verify.stdout.strip().splitlines()[-1:]}")
    quiet = sum(v for k, v in final.items() if k in QUIET) == n
    ok = (sbatch_calls == len(submitted) and not twice_in_log and not twice_in_slurm
          and verify.returncode == 0 and quiet)
    print("soak: " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
