"""Read and check a CRYSTAL ``.d12`` input deck.

A deck is a title line and three blocks, each closed by a line starting with END:

1. geometry: CRYSTAL / SLAB / POLYMER / MOLECULE (with its numeric records) or
   EXTERNAL / DLVINPUT, then geometry keywords (SUPERCEL, OPTGEOM ... ENDOPT, ...);
2. basis set: ``BASISSET`` and a library name, or explicit atom records closed by
   ``99 0`` and END;
3. Hamiltonian and SCF keywords (DFT ... END, SHRINK, TOLINTEG, ...) and a final END.

CRYSTAL reads keywords one per line (first word, the rest of the line ignored)
and numbers free-format: a record takes as many numbers as it needs, from as
many lines as needed, and drops the rest of its last line. This module reads
the same way, so it finds missing numbers, words where numbers belong and blocks
that are never closed, each reported with its line number. Lines starting with
``#`` are comments (CRYSTAL17 and later); blank lines are skipped.

The result is a :class:`Deck` whose entries remember their line span, so
corrections can change one keyword and leave every other line, comments
included, exactly as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

Value = int | float | str
Record = tuple[Value, ...]
# A record spec: a string of type letters (i int, f real, w word, l rest of line),
# or a function of the records read so far returning such a string (or None: no record).
Spec = str | Callable[[list[Record]], str | None]


class DeckError(ValueError):
    """The deck is not valid CRYSTAL input; the message names the line and the problem."""


@attrs.frozen
class Entry:
    """One keyword: its records of values, its line span, and the keywords of its sub-block."""

    name: str
    records: tuple[Record, ...]
    line: int  # index of the keyword line
    end: int  # index of the last line it consumed (its END for a sub-block)
    children: tuple[Entry, ...] = ()
    known: bool = True

    def child(self, name: str) -> Entry | None:
        for c in self.children:
            if c.name == name:
                return c
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "records": [list(r) for r in self.records]}
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        return out


@attrs.frozen
class Geometry:
    """Block 1's structure records (none for EXTERNAL/DLVINPUT)."""

    kind: str
    flags: tuple[int, ...] = ()
    group: Value | None = None
    params: tuple[float, ...] = ()
    atoms: tuple[tuple[int, float, float, float], ...] = ()
    line: int = 0
    params_span: tuple[int, int] | None = None  # first and last line of the parameters
    atom_spans: tuple[tuple[int, int], ...] = ()  # first and last line of each atom
    end: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "flags": list(self.flags),
            "group": self.group,
            "params": list(self.params),
            "atoms": [list(a) for a in self.atoms],
        }


@attrs.frozen
class Basis:
    """Block 2: a library name (``BASISSET``) or explicit basis records."""

    internal: str | None
    atoms: tuple[int, ...]  # conventional atomic numbers with an explicit basis
    line: int
    end: int
    keywords: tuple[Entry, ...] = ()
    atom_spans: tuple[tuple[int, int], ...] = ()  # first and last line of each atom's basis

    def to_dict(self) -> dict[str, Any]:
        return {
            "internal": self.internal,
            "atoms": list(self.atoms),
            "keywords": [k.to_dict() for k in self.keywords],
        }


@attrs.frozen
class Deck:
    """A parsed deck. ``lines`` is the original text split into lines."""

    lines: tuple[str, ...]
    title: str
    geometry: Geometry
    geometry_keywords: tuple[Entry, ...]
    geometry_end: int
    basis: Basis
    scf_keywords: tuple[Entry, ...]
    end: int
    unknown: tuple[str, ...] = ()

    def geometry_keyword(self, name: str) -> Entry | None:
        return _first(self.geometry_keywords, name)

    def scf_keyword(self, name: str) -> Entry | None:
        return _first(self.scf_keywords, name)

    @property
    def optgeom(self) -> Entry | None:
        return self.geometry_keyword("OPTGEOM")

    @property
    def dft(self) -> Entry | None:
        return self.scf_keyword("DFT")

    def to_dict(self) -> dict[str, Any]:
        """The meaning of the deck, without comments, blank lines or number formatting."""
        return {
            "title": self.title,
            "geometry": self.geometry.to_dict(),
            "geometry_keywords": [k.to_dict() for k in self.geometry_keywords],
            "basis": self.basis.to_dict(),
            "scf_keywords": [k.to_dict() for k in self.scf_keywords],
        }


