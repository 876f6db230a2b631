"""Write (and read back) CRYSTAL properties ``.d3`` inputs: BAND, and NEWK + DOSS.

BAND (CRYSTAL manual, properties): a title line, then
``NLINE ISS NSUB INZB IFNB IPLO IPRINT`` and NLINE lines ``i1 i2 i3 j1 j2 j3``:
segment ends as integers in units of 1/ISS of the reciprocal vectors of the
primitive cell CRYSTAL works in (the outputs say "IN TERMS OF PRIMITIVE LATTICE
VECTORS"). The path is ase's standard high-symmetry path for that cell; a break
in the path (``,``) is simply a segment that does not start where the last ended,
which CRYSTAL accepts (corpus p_lif_broken_band_path.fort25).

NEWK: ``IS ISP`` (or ``0 ISP`` and ``IS1 IS2 IS3``) then ``IFERM IPRINT``.
DOSS: ``NPRO NPT INZB IFNB IPLO NPOL NPR``, the energy window ``BMI BMA`` when
INZB and IFNB are negative, then NPRO projection lines: ``-n a1 .. an`` onto atoms,
``n o1 .. on`` onto orbitals (as aiida-crystal17 writes them; at most 15).
IPLO 1 writes fort.25 (and CRYSTAL also writes BAND.DAT / DOSS.DAT).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import attrs
import numpy as np
from ase import Atoms
from ase.cell import Cell

from eventflow.codes.crystal import d12
from eventflow.codes.crystal.deck import DeckError

PROPERTIES_STEPS = ("BAND", "DOS", "DOSS")
D3_DEFAULTS = d12.PROPERTIES_DEFAULTS
_LABEL = re.compile(r"[A-Z][a-z]*\d*")
MAX_PROJECTIONS = 15


def merge_d3_params(params: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(d3 params, d12 params): the keys of D3_DEFAULTS go to d3, the rest to d12."""
    d3p = dict(D3_DEFAULTS)
    rest = {}
    for key, value in (params or {}).items():
        if key in D3_DEFAULTS:
            d3p[key] = value
        else:
            rest[key] = value
    return d3p, d12.merge_params(rest)


def integer_coordinates(points: list[np.ndarray], max_denominator: int = 48) -> tuple[
        list[list[int]], int]:
    """Fractional coordinates as integers over one common denominator (CRYSTAL's ISS)."""
    fractions = [[Fraction(float(v)).limit_denominator(max_denominator) for v in p]
                 for p in points]
    denominator = 1
    for point in fractions:
        for f in point:
            denominator = denominator * f.denominator // math.gcd(denominator, f.denominator)
    return [[int(f * denominator) for f in point] for point in fractions], denominator


def band_path(atoms: Atoms, params: Mapping[str, Any] | None = None) -> tuple[
        list[tuple[str, str]], dict[str, np.ndarray]]:
    """Segments (label pairs) and special points of the standard path for CRYSTAL's cell."""
    _, p12 = merge_d3_params(params)
    dims = d12.dimensionality(atoms)
    if dims == 0:
        raise d12.InputError("a molecule has no band structure")
    cell = Cell(d12.crystal_cell(atoms, p12))
    pbc = [i < dims for i in range(3)]
    path = cell.bandpath(npoints=0, pbc=pbc)
    segments = []
    for piece in path.path.split(","):
        labels = _LABEL.findall(piece)
        segments += list(zip(labels, labels[1:], strict=False))
    return segments, {k: np.asarray(v) for k, v in path.special_points.items()}


def _electrons_in_crystal_cell(atoms: Atoms, p12: Mapping[str, Any]) -> float:
    cell = d12.crystal_cell(atoms, p12)
    ratio = abs(np.linalg.det(cell)) / abs(atoms.cell.volume) if d12.dimensionality(
        atoms) == 3 else 1.0
    return float(sum(atoms.numbers)) * ratio


