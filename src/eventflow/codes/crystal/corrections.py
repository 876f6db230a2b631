"""Changes to a CRYSTAL deck that recover from known failures: text in, text out.

Each function parses the deck (:mod:`eventflow.codes.crystal.deck`), edits only
the lines of the keyword it is about, and leaves every other line, comments and
blank lines included, exactly as it was. A keyword that is absent is added just
before the END that closes its block. The result is parsed again, so a change
can never produce a deck the reader rejects.

What each one is for:

=====================  ==================================================
SCF not converged      raise MAXCYCLE, set/raise FMIXING, add LEVSHIFT,
                       switch DIIS -> ANDERSON / BROYDEN, add GUESSP
k-point mesh errors    SHRINK isotropic, or denser
geometry not converged OPTGEOM RESTART with a smaller MAXTRADIUS
atoms too close        scale the cell by a factor
basis linear dep.      tighten TOLINTEG
=====================  ==================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from eventflow.codes.crystal import d3
from eventflow.codes.crystal import deck as deckmod
from eventflow.codes.crystal.deck import Deck, DeckError, Entry

# CRYSTAL's own defaults, used when a keyword is absent and has to be raised.
CRYSTAL_MAXCYCLE = 50
CRYSTAL_TOLINTEG = (6, 6, 6, 6, 12)
CRYSTAL_MAXTRADIUS = 4.0  # bohr
MIXERS = ("DIIS", "ANDERSON", "BROYDEN")


def _lines(text: str) -> list[str]:
    return text.splitlines()


def _join(lines: Sequence[str], original: str) -> str:
    out = "\n".join(lines)
    return out + "\n" if original.endswith("\n") or not original else out


def _num(x: float) -> str:
    text = f"{round(float(x), 10):.10f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _edit(text: str, start: int, end: int, new: Sequence[str]) -> str:
    """Replace lines ``start..end`` (inclusive; end = start - 1 inserts) and re-check."""
    lines = _lines(text)
    lines[start:end + 1] = list(new)
    result = _join(lines, text)
    deckmod.parse_deck(result)
    return result


def _set_scf(text: str, name: str, records: Sequence[str]) -> str:
    """Give block-3 keyword ``name`` these record lines, adding it if absent."""
    deck = deckmod.parse_deck(text)
    entry = deck.scf_keyword(name)
    if entry is None:
        return _edit(text, deck.end, deck.end - 1, [name, *records])
    return _edit(text, entry.line + 1, entry.end, records)


def _remove(text: str, entries: Sequence[Entry]) -> str:
    lines = _lines(text)
    for entry in sorted(entries, key=lambda e: e.line, reverse=True):
        del lines[entry.line:entry.end + 1]
    result = _join(lines, text)
    deckmod.parse_deck(result)
    return result


def _value(entry: Entry | None, default: float) -> float:
    if entry is None or not entry.records:
        return default
    return float(entry.records[0][0])


# --- SCF -----------------------------------------------------------------------------------


def set_maxcycle(text: str, cycles: int) -> str:
    """MAXCYCLE (SCF, block 3) = ``cycles``."""
    if cycles <= 0:
        raise ValueError(f"MAXCYCLE must be positive, got {cycles}")
    return _set_scf(text, "MAXCYCLE", [str(int(cycles))])


def raise_maxcycle(text: str, factor: float = 2.0) -> str:
    """MAXCYCLE times ``factor`` (from CRYSTAL's default 50 when absent)."""
    current = _value(deckmod.parse_deck(text).scf_keyword("MAXCYCLE"), CRYSTAL_MAXCYCLE)
    return set_maxcycle(text, max(int(current) + 1, math.ceil(current * factor)))


def set_fmixing(text: str, percent: int) -> str:
    """FMIXING = ``percent`` (share of the previous Fock matrix mixed in, 0-99)."""
    if not 0 <= percent <= 99:
        raise ValueError(f"FMIXING must be 0..99, got {percent}")
    return _set_scf(text, "FMIXING", [str(int(percent))])


def raise_fmixing(text: str, step: int = 20, ceiling: int = 90) -> str:
    """FMIXING up by ``step`` (from 30 when absent), at most ``ceiling``."""
    current = int(_value(deckmod.parse_deck(text).scf_keyword("FMIXING"), 30))
    return set_fmixing(text, min(ceiling, current + step))


def add_levshift(text: str, shift: int = 5, lock: int = 1) -> str:
    """LEVSHIFT ``shift`` (0.1 Hartree units) ``lock`` (1: kept on after convergence)."""
    return _set_scf(text, "LEVSHIFT", [f"{int(shift)} {int(lock)}"])


def set_mixer(text: str, mixer: str, broyden: Sequence[float] = (0.0001, 50, 2)) -> str:
    """Use ``mixer`` (DIIS, ANDERSON or BROYDEN): drop the other mixer keywords, add this one.

    DIIS is CRYSTAL's default, so switching to it only removes ANDERSON/BROYDEN.
    """
    mixer = mixer.upper()
    if mixer not in MIXERS:
        raise ValueError(f"mixer must be one of {', '.join(MIXERS)}, not {mixer!r}")
    deck = deckmod.parse_deck(text)
    others = [e for e in deck.scf_keywords if e.name in MIXERS and e.name != mixer]
    text = _remove(text, others) if others else text
    if mixer == "DIIS":
        return text
    if mixer == "ANDERSON":
        deck = deckmod.parse_deck(text)
        if deck.scf_keyword("ANDERSON") is not None:
            return text
        return _edit(text, deck.end, deck.end - 1, ["ANDERSON"])
    w0, imix, istart = broyden
    return _set_scf(text, "BROYDEN", [f"{_num(w0)} {int(imix)} {int(istart)}"])


def set_flag(text: str, name: str, on: bool = True) -> str:
    """Add (or remove) a block-3 keyword that takes no data, e.g. GUESSP."""
    deck = deckmod.parse_deck(text)
    entries = [e for e in deck.scf_keywords if e.name == name]
    if on:
        return text if entries else _edit(text, deck.end, deck.end - 1, [name])
    return _remove(text, entries) if entries else text


def add_guessp(text: str) -> str:
    """GUESSP: start the SCF from the density matrix of the previous run (fort.20)."""
    return set_flag(text, "GUESSP", True)


def tighten_tolinteg(text: str, step: int = 1) -> str:
    """TOLINTEG: the first four up by ``step``, the fifth by twice that.

    7 7 7 7 14 becomes 8 8 8 8 16; from CRYSTAL's default 6 6 6 6 12 when absent.
    """
    entry = deckmod.parse_deck(text).scf_keyword("TOLINTEG")
    values = [int(v) for v in entry.records[0]] if entry and entry.records else \
        list(CRYSTAL_TOLINTEG)
    new = [v + step for v in values[:4]] + [values[4] + 2 * step]
    return set_tolinteg(text, new)


def set_tolinteg(text: str, values: Sequence[int]) -> str:
    if len(values) != 5:
        raise ValueError(f"TOLINTEG needs 5 integers, got {list(values)}")
    return _set_scf(text, "TOLINTEG", [" ".join(str(int(v)) for v in values)])


# --- k points --------------------------------------------------------------------------------


def _shrink_records(entry: Entry | None) -> list[list[int]]:
    if entry is None or not entry.records:
        raise DeckError("the deck has no SHRINK to change")
    return [[int(v) for v in r] for r in entry.records]


def set_shrink(text: str, values: Sequence[int]) -> str:
    """SHRINK ``[IS, ISP]`` or ``[0, ISP, n1, n2, n3]``."""
    values = [int(v) for v in values]
    if len(values) == 2 and values[0] > 0 and values[1] > 0:
        records = [f"{values[0]} {values[1]}"]
    elif len(values) == 5 and values[0] == 0 and min(values[1:]) > 0:
        records = [f"0 {values[1]}", " ".join(map(str, values[2:]))]
    else:
        raise ValueError(f"SHRINK must be [IS, ISP] or [0, ISP, n1, n2, n3], not {values}")
    return _set_scf(text, "SHRINK", records)


def shrink_isotropic(text: str) -> str:
    """One shrinking factor for all directions: the largest of an anisotropic mesh."""
    records = _shrink_records(deckmod.parse_deck(text).scf_keyword("SHRINK"))
    if records[0][0] != 0:
        return text
    n = max(records[1])
    return set_shrink(text, [n, max(records[0][1], 2 * n)])


def shrink_denser(text: str, factor: float = 1.5) -> str:
    """Every shrinking factor (and the Gilat net) times ``factor``, rounded up."""
    if factor <= 1:
        raise ValueError(f"a denser mesh needs factor > 1, got {factor}")
    records = _shrink_records(deckmod.parse_deck(text).scf_keyword("SHRINK"))

    def up(n: int) -> int:
        return max(n + 1, math.ceil(n * factor))

    if records[0][0] != 0:
        return set_shrink(text, [up(records[0][0]), up(records[0][1])])
    return set_shrink(text, [0, up(records[0][1])] + [up(n) for n in records[1]])


# --- geometry optimisation -----------------------------------------------------------------


def _optgeom(text: str) -> Entry:
    opt = deckmod.parse_deck(text).optgeom
    if opt is None:
        raise DeckError("the deck has no OPTGEOM block to restart")
    return opt


def set_maxtradius(text: str, radius: float) -> str:
    """OPTGEOM's MAXTRADIUS (bohr) = ``radius``, the largest step the optimiser may take."""
    if radius <= 0:
        raise ValueError(f"MAXTRADIUS must be positive, got {radius}")
    opt = _optgeom(text)
    entry = opt.child("MAXTRADIUS")
    if entry is None:
        return _edit(text, opt.end, opt.end - 1, ["MAXTRADIUS", _num(radius)])
    return _edit(text, entry.line + 1, entry.end, [_num(radius)])


def set_optgeom_restart(text: str, on: bool = True) -> str:
    """Add (or remove) OPTGEOM's RESTART: continue from OPTINFO.DAT of the last attempt."""
    opt = _optgeom(text)
    entry = opt.child("RESTART")
    if on:
        return text if entry is not None else _edit(text, opt.end, opt.end - 1, ["RESTART"])
    return _remove(text, [entry]) if entry is not None else text


def optgeom_restart(text: str, maxtradius: float | None = None, factor: float = 0.5) -> str:
    """OPTGEOM: add RESTART (read OPTINFO.DAT) and make MAXTRADIUS smaller.

    MAXTRADIUS becomes ``maxtradius`` when given, else ``factor`` times the current
    value (CRYSTAL's default 4 bohr when absent).
    """
    current = _value(_optgeom(text).child("MAXTRADIUS"), CRYSTAL_MAXTRADIUS)
    radius = float(maxtradius) if maxtradius is not None else current * factor
    return set_optgeom_restart(set_maxtradius(text, radius), True)


# --- geometry --------------------------------------------------------------------------------


def scale_cell(text: str, factor: float) -> str:
    """Lattice lengths (and Cartesian coordinates) times ``factor``; angles unchanged.

    Fractional coordinates follow the cell. For SLAB the z coordinates (Angstrom),
    for POLYMER y and z, for MOLECULE all coordinates are scaled too. An EXTERNAL
    deck has its geometry in fort.34: use :func:`scale_fort34`.
    """
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    deck = deckmod.parse_deck(text)
    g = deck.geometry
    if g.kind in ("EXTERNAL", "DLVINPUT"):
        raise DeckError(f"{g.kind} deck: its geometry is in fort.34, scale that file instead")
    lines = _lines(text)
    cartesian = {"SLAB": (3,), "POLYMER": (2, 3), "MOLECULE": (1, 2, 3)}.get(g.kind, ())
    for (first, last), atom in reversed(list(zip(g.atom_spans, g.atoms, strict=True))):
        if not cartesian:
            continue
        values = [str(atom[0])] + [
            _num(v * factor) if k in cartesian else _num(v) for k, v in enumerate(atom) if k
        ]
        lines[first:last + 1] = [" ".join(values)]
    if g.params_span is not None:
        lengths = set(deckmod.length_positions(g))
        new = [_num(v * factor) if k in lengths else _num(v) for k, v in enumerate(g.params)]
        first, last = g.params_span
        lines[first:last + 1] = [" ".join(new)]
    result = _join(lines, text)
    deckmod.parse_deck(result)
    return result


def scale_fort34(text: str, factor: float) -> str:
    """A fort.34 with the lattice, the operator translations and the atoms times ``factor``."""
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    rows = text.splitlines()
    try:
        nops = int(rows[4].split()[0])
        start = 5 + 4 * nops
        nat = int(rows[start].split()[0])
    except (IndexError, ValueError) as exc:
        raise ValueError(f"not a readable fort.34: {exc}") from None

    def scaled(row: str, skip: int = 0) -> str:
        parts = row.split()
        head = parts[:skip]
        return " ".join(head + [f"{float(v) * factor: .12E}" for v in parts[skip:skip + 3]])

    out = list(rows)
    for i in (1, 2, 3):
        out[i] = scaled(rows[i])
    for op in range(nops):
        t = 5 + 4 * op + 3
        out[t] = scaled(rows[t])
    for i in range(start + 1, start + 1 + nat):
        parts = rows[i].split()
        out[i] = f"{int(parts[0]):4d} " + scaled(rows[i], 1).split(" ", 1)[1]
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


# --- the plugin interface ----------------------------------------------------------------------


def _deck_name(inputs: Mapping[str, str]) -> str:
    if "INPUT" in inputs:
        return "INPUT"
    for name in inputs:
        if name.endswith(".d12"):
            return name
    raise ValueError(f"no CRYSTAL deck among the inputs ({', '.join(inputs) or 'none'}): "
                     "expected INPUT or a .d12 file")


def _is_properties_deck(text: str) -> bool:
    try:
        deckmod.parse_deck(text)
    except DeckError:
        return bool(d3.parse_d3(text))
    return False


def apply_changes(inputs: Mapping[str, str], changes: Mapping[str, Any]) -> dict[str, str]:
    """The input files with ``changes`` applied, e.g. ``{"MAXCYCLE": 200, "GUESSP": True}``.

    Keys: MAXCYCLE (int), FMIXING (int), LEVSHIFT ([shift, lock] or None to remove),
    GUESSP (bool), MIXER (DIIS/ANDERSON/BROYDEN), ANDERSON (True), BROYDEN
    ([w0, imix, istart]), SHRINK ("denser", "isotropic", [IS, ISP] or
    [0, ISP, n1, n2, n3]), OPTGEOM_RESTART (True, False or {"maxtradius": r}),
    MAXTRADIUS (bohr), SCALE_CELL (factor; scales fort.34 too), TOLINTEG ("tighter" or
    5 ints). The result does not depend on the order of the keys: OPTGEOM_RESTART
    halves MAXTRADIUS only when no MAXTRADIUS change comes with it.
    """
    files = dict(inputs)
    name = _deck_name(files)
    text = files[name]
    if _is_properties_deck(text):
        # A properties run (BAND, DOS) has no SCF of its own: every attempt reads the SP
        # step's wave function, handed to it afresh, so a restart (GUESSP, as the walltime
        # rule asks) leaves its deck as it is. Any other change names an SCF or geometry
        # keyword that a properties deck does not hold.
        others = [k for k in changes if k.upper() != "GUESSP"]
        if others:
            raise ValueError(f"a properties deck takes none of {', '.join(others)}")
        return files
    upper_keys = {k.upper() for k in changes}
    for key, value in changes.items():
        key_u = key.upper()
        if key_u == "MAXCYCLE":
            text = set_maxcycle(text, int(value))
        elif key_u == "FMIXING":
            text = set_fmixing(text, int(value))
        elif key_u == "LEVSHIFT":
            text = set_flag(text, "LEVSHIFT", False) if value is None else add_levshift(
                text, *[int(v) for v in value])
        elif key_u == "GUESSP":
            text = set_flag(text, "GUESSP", bool(value))
        elif key_u == "MIXER":
            text = set_mixer(text, str(value))
        elif key_u == "ANDERSON":
            text = set_mixer(text, "ANDERSON" if value else "DIIS")
        elif key_u == "BROYDEN":
            text = set_mixer(text, "BROYDEN", value if isinstance(value, Sequence)
                             else (0.0001, 50, 2)) if value else set_mixer(text, "DIIS")
        elif key_u == "SHRINK":
            if value == "denser":
                text = shrink_denser(text)
            elif value == "isotropic":
                text = shrink_isotropic(text)
            else:
                text = set_shrink(text, value)
        elif key_u == "OPTGEOM_RESTART":
            radius = value.get("maxtradius") if isinstance(value, Mapping) else None
            if not value:
                text = set_optgeom_restart(text, False)
            elif radius is not None:
                text = optgeom_restart(text, float(radius))
            elif "MAXTRADIUS" in upper_keys:  # the radius is that change's, in any order
                text = set_optgeom_restart(text, True)
            else:
                text = optgeom_restart(text)
        elif key_u == "MAXTRADIUS":
            text = set_maxtradius(text, float(value))
        elif key_u == "SCALE_CELL":
            if deckmod.parse_deck(text).geometry.kind in ("EXTERNAL", "DLVINPUT"):
                if "fort.34" not in files:
                    raise ValueError("SCALE_CELL on an EXTERNAL deck needs fort.34 in the inputs")
                files["fort.34"] = scale_fort34(files["fort.34"], float(value))
            else:
                text = scale_cell(text, float(value))
        elif key_u == "TOLINTEG":
            text = tighten_tolinteg(text) if value == "tighter" else set_tolinteg(text, value)
        else:
            raise ValueError(f"unknown CRYSTAL change {key!r}")
    files[name] = text
    return files


def scf_keywords_summary(deck: Deck) -> dict[str, Any]:
    """Block-3 keywords by name -> records (first occurrence): a compact view for logs."""
    out: dict[str, Any] = {}
    for e in deck.scf_keywords:
        out.setdefault(e.name, [list(r) for r in e.records])
    return out