def _first(entries: Sequence[Entry], name: str) -> Entry | None:
    for e in entries:
        if e.name == name:
            return e
    return None


# --- keyword tables ---------------------------------------------------------------------


def _n_records(spec: str, count_at: int = 0) -> Callable[[list[Record]], str | None]:
    """A dynamic spec: repeat ``spec`` as many times as the first value of record ``count_at``."""

    def make(done: list[Record]) -> str | None:
        n = int(done[count_at][0])
        return spec * n if n > 0 else None

    return make


def _shrink_second(done: list[Record]) -> str | None:
    return "iii" if int(done[0][0]) == 0 else None


def _supercell(dims: int) -> list[Spec]:
    return ["f" * dims] * dims


_FLAG: list[Spec] = []

# Keywords allowed inside OPTGEOM ... ENDOPT.
OPTGEOM_KEYWORDS: dict[str, list[Spec]] = {
    **{k: _FLAG for k in (
        "FULLOPTG", "CELLONLY", "ATOMONLY", "ITATOCEL", "ITREDUN", "INTREDUN", "CVOLOPT",
        "RESTART", "NOTRUSTR", "TRUSTRADIUS", "BERNY", "BFGS", "POWELL", "OLDCG", "HESSIDEN",
        "HESSMOD1", "HESSMOD2", "HESSNUM", "PRINTOPT", "PRINTFORCES", "PRINTHESS", "NOXYZ",
        "NOSYMMOPS", "ONELOG", "SORT", "NOSORT", "EXTPRESS", "ALLOWTRUSTR", "LINMIN",
    )},
    "MAXCYCLE": ["i"],
    "TOLDEG": ["f"],
    "TOLDEX": ["f"],
    "TOLDEE": ["i"],
    "MAXTRADIUS": ["f"],
    "TRUSTRAD": ["f"],
    "FINALRUN": ["i"],
    "FRAGMENT": ["i", lambda done: "i" * int(done[0][0])],
    "FIXCELL": _FLAG,
    "CONSTRAIN": ["i", _n_records("iii")],
}

FREQCALC_KEYWORDS: dict[str, list[Spec]] = {
    **{k: _FLAG for k in (
        "INTENS", "IR", "RAMAN", "INTRAMAN", "INTCPHF", "ANHARM", "DIELISO", "DIELTENS",
        "NOOPTGEOM", "NOINTENS", "PRINT", "TEST[FREQ]", "ECKART", "NOECKART", "RESTART",
        "MODES", "NOMODES", "NORMBORN", "ANALYSIS", "DISPERSI", "COMBMODE",
    )},
    "NUMDERIV": ["i"],
    "STEPSIZE": ["f"],
    "TEMPERAT": ["iff"],
    "PRESSURE": ["iff"],
    "ISOTOPES": ["i", _n_records("if")],
    "SCANMODE": ["iiif", lambda done: "i" * int(done[0][0]) if int(done[0][0]) > 0 else None],
}

