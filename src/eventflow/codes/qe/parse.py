"""A fast reader of Quantum ESPRESSO outputs (pw.x and the post-processing programs).

One pass over the lines, no ASE (it is slow to import and its reader stops at the
first problem it does not expect). The verdict follows the corpus conventions
(TRUTH.tsv, TRUTH_NOTES.md): a file holding several runs describes the last one;
the energy is the last line starting with ``!``; an ionic run is recognised by the
``nstep`` line pw.x prints only for ionic runs; the error kinds and their root-cause
order come from :mod:`eventflow.codes.qe.patterns`.
"""

from __future__ import annotations

import math
import re
from typing import Any

import attrs

from eventflow.codes.base import BOHR_ANGSTROM, RYDBERG_EV, Finding, ParseResult
from eventflow.codes.qe import patterns as pat

PARSER_VERSION = "1"
PARSER_NAME = f"qe/{PARSER_VERSION}"

RY_PER_BOHR_TO_EV_PER_ANG = RYDBERG_EV / BOHR_ANGSTROM
AMU_GRAMS = 1.66053906660e-24

# Program name in the banner -> executable name used in the corpus vocabulary.
_EXECUTABLES = {"PWSCF": "pw.x", "POST-PROC": "pp.x", "PHONON": "ph.x"}
_BANNER = re.compile(r"^\s*Program\s+(\S+)\s+v\.(\S+)")
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eEdD][-+]?\d+)?")
_NUMERIC_START = frozenset("-+.0123456789")
_ANG3 = re.compile(r"\(\s*([-+]?\d+\.?\d*)\s*Ang\^3")
_PW_ENERGY_CALCULATIONS = frozenset({"SCF", "RELAX", "VC-RELAX", "MD"})

_ELEMENT_SYMBOLS = """
    H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn
    Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La
    Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po
    At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg
    Cn Nh Fl Mc Lv Ts Og
"""
_ELEMENTS = frozenset(_ELEMENT_SYMBOLS.split())


def detect(text: str) -> bool:
    """True if ``text`` is a Quantum ESPRESSO output or CRASH file."""
    head = text[:20000]
    if "Quantum ESPRESSO suite" in head:
        return True
    if any(_BANNER.match(line) for line in head.splitlines()[:200]):
        return "PWSCF" in head or "JOB DONE." in text[-2000:] or "espresso" in head.lower()
    return pat.ERROR_BLOCK_RULE in head and bool(re.search(r"from \S+ : error #", head))


def _floats(text: str) -> list[float]:
    return [float(x.replace("d", "e").replace("D", "e")) for x in _FLOAT.findall(text)]


def _fortran_number(token: str) -> float:
    """A number as Fortran printed it; a field of asterisks (overflow) is infinite."""
    if token and set(token) == {"*"}:
        return math.inf
    return float(token.replace("d", "e").replace("D", "e"))


def _after(line: str, sep: str = "=") -> str:
    return line.split(sep, 1)[1] if sep in line else ""


def _element(label: str) -> str:
    """Chemical symbol of a species label such as ``Fe1`` or ``O_up``."""
    letters = re.match(r"[A-Za-z]{1,2}", label)
    if letters is None:
        return label
    two = letters.group(0).capitalize()
    if two in _ELEMENTS:
        return two
    one = two[0].upper()
    return one if one in _ELEMENTS else two


def _det3(m: list[list[float]]) -> float:
    return (
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    )


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _angle(u: list[float], v: list[float]) -> float:
    cos = sum(a * b for a, b in zip(u, v, strict=True)) / (_norm(u) * _norm(v))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _program(name: str, version: str) -> str:
    executable = _EXECUTABLES.get(name.upper(), name.lower() + ".x")
    return f"{executable} {version}"