def band_window(atoms: Atoms, params: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """First and last band: given, or the occupied-band count of an all-electron basis
    +- ``band_window`` (pass ``bands`` explicitly for pseudopotential basis sets)."""
    d3p, p12 = merge_d3_params(params)
    if d3p["bands"]:
        first, last = (int(v) for v in d3p["bands"])
        if not 0 < first <= last:
            raise d12.InputError(f"bands must be 0 < first <= last, got {d3p['bands']}")
        return first, last
    occupied = math.ceil(_electrons_in_crystal_cell(atoms, p12) / 2 - 1e-9)
    width = int(d3p["band_window"])
    return max(1, occupied - width), occupied + width


def render_band(atoms: Atoms, params: Mapping[str, Any] | None = None) -> str:
    """A BAND .d3 along the standard path, fort.25 output."""
    d3p, _ = merge_d3_params(params)
    segments, points = band_path(atoms, params)
    ends = [points[a] for a, _ in segments] + [points[b] for _, b in segments]
    ints, iss = integer_coordinates(ends)
    n = len(segments)
    first, last = band_window(atoms, params)
    route = segments[0][0]
    for i, (a, b) in enumerate(segments):
        route += f"-{b}" if i == 0 or a == segments[i - 1][1] else f"|{a}-{b}"
    title = f"{atoms.get_chemical_formula()} {route}"
    lines = ["BAND", title,
             f"{n} {iss} {int(d3p['band_points'])} {first} {last} 1 0"]
    for k in range(n):
        start, end = ints[k], ints[n + k]
        lines.append(" ".join(str(v) for v in start) + "  " + " ".join(str(v) for v in end))
    lines.append("END")
    return "\n".join(lines) + "\n"


def _element_projections(atoms: Atoms, p12: Mapping[str, Any]) -> list[list[int]]:
    """For each element, the labels of its atoms in CRYSTAL's cell (as ATOMSPIN counts them)."""
    mode = d12.geometry_mode(atoms, p12)
    order: list[int] = []
    if mode == "symmetry":
        sym = d12.symmetric_cell(atoms, float(p12["symprec"]))
        if sym is not None:
            points = d12.CENTRING_POINTS[sym.centring]
            for (z, _frac, _spin), mult in zip(sym.asym, sym.multiplicity, strict=True):
                order += [z] * (mult // points)
    if not order:
        order = [int(z) for z in atoms.numbers]
    groups: dict[int, list[int]] = {}
    for label, z in enumerate(order, start=1):
        groups.setdefault(z, []).append(label)
    return [groups[z] for z in sorted(groups)]


def render_newk_doss(atoms: Atoms, params: Mapping[str, Any] | None = None) -> str:
    """NEWK (the SCF mesh by default) and DOSS over the band window, projected per element."""
    d3p, p12 = merge_d3_params(params)
    if d12.dimensionality(atoms) == 0:
        raise d12.InputError("NEWK/DOSS needs a periodic structure")
    if d3p["dos_shrink"]:
        shrink = [[int(v) for v in d3p["dos_shrink"]]]
    else:
        shrink = d12.shrink_factors(atoms, p12)
    projections = _element_projections(atoms, p12) if d3p["projections"] == "elements" else []
    if d3p["projections"] not in ("elements", None):
        raise d12.InputError(f"projections must be 'elements' or None, not {d3p['projections']}")
    if len(projections) > MAX_PROJECTIONS:
        raise d12.InputError(f"{len(projections)} projections; CRYSTAL allows {MAX_PROJECTIONS}")
    first, last = band_window(atoms, params)
    lines = ["NEWK"] + [" ".join(str(v) for v in r) for r in shrink] + ["1 0", "DOSS"]
    lines.append(f"{len(projections)} {int(d3p['dos_points'])} {first} {last} 1 "
                 f"{int(d3p['dos_npol'])} 0")
    lines += [f"-{len(labels)} " + " ".join(map(str, labels)) for labels in projections]
    lines.append("END")
    return "\n".join(lines) + "\n"


def render_d3(atoms: Atoms, step: str, params: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The input of a properties run: ``{"INPUT": d3}`` for step BAND or DOS."""
    if step == "BAND":
        text = render_band(atoms, params)
    elif step in ("DOS", "DOSS"):
        text = render_newk_doss(atoms, params)
    else:
        raise d12.InputError(
            f"step {step!r} is not a properties step ({', '.join(PROPERTIES_STEPS)})"
        )
    parse_d3(text)
    return {"INPUT": text}


# --- reading .d3 ---------------------------------------------------------------------------


@attrs.frozen
class D3Entry:
    name: str
    records: tuple[tuple[float | int | str, ...], ...]


def _ints(line: str, n: int, what: str, index: int) -> list[int]:
    tokens = line.split()
    if len(tokens) < n:
        raise DeckError(f"line {index + 1}: {what} needs {n} integers, found {line.strip()!r}")
    try:
        return [int(t) for t in tokens[:n]]
    except ValueError:
        raise DeckError(
            f"line {index + 1}: {what} needs integers, found {line.strip()!r}"
        ) from None


def parse_d3(text: str) -> tuple[D3Entry, ...]:
    """Read the NEWK, BAND and DOSS records of a .d3 (other keywords: flags); check END."""
    lines = [(i, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()
             and not ln.strip().startswith("#")]
    entries: list[D3Entry] = []
    pos = 0

    def take(what: str) -> tuple[int, str]:
        nonlocal pos
        if pos >= len(lines):
            raise DeckError(f"d3 ends where {what} was expected")
        pos += 1
        return lines[pos - 1]

    while pos < len(lines):
        index, line = take("a keyword")
        word = line.split()[0].upper()
        if word.startswith("END"):
            if pos < len(lines):
                continue  # END closing a sub-block (ECHG, PROF ...) of another keyword
            return tuple(entries)
        if word == "NEWK":
            i, ln = take("NEWK's IS ISP")
            shrink = _ints(ln, 2, "NEWK IS ISP", i)
            records = [tuple(shrink)]
            if shrink[0] == 0:
                i, ln = take("NEWK's IS1 IS2 IS3")
                records.append(tuple(_ints(ln, 3, "NEWK IS1 IS2 IS3", i)))
            i, ln = take("NEWK's IFERM IPRINT")
            records.append(tuple(_ints(ln, 2, "NEWK IFERM IPRINT", i)))
            entries.append(D3Entry("NEWK", tuple(records)))
        elif word == "BAND":
            _, title = take("BAND's title")
            i, ln = take("BAND's NLINE ISS NSUB INZB IFNB IPLO IPRINT")
            head = _ints(ln, 7, "BAND NLINE ISS NSUB INZB IFNB IPLO IPRINT", i)
            records = [(title.strip(),), tuple(head)]
            if head[1] > 0:
                for _k in range(head[0]):
                    i, ln = take("a BAND segment")
                    records.append(tuple(_ints(ln, 6, "BAND segment", i)))
            else:
                for _k in range(head[0]):
                    _, ln = take("a BAND segment of labels")
                    records.append(tuple(ln.split()))
            entries.append(D3Entry("BAND", tuple(records)))
        elif word == "DOSS":
            i, ln = take("DOSS's NPRO NPT INZB IFNB IPLO NPOL NPR")
            head = _ints(ln, 7, "DOSS NPRO NPT INZB IFNB IPLO NPOL NPR", i)
            records = [tuple(head)]
            if head[2] < 0 and head[3] < 0:
                i, ln = take("DOSS's energy window BMI BMA")
                try:
                    records.append(tuple(float(t) for t in ln.split()[:2]))
                except ValueError:
                    raise DeckError(f"line {i + 1}: DOSS energy window needs 2 numbers") from None
            for _k in range(head[0]):
                i, ln = take("a DOSS projection")
                values = [int(t) for t in ln.split()] if re.fullmatch(r"[-\d\s]+", ln) else None
                if not values or abs(values[0]) != len(values) - 1:
                    raise DeckError(f"line {i + 1}: DOSS projection must be 'n' then n indices, "
                                    f"found {ln.strip()!r}")
                records.append(tuple(values))
            entries.append(D3Entry("DOSS", tuple(records)))
        else:
            entries.append(D3Entry(word, ()))
    raise DeckError("d3 has no final END")
