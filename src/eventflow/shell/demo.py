"""The main job: full_characterization of the bundled materials with real pw.x, watched live.

    python -m eventflow.shell.demo [PROJECT_DIR]

Creates (or continues) a project, adds the materials of examples/materials.yaml,
runs the watcher in this process with a live table until every material is
completed or needs attention, then prints the properties and writes band
structure and DOS plots (PNG) into PROJECT_DIR/plots/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from eventflow.errors import EventflowError
from eventflow.shell.api import Tracker
from eventflow.shell.runner import Runner
from eventflow.shell.watcher import _scheduler_for, setup_logging

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
DONE = ("completed", "needs_attention", "cancelled")
STEPS = ("OPT", "SP", "BAND", "DOS")
DECIMALS = 4
SHOWN = ("total_energy_ev", "energy_per_atom_ev", "band_gap_ev", "direct_gap_ev",
         "fermi_energy_ev", "a_ang", "volume_ang3", "pressure_kbar")


def add_materials(tracker: Tracker, examples: Path) -> list[str]:
    spec = yaml.safe_load((examples / "materials.yaml").read_text())
    ids = []
    for item in spec["materials"]:
        ids.append(tracker.create_material(
            examples / "materials" / item["file"], material_id=item["id"], source="example",
            workflow=item.get("workflow", "full_characterization"), code=item.get("code", "qe"),
            params=item.get("set") or {}))
    return ids


def table(tracker: Tracker, started: float, width: int = 80) -> Any:
    """The live progress table: each material's state and each step's attempts."""
    from eventflow.shell.tables import Column, fitted

    rows = []
    calcs = tracker.projections.calculations()
    for row in tracker.projections.materials():
        cells = []
        for step in STEPS:
            mine = [c for c in calcs if c["material_id"] == row["id"] and c["step"] == step]
            cells.append(" ".join(
                f"{c['state']}" + (f"({c['error_kind']})" if c["error_kind"] else "")
                for c in mine) or "-")
        rows.append([row["id"], row["state"], *cells, row["reason"] or ""])
    columns = [Column("material"), Column("state"), *(Column(s, text=True) for s in STEPS),
               Column("note", text=True, optional=True)]
    return fitted(f"eventflow main job - {time.monotonic() - started:.0f} s", columns, rows,
                  width)


def properties_table(tracker: Tracker, width: int = 80) -> Any:
    """The latest value of each shown property, one row per property, units in the names."""

    latest: dict[str, dict[str, Any]] = {}
    for row in tracker.projections.materials():
        latest[row["id"]] = {p["name"]: p["value"]
                             for p in tracker.projections.properties(row["id"])}
    return properties_rows(latest, width)


def properties_rows(latest: dict[str, dict[str, Any]], width: int = 80) -> Any:
    """``latest[material][property]`` as a table of the SHOWN properties, never cut."""
    from eventflow.shell.tables import Column, fitted, with_unit

    materials = list(latest)
    rows = [[with_unit(name), *(_shown(latest[m].get(name)) for m in materials)]
            for name in SHOWN]
    columns = [Column("property"), *(Column(m) for m in materials)]
    return fitted(f"properties (latest value; floats to {DECIMALS} decimals)", columns, rows,
                  width)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.{DECIMALS}f}"
    return "-" if value is None else str(value)


def plots(tracker: Tracker, out: Path) -> list[Path]:
    """One PNG per material with a BAND step: labelled bands beside the DOS, zero at VBM/E_F."""
    from eventflow.shell.bandfigure import material_figure

    written = []
    for row in tracker.projections.materials():
        try:  # one material's unplottable files must not cost the others their plots
            path = material_figure(tracker, row["id"], out)
        except EventflowError as exc:
            print(f"no plot for {row['id']}: {exc}", file=sys.stderr)
            continue
        if path is not None:
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", nargs="?", default="demo-run", help="project folder")
    parser.add_argument("--timeout", type=float, default=1800, help="give up after (s)")
    args = parser.parse_args(argv)
    from rich.console import Console

    from eventflow.shell.tables import live

    console = Console()
    try:
        tracker = Tracker.init(args.project)
        setup_logging(tracker.project.state_dir / "watcher.log", as_json=False, echo=False)
        ids = add_materials(tracker, EXAMPLES)
        scheduler, why = _scheduler_for(tracker)
        console.print(f"[bold]eventflow main job[/bold]: {len(ids)} materials in "
                      f"{tracker.project.root}\n{why}")
        runner = Runner(tracker, scheduler)
        started = time.monotonic()
        with live(console, table(tracker, started, console.width),
                  refresh_per_second=2) as display:
            while True:
                runner.cycle()
                display.update(table(tracker, started, console.width))
                states = [m["state"] for m in tracker.projections.materials()]
                if all(s in DONE for s in states):
                    break
                if time.monotonic() - started > args.timeout:
                    raise EventflowError(f"not finished after {args.timeout:.0f} s")
                time.sleep(1.0)
        console.print(properties_table(tracker, console.width))
        for path in plots(tracker, tracker.project.root / "plots"):
            console.print(f"plot: {path}")
        for m in tracker.projections.materials():
            if m["state"] != "completed":
                console.print(f"[yellow]{m['id']}: {m['state']}[/yellow] {m['reason']}")
        # commands to copy: one line each, never wrapped
        console.print(f"whole story of a material: eventflow --project {args.project} show Si",
                      soft_wrap=True)
        console.print(f"plots again, other energy window: eventflow --project {args.project} "
                      "plot --emin -15 --emax 10", soft_wrap=True)
        return 0
    except EventflowError as exc:
        print(f"eventflow: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
