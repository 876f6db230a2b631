"""Render pw.x, bands.x and dos.x inputs for the workflow steps, from an ``ase.Atoms``.

Steps: ``OPT`` (vc-relax), ``SP`` (scf), ``BAND`` (pw.x calculation='bands' along the
ASE band path, then bands.x) and ``DOS`` (nscf on a denser grid, then dos.x). BAND and
DOS read the charge density that the SP step left in ``outdir``/``prefix``.save, so
the steps of one structure share ``outdir`` and ``prefix``.

Pure: ASE is imported inside the functions (it is slow to import) and only used to
write text into a StringIO; the pseudopotential table arrives as the mapping the shell
loaded from config/pseudopotentials.yaml (``params["pseudopotentials"]``).
"""

from __future__ import annotations

import io
import math
import re
from typing import TYPE_CHECKING, Any

from eventflow.codes.qe.changes import RUNNER_MARKERS, apply_changes, fortran_value
from eventflow.codes.qe.pseudos import Pseudo, PseudoTable, cutoff_notes, pseudo_table

if TYPE_CHECKING:
    from ase import Atoms

STEPS: tuple[str, ...] = ("OPT", "SP", "BAND", "DOS")
PW_INPUT, PW_OUTPUT = "pw.in", "pw.out"
BANDS_INPUT, BANDS_OUTPUT = "bands.in", "bands.out"
DOS_INPUT, DOS_OUTPUT = "dos.in", "dos.out"

# Every parameter render_inputs understands, with its default (None: pw.x's own default).
DEFAULTS: dict[str, Any] = {
    "pseudopotentials": None,  # the loaded config/pseudopotentials.yaml (required)
    "pseudo_family": None,  # a family of that table; None: its default_family
    "pseudo_dir": "./pseudo",
    "outdir": "./out",
    "prefix": "eventflow",
    "ecutwfc": None,  # Ry; None: the largest suggested by the structure's pseudopotentials
    "ecutrho": None,  # Ry; None: ecutwfc x the largest ecutrho/ecutwfc ratio of the table
    "kpoint_density": 3.5,  # k-points per Å^-1 of reciprocal length (2π/a convention)
    "kspacing": None,  # Å^-1 between k-points; overrides kpoint_density when given
    "kpts": None,  # an explicit (n1, n2, n3) grid; overrides both
    "dos_kpoint_factor": 2.0,  # the DOS grid is this many times denser than the SCF grid
    "band_npoints": 60,  # points along the whole band path
    "band_path": None,  # e.g. "GXWKGLUWLK,UX"; None: ASE's default path for the lattice
    "nbnd": None,
    "metal": None,  # True/False; None: metal if an element of metallic_elements is present
    "smearing": "mv",
    "degauss": 0.02,  # Ry
    "magnetic": None,  # True/False; None: spin-polarised if a magnetic element is present
    "starting_magnetization": None,  # {element: fraction}; None: the table's values
    "nosym": False,
    "input_dft": None,
    "conv_thr": 1e-8,
    "mixing_beta": None,
    "mixing_mode": None,
    "mixing_ndim": None,
    "electron_maxstep": None,
    "diagonalization": None,
    "walltime_seconds": None,  # the job's walltime; max_seconds = 0.95 x this
    "max_seconds": None,  # overrides the value derived from walltime_seconds
    "restart_mode": None,  # 'restart' continues an interrupted run from outdir
    "startingpot": None,  # 'file': start from the charge density in outdir
    "startingwfc": None,  # 'file': start from the wave functions in outdir
    "nstep": None,
    "etot_conv_thr": None,
    "forc_conv_thr": None,
    "press_conv_thr": 0.5,  # kbar
    "press": None,  # kbar, the target pressure of a vc-relax; None: pw.x's 0
    # Not an input: a vc-relax whose final SCF is further than this from ``press`` gets a
    # warning (the plugin's check), because the cutoff is too low (Pulay stress).
    "pressure_tolerance_kbar": 10.0,
    "cell_dofree": None,
    "dos_delta_e": 0.05,  # eV
}
WALLTIME_FRACTION = 0.95
__all__ = ["DEFAULTS", "Pseudo", "PseudoTable", "pseudo_table", "render_inputs"]


