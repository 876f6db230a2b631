"""Write CRYSTAL ``.d12`` decks (and ``fort.34`` geometries) from an ``ase.Atoms``.

Geometry, by ``params["geometry"]``:

* ``symmetry`` (default for non-magnetic 3D): space group number, the minimal
  lattice parameters of its crystal system and the asymmetric unit, from spglib.
  CRYSTAL's conventions are followed: for the 24 space groups with two origin
  choices, origin choice 2 (inversion centre at the origin; the Si test08 deck
  puts Si at 1/8 1/8 1/8 and CRYSTAL reports 2 atoms per primitive cell); trigonal
  groups on hexagonal axes (IFHR 0); monoclinic with unique axis b. When spglib
  finds no symmetry, space group 1 with every atom.
* ``external`` (default for magnetic 3D): ``EXTERNAL`` and a fort.34 file with the
  cell, the Cartesian symmetry operators (found with up and down moments as
  different species, so they respect the magnetic order) and every atom in the
  input order, so ATOMSPIN labels are the input atom numbers, as in the corpus
  NiO deck (aiida-crystal17's convention).
* ``p1``: space group 1 with every atom in input order.

Periodicity comes from ``atoms.pbc``: 3D -> CRYSTAL, (T,T,F) -> SLAB (layer group 1),
(T,F,F) -> POLYMER (rod group 1), (F,F,F) -> MOLECULE (point group 1). Lower
dimensions keep the input atom order.

The method blocks come from ``params`` merged over :data:`DEFAULTS` (the same
values as config/crystal.yaml; a test keeps them equal).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import spglib
import yaml
from ase import Atoms
from ase.cell import Cell
from ase.data import atomic_numbers, chemical_symbols
from ase.geometry import cell_to_cellpar

from eventflow.codes.crystal import deck as deckmod

DEFAULTS: dict[str, Any] = {
    "title": None,
    "geometry": "auto",
    "symprec": 1.0e-3,
    "basis": "POB-TZVP-REV2",
    "basis_sets": None,
    "functional": "PBE0",
    "dispersion": None,
    "grid": "XLGRID",
    "spin": "auto",
    "spinlock_cycles": 15,
    "kspacing": 0.25,
    "shrink": None,
    "gilat_factor": 2,
    "tolinteg": [7, 7, 7, 7, 14],
    "toldee": 7,
    "toldee_freq": 10,
    "fmixing": 30,
    "maxcycle": 100,
    "levshift": None,
    "mixer": "DIIS",
    "broyden": [0.0001, 50, 2],
    "ppan": True,
    "opt": {"type": "FULLOPTG", "maxcycle": 100, "maxtradius": None, "toldeg": None,
            "toldex": None},
    "freq": {"numderiv": 2, "intens": False},
}

# Parameters of the properties inputs (d3.py); kept here so one parameter set, and
# config/crystal.yaml, serve every step.
PROPERTIES_DEFAULTS: dict[str, Any] = {
    "band_points": 200,
    "bands": None,  # [first, last]; default: the occupied-band count +- band_window
    "band_window": 8,
    "dos_points": 1000,
    "dos_npol": 14,
    "projections": "elements",  # or None
    "dos_shrink": None,  # [IS, ISP]; default: the SCF mesh
}

HYBRID_KEYWORDS = {
    "B3LYP": "B3LYP",
    "B3PW": "B3PW",
    "PBE0": "PBE0",
    "PBESOL0": "PBESOL0",
    "HSE06": "HSE06",
    "HSESOL": "HSESOL",
}
# Pure functionals as EXCHANGE / CORRELAT pairs, the form every CRYSTAL version reads.
GGA_PAIRS = {
    "LDA": ("LDA", "VWN"),
    "PBE": ("PBE", "PBE"),
    "PBESOL": ("PBESOL", "PBESOL"),
    "BLYP": ("BECKE", "LYP"),
    "PWGGA": ("PWGGA", "PWGGA"),
}
CRYSTAL_STEPS = ("SP", "OPT", "FREQ")
TWO_ORIGIN_GROUPS = frozenset(
    {48, 50, 59, 68, 70, 85, 86, 88, 125, 126, 129, 130, 133, 134, 137, 138, 141, 142,
     201, 203, 222, 224, 227, 228}
)
RHOMBOHEDRAL_GROUPS = frozenset({146, 148, 155, 160, 161, 166, 167})


# Settings of config/crystal.yaml that say how to run the programs, not what goes in the
# deck: the shell reads them (eventflow.shell.jobs), the deck writers never see them
# (``cluster``: where the job runs, see eventflow.shell.clusters).
RUN_SETTINGS = frozenset({"executables", "launcher", "modules", "scratch_root", "cluster"})


class InputError(ValueError):
    """Parameters or structure that cannot make a valid deck; the message says which."""


def parse_defaults(text: str, source: str = "crystal.yaml") -> dict[str, Any]:
    """DEFAULTS and PROPERTIES_DEFAULTS overridden by a crystal.yaml text.

    Unknown keys are an error, so a misspelt setting is not silently ignored.
    """
    loaded = yaml.safe_load(text) or {}
    if not isinstance(loaded, Mapping):
        raise InputError(f"{source}: expected a mapping of CRYSTAL defaults")
    loaded = {k: v for k, v in loaded.items() if k not in RUN_SETTINGS}
    merged = merge_params(loaded, source=source)
    merged.update({k: loaded.get(k, v) for k, v in PROPERTIES_DEFAULTS.items()})
    return merged


def merge_params(params: Mapping[str, Any] | None, source: str = "params") -> dict[str, Any]:
    """``params`` over :data:`DEFAULTS`; nested ``opt``/``freq`` merged key by key."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for key, value in (params or {}).items():
        if key in PROPERTIES_DEFAULTS:
            continue  # read by d3.py
        if key not in DEFAULTS:
            raise InputError(f"{source}: unknown CRYSTAL parameter {key!r}")
        if isinstance(DEFAULTS[key], dict) and isinstance(value, Mapping):
            unknown = set(value) - set(DEFAULTS[key])
            if unknown:
                raise InputError(f"{source}: unknown {key} parameter(s) {sorted(unknown)}")
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