DFT_KEYWORDS: dict[str, list[Spec]] = {
    **{k: _FLAG for k in (
        "SPIN", "LGRID", "XLGRID", "XXLGRID", "XXXLGRID", "HUGEGRID", "OLDGRID", "BECKE",
        "SAVIN", "B3LYP", "B3PW", "PBE0", "PBESOL0", "HSE06", "HSESOL", "HISS", "RSHXLDA",
        "WB97", "WB97X", "LC-WPBE", "LC-WPBESOL", "LC-WBLYP", "M06", "M062X", "M06HF",
        "M06L", "B1WC", "WC1LYP", "B97H", "PW1PW", "SOGGA11X", "MN15", "SCAN", "SCAN0",
        "R2SCAN", "PBEXC", "PBESOLXC", "SOGGAXC", "BLYP", "SVWN", "PWGGA", "PBE0-3C",
        "HSE-3C", "B973C", "PBEH3C", "HFSOL3C", "HF3C", "B3LYP-D3", "PBE0-D3", "PBE-D3",
        "HSE06-D3", "PBESOL0-D3", "B3LYP-D3BJ", "DISTGRID", "NEWBECKE", "LIMBEK",
    )},
    "EXCHANGE": ["w"],
    "CORRELAT": ["w"],
    "HYBRID": ["f"],
    "NONLOCAL": ["ff"],
    "TOLLDENS": ["i"],
    "TOLLGRID": ["i"],
    "RADIAL": ["i", lambda done: "f" * int(done[0][0]), lambda done: "i" * int(done[0][0])],
    "ANGULAR": ["i", lambda done: "f" * int(done[0][0]), lambda done: "i" * int(done[0][0])],
    "LSRSH-PBE": ["fff"],
}

DFTD3_KEYWORDS: dict[str, list[Spec]] = {
    **{k: _FLAG for k in ("ABC", "NOABC", "PRINTC6", "ZERO", "BJ")},
    "VERSION": ["i"],
    "S6": ["f"],
    "S8": ["f"],
    "A1": ["f"],
    "A2": ["f"],
    "RS6": ["f"],
    "RS8": ["f"],
    "ALPHA": ["f"],
    "RADIUS": ["f"],
    "CNRADIUS": ["f"],
    "ABCRADIUS": ["f"],
    "FUNC": ["w"],
}

ELASTCON_KEYWORDS: dict[str, list[Spec]] = {
    **{k: _FLAG for k in ("NUMDERIV", "PREOPTGEOM", "RESTART", "PRINT", "NOOPTGEOM")},
    "STEPSIZE": ["f"],
    "NUMSTRAIN": ["i"],
}

# name -> (keywords allowed inside, names that may close it besides END*)
SUB_BLOCKS: dict[str, dict[str, list[Spec]]] = {
    "OPTGEOM": OPTGEOM_KEYWORDS,
    "FREQCALC": FREQCALC_KEYWORDS,
    "ELASTCON": ELASTCON_KEYWORDS,
    "EOS": {"RANGE": ["ffi"], "PREOPTGEOM": _FLAG, "RESTART": _FLAG},
    "DFT": DFT_KEYWORDS,
    "DFTD3": DFTD3_KEYWORDS,
    "GCP": {"METHOD": ["w"], "PRINTEGCP": _FLAG},
    "PREOPTGEOM": OPTGEOM_KEYWORDS,
}
# Sub-blocks that may appear inside other sub-blocks.
FREQCALC_KEYWORDS["PREOPTGEOM"] = []
ELASTCON_KEYWORDS["PREOPTGEOM"] = []


def geometry_keywords(dims: int) -> dict[str, list[Spec]]:
    """Block-1 keywords; SUPERCEL and friends take a ``dims`` x ``dims`` matrix."""
    return {
        **{k: _FLAG for k in (
            "TESTGEOM", "ANGSTROM", "BOHR", "FRACTION", "PRIMITIV", "SYMMREMO", "KEEPSYMM",
            "BREAKSYM", "NOSHIFT", "EXTPRT", "CIFPRT", "COORPRT", "STRUCPRT", "SYMMOPS",
            "CONVCELL", "SMALLDIST", "MOLSPLIT", "PRINTCHG", "PRINTOUT", "NOSYMADA", "SYMMDIR",
            "MAKESAED", "FINDSYM", "CRYAPI_OUT", "ATOMORDE", "STOP", "TESTPDIM",
        )},
        "SUPERCEL": _supercell(dims),
        "SUPERCON": _supercell(dims),
        "SCELPHONO": _supercell(dims),
        "MODISYMM": ["i", _n_records("ii")],
        "ATOMSUBS": ["i", _n_records("ii")],
        "ATOMREMO": ["i", lambda done: "i" * int(done[0][0])],
        "ATOMINSE": ["i", _n_records("ifff")],
        "ATOMDISP": ["i", _n_records("ifff")],
        "RAYCOV": ["i", _n_records("if")],
        "ELASTIC": ["i"] + _supercell(3),
        "SETPRINT": ["i", lambda done: "ii" * int(done[0][0])],
        "OPTGEOM": [],
        "FREQCALC": [],
        "ELASTCON": [],
        "EOS": [],
        "SLABCUT": ["iii", "ii"],
        "NANOTUBE": ["ii"],
    }