def _params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the known parameters merged with DEFAULTS, the 'namelist.variable' settings)."""
    namelist_settings = {k: v for k, v in params.items() if "." in k}
    plain = {k: v for k, v in params.items() if "." not in k and k not in RUNNER_MARKERS}
    unknown = sorted(set(plain) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown Quantum ESPRESSO parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(DEFAULTS))}"
        )
    merged = {**DEFAULTS, **{k: v for k, v in plain.items() if v is not None}}
    for key in ("press", "pressure_tolerance_kbar"):  # checked here, before any job runs
        value = merged[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{key} {value!r}: expected a number (kbar)")
    tolerance = merged["pressure_tolerance_kbar"]
    if tolerance is not None and tolerance < 0:
        raise ValueError(f"pressure_tolerance_kbar must be >= 0, got {tolerance}")
    if merged["pseudopotentials"] is None:
        raise ValueError(
            "params['pseudopotentials'] is missing: pass the loaded config/pseudopotentials.yaml"
        )
    return merged, namelist_settings


def reciprocal_lengths(cell: Any) -> list[float]:
    """Lengths (Å^-1, with the 2π) of the reciprocal lattice vectors of ``cell`` (3x3, Å)."""
    import numpy as np

    matrix = np.asarray(cell, dtype=float)
    if abs(np.linalg.det(matrix)) < 1e-9:
        raise ValueError("the structure has no 3D cell (zero volume): pw.x needs a periodic cell")
    reciprocal = 2 * math.pi * np.linalg.inv(matrix).T
    return [float(x) for x in np.linalg.norm(reciprocal, axis=1)]


def kpoint_grid(
    cell: Any,
    density: float = DEFAULTS["kpoint_density"],
    *,
    kspacing: float | None = None,
    pbc: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[int, int, int]:
    """A Monkhorst-Pack grid with ``density`` points per Å^-1 of reciprocal length.

    n_i = ceil(|b_i| x density), at least 1, and 1 along non-periodic directions: a
    larger cell has shorter b_i and so never more points (a 2x2x2 supercell gets about
    half as many per direction). ``kspacing`` (Å^-1 between points) is the inverse view.
    """
    if kspacing is not None:
        if kspacing <= 0:
            raise ValueError(f"kspacing must be positive, got {kspacing}")
        density = 1.0 / kspacing
    if density <= 0:
        raise ValueError(f"kpoint_density must be positive, got {density}")
    lengths = reciprocal_lengths(cell)
    grid = [
        max(1, math.ceil(length * density - 1e-9)) if periodic else 1
        for length, periodic in zip(lengths, pbc, strict=True)
    ]
    return grid[0], grid[1], grid[2]


def _cutoffs(pseudos: dict[str, Pseudo], p: dict[str, Any]) -> tuple[float, float]:
    ecutwfc = p["ecutwfc"] or max(ps.ecutwfc for ps in pseudos.values())
    dual = max(ps.ecutrho / ps.ecutwfc for ps in pseudos.values())
    ecutrho = p["ecutrho"] or ecutwfc * max(dual, 4.0)
    if ecutrho < 4 * ecutwfc:
        raise ValueError(f"ecutrho {ecutrho} Ry is below 4 x ecutwfc ({4 * ecutwfc} Ry)")
    return float(ecutwfc), float(ecutrho)


def _species(atoms: Atoms, table: PseudoTable, family: str | None) -> dict[str, Pseudo]:
    pseudos = table.family(family)
    missing = sorted(set(atoms.get_chemical_symbols()) - set(pseudos))
    if missing:
        raise ValueError(
            f"no pseudopotential for {', '.join(missing)} in family "
            f"{family or table.default_family!r} of config/pseudopotentials.yaml"
        )
    return {symbol: pseudos[symbol] for symbol in sorted(set(atoms.get_chemical_symbols()))}


def _n_bands(atoms: Atoms, pseudos: dict[str, Pseudo], spin: bool) -> int | None:
    if any(pseudos[s].valence is None for s in pseudos):
        return None
    electrons = sum(pseudos[s].valence or 0.0 for s in atoms.get_chemical_symbols())
    occupied = electrons if spin else electrons / 2
    return int(math.ceil(occupied * 1.2)) + 4


def _magnetised(atoms: Atoms, table: PseudoTable, p: dict[str, Any]) -> tuple[Atoms, bool]:
    """A copy of ``atoms`` whose initial moments are pw.x starting magnetisations."""
    values = dict(table.magnetic_elements)
    if p["starting_magnetization"]:
        values.update(p["starting_magnetization"])
    symbols = atoms.get_chemical_symbols()
    spin = p["magnetic"] if p["magnetic"] is not None else any(s in values for s in symbols)
    copy = atoms.copy()
    if not spin:
        copy.set_initial_magnetic_moments([0.0] * len(copy))
        return copy, False
    given = atoms.get_initial_magnetic_moments()
    moments = [
        math.copysign(values.get(s, 0.0), m if m != 0 else 1.0)
        for s, m in zip(symbols, given, strict=True)
    ]
    if not any(moments):  # asked for spin without a magnetic element: break the symmetry
        moments = [0.1] * len(copy)
    copy.set_initial_magnetic_moments(moments)
    return copy, True


def _namelists(
    atoms: Atoms,
    step: str,
    p: dict[str, Any],
    table: PseudoTable,
    pseudos: dict[str, Pseudo],
    spin: bool,
) -> dict[str, dict[str, Any]]:
    ecutwfc, ecutrho = _cutoffs(pseudos, p)
    calculation = {"OPT": "vc-relax", "SP": "scf", "BAND": "bands", "DOS": "nscf"}[step]
    control: dict[str, Any] = {
        "calculation": calculation,
        "prefix": p["prefix"],
        "outdir": p["outdir"],
        "pseudo_dir": p["pseudo_dir"],
    }
    if step in {"OPT", "SP"}:
        control.update(tprnfor=True, tstress=True)
    max_seconds = p["max_seconds"]
    if max_seconds is None and p["walltime_seconds"] is not None:
        max_seconds = WALLTIME_FRACTION * float(p["walltime_seconds"])
    optional_control = {"max_seconds": max_seconds, "restart_mode": p["restart_mode"]}
    if step == "OPT":
        optional_control.update(
            nstep=p["nstep"], etot_conv_thr=p["etot_conv_thr"], forc_conv_thr=p["forc_conv_thr"]
        )
    control.update({k: v for k, v in optional_control.items() if v is not None})

    symbols = set(atoms.get_chemical_symbols())
    metal = p["metal"] if p["metal"] is not None else bool(symbols & table.metallic_elements)
    system: dict[str, Any] = {"ecutwfc": ecutwfc, "ecutrho": ecutrho}
    if step == "DOS":
        system["occupations"] = "tetrahedra"
    elif metal or spin:
        system.update(occupations="smearing", smearing=p["smearing"], degauss=float(p["degauss"]))
    if p["nosym"]:
        system["nosym"] = True
    if p["input_dft"]:
        system["input_dft"] = p["input_dft"]
    nbnd = p["nbnd"] or (_n_bands(atoms, pseudos, spin) if step in {"BAND", "DOS"} else None)
    if nbnd:
        system["nbnd"] = int(nbnd)

    electrons: dict[str, Any] = {"conv_thr": float(p["conv_thr"])}
    for key in (
        "mixing_beta",
        "mixing_mode",
        "mixing_ndim",
        "electron_maxstep",
        "diagonalization",
        "startingpot",
        "startingwfc",
    ):
        if p[key] is not None:
            electrons[key] = p[key]
    namelists = {"control": control, "system": system, "electrons": electrons}
    if step == "OPT":
        namelists["ions"] = {"ion_dynamics": "bfgs"}
        cell = {"cell_dynamics": "bfgs", "press_conv_thr": float(p["press_conv_thr"])}
        if p["press"] is not None:
            cell["press"] = float(p["press"])
        if p["cell_dofree"]:
            cell["cell_dofree"] = p["cell_dofree"]
        namelists["cell"] = cell
    return namelists


def band_path_card(atoms: Atoms, npoints: int, path: str | None = None) -> str:
    """A ``K_POINTS crystal_b`` card along ASE's band path for the cell of ``atoms``.

    Each special point carries the number of points up to the next one, in proportion
    to the segment's length; the last point of a segment before a jump (',' in the
    path) carries 1, so pw.x does not draw the jump.
    """
    import numpy as np

    bandpath = atoms.cell.bandpath(path=path, npoints=0, pbc=atoms.pbc)
    special = bandpath.special_points
    reciprocal = 2 * math.pi * np.linalg.inv(np.asarray(atoms.cell, dtype=float)).T
    segments = [re.findall(r"[A-Z][a-z0-9']*", part) for part in bandpath.path.split(",")]
    lengths = [
        float(np.linalg.norm((np.asarray(special[b]) - np.asarray(special[a])) @ reciprocal))
        for seg in segments
        for a, b in zip(seg[:-1], seg[1:], strict=True)
    ]
    total = sum(lengths) or 1.0
    rows: list[tuple[Any, int]] = []
    index = 0
    for seg_number, seg in enumerate(segments):
        for j, label in enumerate(seg):
            if j < len(seg) - 1:
                count = max(1, round(npoints * lengths[index] / total))
                index += 1
            else:
                count = 1 if seg_number < len(segments) - 1 else 0
            rows.append((special[label], count if count else 1))
    lines = ["K_POINTS crystal_b", str(len(rows))]
    lines += [f"{k[0]:.10f} {k[1]:.10f} {k[2]:.10f} {n}" for k, n in rows]
    return "\n".join(lines) + "\n"


def _replace_kpoints(text: str, card: str) -> str:
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("K_POINTS"))
    end = start + 1
    while end < len(lines) and lines[end].strip():
        end += 1
    return "".join(lines[:start]) + card + "".join(lines[end:])


def _drop_empty_namelists(text: str) -> str:
    """Remove the empty &FCP and &RISM namelists ASE writes; older pw.x do not know them."""
    return re.sub(r"^&(FCP|RISM)\n/\n", "", text, flags=re.MULTILINE)


def _pw_input(atoms: Atoms, step: str, p: dict[str, Any], table: PseudoTable) -> str:
    from ase.io.espresso import write_espresso_in

    pseudos = _species(atoms, table, p["pseudo_family"])
    magnetised, spin = _magnetised(atoms, table, p)
    namelists = _namelists(atoms, step, p, table, pseudos, spin)
    pbc = tuple(bool(x) for x in atoms.pbc)
    if p["kpts"] is not None:
        grid = tuple(int(n) for n in p["kpts"])
    else:
        grid = kpoint_grid(atoms.cell, float(p["kpoint_density"]), kspacing=p["kspacing"], pbc=pbc)
    if step == "DOS":  # a denser grid than the SCF one, by dos_kpoint_factor per direction
        factor = float(p["dos_kpoint_factor"])
        if p["kpts"] is not None:
            grid = tuple(max(1, math.ceil(n * factor)) for n in grid)
        else:
            grid = kpoint_grid(
                atoms.cell,
                float(p["kpoint_density"]) * factor,
                kspacing=p["kspacing"] / factor if p["kspacing"] else None,
                pbc=pbc,
            )
    buffer = io.StringIO()
    write_espresso_in(
        buffer,
        magnetised,
        input_data=namelists,
        pseudopotentials={s: ps.file for s, ps in pseudos.items()},
        kpts=grid,
    )
    text = _drop_empty_namelists(buffer.getvalue())
    if step == "BAND":
        text = _replace_kpoints(text, band_path_card(atoms, int(p["band_npoints"]), p["band_path"]))
    return text


def _postproc_input(namelist: str, values: dict[str, Any]) -> str:
    body = "".join(f"   {key} = {fortran_value(value)}\n" for key, value in values.items())
    return f"&{namelist}\n{body}/\n"


def render_inputs(atoms: Atoms, step: str, params: dict[str, Any]) -> dict[str, str]:
    """Input files (name -> text) for ``step`` of ``atoms``.

    ``params`` holds the names of DEFAULTS, plus any ``namelist.variable`` key (for example
    ``system.nbnd`` from a workflow step, or a recovery change such as
    ``electrons.mixing_beta``), written into the input last, as apply_changes does.
    """
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r} for Quantum ESPRESSO; known: {', '.join(STEPS)}")
    if len(atoms) == 0:
        raise ValueError("the structure has no atoms")
    p, namelist_settings = _params(params)
    table = pseudo_table(p["pseudopotentials"])
    files = {PW_INPUT: _pw_input(atoms, step, p, table)}
    common = {"prefix": p["prefix"], "outdir": p["outdir"]}
    if step == "BAND":
        files[BANDS_INPUT] = _postproc_input(
            "BANDS", {**common, "filband": "bands.dat", "lsym": False}
        )
    elif step == "DOS":
        files[DOS_INPUT] = _postproc_input(
            "DOS", {**common, "fildos": "dos.dat", "DeltaE": float(p["dos_delta_e"])}
        )
    return apply_changes(files, namelist_settings) if namelist_settings else files


def input_notes(atoms: Atoms, step: str, params: dict[str, Any]) -> list[str]:
    """What the shell should log about the inputs of ``step`` (cutoffs below the converged
    ones, or not known to be converged); empty when there is nothing to say."""
    p, _ = _params(params)
    table = pseudo_table(p["pseudopotentials"])
    pseudos = _species(atoms, table, p["pseudo_family"])
    return cutoff_notes(pseudos, float(p["ecutwfc"]) if p["ecutwfc"] is not None else None)


def run_sequence(step: str) -> list[tuple[str, str, str]]:
    """(executable, input, output) for each program the job of ``step`` runs, in order."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r} for Quantum ESPRESSO; known: {', '.join(STEPS)}")
    sequence = [("pw.x", PW_INPUT, PW_OUTPUT)]
    if step == "BAND":
        sequence.append(("bands.x", BANDS_INPUT, BANDS_OUTPUT))
    elif step == "DOS":
        sequence.append(("dos.x", DOS_INPUT, DOS_OUTPUT))
    return sequence


def main_output(step: str) -> str:
    """The pw.x output of ``step``: the one whose parse decides the step's status."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r} for Quantum ESPRESSO; known: {', '.join(STEPS)}")
    return PW_OUTPUT


def structure_to_atoms(structure: dict[str, Any]) -> Atoms:
    """An ``ase.Atoms`` from a parse's ``properties["structure"]`` (the optimised cell)."""
    from ase import Atoms

    try:
        return Atoms(
            symbols=structure["symbols"],
            positions=structure["positions"],
            cell=structure["cell"],
            pbc=structure.get("pbc", True),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a structure (needs symbols, positions, cell): {exc}") from None