class _Scan:
    """Facts collected in one pass over the lines of the last run."""

    def __init__(self, lines: list[str], start: int) -> None:
        self.lines = lines
        self.start = start
        self.program: str | None = None
        self.ionic = False
        self.md = False
        self.vc = False
        self.ase_driven = False
        self.band_structure = False
        self.band_structure_done = False
        self.nscf_marker = False
        self.from_save = False
        self.job_done = False
        self.energy: float | None = None
        self.energy_line = 0
        self.n_energies = 0
        self.homo: float | None = None
        self.lumo: float | None = None
        self.fermi: float | None = None
        self.fermi_up_down: tuple[float, float] | None = None
        self.total_mag: float | list[float] | None = None
        self.abs_mag: float | None = None
        self.n_atoms: int | None = None
        self.alat_bohr: float | None = None
        self.volume_bohr3: float | None = None
        self.printed_volume_ang3: float | None = None
        self.printed_density: float | None = None
        self.cell: list[list[float]] | None = None
        self.labels: list[str] | None = None
        self.positions: list[list[float]] | None = None
        self.structure_source: str | None = None
        self.structure_locked = False
        self.masses: dict[str, float] = {}
        self.forces: list[list[float]] | None = None
        self.total_force: float | None = None
        self.pressure: float | None = None
        # A vc-relax ends with an SCF at the relaxed cell on G-vectors made afresh for it;
        # its pressure, not the last BFGS step's, says whether the cutoff was high enough.
        self.final_scf = False
        self.relaxed_pressure: float | None = None
        self.final_scf_pressure: float | None = None
        self.stress: list[list[float]] | None = None
        self.enthalpy: float | None = None
        self.n_scf_iterations: int | None = None
        self.iterations_since_start = 0
        self.raw_findings: list[tuple[pat.ErrorPattern, int, str]] = []
        self.blocks: list[tuple[int, int]] = []  # (header index, closing index)
        self.warnings: dict[str, int] = {}
        self.explained_line = -1  # the line a "Message from routine" already reported

    # --- small readers of multi-line blocks -------------------------------------------
    def _vectors(self, i: int, count: int) -> list[list[float]] | None:
        rows = []
        for line in self.lines[i : i + count]:
            values = _floats(line.split("=", 1)[-1])
            if len(values) < 3:
                return None
            rows.append(values[-3:] if "(" in line else values[:3])
        return rows if len(rows) == count else None

    def _read_crystal_axes(self, i: int) -> None:
        rows = self._vectors(i + 1, 3)
        if rows is None or self.alat_bohr is None or self.structure_locked:
            return
        scale = self.alat_bohr * BOHR_ANGSTROM
        self.cell = [[x * scale for x in row] for row in rows]

    def _read_tau(self, i: int) -> None:
        if self.structure_locked or self.alat_bohr is None:
            return
        labels, positions = [], []
        scale = self.alat_bohr * BOHR_ANGSTROM
        for line in self.lines[i + 1 :]:
            if "tau(" not in line:
                break
            head, _, tail = line.partition("tau(")
            parts = head.split()
            values = _floats(tail.split("=", 1)[-1])
            if len(parts) < 2 or len(values) < 3:
                break
            labels.append(parts[1])
            positions.append([x * scale for x in values[:3]])
        if labels:
            self.labels, self.positions = labels, positions
            self.structure_source = "input"

    def _read_species(self, i: int) -> None:
        for line in self.lines[i + 1 :]:
            parts = line.split()
            if len(parts) < 3:
                break
            try:
                self.masses[parts[0]] = float(parts[2])
            except ValueError:
                break

    def _read_cell_parameters(self, i: int) -> None:
        header = self.lines[i]
        rows = self._vectors(i + 1, 3)
        if rows is None or self.structure_locked:
            return
        lowered = header.lower()
        if "bohr" in lowered:
            scale = BOHR_ANGSTROM
        elif "alat" in lowered:
            values = _floats(_after(header))
            alat = values[0] if values else self.alat_bohr
            if alat is None:
                return
            self.alat_bohr = alat
            scale = alat * BOHR_ANGSTROM
        else:
            scale = 1.0
        self.cell = [[x * scale for x in row] for row in rows]

    def _read_atomic_positions(self, i: int) -> None:
        if self.structure_locked:
            return
        lowered = self.lines[i].lower()
        labels, coords = [], []
        for line in self.lines[i + 1 :]:
            parts = line.split()
            if len(parts) < 4 or not parts[0][0].isalpha():
                break
            try:
                coords.append([float(x) for x in parts[1:4]])
            except ValueError:
                break
            labels.append(parts[0])
        if not labels:
            return
        if "crystal" in lowered:
            if self.cell is None:
                return
            cell = self.cell
            positions = [
                [sum(f[k] * cell[k][j] for k in range(3)) for j in range(3)] for f in coords
            ]
        elif "bohr" in lowered:
            positions = [[x * BOHR_ANGSTROM for x in c] for c in coords]
        elif "alat" in lowered:
            if self.alat_bohr is None:
                return
            positions = [[x * self.alat_bohr * BOHR_ANGSTROM for x in c] for c in coords]
        else:
            positions = coords
        self.labels, self.positions = labels, positions
        self.structure_source = "last_step"

    def _read_forces(self, i: int) -> None:
        forces = []
        for line in self.lines[i + 1 :]:
            stripped = line.strip()
            if not stripped:
                if forces:
                    break
                continue
            if not (stripped.startswith("atom") and "force =" in stripped):
                break
            try:
                values = [_fortran_number(t) for t in _after(stripped).split()[:3]]
            except ValueError:
                break
            if len(values) == 3:
                forces.append(values)
        if forces:
            self.forces = forces

    def _read_stress(self, i: int) -> None:
        pressure = _floats(_after(self.lines[i], "P="))
        self.pressure = pressure[0] if pressure else None
        if self.final_scf:
            self.final_scf_pressure = self.pressure
        rows = []
        for line in self.lines[i + 1 : i + 4]:
            values = _floats(line)
            if len(values) < 6:
                return
            rows.append(values[3:6])
        if len(rows) == 3:
            self.stress = rows

    def _warn(self, message: str) -> None:
        self.warnings[message] = self.warnings.get(message, 0) + 1

    # --- the pass ----------------------------------------------------------------------
    def run(self) -> None:  # noqa: C901 - one dispatch on the line's text, kept flat for speed
        lines = self.lines
        for i in range(self.start, len(lines)):
            line = lines[i]
            if not line or line.isspace():
                continue
            first = line.lstrip()[:1]
            if first in _NUMERIC_START:  # eigenvalues, k-points, matrices: no message starts so
                continue
            if first == "!":
                stripped = line.lstrip()
                if "total energy" in line and not stripped.startswith("!ASE"):
                    self._energy(line, i)
                elif stripped.startswith("!ASE"):
                    self.ase_driven = True
                continue
            if first == "%":
                if pat.ERROR_BLOCK_RULE in line and self.blocks and self.blocks[-1][1] < 0:
                    self.blocks[-1] = (self.blocks[-1][0], i)
                continue
            found = pat.match_line(line)
            if found is not None:
                self.raw_findings.append((found, i, line.strip()))
            if ("WARNING" in line or "BEWARE" in line or "DEPRECATED" in line) and (
                i != self.explained_line
            ):
                self._warn(line.strip())
            if "=" in line:
                self._keyed_line(line, i)
            else:
                self._plain_line(line, i)

    def _energy(self, line: str, i: int) -> None:
        tail = _after(line).split()
        try:
            self.energy = _fortran_number(tail[0]) if tail else math.nan
        except ValueError:
            self.energy = math.nan
        self.energy_line = i
        self.n_energies += 1

    def _keyed_line(self, line: str, i: int) -> None:  # noqa: C901 - flat dispatch
        if "force =" in line:
            if "Total force" in line:
                tokens = _after(line).split()
                try:
                    self.total_force = _fortran_number(tokens[0]) if tokens else None
                except ValueError:
                    self.total_force = None
            return
        if "total magnetization" in line:
            values = _floats(_after(line))
            self.total_mag = values[0] if len(values) == 1 else values[:3] if values else None
        elif "absolute magnetization" in line:
            values = _floats(_after(line))
            self.abs_mag = values[0] if values else None
        elif "celldm(1)=" in line:
            values = _floats(_after(line))
            if values and values[0] > 0:
                self.alat_bohr = values[0]
        elif "number of atoms/cell" in line:
            values = _floats(_after(line))
            self.n_atoms = int(values[0]) if values else None
        elif "unit-cell volume" in line:
            values = _floats(_after(line))
            if "new unit-cell volume" in line:
                self.vc = True
                angstrom = _ANG3.search(line)
                if angstrom is not None:
                    self.printed_volume_ang3 = float(angstrom.group(1))
                    self.printed_density = None
            elif values:
                self.volume_bohr3 = values[0]
        elif "density =" in line and "g/cm^3" in line:
            values = _floats(_after(line))
            self.printed_density = values[0] if values else None
        elif "total   stress" in line:
            self._read_stress(i)
        elif "nstep" in line and line.split("=", 1)[0].strip() == "nstep":
            self.ionic = True
        elif "Final enthalpy" in line or "enthalpy new" in line:
            self.vc = True
            values = _floats(_after(line))
            if "Final enthalpy" in line and values:
                self.enthalpy = values[0]
        elif "press convergence thresh" in line:
            self.vc = True
        elif "Entering Dynamics" in line:
            self.md = True
        elif "iteration #" in line:
            self.iterations_since_start += 1
        elif line.startswith("CELL_PARAMETERS"):
            self._read_cell_parameters(i)

    def _plain_line(self, line: str, i: int) -> None:  # noqa: C901 - flat dispatch
        if "JOB DONE." in line:
            self.job_done = True
        elif "Program" in line and _BANNER.match(line):
            match = _BANNER.match(line)
            assert match is not None
            self.program = _program(match.group(1), match.group(2))
        elif "highest occupied, lowest unoccupied level" in line:
            values = _floats(line.split(":", 1)[-1])
            if len(values) >= 2:
                self.homo, self.lumo = values[0], values[1]
            self.nscf_marker = self.band_structure_done
        elif "highest occupied level" in line:
            values = _floats(line.split(":", 1)[-1])
            self.homo = values[0] if values else None
            self.lumo = None
            self.nscf_marker = self.band_structure_done
        elif "the Fermi energy is" in line:
            values = _floats(line.split("is", 1)[-1])
            self.fermi = values[0] if values else None
            self.nscf_marker = self.band_structure_done
        elif "the spin up/dw Fermi energies are" in line:
            values = _floats(line.split("are", 1)[-1])
            if len(values) >= 2:
                self.fermi_up_down = (values[0], values[1])
            self.nscf_marker = self.band_structure_done
        elif "Forces acting on atoms" in line:
            self._read_forces(i)
        elif "crystal axes:" in line:
            self._read_crystal_axes(i)
        elif "positions (alat units)" in line:
            self._read_tau(i)
        elif "atomic species   valence    mass" in line:
            self._read_species(i)
        elif line.startswith("CELL_PARAMETERS"):
            self._read_cell_parameters(i)
        elif line.startswith("ATOMIC_POSITIONS"):
            self._read_atomic_positions(i)
        elif "End final coordinates" in line:
            self.structure_locked = self.positions is not None
            if self.structure_locked:
                self.structure_source = "final_coordinates"
        elif "convergence has been achieved in" in line or "convergence NOT achieved after" in line:
            values = _floats(line.split("in" if "achieved in" in line else "after", 1)[-1])
            self.n_scf_iterations = int(values[0]) if values else None
        elif "scf calculation at the relaxed structure" in line:
            # "Final scf calculation at ..." (QE 6) or "A final scf calculation at ..." (QE 7)
            self.final_scf = True
            self.relaxed_pressure = self.pressure
        elif "Band Structure Calculation" in line:
            self.band_structure = True
        elif "End of band structure calculation" in line:
            self.band_structure_done = True
        elif "Molecular Dynamics Calculation" in line:
            self.md = True
        elif "positions and unit cell read from directory" in line:
            self.from_save = True
        elif "eigenvalues not converged" in line and "c_bands" in line:
            self._warn("c_bands: eigenvalues not converged")
        elif "SCF correction compared to forces is large" in line:
            self._warn(line.strip())
        elif "Message from routine" in line:
            routine = line.split("routine", 1)[1].strip(" :\n")
            detail = self.lines[i + 1].strip() if i + 1 < len(self.lines) else ""
            self.explained_line = i + 1
            self._warn(f"{routine}: {detail}")
        elif ("Error in routine" in line or ": error #" in line) and pat.ERROR_BLOCK_HEADER.match(
            line
        ):
            self.blocks.append((i, -1))
        elif "Self-consistent Calculation" in line:
            self.iterations_since_start = 0

    # --- conclusions -------------------------------------------------------------------
    def calculation(self) -> str | None:
        """The calculation type, from what pw.x printed (it does not echo the input).

        ``nstep`` is printed only for ionic runs: MD once dynamics started, SCF when ASE
        drives the ionic loop (``!ASE`` lines), VC-RELAX when a cell quantity appears
        (press threshold, new unit-cell volume, enthalpy), else RELAX. A non-scf run
        prints "Band Structure Calculation"; an nscf one then reports a Fermi energy or
        the highest occupied level, a bands one does not. A run that failed right after
        reading the .save directory is taken as BANDS (TRUTH_NOTES).
        """
        if self.program is None:
            return None
        if not self.program.startswith("pw.x"):
            return "POSTPROC"
        if self.md:
            return "MD"
        if self.ionic:
            if self.ase_driven:
                return "SCF"
            return "VC-RELAX" if self.vc else "RELAX"
        if self.band_structure:
            return "NSCF" if self.nscf_marker else "BANDS"
        if self.from_save:
            return "BANDS"
        return "SCF"