BASIS_KEYWORDS: dict[str, list[Spec]] = {
    **{k: _FLAG for k in ("NOPRINT", "PRINTOUT", "CHEMOD", "GHOSTS", "ATOMSYMM", "SYMMOPS")},
    "GHOSTS": ["i", lambda done: "i" * int(done[0][0])],
}

SCF_KEYWORDS: dict[str, list[Spec]] = {
    **{k: _FLAG for k in (
        "UHF", "RHF", "ROHF", "GUESSP", "GUESSPAT", "NODIRECT", "SCFDIR", "PPAN", "NOBIPOLA",
        "DIIS", "NODIIS", "ANDERSON", "NOSYMADA", "SYMADAPT", "EXCHPERM", "GRADCAL",
        "TWOCOMPON", "POSTSCF", "EXCHGENE", "MULPOPAN", "NOMULLIK", "DIISALLK", "LOWMEM",
        "NOLOWMEM", "SAVEPRED", "MONSPLIT", "CMPLXFAC", "NOFMWF", "SAVEWF", "FIXINDEX",
        "PRINTOUT", "MPP", "MEMOPRT", "NOSHIFT", "SCFSYMM", "QVRSGDIM", "NEGLEFFE", "FULLTIME",
        "DIAGHESS", "STOP", "GUESDUAL",
    )},
    "TOLINTEG": ["iiiii"],
    "TOLDEE": ["i"],
    "TOLDEP": ["i"],
    "TOLPSEUD": ["i"],
    "SHRINK": ["ii", _shrink_second],
    "FMIXING": ["i"],
    "MAXCYCLE": ["i"],
    "LEVSHIFT": ["ii"],
    "SPINLOCK": ["ii"],
    "BETALOCK": ["ii"],
    "SMEAR": ["f"],
    "ATOMSPIN": ["i", lambda done: "ii" * int(done[0][0])],
    "BROYDEN": ["fii"],
    "BIPOSIZE": ["i"],
    "EXCHSIZE": ["i"],
    "ILASIZE": ["i"],
    "INTGPACK": ["i"],
    "MADELIND": ["i"],
    "POLEORDR": ["i"],
    "HISTDIIS": ["i"],
    "THREDIIS": ["f"],
    "THRKDIIS": ["f"],
    "NEIGHBOR": ["i"],
    "BIPOLAR": ["ii"],
    "SPINEDIT": ["i", lambda done: "i" * int(done[0][0])],
    "SETPRINT": ["i", lambda done: "ii" * int(done[0][0])],
    "FDOCCUP": ["i", lambda done: "f" * int(done[0][0])],
    "DFT": [],
    "DFTD3": [],
    "GCP": [],
}

_GEOMETRY_STARTS = ("CRYSTAL", "SLAB", "POLYMER", "MOLECULE", "HELIX", "EXTERNAL", "DLVINPUT")
_ECP_KEYWORDS = ("INPUT", "HAYWLC", "HAYWSC", "BARTHE", "DURAND")
_NUMBER_START = re.compile(r"^[-+.0-9]")


# --- the reader ---------------------------------------------------------------------------