# --- structure analysis --------------------------------------------------------------


def dimensionality(atoms: Atoms) -> int:
    """3, 2, 1 or 0 periodic directions, from ``atoms.pbc`` (periodic ones first)."""
    pbc = tuple(bool(x) for x in atoms.pbc)
    table = {(True, True, True): 3, (True, True, False): 2, (True, False, False): 1,
             (False, False, False): 0}
    if pbc not in table:
        raise InputError(
            f"pbc {pbc} not supported: CRYSTAL needs periodic directions first "
            "(T,T,T), (T,T,F), (T,F,F) or (F,F,F)"
        )
    return table[pbc]


def _spins(atoms: Atoms) -> list[int]:
    return [0 if abs(m) < 1e-3 else (1 if m > 0 else -1)
            for m in atoms.get_initial_magnetic_moments()]


def is_magnetic(atoms: Atoms, params: Mapping[str, Any]) -> bool:
    spin = params.get("spin", "auto")
    if spin == "auto":
        return any(_spins(atoms))
    return bool(spin)


def _types(atoms: Atoms) -> list[int]:
    """spglib species: atomic number, with up/down moments as different species."""
    return [int(z) * 10 + (0 if s == 0 else (1 if s > 0 else 2))
            for z, s in zip(atoms.numbers, _spins(atoms), strict=True)]


def _dataset(cell: tuple, symprec: float, hall: int = 0) -> Any:
    """spglib's dataset, or None when it finds none (spglib 2.5+ may raise instead).

    Memoised on the cell's exact numbers: every retry of a calculation renders the same
    structure again, and spglib was the largest single cost of writing an input.
    """
    lattice, positions, types = (np.ascontiguousarray(part, dtype=float) for part in cell)
    key = (lattice.tobytes(), positions.shape, positions.tobytes(), types.tobytes(),
           float(symprec), int(hall))
    return _dataset_of(key)