def _last_run_start(lines: list[str]) -> int:
    """Index of the banner of the last run in the text (0 if none)."""
    start = 0
    for i, line in enumerate(lines):
        if "Program" in line and _BANNER.match(line):
            start = i
    return start


def _findings(scan: _Scan, calculation: str | None) -> list[Finding]:
    lines = scan.lines
    found: list[Finding] = []
    for pattern, i, text in scan.raw_findings:
        if pat.applies(pattern, calculation):
            found.append(Finding(kind=pattern.kind, line=i + 1, text=text, pattern=pattern.name))
    claimed = {f.line for f in found}
    fallback = pat.PATTERNS_BY_NAME["input_error"]
    for header, closing in scan.blocks:
        end = closing if closing > 0 else min(header + 4, len(lines))
        if any(header + 1 <= line_no <= end + 1 for line_no in claimed):
            continue
        message_index = header + 1 if header + 1 < end else header
        found.append(
            Finding(
                kind=fallback.kind,
                line=message_index + 1,
                text=lines[message_index].strip(),
                pattern=fallback.name,
            )
        )
    is_pw = scan.program is not None and scan.program.startswith("pw.x")
    if is_pw and scan.energy is not None and scan.energy > 0:
        rule = pat.PATTERNS_BY_NAME["unphysical_result"]
        line = lines[scan.energy_line].strip()
        found.append(Finding(rule.kind, scan.energy_line + 1, line, rule.name))
    if not found and not scan.job_done:
        rule = pat.PATTERNS_BY_NAME["truncated"]
        last = len(lines) - 1
        while last > 0 and not lines[last].strip():
            last -= 1
        found.append(Finding(rule.kind, last + 1, lines[last].strip() if lines else "", rule.name))
    return found


