"""``eventflow import``, ``eventflow properties`` and ``eventflow export-structures``.

``register(sub)`` adds the subcommands to the CLI's parser (called at the end of
``cli.build_parser``); the handlers register themselves with ``cli.command``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from eventflow.shell.cli import _console, _print_json, _tracker, command, positive_int


def register(sub: Any) -> None:
    """Add ``import``, ``properties`` and ``export-structures`` to the subcommands."""
    p = sub.add_parser("import", help="adopt existing calculation folders: record their "
                                      "history (finished, failed, running) in the log")
    p.add_argument("directory", help="folder tree to import: job folders with NAME.d12 + "
                                     "NAME.out, NAME.d3 + NAME.outp, *.in + *.out, slurm-*.out")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would be recorded, record nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--code", choices=["crystal", "qe"], help="import only this code's outputs")
    p.add_argument("--workflow", metavar="NAME",
                   help="register new materials with this workflow and request what it runs "
                        "next (default: workflow 'imported', history only, held)")
    p.add_argument("--workers", type=positive_int, metavar="N", default=None,
                   help="parser processes (default: one per core)")
    p.add_argument("--follow-links", action="store_true",
                   help="enter symbolic links to folders (loops are detected and skipped)")
    p.add_argument("--no-queue", action="store_true",
                   help="do not ask SLURM which jobs are still running (attach none)")

    p = sub.add_parser("properties", help="export the properties with their provenance "
                                          "(calculation, step, attempt, event, code, program)")
    p.add_argument("--format", choices=["csv", "json", "parquet"], default="csv",
                   help="output format (default csv; parquet needs pyarrow)")
    p.add_argument("--material", action="append", metavar="M", default=[],
                   help="only this material (repeatable)")
    p.add_argument("--property", action="append", metavar="P", default=[],
                   help="only this property, e.g. total_energy_ev (repeatable)")
    p.add_argument("--output", metavar="FILE", help="write to FILE (default: standard output)")

    p = sub.add_parser("export-structures", help="write the final structures from the ASE "
                                                 "database")
    p.add_argument("--step", metavar="S", help="only structures of this step, e.g. OPT")
    p.add_argument("--format", choices=["extxyz", "cif"], default="extxyz",
                   help="file format (default extxyz)")
    p.add_argument("--material", action="append", metavar="M", default=[],
                   help="only this material (repeatable)")
    p.add_argument("--all-attempts", action="store_true",
                   help="every attempt's structure, not only the latest of each step")
    p.add_argument("--output", metavar="DIR|FILE",
                   help="one file for all, or a folder for one file per structure "
                        "(default: standard output)")
    # `python -m eventflow.shell.cli` runs the CLI as __main__, a second copy of the cli
    # module whose COMMANDS the decorators below never saw: give it the handlers too.
    main = sys.modules.get("__main__")
    commands = getattr(main, "COMMANDS", None)
    if isinstance(commands, dict) and getattr(main, "command", command) is not command:
        commands.update({"import": cmd_import, "properties": cmd_properties,
                         "export-structures": cmd_export_structures})


@command("import")
def cmd_import(args: argparse.Namespace) -> int:
    from eventflow.shell.importer import ImportOptions, run_import

    options = ImportOptions(
        root=Path(args.directory), code=args.code, workflow=args.workflow,
        dry_run=args.dry_run, workers=args.workers, follow_links=args.follow_links,
        use_queue=not args.no_queue, progress=not args.json,
    )
    with _tracker(args) as tracker:
        report = run_import(tracker, options)
    if args.json:
        _print_json(report.to_dict())
        return 0
    _print_report(report)
    return 0


def _print_report(report: Any) -> None:
    from eventflow.shell.tables import Column, fitted

    console = _console()
    if report.dry_run and report.calculations:
        columns = [Column("calculation"), Column("state"), Column("error", text=True),
                   Column("job"), Column("events"), Column("source", text=True)]
        rows = [[c.calculation_id, c.state, c.error_kind or "", c.job_id or "", str(c.events),
                 c.source] for c in report.calculations]
        console.print(fitted(f"would record ({report.events} events)", columns, rows,
                             console.width))
    verb = "would import" if report.dry_run else "imported"
    states = ", ".join(f"{n} {s}" for s, n in sorted(report.by_state().items())) or "nothing new"
    print(f"{verb} {len(report.calculations)} calculations ({states}) of "
          f"{report.materials} materials ({report.materials_new} new), {report.events} events; "
          f"{report.unchanged} already in the log; {len(report.skipped)} skipped; "
          f"{len(report.ignored)} files of other programs ignored")
    kinds = report.by_error_kind()
    if kinds:
        print("  failures: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print(f"  queue: {report.queue}")
    if report.requested:
        print(f"  requested next: {', '.join(report.requested)}")
    for s in report.skipped:
        print(f"  skipped {s.path}: {s.reason}")
    total = sum(report.timings.values())
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in report.timings.items())
    print(f"  time: {total:.2f} s ({stages})"
          + (f"; {report.rate():.0f} calculations/s" if report.calculations else ""))


@command("properties")
def cmd_properties(args: argparse.Namespace) -> int:
    from eventflow.shell.export import property_rows, write_properties

    with _tracker(args) as tracker:
        rows = property_rows(tracker, args.material or None, args.property or None)
        if not rows and (args.material or args.property):
            _explain_no_rows(tracker, args.material, args.property)
    output = Path(args.output) if args.output else None
    write_properties(rows, args.format, output)
    if output is not None:
        print(f"wrote {len(rows)} property values to {output}", file=sys.stderr)
    return 0


def _explain_no_rows(tracker: Any, materials: list[str], names: list[str]) -> None:
    """An unknown material is an error; an unknown property name gets the known ones listed."""
    from eventflow.errors import EventflowError

    known = {m["id"] for m in tracker.projections.materials()}
    unknown = [m for m in materials if m not in known]
    if unknown:
        raise EventflowError(f"no material {', '.join(map(repr, unknown))} in "
                             f"{tracker.project.log_path}")
    present = sorted({p["name"] for p in tracker.projections.properties()})
    missing = [n for n in names if n not in present]
    if missing:
        print(f"no values of {', '.join(missing)}; the properties recorded are: "
              f"{', '.join(present) or 'none yet'}", file=sys.stderr)


@command("export-structures")
def cmd_export_structures(args: argparse.Namespace) -> int:
    from eventflow.shell.export import structure_rows, write_structures

    with _tracker(args) as tracker:
        rows = structure_rows(tracker.project, args.step, args.material or None,
                              args.all_attempts)
    output = args.output or None
    written, left_out = write_structures(rows, args.format, output)
    if left_out:
        print(f"left out {len(left_out)} structures that are not 3D-periodic (CIF cannot "
              f"describe them; use --format extxyz): {', '.join(left_out)}", file=sys.stderr)
    if output is not None:
        where = (str(written[0]) if len(written) == 1 and not output.endswith("/")
                 else f"{len(written)} files in {output}")
        print(f"wrote {len(rows) - len(left_out)} structures to {where}", file=sys.stderr)
    return 0