@functools.lru_cache(maxsize=512)
def _dataset_of(key: tuple) -> Any:
    lattice_bytes, shape, position_bytes, type_bytes, symprec, hall = key
    cell = (np.frombuffer(lattice_bytes).reshape(3, 3),
            np.frombuffer(position_bytes).reshape(shape),
            [int(t) for t in np.frombuffer(type_bytes)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib's error-handling notice
        try:
            dataset = spglib.get_symmetry_dataset(cell, symprec=symprec, hall_number=hall)
        except Exception:  # spglib.error.SpglibError when OLD_ERROR_HANDLING is off
            return None
    if dataset is not None:  # shared by every caller from now on: make it read-only
        for value in vars(dataset).values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
    return dataset


@functools.cache
def _spacegroup_type(hall: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib's error-handling notice
        return spglib.get_spacegroup_type(hall)


@functools.cache
def hall_number(space_group: int) -> int:
    """The Hall setting CRYSTAL uses for ``space_group`` (see the module docstring)."""
    choices = [h for h in range(1, 531) if _spacegroup_type(h).number == space_group]
    if space_group in TWO_ORIGIN_GROUPS:
        for h in choices:
            if _spacegroup_type(h).choice == "2":
                return h
    return choices[0]


@attrs.frozen
class SymmetricCell:
    """A conventional cell in CRYSTAL's setting and its asymmetric unit."""

    space_group: int
    hall_number: int
    lattice: np.ndarray = attrs.field(eq=False)  # conventional cell vectors (rows)
    asym: tuple[tuple[int, tuple[float, float, float], int], ...]  # (Z, frac, spin)
    multiplicity: tuple[int, ...]  # atoms of each orbit in the conventional cell

    @property
    def centring(self) -> str:
        symbol = _spacegroup_type(self.hall_number).international_short
        return symbol[0]


def _nice(frac: np.ndarray) -> tuple[float, float, float]:
    wrapped = np.mod(np.round(frac, 10), 1.0)
    wrapped[np.isclose(wrapped, 1.0, atol=1e-9)] = 0.0
    return (float(wrapped[0]), float(wrapped[1]), float(wrapped[2]))


def symmetric_cell(atoms: Atoms, symprec: float) -> SymmetricCell | None:
    """Space group, conventional cell and asymmetric unit, or None for space group 1."""
    types = _types(atoms)
    cell = (np.array(atoms.cell[:]), atoms.get_scaled_positions(), types)
    dataset = _dataset(cell, symprec)
    if dataset is None or dataset.number == 1:
        return None
    hall = hall_number(dataset.number)
    if hall != dataset.hall_number:
        dataset = _dataset(cell, symprec, hall)
        if dataset is None:
            return None
    std = (dataset.std_lattice, dataset.std_positions, dataset.std_types)
    in_std = _dataset(std, symprec, hall)
    if in_std is None:
        return None
    orbits: dict[int, list[int]] = {}
    for index, rep in enumerate(in_std.equivalent_atoms):
        orbits.setdefault(int(rep), []).append(index)
    asym = []
    mult = []
    for members in orbits.values():
        best = min(members, key=lambda i: (round(float(np.sum(_nice(std[1][i]))), 8),
                                           _nice(std[1][i])))
        t = int(std[2][best])
        spin = {0: 0, 1: 1, 2: -1}[t % 10]
        asym.append((t // 10, _nice(std[1][best]), spin))
        mult.append(len(members))
    return SymmetricCell(
        space_group=int(dataset.number), hall_number=hall, lattice=np.array(std[0]),
        asym=tuple(asym), multiplicity=tuple(mult),
    )


# Rows: primitive vectors as combinations of the conventional ones (CRYSTAL's choices).
_PRIMITIVE = {
    "P": np.eye(3),
    "F": np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
    "I": np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]]),
    "C": np.array([[0.5, -0.5, 0], [0.5, 0.5, 0], [0, 0, 1]]),
    "A": np.array([[1, 0, 0], [0, 0.5, -0.5], [0, 0.5, 0.5]]),
    "B": np.array([[0.5, 0, -0.5], [0, 1, 0], [0.5, 0, 0.5]]),
    "R": np.array([[2 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, 1 / 3], [-1 / 3, -2 / 3, 1 / 3]]),
}
CENTRING_POINTS = {"P": 1, "F": 4, "I": 2, "C": 2, "A": 2, "B": 2, "R": 3}


def geometry_mode(atoms: Atoms, params: Mapping[str, Any]) -> str:
    """symmetry, external or p1, resolving ``auto`` (external when magnetic)."""
    mode = params.get("geometry", "auto")
    if mode not in ("auto", "symmetry", "external", "p1"):
        raise InputError(f"geometry must be auto, symmetry, external or p1, not {mode!r}")
    if dimensionality(atoms) < 3:
        if mode == "external":
            raise InputError("EXTERNAL geometry is written only for 3D structures")
        return "p1"
    if mode == "auto":
        return "external" if is_magnetic(atoms, params) else "symmetry"
    return mode


def crystal_cell(atoms: Atoms, params: Mapping[str, Any]) -> np.ndarray:
    """The primitive cell CRYSTAL will work in (rows, Angstrom) for the rendered deck.

    Used for the k-point mesh (SHRINK) and for band paths, whose coordinates CRYSTAL
    reads in units of this cell's reciprocal vectors.
    """
    p = merge_params(params)
    if geometry_mode(atoms, p) == "symmetry":
        sym = symmetric_cell(atoms, float(p["symprec"]))
        if sym is not None:
            return _PRIMITIVE[sym.centring] @ sym.lattice
    return np.array(atoms.cell[:])


# --- geometry blocks ------------------------------------------------------------------------


def _num(x: float) -> str:
    text = f"{round(float(x), 10):.10f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _minimal_params(space_group: int, lattice: np.ndarray) -> list[float]:
    a, b, c, alpha, beta, gamma = cell_to_cellpar(lattice)
    if space_group <= 2:
        return [a, b, c, alpha, beta, gamma]
    if space_group <= 15:
        return [a, b, c, beta]
    if space_group <= 74:
        return [a, b, c]
    if space_group <= 194:
        return [a, c]
    return [a]


def _conv_numbers(atoms: Atoms, params: Mapping[str, Any]) -> dict[int, int]:
    """Atomic number -> number written in the deck (e.g. 2xx for a pseudopotential basis)."""
    blocks = params.get("basis_sets")
    out = {int(z): int(z) for z in set(atoms.numbers)}
    if blocks:
        for element, text in blocks.items():
            z = atomic_numbers.get(element) if isinstance(element, str) else int(element)
            if z is None:
                raise InputError(f"basis_sets: unknown element {element!r}")
            first = text.strip().split()[0] if text.strip() else ""
            try:
                conv = int(first)
            except ValueError:
                raise InputError(f"basis_sets[{element!r}] must start with 'Z NSHELL'") from None
            if conv % 100 != z:
                raise InputError(f"basis_sets[{element!r}] starts with {conv}, not {element}")
            out[z] = conv
    return out


def _crystal_block(sym: SymmetricCell, conv: Mapping[int, int]) -> list[str]:
    lines = ["CRYSTAL", "0 0 0", str(sym.space_group),
             " ".join(_num(v) for v in _minimal_params(sym.space_group, sym.lattice)),
             str(len(sym.asym))]
    for z, frac, _spin in sym.asym:
        lines.append(f"{conv[z]} " + " ".join(_num(v) for v in frac))
    return lines


def _p1_block(atoms: Atoms, conv: Mapping[int, int]) -> list[str]:
    lines = ["CRYSTAL", "0 0 0", "1", " ".join(_num(v) for v in cell_to_cellpar(atoms.cell[:])),
             str(len(atoms))]
    # CRYSTAL builds its own axes from a,b,c,alpha,beta,gamma; fractional coordinates
    # are invariant under that rotation.
    for z, frac in zip(atoms.numbers, atoms.get_scaled_positions(wrap=True), strict=True):
        lines.append(f"{conv[int(z)]} " + " ".join(_num(v) for v in _nice(frac)))
    return lines


def _slab_block(atoms: Atoms, conv: Mapping[int, int]) -> list[str]:
    a, b = np.array(atoms.cell[0]), np.array(atoms.cell[1])
    normal = np.cross(a, b)
    if np.linalg.norm(normal) < 1e-8:
        raise InputError("SLAB needs two non-parallel periodic cell vectors")
    normal /= np.linalg.norm(normal)
    basis = np.array([a, b, normal]).T
    frac = np.linalg.solve(basis, atoms.positions.T).T
    z = frac[:, 2] - frac[:, 2].mean()
    gamma = math.degrees(math.acos(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))))
    lines = ["SLAB", "1",
             f"{_num(np.linalg.norm(a))} {_num(np.linalg.norm(b))} {_num(gamma)}",
             str(len(atoms))]
    for zz, (x, y), h in zip(atoms.numbers, frac[:, :2], z, strict=True):
        xy = _nice(np.array([x, y, 0.0]))
        lines.append(f"{conv[int(zz)]} {_num(xy[0])} {_num(xy[1])} {_num(h)}")
    return lines