def _structure(scan: _Scan) -> dict[str, Any] | None:
    if scan.cell is None or scan.positions is None or scan.labels is None:
        return None
    return {
        "cell": [list(row) for row in scan.cell],
        "symbols": [_element(label) for label in scan.labels],
        "labels": list(scan.labels),
        "positions": [list(p) for p in scan.positions],
        "pbc": [True, True, True],
    }


def _properties(scan: _Scan, energy_ev: float | None) -> dict[str, Any]:  # noqa: C901
    props: dict[str, Any] = {}
    if energy_ev is not None:
        props["total_energy_ev"] = energy_ev
        if scan.n_atoms:
            props["energy_per_atom_ev"] = energy_ev / scan.n_atoms
    if scan.n_atoms is not None:
        props["n_atoms"] = scan.n_atoms
    if scan.fermi is not None:
        props["fermi_energy_ev"] = scan.fermi
    if scan.fermi_up_down is not None:
        props["fermi_energy_up_ev"], props["fermi_energy_down_ev"] = scan.fermi_up_down
    if scan.homo is not None:
        props["highest_occupied_ev"] = scan.homo
    if scan.lumo is not None:
        props["lowest_unoccupied_ev"] = scan.lumo
    if scan.forces:
        norms = [_norm(f) for f in scan.forces]
        props["max_force_ev_per_ang"] = max(norms) * RY_PER_BOHR_TO_EV_PER_ANG
    if scan.total_force is not None:
        props["total_force_ev_per_ang"] = scan.total_force * RY_PER_BOHR_TO_EV_PER_ANG
    if scan.pressure is not None:
        props["pressure_kbar"] = scan.pressure
    if scan.relaxed_pressure is not None:
        props["relaxed_pressure_kbar"] = scan.relaxed_pressure
    if scan.final_scf_pressure is not None:
        props["final_scf_pressure_kbar"] = scan.final_scf_pressure
    if scan.stress is not None:
        props["stress_kbar"] = scan.stress
        props["stress_max_kbar"] = max(abs(x) for row in scan.stress for x in row)
    if scan.enthalpy is not None:
        props["final_enthalpy_ev"] = scan.enthalpy * RYDBERG_EV
    if scan.total_mag is not None:
        props["total_magnetization"] = scan.total_mag
    if scan.abs_mag is not None:
        props["absolute_magnetization"] = scan.abs_mag
    if scan.n_scf_iterations is not None:
        props["n_scf_iterations"] = scan.n_scf_iterations
    elif scan.iterations_since_start:
        props["n_scf_iterations"] = scan.iterations_since_start
    if scan.n_energies:
        props["n_energies"] = scan.n_energies
    structure = _structure(scan)
    volume = None
    if structure is not None:
        cell = structure["cell"]
        a, b, c = cell
        props.update(
            a_ang=_norm(a),
            b_ang=_norm(b),
            c_ang=_norm(c),
            alpha_deg=_angle(b, c),
            beta_deg=_angle(a, c),
            gamma_deg=_angle(a, b),
        )
        volume = abs(_det3(cell))
        props["structure"] = structure
        props["structure_source"] = scan.structure_source
    elif scan.printed_volume_ang3 is not None:
        volume = scan.printed_volume_ang3
    elif scan.volume_bohr3 is not None:
        volume = scan.volume_bohr3 * BOHR_ANGSTROM**3
    if volume:
        props["volume_ang3"] = volume
    if scan.printed_density is not None:
        props["density_g_cm3"] = scan.printed_density
    elif volume and structure is not None and all(lab in scan.masses for lab in scan.labels or []):
        mass = sum(scan.masses[label] for label in structure["labels"])
        props["density_g_cm3"] = mass * AMU_GRAMS / (volume * 1e-24)
    if scan.warnings:
        props["warning_counts"] = dict(scan.warnings)
    return props