@attrs.define
class _Reader:
    """A cursor over the deck's meaningful lines (comments and blanks skipped)."""

    lines: Sequence[str]
    pos: int = 0

    def skip(self) -> None:
        while self.pos < len(self.lines):
            s = self.lines[self.pos].strip()
            if s and not s.startswith("#"):
                return
            self.pos += 1

    def at_end(self) -> bool:
        self.skip()
        return self.pos >= len(self.lines)

    def peek_word(self) -> str:
        self.skip()
        if self.pos >= len(self.lines):
            return ""
        first = self.lines[self.pos].split()[0]
        return first.upper()

    def where(self) -> str:
        return f"line {min(self.pos, len(self.lines) - 1) + 1}"

    def next_line(self, what: str) -> tuple[int, str]:
        self.skip()
        if self.pos >= len(self.lines):
            raise DeckError(f"deck ends where {what} was expected (end of input)")
        index = self.pos
        self.pos += 1
        return index, self.lines[index]

    def record(self, spec: str, what: str) -> tuple[Record, int, int]:
        """Read one record of ``spec`` values: (values, first line index, last line index)."""
        if spec == "l":
            index, line = self.next_line(what)
            return (line.strip(),), index, index
        values: list[Value] = []
        first = last = -1
        while len(values) < len(spec):
            index, line = self.next_line(what)
            if first == -1:
                first = index
            last = index
            tokens = line.split("#", 1)[0].split() if "#" in line else line.split()
            for token in tokens:
                if len(values) == len(spec):
                    break  # the rest of the line is ignored, as CRYSTAL does
                values.append(_convert(token, spec[len(values)], index, what))
        return tuple(values), first, last


def _convert(token: str, kind: str, index: int, what: str) -> Value:
    where = f"line {index + 1}"
    if kind == "w":
        if _NUMBER_START.match(token):
            raise DeckError(f"{where}: {what} expects a word, found number {token!r}")
        return token
    try:
        number = float(token.replace("D", "E").replace("d", "e"))
    except ValueError:
        raise DeckError(f"{where}: {what} expects a number, found {token!r}") from None
    if kind == "i":
        if number != int(number) or not re.fullmatch(r"[-+]?\d+\.?0*", token):
            raise DeckError(f"{where}: {what} expects an integer, found {token!r}")
        return int(number)
    return number


def _read_args(reader: _Reader, name: str, specs: Sequence[Spec]) -> tuple[list[Record], int]:
    records: list[Record] = []
    last = reader.pos - 1
    for spec in specs:
        concrete = spec(records) if callable(spec) else spec
        if not concrete:
            continue
        values, _first_line, last = reader.record(concrete, f"{name}'s data")
        records.append(values)
    return records, last


def _is_end(word: str) -> bool:
    return word.startswith("END")


def _read_keywords(
    reader: _Reader,
    table: dict[str, list[Spec]],
    block: str,
    unknown: list[str],
) -> tuple[list[Entry], int]:
    """Keywords up to (and including) the END* line closing ``block``: (entries, END index)."""
    entries: list[Entry] = []
    while True:
        if reader.at_end():
            raise DeckError(f"{block} block is never closed: no END before the end of the deck")
        word = reader.peek_word()
        index, line = reader.next_line(f"a keyword of {block}")
        if _is_end(word):
            return entries, index
        if _NUMBER_START.match(word):
            raise DeckError(f"line {index + 1}: number {line.strip()!r} where a {block} "
                            "keyword was expected")
        if word in SUB_BLOCKS and word in table:
            children, end = _read_keywords(reader, SUB_BLOCKS[word], word, unknown)
            entries.append(Entry(word, (), index, end, tuple(children)))
            continue
        if word in table:
            records, last = _read_args(reader, word, table[word])
            entries.append(Entry(word, tuple(records), index, max(index, last)))
            continue
        # Unknown keyword: keep it, with the numeric lines that follow as its data.
        unknown.append(f"line {index + 1}: {word} (in {block})")
        records_u: list[Record] = []
        last = index
        while not reader.at_end() and _NUMBER_START.match(reader.peek_word()):
            j, data = reader.next_line(word)
            records_u.append(tuple(data.split("#", 1)[0].split()))
            last = j
        entries.append(Entry(word, tuple(records_u), index, last, known=False))


