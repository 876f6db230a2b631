"""Interpret a CRYSTAL (crystal or properties program) output text.

The conventions are those of the corpus (TRUTH_NOTES.md), applied to every file:

* A file may hold several runs (crystal then properties). ``program``,
  ``calculation`` and ``status`` describe the last run; the energy is the final
  total energy of the last crystal run in the file.
* Energy: for an optimisation, the E(AU) of the last ``OPT END`` line; for every
  other run (and an optimisation without ``OPT END``), the last ``SCF ENDED`` line.
* Band gap: the last gap printed, where a later ``POSSIBLY CONDUCTING STATE``,
  ``SPIN LOCKING: NO ENERGY GAP COMPUTED`` or a ``FERMI ENERGY:`` summary after
  ``OPT END`` means there is none; for spin-polarised runs the smaller of the last
  ALPHA/BETA pair. Old versions print no gap line, so no gap.

Everything works on the whole text with compiled regular expressions and
``str.find`` (no Python loop over lines), so a megabyte output parses in
milliseconds.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import attrs

from eventflow.codes.base import HARTREE_EV, Finding, ParseResult
from eventflow.codes.crystal import patterns

PARSER_NAME = "crystal"
PARSER_VERSION = "1"

# The banner line " *   CRYSTAL17   *", always below the box's top border, so it
# follows a newline; the literal prefix keeps the search fast.
_BANNER = re.compile(r"\n \*[ \t]+CRYSTAL(\d\d)[ \t]+\*[ \t\r]*(?=\n|$)")
_BANNER_FIRST_LINE = re.compile(r" \*[ \t]+CRYSTAL(\d\d)[ \t]+\*[ \t\r]*(?=\n|$)")
_PUBLIC = re.compile(r"public\s*:\s*(\d+(?:\.\d+)+)")
_VSTRING = re.compile(r"\b[vV](\d+)[._](\d+)[._](\d+)")
_RELEASE = re.compile(r"Release\s*:?\s*(\d+(?:\.\d+)+)")
_SCF_ENDED = re.compile(
    r"SCF ENDED - (?P<status>[A-Z][A-Z ]*?)\s+E\(AU\)\s+(?P<e>[-+0-9.E]+)\s+CYCLES\s+(?P<n>\d+)"
)
_OPT_END = re.compile(
    r"\* OPT END - (?P<status>CONVERGED|FAILED)\s*\* E\(AU\):\s+(?P<e>[-+0-9.E]+)"
    r"\s+POINTS\s+(?P<n>\d+)"
)
_OPT_POINT = re.compile(r"OPTIMIZATION - POINT\s+(\d+)")
_OPT_MARKS = ("OPTOPTOPTOPT", "* OPT END -", "STARTING GEOMETRY OPTIMIZATION",
              "OPTIMIZATION - POINT")
# Gap events: (literal, kind). Each is found with str.find and checked on its line.
_GAP_LITERALS = (
    ("ELECTRONS", "hdr"),
    ("BAND GAP:", "gap"),
    ("POSSIBLY CONDUCTING STATE", "none"),
    ("SPIN LOCKING: NO ENERGY GAP", "none"),
    ("* OPT END -", "none"),
    ("FERMI ENERGY:", "none"),
)
_HDR_LINE = re.compile(r"[ \t]*(ALPHA|BETA)[ \t]+ELECTRONS[ \t]*$")
_GAP_LINE = re.compile(
    r"[ \t]*(?:(?:IN)?DIRECT ENERGY |(?P<which>ALPHA |BETA ))?BAND GAP:[ \t]*(?P<v>-?\d+\.\d+)"
)
_FERMI_LINES = (
    ("EFERMI(AU)", re.compile(r"EFERMI\(AU\)\s+([-+0-9.E]+)")),
    ("FERMI ENERGY:", re.compile(r"^[ \t]+FERMI ENERGY:\s+([-+0-9.E]+)\s+Ha")),
    ("FERMI ENERGY ", re.compile(r"FERMI ENERGY\s+([-+0-9.E]+)[ \t]*$")),
)
_TOTAL_CPU = re.compile(r"TOTAL CPU TIME =\s+([0-9.]+)")
_TCPU = re.compile(r"TCPU\s+([0-9.]+)")
_FINAL_GEOMETRY = "FINAL OPTIMIZED GEOMETRY - DIMENSIONALITY OF THE SYSTEM"
_INITIAL_GEOMETRY = "GEOMETRY FOR WAVE FUNCTION - DIMENSIONALITY OF THE SYSTEM"
# A number as CRYSTAL prints it; not a lone "-" or ".", which an output cut mid-line leaves.
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[Ee][-+]?\d+)?"
_CELL_VALUES = re.compile(
    r"A\s+B\s+C\s+ALPHA\s+BETA\s+GAMMA[^\n]*\n\s*" + r"\s+".join([f"({_NUMBER})"] * 6)
)
_ATOM_LINE = re.compile(
    rf"^\s*\d+\s+[TF]\s+(\d+)\s+([A-Z][A-Z]?)\s+({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})"
    r"(?:[ \t]+\S+)?[ \t]*$",
    re.M,
)
_ATOM_HEADER = re.compile(r"ATOM\s+(X\S*)\s+(Y\S*)\s+(Z\S*)")
_SCF_START = re.compile(r"^ CYC +\d+ ", re.M)
_MAX_WARNINGS = 30


@attrs.frozen
class Run:
    """One program run inside the file: where it starts, its program and version."""

    header_start: int  # start of the text that belongs to this run (wrapper lines included)
    banner: int  # position of the ' *   CRYSTALnn   *' line
    end: int  # end of this run's text
    family: str  # "CRYSTAL17"
    version: str | None
    is_properties: bool

    @property
    def program(self) -> str:
        middle = " properties" if self.is_properties else ""
        version = f" {self.version}" if self.version else ""
        return f"{self.family}{middle}{version}"


def detect(text: str) -> bool:
    """True only for outputs of CRYSTAL's crystal or properties programs.

    The banner line ``*   CRYSTALnn   *`` plus the program's start stamp or its
    authors box is required, so a scheduler log or a path naming CRYSTAL is not enough.
    """
    head = text[:200_000]
    if _BANNER.search(head) is None and _BANNER_FIRST_LINE.match(head) is None:
        return False
    return "EEEEEEEEEE STARTING" in text or "MAIN AUTHORS" in head


def _line_at(text: str, pos: int) -> tuple[int, str]:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return start, text[start:len(text) if end == -1 else end]


def _last_line_match(regex: re.Pattern[str], literal: str, text: str, start: int = 0,
                     end: int | None = None) -> re.Match[str] | None:
    """``regex`` matched on the last line (within start..end) containing ``literal``.

    ``str.rfind`` finds the line, so the cost does not grow with the number of
    earlier matches (thousands of timing lines in a long run).
    """
    stop = len(text) if end is None else end
    while True:
        pos = text.rfind(literal, start, stop)
        if pos == -1:
            return None
        line_start, line = _line_at(text, pos)
        m = regex.search(line)
        if m:
            return m
        stop = line_start


def _lines_equal(text: str, word: str, start: int, end: int) -> bool:
    """True if some line in start..end is ``word`` alone (spaces allowed)."""
    pos = text.find(word, start, end)
    while pos != -1:
        if _line_at(text, pos)[1].strip() == word:
            return True
        pos = text.find(word, pos + len(word), end)
    return False


def _version(text: str, banner: int) -> str | None:
    window_end = text.find("EEEEEEEEEE STARTING", banner)
    if window_end == -1 or window_end - banner > 6000:
        window_end = banner + 3000
    window = text[banner:window_end]
    m = _PUBLIC.search(window)
    if m:
        return m.group(1)
    m = _VSTRING.search(window)
    if m:
        return ".".join(m.groups())
    m = _RELEASE.search(window)
    return m.group(1) if m else None


def split_runs(text: str) -> list[Run]:
    """The runs in ``text``, one per CRYSTAL banner, in order."""
    banners = list(_BANNER.finditer(text))
    first = _BANNER_FIRST_LINE.match(text)
    if first:
        banners.insert(0, first)
    runs: list[Run] = []
    for i, m in enumerate(banners):
        banner = m.start() + (text[m.start()] == "\n")  # after the newline
        end = banners[i + 1].start() + 1 if i + 1 < len(banners) else len(text)
        if i == 0:
            header_start = 0
        else:
            term = text.rfind(patterns.TERMINATION, runs[-1].banner, banner)
            header_start = (text.find("\n", term) + 1) if term != -1 else banner
            runs[-1] = attrs.evolve(runs[-1], end=header_start)
        body = text[banner:end]
        header = text[header_start:banner]
        if "CRYSTAL - PROPERTIES" in body or "init_properties" in body:
            is_properties = True
        elif "CRYSTAL - SCF - TYPE OF CALCULATION" in body:
            is_properties = False
        else:
            is_properties = "properties" in header.lower()
        runs.append(
            Run(
                header_start=header_start,
                banner=banner,
                end=end,
                family=f"CRYSTAL{m.group(1)}",
                version=_version(text, banner),
                is_properties=is_properties,
            )
        )
    return runs


def _calculation(text: str, run: Run) -> str:
    if run.is_properties:
        return "PROPERTIES"
    a, b = run.header_start, run.end
    if _lines_equal(text, "ELASTIC CALCULATION", a, b) or _lines_equal(text, "ELASTCON", a, b):
        return "ELASTIC"
    if _lines_equal(text, "FREQUENCY CALCULATION", a, b) or _lines_equal(text, "FREQCALC", a, b):
        return "FREQ"
    if any(text.find(m, a, b) != -1 for m in _OPT_MARKS) or _lines_equal(text, "OPTGEOM", a, b):
        return "OPT"
    return "SP"


def _gap_events(text: str) -> list[tuple[int, str, str]]:
    """(line start, kind, line) of every gap-related line, in file order."""
    events: dict[int, tuple[str, str]] = {}
    for literal, kind in _GAP_LITERALS:
        pos = text.find(literal)
        while pos != -1:
            line_start, line = _line_at(text, pos)
            if kind == "hdr":
                if _HDR_LINE.match(line):
                    events[line_start] = (kind, line)
            elif kind == "gap":
                if _GAP_LINE.match(line):
                    events[line_start] = (kind, line)
            elif literal != "FERMI ENERGY:" or line.lstrip().startswith(literal):
                events.setdefault(line_start, (kind, line))
            pos = text.find(literal, pos + len(literal))
    return [(k, *events[k]) for k in sorted(events)]


def band_gap_ev(text: str) -> float | None:
    """The band gap in eV by the corpus rule (see the module docstring), or None."""
    gap: float | None = None
    pending_alpha: float | None = None
    spin: str | None = None
    for _pos, kind, line in _gap_events(text):
        if kind == "hdr":
            spin = line.split()[0].lower()
            if spin == "alpha":
                pending_alpha = None
        elif kind == "gap":
            m = _GAP_LINE.match(line)
            assert m is not None
            value = float(m.group("v"))
            which = (m.group("which") or "").strip().lower() or spin
            if which == "alpha":
                pending_alpha = value
                gap = value
            elif which == "beta":
                gap = value if pending_alpha is None else min(pending_alpha, value)
                pending_alpha = None
                spin = None
            else:
                gap = value
        else:  # conducting, spin-locked, OPT END, or a Fermi-energy summary: no gap (yet)
            gap = None
            pending_alpha = None
            spin = None
    return gap


def fermi_energy_ha(text: str) -> float | None:
    """The last Fermi energy printed (Hartree), whatever line printed it."""
    best: tuple[int, float] | None = None
    for literal, regex in _FERMI_LINES:
        stop = len(text)
        while True:
            pos = text.rfind(literal, 0, stop)
            if pos == -1 or (best is not None and pos < best[0]):
                break
            line_start, line = _line_at(text, pos)
            m = regex.search(line)
            if m:
                with contextlib.suppress(ValueError):
                    best = (pos, float(m.group(1)))
                break
            stop = line_start
    return best[1] if best else None


def read_geometry(text: str, marker: str, start: int, end: int,
                  last: bool = True) -> dict[str, Any] | None:
    """The cell and atoms of the (last or first) geometry block opened by ``marker``.

    Returns ``dimensionality``, ``lattice`` (primitive cell: a, b, c in Angstrom and
    alpha, beta, gamma in degrees; absent for molecules), ``coordinates`` (fractional
    or angstrom per axis) and ``atoms`` (z, symbol, position) as printed.
    """
    pos = text.rfind(marker, start, end) if last else text.find(marker, start, end)
    if pos == -1:
        return None
    line_end = text.find("\n", pos)
    words = text[pos + len(marker):line_end if line_end != -1 else end].split()
    if not words or not words[0].isdigit():
        return None  # an output cut inside the block's first line: no geometry to read
    dim = int(words[0])
    asym = text.find("ATOMS IN THE ASYMMETRIC UNIT", pos, end)
    stop = text.find("\n\n", asym, end) if asym != -1 else -1
    block = text[pos:stop if stop != -1 else end]
    geometry: dict[str, Any] = {"dimensionality": dim}
    cell = _CELL_VALUES.search(block)
    if cell and dim > 0:
        geometry["lattice"] = dict(
            zip(("a", "b", "c", "alpha", "beta", "gamma"), map(float, cell.groups()), strict=True)
        )
    header = _ATOM_HEADER.search(block)
    if header:
        geometry["coordinates"] = [
            "angstrom" if "ANGSTROM" in col else "fractional" for col in header.groups()
        ]
    geometry["atoms"] = [
        {"z": int(z), "symbol": sym.capitalize(), "position": [float(x), float(y), float(zz)]}
        for z, sym, x, y, zz in _ATOM_LINE.findall(block)
    ]
    return geometry


def _warnings(text: str, start: int) -> tuple[str, ...]:
    """The distinct ``WARNING ****`` lines (at most 30), in file order."""
    seen: dict[str, None] = {}
    pos = text.find("WARNING ****", start)
    while pos != -1 and len(seen) < _MAX_WARNINGS:
        line_start, line = _line_at(text, pos)
        seen.setdefault(line.strip(), None)
        pos = text.find("WARNING ****", line_start + len(line))
    return tuple(seen)


def _classify(text: str, start: int) -> tuple[str, str | None, tuple[Finding, ...]]:
    """(status, error_kind, findings) for the run whose text starts at ``start``."""
    findings = patterns.find_errors(text, start)
    if findings:
        return "error", patterns.root_cause(findings), tuple(findings)
    terminated = text.find(patterns.TERMINATION, start) != -1
    unclassified = patterns.unclassified_errors(text, start)
    if unclassified and not terminated:
        line_no, line = unclassified[0]
        scf = _SCF_START.search(text, start)
        before_scf = scf is None or text.count("\n", 0, scf.start()) + 1 > line_no
        kind = "input_error" if before_scf else "truncated"
        return "error", kind, (Finding(kind, line_no, line, "unclassified_error"),)
    if not terminated:
        tail = text.rstrip()
        last_line = tail[tail.rfind("\n") + 1:].strip()
        line_no = tail.count("\n") + 1
        return "error", "truncated", (Finding("truncated", line_no, last_line, "no_termination"),)
    return "ok", None, ()


def _energy(text: str, run: Run, calculation: str) -> tuple[float | None, dict[str, Any]]:
    body_start, body_end = run.header_start, run.end
    props: dict[str, Any] = {}
    scf = _last_line_match(_SCF_ENDED, "SCF ENDED", text, body_start, body_end)
    opt = _last_line_match(_OPT_END, "OPT END", text, body_start, body_end)
    if scf is not None:
        props["scf_converged"] = "CONVERGENCE" in scf.group("status")
        props["scf_cycles"] = int(scf.group("n"))
    if opt is not None:
        props["opt_converged"] = opt.group("status") == "CONVERGED"
        props["opt_points"] = int(opt.group("n"))
    elif calculation == "OPT":
        point = _last_line_match(_OPT_POINT, "OPTIMIZATION - POINT", text, body_start, body_end)
        props["opt_converged"] = False
        props["opt_points"] = int(point.group(1)) if point else 0
    chosen = opt if (calculation == "OPT" and opt is not None) else scf
    return (float(chosen.group("e")) if chosen is not None else None), props


def _cpu_time(text: str, run: Run) -> float | None:
    last = _last_line_match(_TOTAL_CPU, "TOTAL CPU TIME", text, run.header_start, run.end)
    if last is None:
        last = _last_line_match(_TCPU, "TCPU", text, run.header_start, run.end)
    return float(last.group(1)) if last is not None else None


def _no_banner(text: str) -> ParseResult:
    findings = patterns.find_errors(text)
    if findings:
        return ParseResult(
            code=PARSER_NAME, program=None, calculation=None, status="error",
            error_kind=patterns.root_cause(findings), errors=tuple(findings),
            parser=f"{PARSER_NAME}/{PARSER_VERSION}",
        )
    if not text.strip():
        return ParseResult(
            code=PARSER_NAME, program=None, calculation=None, status="error",
            error_kind="truncated",
            errors=(Finding("truncated", 1, "", "empty_output"),),
            parser=f"{PARSER_NAME}/{PARSER_VERSION}",
        )
    raise ValueError("not a CRYSTAL output: no CRYSTAL banner and no known CRYSTAL error message")


def parse_output(text: str) -> ParseResult:
    """The interpretation of one CRYSTAL output text (see the module docstring)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    runs = split_runs(text)
    if not runs:
        return _no_banner(text)
    last = runs[-1]
    calculation = _calculation(text, last)
    crystal_runs = [r for r in runs if not r.is_properties]
    properties: dict[str, Any] = {"runs": [r.program for r in runs]}
    energy = None
    if crystal_runs:
        crun = crystal_runs[-1]
        ccalc = calculation if crun is last else _calculation(text, crun)
        energy, energy_props = _energy(text, crun, ccalc)
        properties.update(energy_props)
        initial = read_geometry(text, _INITIAL_GEOMETRY, crun.header_start, crun.end, last=False)
        if initial is not None:
            properties["initial_geometry"] = initial
        final = read_geometry(text, _FINAL_GEOMETRY, crun.header_start, crun.end)
        if final is not None:
            properties["final_geometry"] = final
    status, kind, findings = _classify(text, last.header_start)
    gap = band_gap_ev(text)
    fermi = fermi_energy_ha(text)
    if fermi is not None:
        properties["fermi_energy_ha"] = fermi
        properties["fermi_energy_ev"] = fermi * HARTREE_EV
    cpu = _cpu_time(text, last)
    if cpu is not None:
        properties["cpu_time_s"] = cpu
    return ParseResult(
        code=PARSER_NAME,
        program=last.program,
        calculation=calculation,
        status=status,
        error_kind=kind,
        errors=findings,
        energy=energy,
        energy_unit="Ha" if energy is not None else None,
        energy_ev=energy * HARTREE_EV if energy is not None else None,
        band_gap_ev=gap,
        warnings=_warnings(text, 0),
        properties=properties,
        parser=f"{PARSER_NAME}/{PARSER_VERSION}",
    )