def parse(text: str) -> ParseResult:
    """Interpret one Quantum ESPRESSO output (or CRASH) text."""
    lines = text.splitlines()
    scan = _Scan(lines, _last_run_start(lines))
    scan.run()
    calculation = scan.calculation()
    findings = _findings(scan, calculation)
    error_kind = None
    if findings:
        top = min(pat.root_cause_rank(f.kind) for f in findings)
        root = next(f for f in findings if pat.root_cause_rank(f.kind) == top)
        error_kind = root.kind
        findings = [root] + [f for f in findings if f is not root]
    energy_ev = scan.energy * RYDBERG_EV if scan.energy is not None else None
    gap = None
    if scan.homo is not None and scan.lumo is not None:
        gap = scan.lumo - scan.homo
    warnings = tuple(
        f"{message} (x{count})" if count > 1 else message
        for message, count in scan.warnings.items()
    )
    properties = _properties(scan, energy_ev)
    residual = pressure_warning(properties)
    if residual is not None:
        warnings += (residual,)
        properties["residual_pressure_kbar"] = properties["final_scf_pressure_kbar"]
    return ParseResult(
        code="qe",
        program=scan.program,
        calculation=calculation,
        status="error" if findings else "ok",
        error_kind=error_kind,
        errors=tuple(findings),
        energy=scan.energy,
        energy_unit="Ry" if scan.energy is not None else None,
        energy_ev=energy_ev,
        band_gap_ev=gap,
        warnings=warnings,
        properties=properties,
        parser=PARSER_NAME,
    )