def _param_count(kind: str, flags: Sequence[int], group: Value) -> int | None:
    if kind == "MOLECULE":
        return 0
    if kind == "POLYMER":
        return 1
    if not isinstance(group, int):
        return None
    if kind == "SLAB":
        if group <= 2:
            return 3
        if group <= 48:
            return 2
        return 1
    # CRYSTAL: by crystal system of the space group number
    if group <= 2:
        return 6
    if group <= 15:
        return 4
    if group <= 74:
        return 3
    if group <= 142:
        return 2
    if group <= 167 and group in (146, 148, 155, 160, 161, 166, 167) and len(flags) > 1 \
            and flags[1] == 1:
        return 2  # rhombohedral axes: a, alpha
    if group <= 194:
        return 2
    return 1


def _read_geometry(reader: _Reader) -> Geometry:
    kind = reader.peek_word()
    if kind not in _GEOMETRY_STARTS:
        index, line = reader.next_line("the geometry keyword")
        raise DeckError(
            f"line {index + 1}: geometry block must start with one of "
            f"{', '.join(_GEOMETRY_STARTS)}, found {line.strip()!r}"
        )
    index, _ = reader.next_line("the geometry keyword")
    if kind in ("EXTERNAL", "DLVINPUT"):
        return Geometry(kind=kind, line=index, end=index)
    if kind == "HELIX":
        raise DeckError(f"line {index + 1}: HELIX geometry input is not supported")
    flags: tuple[int, ...] = ()
    if kind == "CRYSTAL":
        flags_rec, _, _ = reader.record("iii", "CRYSTAL's IFLAG IFHR IFSO")
        flags = tuple(int(v) for v in flags_rec)
        if flags[0] == 0:
            group_rec, _, _ = reader.record("i", "the space group number")
        else:
            group_rec, _, _ = reader.record("l", "the space group symbol")
        if flags[2] > 1:
            reader.record("fff", "the origin shift")
    else:
        group_rec, _, _ = reader.record("i", f"{kind}'s group number")
    group = group_rec[0]
    count = _param_count(kind, flags, group)
    params: tuple[float, ...] = ()
    params_span = None
    if count is None:  # symbol given: the whole next line holds the parameters
        p_index, p_line = reader.next_line("lattice parameters")
        params = tuple(float(_convert(t, "f", p_index, "lattice parameters"))
                       for t in p_line.split("#", 1)[0].split())
        params_span = (p_index, p_index)
    elif count:
        values, p_first, p_last = reader.record("f" * count, "lattice parameters")
        params = tuple(float(v) for v in values)
        params_span = (p_first, p_last)
    (nat,), _, _ = reader.record("i", "the number of atoms")
    if int(nat) <= 0:
        raise DeckError(f"{reader.where()}: the number of atoms must be positive, got {nat}")
    atoms = []
    atom_spans = []
    for k in range(int(nat)):
        values, a_first, end = reader.record("ifff", f"atom {k + 1} (Z x y z)")
        atoms.append((int(values[0]), float(values[1]), float(values[2]), float(values[3])))
        atom_spans.append((a_first, end))
    return Geometry(
        kind=kind, flags=flags, group=group, params=params, atoms=tuple(atoms),
        line=index, params_span=params_span, atom_spans=tuple(atom_spans), end=end,
    )


def length_positions(geometry: Geometry) -> tuple[int, ...]:
    """Which of the geometry's parameters are lengths (the others are angles)."""
    n = len(geometry.params)
    angles: set[int] = set()
    if geometry.kind == "CRYSTAL":
        if n == 6:
            angles = {3, 4, 5}
        elif n == 4:
            angles = {3}
        elif n == 2 and isinstance(geometry.group, int) and geometry.group in (
                146, 148, 155, 160, 161, 166, 167) and len(geometry.flags) > 1 \
                and geometry.flags[1] == 1:
            angles = {1}
    elif geometry.kind == "SLAB" and n == 3:
        angles = {2}
    return tuple(i for i in range(n) if i not in angles)


