"""``eventflow plot``: band structure + DOS figures (PNG) a physicist reads at a glance.

High-symmetry points on the k axis (with ``U|K`` where the path jumps), energies from the
valence-band maximum (insulators) or the Fermi level (metals), the gap marked, the DOS beside
the bands on the same energy axis. For QE materials of a project, or for CRYSTAL's own files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from eventflow.errors import EventflowError
from eventflow.shell.cli import _tracker, command

EXAMPLES = """examples:
  eventflow plot Si Pb                       # QE materials: plots/Si.png, plots/Pb.png
  eventflow plot --band BAND.DAT --dos DOSS.DAT --output MgO.png   # CRYSTAL, no project
  eventflow plot --band mgo.fort25 --emin -20 --emax 15
"""


def register(sub: Any) -> None:
    """Add ``plot`` to the subcommands."""
    p = sub.add_parser(
        "plot", help="draw band structure + DOS figures (PNG), labelled, zero at VBM or E_F",
        description=__doc__.splitlines()[0].split(": ", 1)[1], epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("material", nargs="*",
                   help="QE materials of the project (default with no --band: all that have "
                        "a completed BAND step)")
    p.add_argument("--band", metavar="FILE",
                   help="a CRYSTAL BAND.DAT or fort.25 file instead (no project needed)")
    p.add_argument("--dos", metavar="FILE", help="with --band: CRYSTAL DOSS.DAT or fort.25")
    p.add_argument("--output", metavar="PNG|DIR",
                   help="the PNG for --band (default: FILE's name with .png, here); the "
                        "folder for materials (default: plots/ in the project)")
    p.add_argument("--emin", type=float, default=-12.0, help="lowest energy shown, eV (-12)")
    p.add_argument("--emax", type=float, default=8.0, help="highest energy shown, eV (8)")


@command("plot")
def cmd_plot(args: argparse.Namespace) -> int:
    from eventflow.shell.bandfigure import draw, material_figure

    window = (args.emin, args.emax)
    if args.emin >= args.emax:
        raise EventflowError(f"--emin {args.emin} must be below --emax {args.emax}")
    if args.band:
        if args.material:
            raise EventflowError("give either materials or --band FILE, not both")
        band = Path(args.band)
        out = Path(args.output) if args.output else Path(band.name).with_suffix(".png")
        plot = crystal_plot(band, Path(args.dos) if args.dos else None)
        what = "bands and DOS" if plot.dos is not None else "bands"
        print(f"plot: {draw(plot, f'{band.name}: {what}, CRYSTAL', out, window)}")
        return 0
    if args.dos:
        raise EventflowError("--dos goes with --band (CRYSTAL files)")
    with _tracker(args) as tracker:
        tracker.projections.catch_up(tracker.store)
        known = [m["id"] for m in tracker.projections.materials()]
        wanted = args.material or known
        for mid in wanted:
            if mid not in known:
                raise EventflowError(f"no material {mid!r} in {tracker.project.log_path}")
        out = Path(args.output) if args.output else tracker.project.root / "plots"
        written = [p for mid in wanted
                   if (p := material_figure(tracker, mid, out, window)) is not None]
    for path in written:
        print(f"plot: {path}")
    missing = sorted(set(wanted) - {p.stem for p in written})
    if missing:
        print(f"no completed BAND step (nothing to plot): {', '.join(missing)}")
    return 0 if written or not args.material else 1


def crystal_plot(band: Path, dos: Path | None) -> Any:
    """The BandPlot of CRYSTAL files; a clear error naming the file that cannot be read."""
    from eventflow.codes.crystal import bandplot, fort25

    def read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except OSError as exc:
            raise EventflowError(f"{path}: cannot read: {exc.strerror or exc}") from exc

    try:
        text = read(band)
        bands = (fort25.parse_fort25(text).bands if "-%-" in text
                 else (fort25.parse_band_dat(text),))
        if not bands:
            raise fort25.Fort25Error("holds no BAND block (a DOSS-only fort.25?)")
        dos_data = None
        if dos is not None:
            dtext = read(dos)
            found = (fort25.parse_fort25(dtext).dos if "-%-" in dtext
                     else (fort25.parse_doss_dat(dtext),))
            dos_data = found[0] if found else None
        return bandplot.band_plot(bands[0], dos_data)
    except (fort25.Fort25Error, ValueError) as exc:
        name = dos if dos is not None and band.exists() and "DOS" in str(exc).upper() else band
        raise EventflowError(f"{name}: {exc}") from exc