# pw.x does not print the target pressure (``press`` in &CELL), so a parse of the text
# alone compares with 0 kbar; the plugin's ``check`` uses the run's own parameters.
TARGET_PRESSURE_KBAR = 0.0
PRESSURE_TOLERANCE_KBAR = 10.0
PRESSURE_WARNING = "final SCF pressure"


def pressure_warning(
    properties: dict[str, Any],
    target_kbar: float = TARGET_PRESSURE_KBAR,
    tolerance_kbar: float = PRESSURE_TOLERANCE_KBAR,
) -> str | None:
    """The warning for a vc-relax whose final SCF is off the target pressure, else None.

    pw.x relaxes the cell with the plane waves of the starting cell; the final SCF
    recounts them for the relaxed cell. A large difference between the two pressures
    (and so from the target) is Pulay stress: the cutoff is too low for the
    pseudopotentials, and the relaxed lattice constant is wrong by as much.
    """
    final = properties.get("final_scf_pressure_kbar")
    if not isinstance(final, int | float) or abs(final - target_kbar) <= tolerance_kbar:
        return None
    relaxed = properties.get("relaxed_pressure_kbar")
    before = f" (the relaxation ended at {relaxed:g} kbar)" if relaxed is not None else ""
    return (
        f"{PRESSURE_WARNING} {final:g} kbar differs from the target {target_kbar:g} kbar by "
        f"more than {tolerance_kbar:g} kbar{before}: Pulay stress from too low a cutoff; "
        "raise ecutwfc (and ecutrho) and relax again"
    )