def _dims(geometry: Geometry) -> int:
    return {"CRYSTAL": 3, "SLAB": 2, "POLYMER": 1, "MOLECULE": 0}.get(geometry.kind, 3)


def _read_basis(reader: _Reader, unknown: list[str]) -> Basis:
    word = reader.peek_word()
    start = reader.pos
    if word == "BASISSET":
        reader.next_line("BASISSET")
        (name,), _, end = reader.record("w", "BASISSET's library name")
        return Basis(internal=str(name), atoms=(), line=start, end=end)
    atoms = []
    spans = []
    while True:
        (z, nshell), z_line, _ = reader.record("ii", "a basis set atom record (Z NSHELL)")
        if int(z) == 99:
            break
        atoms.append(int(z))
        spans.append([z_line, z_line])
        if int(z) > 200 and int(z) < 1000 or reader.peek_word() in _ECP_KEYWORDS:
            ecp = reader.peek_word()
            if ecp in _ECP_KEYWORDS:
                reader.next_line("pseudopotential keyword")
                if ecp == "INPUT":
                    header, _, _ = reader.record("fiiiii", "the INPUT pseudopotential header")
                    for _k in range(sum(int(v) for v in header[1:])):
                        reader.record("fff", "a pseudopotential term")
        for s in range(int(nshell)):
            shell, _, last = reader.record(
                "iiiff", f"shell {s + 1} of atom {z} (ITYB LAT NG CHE SCAL)"
            )
            ityb, lat, ng = int(shell[0]), int(shell[1]), int(shell[2])
            if ityb == 0:
                spec = "fff" if lat == 1 else "ff"
                for _g in range(ng):
                    _, _, last = reader.record(spec, f"a primitive of shell {s + 1} of atom {z}")
            spans[-1][1] = last
    keywords, end = _read_keywords(reader, BASIS_KEYWORDS, "basis set", unknown)
    return Basis(internal=None, atoms=tuple(atoms), line=start, end=end, keywords=tuple(keywords),
                 atom_spans=tuple((a, b) for a, b in spans))


def parse_deck(text: str) -> Deck:
    """Parse a .d12 text; raise :class:`DeckError` naming the first problem and its line."""
    lines = tuple(text.splitlines())
    if not lines or not lines[0].strip() and len(lines) == 1:
        raise DeckError("empty deck")
    reader = _Reader(lines, pos=1)
    unknown: list[str] = []
    geometry = _read_geometry(reader)
    geo_keys, geometry_end = _read_keywords(
        reader, geometry_keywords(_dims(geometry)), "geometry", unknown
    )
    basis = _read_basis(reader, unknown)
    scf, end = _read_keywords(reader, SCF_KEYWORDS, "Hamiltonian/SCF", unknown)
    if not reader.at_end():
        index, line = reader.next_line("nothing")
        raise DeckError(f"line {index + 1}: text after the final END: {line.strip()!r}")
    return Deck(
        lines=lines,
        title=lines[0].strip(),
        geometry=geometry,
        geometry_keywords=tuple(geo_keys),
        geometry_end=geometry_end,
        basis=basis,
        scf_keywords=tuple(scf),
        end=end,
        unknown=tuple(unknown),
    )


def validate(text: str, strict: bool = True) -> Deck:
    """Parse and check a deck; with ``strict``, unknown keywords are errors too."""
    deck = parse_deck(text)
    if strict and deck.unknown:
        raise DeckError(f"unknown keyword at {deck.unknown[0]}")
    if deck.geometry.kind in ("CRYSTAL", "SLAB", "POLYMER") and deck.basis.internal is None:
        missing = {z % 100 for z, *_ in deck.geometry.atoms} - {z % 100 for z in deck.basis.atoms}
        if missing:
            raise DeckError(
                f"no basis set for atomic number(s) {', '.join(map(str, sorted(missing)))}"
            )
    return deck


def iter_entries(entries: Sequence[Entry]) -> Iterator[Entry]:
    """Every entry and, depth first, every entry of its sub-blocks."""
    for e in entries:
        yield e
        yield from iter_entries(e.children)
