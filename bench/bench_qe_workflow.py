"""Quantum ESPRESSO through eventflow: orchestration overhead, parse and extraction times.

    PYTHONPATH=src python bench/bench_qe_workflow.py [--keep DIR]

1. The main job's three regular materials (Si, diamond, Pb: full_characterization with real
   pw.x, bands.x, dos.x) through the running SLURM cluster, driven by `eventflow watch` (inotify).
   Baseline: the programs' own wall times, read from their outputs ("PWSCF ... WALL"). Reported:
   the workflow's wall time, the critical path of program time (per material
   OPT + SP + max(BAND, DOS), the longest material), and the overhead between them.
2. `eventflow parse` as a whole process on the largest bundled pw.x output, against
   `python -c pass` (interpreter start-up) as the floor.
3. Extraction after a job completes: the runner's interpretation of each finished calculation
   (read the output, parse, post-process, build the events), in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WALL = re.compile(r"^\s*(PWSCF|BANDS|DOS)\s*:.*?([\d.]+)s WALL", re.M)
WALL_LONG = re.compile(r"^\s*(PWSCF|BANDS|DOS)\s*:.*?(?:(\d+)h)?\s*(?:(\d+)m)?\s*([\d.]+)s WALL",
                       re.M)


def program_seconds(folder: Path) -> float:
    total = 0.0
    for name in ("pw.out", "bands.out", "dos.out"):
        path = folder / name
        if path.is_file():
            for match in WALL_LONG.finditer(path.read_text(errors="replace")):
                h, m, s = match.group(2), match.group(3), match.group(4)
                total += int(h or 0) * 3600 + int(m or 0) * 60 + float(s)
    return total


def run_workflow(project: Path) -> dict:
    from eventflow.shell.api import Tracker

    tracker = Tracker.init(project)
    spec = yaml.safe_load((REPO / "examples" / "materials.yaml").read_text())
    items = [m for m in spec["materials"] if m["id"] in ("Si", "C-diamond", "Pb")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    watcher = subprocess.Popen([sys.executable, "-m", "eventflow.shell.cli", "--project",
                                str(project), "watch", "--reconcile", "1", "--quiet"], env=env)
    started = time.monotonic()
    for m in items:
        tracker.create_material(REPO / "examples" / "materials" / m["file"], material_id=m["id"],
                                workflow="full_characterization", params=m.get("set") or {})
    while True:
        states = [r["state"] for r in tracker.materials()]
        if all(s in ("completed", "needs_attention") for s in states):
            break
        time.sleep(0.05)
    wall = time.monotonic() - started
    watcher.terminate()
    watcher.wait(timeout=30)
    per_material = {}
    total_program = 0.0
    for m in items:
        steps = {}
        for c in tracker.projections.calculations(m["id"]):
            steps[c["step"]] = program_seconds(project / c["directory"])
        total_program += sum(steps.values())
        per_material[m["id"]] = steps.get("OPT", 0) + steps.get("SP", 0) + max(
            steps.get("BAND", 0), steps.get("DOS", 0))
    critical = max(per_material.values())
    return {"wall_s": wall, "critical_path_program_s": critical,
            "sum_program_s": total_program, "per_material_chain_s": per_material,
            "states": states}


def parse_process_times(rounds: int = 7) -> tuple[float, float]:
    corpus = REPO / "tests" / "data" / "corpus" / "qe"
    largest = max(corpus.glob("*.out"), key=lambda p: p.stat().st_size)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    ours, floor = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "eventflow.shell.cli", "parse", str(largest),
                        "--json"], check=True, capture_output=True, env=env)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        floor.append(time.perf_counter() - t)
    return statistics.median(ours), statistics.median(floor)


def extraction_times(project: Path) -> list[float]:
    from eventflow.shell.api import Tracker
    from eventflow.shell.interpret import interpret
    from eventflow.shell.jobs import JobWriter, read_completion
    from eventflow.shell.parsing import plugins

    tracker = Tracker.open(project)
    writer = JobWriter(tracker.project, tracker.policy)
    found = plugins()
    times = []
    for row in tracker.materials():
        state = tracker.state(row["id"])
        for calc in state.calcs.values():
            record = read_completion(project / calc.directory / "eventflow-done.json") or {}
            t = time.perf_counter()
            interpret(tracker.project, found, state, calc, record, writer.params_for(state, calc))
            times.append(time.perf_counter() - t)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="run the workflow in this folder and keep it")
    parser.add_argument("--quick", action="store_true",
                        help="accepted for `make bench-quick`: the workflow is already small")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    project = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ef-qe-bench-"))
    workflow = run_workflow(project)
    parse_s, floor_s = parse_process_times()
    extraction = extraction_times(project)
    overhead = workflow["wall_s"] - workflow["critical_path_program_s"]
    print(json.dumps(workflow, indent=2))
    print("\n| measure | value | goal | met |\n|---|---:|---|---|")
    print(f"| workflow wall time, 3 materials x 4 steps | {workflow['wall_s']:.1f} s | | |")
    print(f"| critical path of program time (baseline) | "
          f"{workflow['critical_path_program_s']:.1f} s | | |")
    print(f"| sum of all program wall times | {workflow['sum_program_s']:.1f} s | | |")
    print(f"| orchestration overhead over the critical path | {overhead:.1f} s "
          f"({100 * overhead / workflow['wall_s']:.0f}% of the wall time) | (report) | - |")
    print(f"| `eventflow parse` whole process, largest pw.x output | {parse_s:.3f} s "
          f"(interpreter alone {floor_s:.3f} s) | < 1 s | {'yes' if parse_s < 1 else 'no'} |")
    p50 = statistics.median(extraction)
    print(f"| extraction after completion, p50 / max of {len(extraction)} | {p50 * 1e3:.1f} ms /"
          f" {max(extraction) * 1e3:.1f} ms | < 1 s | {'yes' if max(extraction) < 1 else 'no'} |")
    if not args.keep:
        shutil.rmtree(project, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