def _polymer_block(atoms: Atoms, conv: Mapping[int, int]) -> list[str]:
    a = np.array(atoms.cell[0])
    length = np.linalg.norm(a)
    if length < 1e-8:
        raise InputError("POLYMER needs a non-zero first cell vector")
    e1 = a / length
    trial = np.array([0.0, 0.0, 1.0]) if abs(e1[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e2 = np.cross(trial, e1)
    e2 /= np.linalg.norm(e2)
    e3 = np.cross(e1, e2)
    centre = atoms.positions.mean(axis=0)
    lines = ["POLYMER", "1", _num(length), str(len(atoms))]
    for z, pos in zip(atoms.numbers, atoms.positions, strict=True):
        rel = pos - centre
        x = _nice(np.array([np.dot(pos, e1) / length, 0.0, 0.0]))[0]
        lines.append(f"{conv[int(z)]} {_num(x)} {_num(np.dot(rel, e2))} {_num(np.dot(rel, e3))}")
    return lines


def _molecule_block(atoms: Atoms, conv: Mapping[int, int]) -> list[str]:
    centre = atoms.positions.mean(axis=0)
    lines = ["MOLECULE", "1", str(len(atoms))]
    for z, pos in zip(atoms.numbers, atoms.positions - centre, strict=True):
        lines.append(f"{conv[int(z)]} " + " ".join(_num(v) for v in pos))
    return lines


def render_fort34(atoms: Atoms, symprec: float = 1.0e-3,
                  numbers: Mapping[int, int] | None = None) -> str:
    """A fort.34 (EXTERNAL) geometry: cell, Cartesian symmetry operators, every atom.

    Operators are spglib's for the given cell with up/down moments as different
    species; a cell that is not primitive gets the identity only, since pure
    translations are not valid fort.34 operators.
    """
    if dimensionality(atoms) != 3:
        raise InputError("fort.34 is written only for 3D structures")
    conv = numbers or {int(z): int(z) for z in set(atoms.numbers)}
    lattice = np.array(atoms.cell[:])
    cell = (lattice, atoms.get_scaled_positions(), _types(atoms))
    dataset = _dataset(cell, symprec)
    rotations = [np.eye(3, dtype=int)]
    translations = [np.zeros(3)]
    space_group = 1
    if dataset is not None:
        pure = sum(1 for r in dataset.rotations if np.array_equal(r, np.eye(3, dtype=int)))
        if pure == 1:
            rotations = list(dataset.rotations)
            translations = list(dataset.translations)
            space_group = int(dataset.number)
    system = _crystal_type(space_group)
    lines = [f"3 1 {system}"]
    lines += [" ".join(f"{v: .12E}" for v in row) for row in lattice]
    lines.append(str(len(rotations)))
    lt = lattice.T
    lt_inv = np.linalg.inv(lt)
    for rot, trans in zip(rotations, translations, strict=True):
        cart = lt @ rot @ lt_inv
        cart[np.abs(cart) < 1e-12] = 0.0
        shift = np.mod(np.asarray(trans, dtype=float), 1.0) @ lattice
        lines += [" ".join(f"{v: .12E}" for v in row) for row in cart]
        lines.append(" ".join(f"{v: .12E}" for v in shift + 0.0))
    lines.append(str(len(atoms)))
    for z, pos in zip(atoms.numbers, atoms.positions, strict=True):
        lines.append(f"{conv[int(z)]:4d} " + " ".join(f"{v: .12E}" for v in pos + 0.0))
    lines.append(f"{space_group} {len(rotations)}")
    return "\n".join(lines) + "\n"


def _crystal_type(space_group: int) -> int:
    for limit, code in ((2, 1), (15, 2), (74, 3), (142, 4), (194, 5), (230, 6)):
        if space_group <= limit:
            return code
    raise InputError(f"space group {space_group} out of range")


def atoms_from_fort34(text: str) -> Atoms:
    """The structure in a fort.34 text (3D; all atoms listed, CRYSTAL17 and later)."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    try:
        lattice = np.array([[float(v) for v in rows[i]] for i in (1, 2, 3)])
        nops = int(rows[4][0])
        start = 5 + 4 * nops
        nat = int(rows[start][0])
        body = rows[start + 1:start + 1 + nat]
        numbers = [int(r[0]) % 100 for r in body]
        positions = [[float(v) for v in r[1:4]] for r in body]
    except (IndexError, ValueError) as exc:
        raise InputError(f"not a readable fort.34: {exc}") from None
    return Atoms(numbers=numbers, positions=positions, cell=lattice, pbc=True)


# --- method blocks ---------------------------------------------------------------------------


def shrink_factors(atoms: Atoms, params: Mapping[str, Any]) -> list[list[int]]:
    """SHRINK records: ``[[IS, ISP]]`` when isotropic, else ``[[0, ISP], [n1, n2, n3]]``.

    ``n_i = ceil(|b_i| / kspacing)`` for each periodic reciprocal vector of the cell
    CRYSTAL works in (|b| with the 2 pi); ``ISP = gilat_factor * max(n)``.
    """
    p = merge_params(params)
    if p["shrink"] is not None:
        values = [int(v) for v in p["shrink"]]
        if len(values) == 2 and values[0] > 0:
            return [values]
        if len(values) == 5 and values[0] == 0:
            return [[0, values[1]], values[2:]]
        raise InputError(f"shrink must be [IS, ISP] or [0, ISP, n1, n2, n3], not {p['shrink']}")
    dims = dimensionality(atoms)
    if dims == 0:
        return []
    kspacing = float(p["kspacing"])
    if kspacing <= 0:
        raise InputError(f"kspacing must be positive, got {kspacing}")
    cell = crystal_cell(atoms, p)
    recip = 2 * math.pi * np.linalg.inv(cell).T
    n = [max(1, math.ceil(np.linalg.norm(recip[i]) / kspacing - 1e-9)) for i in range(dims)]
    isp = int(p["gilat_factor"]) * max(n)
    if len(set(n)) == 1:
        return [[n[0], isp]]
    full = n + [1] * (3 - dims)
    return [[0, isp], full]


def _dft_lines(p: Mapping[str, Any], magnetic: bool) -> list[str]:
    functional = p["functional"]
    name = str(functional).upper()
    if name == "HF":
        return []
    lines = ["DFT"]
    if magnetic:
        lines.append("SPIN")
    if isinstance(functional, Mapping):  # {"exchange": "BECKE", "correlation": "PZ"}
        try:
            lines += ["EXCHANGE", str(functional["exchange"]).upper(),
                      "CORRELAT", str(functional["correlation"]).upper()]
        except KeyError as exc:
            raise InputError(f"functional as a mapping needs exchange and correlation: {exc}") \
                from None
    elif name in HYBRID_KEYWORDS:
        lines.append(HYBRID_KEYWORDS[name])
    elif name in GGA_PAIRS:
        exchange, correlation = GGA_PAIRS[name]
        lines += ["EXCHANGE", exchange, "CORRELAT", correlation]
    else:
        known = sorted([*HYBRID_KEYWORDS, *GGA_PAIRS, "HF"])
        raise InputError(f"functional {p['functional']!r} unknown; known: {', '.join(known)}")
    if p.get("grid"):
        lines.append(str(p["grid"]))
    lines.append("END")
    dispersion = p.get("dispersion")
    if dispersion:
        if str(dispersion).upper() not in ("D3", "D3BJ", "D3(BJ)", "D3ZERO"):
            raise InputError(f"dispersion must be D3, D3BJ or D3ZERO, not {dispersion!r}")
        version = 3 if str(dispersion).upper() == "D3ZERO" else 4
        lines += ["DFTD3", "VERSION", str(version), "END"]
    return lines


def _basis_lines(atoms: Atoms, p: Mapping[str, Any]) -> list[str]:
    blocks = p.get("basis_sets")
    if not blocks:
        if not p.get("basis"):
            raise InputError("no basis: give basis (a library name) or basis_sets")
        return ["BASISSET", str(p["basis"])]
    by_z = {}
    for element, text in blocks.items():
        z = atomic_numbers[element] if isinstance(element, str) else int(element)
        by_z[z] = text.strip("\n")
    missing = sorted({int(z) for z in atoms.numbers} - set(by_z))
    if missing:
        names = ", ".join(chemical_symbols[z] for z in missing)
        raise InputError(f"basis_sets has no basis for {names}")
    lines: list[str] = []
    for z in dict.fromkeys(int(z) for z in atoms.numbers):  # first-appearance order
        lines += by_z[z].splitlines()
    return lines + ["99 0", "END"]


def _atomspin_labels(atoms: Atoms, mode: str, sym: SymmetricCell | None) -> list[tuple[int, int]]:
    """(label, spin) for magnetic atoms, labels in CRYSTAL's atom order."""
    if mode != "symmetry" or sym is None:
        return [(i + 1, s) for i, s in enumerate(_spins(atoms)) if s]
    # CRYSTAL lists the atoms of each irreducible atom together, in input order.
    points = CENTRING_POINTS[sym.centring]
    labels, label = [], 1
    for (_z, _frac, spin), mult in zip(sym.asym, sym.multiplicity, strict=True):
        count = mult // points
        if spin:
            labels += [(label + k, spin) for k in range(count)]
        label += count
    return labels


def _scf_lines(atoms: Atoms, step: str, p: Mapping[str, Any], mode: str,
               sym: SymmetricCell | None) -> list[str]:
    magnetic = is_magnetic(atoms, p)
    lines = _dft_lines(p, magnetic)
    if str(p["functional"]).upper() == "HF" and magnetic:
        lines.append("UHF")
    shrink = [] if dimensionality(atoms) == 0 else shrink_factors(atoms, p)
    if shrink:
        lines.append("SHRINK")
        lines += [" ".join(str(v) for v in record) for record in shrink]
    tolinteg = [int(v) for v in p["tolinteg"]]
    if len(tolinteg) != 5:
        raise InputError(f"tolinteg needs 5 integers, got {p['tolinteg']}")
    lines += ["TOLINTEG", " ".join(map(str, tolinteg))]
    toldee = int(p["toldee_freq"] if step == "FREQ" else p["toldee"])
    lines += ["TOLDEE", str(max(toldee, int(p["toldee"])))]
    if p.get("fmixing") is not None:
        lines += ["FMIXING", str(int(p["fmixing"]))]
    lines += ["MAXCYCLE", str(int(p["maxcycle"]))]
    if p.get("levshift"):
        shift, lock = (int(v) for v in p["levshift"])
        lines += ["LEVSHIFT", f"{shift} {lock}"]
    mixer = str(p.get("mixer") or "DIIS").upper()
    if mixer == "ANDERSON":
        lines.append("ANDERSON")
    elif mixer == "BROYDEN":
        w0, imix, istart = p["broyden"]
        lines += ["BROYDEN", f"{_num(w0)} {int(imix)} {int(istart)}"]
    elif mixer != "DIIS":
        raise InputError(f"mixer must be DIIS, ANDERSON or BROYDEN, not {p['mixer']!r}")
    if magnetic:
        labels = _atomspin_labels(atoms, mode, sym)
        if labels:
            lines += ["ATOMSPIN", str(len(labels))]
            lines += [f"{label} {spin}" for label, spin in labels]
        total_input = float(sum(atoms.get_initial_magnetic_moments()))
        if mode == "symmetry" and sym is not None:  # per CRYSTAL's primitive cell
            primitive = _PRIMITIVE[sym.centring] @ sym.lattice
            total_input *= abs(np.linalg.det(primitive)) / atoms.cell.volume
        total = int(round(total_input))
        if p.get("spinlock_cycles"):
            lines += ["SPINLOCK", f"{total} {int(p['spinlock_cycles'])}"]
    if p.get("ppan"):
        lines.append("PPAN")
    lines.append("END")
    return lines


def _step_lines(atoms: Atoms, step: str, p: Mapping[str, Any]) -> list[str]:
    if step == "OPT":
        opt = p["opt"]
        lines = ["OPTGEOM"]
        kind = str(opt.get("type") or "FULLOPTG").upper()
        if dimensionality(atoms) == 0 and kind == "FULLOPTG":
            kind = "ATOMONLY"  # a molecule has no cell to optimise
        if kind not in ("FULLOPTG", "CELLONLY", "ATOMONLY", "ITATOCEL"):
            raise InputError(f"opt.type must be FULLOPTG, CELLONLY, ATOMONLY or ITATOCEL: {kind}")
        lines.append(kind)
        lines += ["MAXCYCLE", str(int(opt["maxcycle"]))]
        for key, word in (("maxtradius", "MAXTRADIUS"), ("toldeg", "TOLDEG"),
                          ("toldex", "TOLDEX")):
            if opt.get(key) is not None:
                lines += [word, _num(opt[key])]
        return lines + ["ENDOPT"]
    if step == "FREQ":
        freq = p["freq"]
        lines = ["FREQCALC", "NUMDERIV", str(int(freq["numderiv"]))]
        if freq.get("intens"):
            lines.append("INTENS")
        return lines + ["END"]
    return []


def render_d12(atoms: Atoms, step: str, params: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The input files of a crystal run: ``{"INPUT": deck}`` plus ``fort.34`` for EXTERNAL."""
    if step not in CRYSTAL_STEPS:
        raise InputError(f"step {step!r} is not a crystal step ({', '.join(CRYSTAL_STEPS)})")
    if len(atoms) == 0:
        raise InputError("structure has no atoms")
    p = merge_params(params)
    dims = dimensionality(atoms)
    conv = _conv_numbers(atoms, p)
    mode = geometry_mode(atoms, p)
    sym = symmetric_cell(atoms, float(p["symprec"])) if mode == "symmetry" else None
    files: dict[str, str] = {}
    if dims == 2:
        geometry = _slab_block(atoms, conv)
    elif dims == 1:
        geometry = _polymer_block(atoms, conv)
    elif dims == 0:
        geometry = _molecule_block(atoms, conv)
    elif mode == "external":
        geometry = ["EXTERNAL"]
        files["fort.34"] = render_fort34(atoms, float(p["symprec"]), conv)
    elif sym is not None:
        geometry = _crystal_block(sym, conv)
    else:
        geometry = _p1_block(atoms, conv)
    title = p.get("title") or f"{atoms.get_chemical_formula()} {step} (eventflow)"
    lines = [str(title).replace("\n", " ")]
    lines += geometry
    lines += _step_lines(atoms, step, p)
    lines.append("END")
    lines += _basis_lines(atoms, p)
    lines += _scf_lines(atoms, step, p, mode, sym)
    text = "\n".join(lines) + "\n"
    deckmod.validate(text)
    files["INPUT"] = text
    return files


# --- reading a deck back into a structure ------------------------------------------------


def atoms_from_deck(deck: deckmod.Deck, fort34: str | None = None) -> Atoms:
    """The structure a deck describes (before geometry keywords such as SUPERCEL).

    CRYSTAL input uses ase's space-group settings: setting 2 for the two-origin groups
    (origin choice 2), setting 1 otherwise (hexagonal axes for trigonal groups).
    """
    g = deck.geometry
    numbers = [z % 100 for z, *_ in g.atoms]
    coords = np.array([a[1:] for a in g.atoms], dtype=float)
    if g.kind in ("EXTERNAL", "DLVINPUT"):
        if fort34 is None:
            raise InputError("EXTERNAL deck: the fort.34 text is needed to know the structure")
        return atoms_from_fort34(fort34)
    if g.kind == "CRYSTAL":
        from ase.spacegroup import crystal

        if not isinstance(g.group, int):
            raise InputError("space group given by symbol: not supported here")
        params = _full_cellpar(g.group, g.params, g.flags)
        setting = 2 if g.group in TWO_ORIGIN_GROUPS else 1
        if g.group in RHOMBOHEDRAL_GROUPS and len(g.flags) > 1 and g.flags[1] == 1:
            setting = 2
        symbols = [chemical_symbols[z] for z in numbers]
        return crystal(symbols, coords, spacegroup=g.group, setting=setting, cellpar=params,
                       onduplicates="keep")
    if g.kind == "SLAB":
        a, b, gamma = _slab_cellpar(g.group, g.params)
        g_rad = math.radians(gamma)
        va = np.array([a, 0.0, 0.0])
        vb = np.array([b * math.cos(g_rad), b * math.sin(g_rad), 0.0])
        vc = np.array([0.0, 0.0, 500.0])
        pos = coords[:, :1] * va + coords[:, 1:2] * vb + coords[:, 2:3] * np.array([0, 0, 1.0])
        return Atoms(numbers=numbers, positions=pos, cell=[va, vb, vc], pbc=(True, True, False))
    if g.kind == "POLYMER":
        a = g.params[0]
        pos = np.column_stack([coords[:, 0] * a, coords[:, 1], coords[:, 2]])
        return Atoms(numbers=numbers, positions=pos, cell=[[a, 0, 0], [0, 500, 0], [0, 0, 500]],
                     pbc=(True, False, False))
    return Atoms(numbers=numbers, positions=coords, pbc=False)


def atoms_from_geometry(geometry: Mapping[str, Any]) -> Atoms:
    """An ``ase.Atoms`` from a geometry the parser read (``initial_geometry`` or
    ``final_geometry`` of ``ParseResult.properties``), e.g. to continue from the
    optimised structure. Non-periodic directions get CRYSTAL's formal 500 Angstrom."""
    dims = int(geometry["dimensionality"])
    atoms_data = geometry["atoms"]
    numbers = [int(a["z"]) % 100 for a in atoms_data]
    coords = np.array([a["position"] for a in atoms_data], dtype=float)
    pbc = [i < dims for i in range(3)]
    if dims == 0:
        return Atoms(numbers=numbers, positions=coords, pbc=False)
    lat = geometry["lattice"]
    cell = Cell.fromcellpar([lat[k] for k in ("a", "b", "c", "alpha", "beta", "gamma")])
    if dims == 3:
        return Atoms(numbers=numbers, scaled_positions=coords, cell=cell, pbc=True)
    positions = coords[:, :dims] @ np.array(cell[:dims])
    normal = [np.zeros(3) for _ in range(3 - dims)]
    if dims == 2:
        normal = [np.cross(cell[0], cell[1]) / np.linalg.norm(np.cross(cell[0], cell[1]))]
        positions = positions + coords[:, 2:3] * normal[0]
    else:  # polymer: y and z in Angstrom, perpendicular to a
        e1 = np.array(cell[0]) / np.linalg.norm(cell[0])
        e2 = np.cross([0.0, 0.0, 1.0], e1) if abs(e1[2]) < 0.9 else np.cross([1.0, 0, 0], e1)
        e2 /= np.linalg.norm(e2)
        e3 = np.cross(e1, e2)
        positions = positions + coords[:, 1:2] * e2 + coords[:, 2:3] * e3
    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)


def _full_cellpar(group: int, params: Sequence[float], flags: Sequence[int]) -> list[float]:
    p = list(params)
    if group <= 2:
        return p
    if group <= 15:
        return [p[0], p[1], p[2], 90.0, p[3], 90.0]
    if group <= 74:
        return [p[0], p[1], p[2], 90.0, 90.0, 90.0]
    if group <= 142:
        return [p[0], p[0], p[1], 90.0, 90.0, 90.0]
    if group in RHOMBOHEDRAL_GROUPS and len(flags) > 1 and flags[1] == 1:
        return [p[0], p[0], p[0], p[1], p[1], p[1]]
    if group <= 194:
        return [p[0], p[0], p[1], 90.0, 90.0, 120.0]
    return [p[0], p[0], p[0], 90.0, 90.0, 90.0]


def _slab_cellpar(group: Any, params: Sequence[float]) -> tuple[float, float, float]:
    p = list(params)
    if len(p) == 3:
        return p[0], p[1], p[2]
    if len(p) == 2:
        return p[0], p[1], 90.0
    gamma = 120.0 if isinstance(group, int) and group >= 65 else 90.0
    return p[0], p[0], gamma