MAX_FORCE_EV_PER_ANG = 1000.0


def _non_finite(value: Any, path: str) -> list[str]:
    if isinstance(value, bool):
        return []
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{path} is not finite ({value})"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for k, v in enumerate(value) for p in _non_finite(v, f"{path}[{k}]")]
    return []


def sanity_problems(result: ParseResult) -> list[str]:
    """Reasons to distrust a parse even when pw.x said JOB DONE; empty when it looks sane.

    A force above 1000 eV/Å, a non-finite number anywhere, or a pw.x run of a kind that
    must print a total energy (SCF, RELAX, VC-RELAX, MD) without one.
    """
    problems: list[str] = []
    for name in ("energy", "energy_ev", "band_gap_ev"):
        problems += _non_finite(getattr(result, name), name)
    problems += _non_finite(result.properties, "properties")
    force = result.properties.get("max_force_ev_per_ang")
    if isinstance(force, float) and force > MAX_FORCE_EV_PER_ANG:
        problems.append(f"max force {force:.1f} eV/Å exceeds {MAX_FORCE_EV_PER_ANG:.0f} eV/Å")
    is_pw = result.program is not None and result.program.startswith("pw.x")
    if is_pw and result.calculation in _PW_ENERGY_CALCULATIONS and result.energy is None:
        problems.append(f"pw.x {result.calculation} run printed no total energy ('!' line)")
    return problems


def check(result: ParseResult, params: dict[str, Any]) -> ParseResult:
    """``result`` with the final-SCF pressure judged against the run's own parameters.

    The target is ``press`` (or ``cell.press``, kbar; default 0), the tolerance
    ``pressure_tolerance_kbar`` (default 10 kbar). A bad value in either is an error.
    A flagged run gets the warning and ``residual_pressure_kbar`` (final SCF - target).
    """
    target = params.get("cell.press", params.get("press"))
    tolerance = params.get("pressure_tolerance_kbar")
    try:
        target_kbar = TARGET_PRESSURE_KBAR if target is None else float(target)
        tolerance_kbar = PRESSURE_TOLERANCE_KBAR if tolerance is None else float(tolerance)
    except (TypeError, ValueError):
        raise ValueError(
            f"press {target!r} and pressure_tolerance_kbar {tolerance!r} must be numbers (kbar)"
        ) from None
    if tolerance_kbar < 0:
        raise ValueError(f"pressure_tolerance_kbar must be >= 0, got {tolerance_kbar:g}")
    kept = tuple(w for w in result.warnings if not w.startswith(PRESSURE_WARNING))
    residual = pressure_warning(result.properties, target_kbar, tolerance_kbar)
    properties = {k: v for k, v in result.properties.items() if k != "residual_pressure_kbar"}
    if residual is None:
        return attrs.evolve(result, warnings=kept, properties=properties)
    # Flagged: the offset becomes a property, which the policy's pressure rule reads.
    properties["residual_pressure_kbar"] = properties["final_scf_pressure_kbar"] - target_kbar
    return attrs.evolve(result, warnings=(*kept, residual), properties=properties)

