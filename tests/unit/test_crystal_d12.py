"""Writing CRYSTAL decks: the corpus materials come back with the same essentials, every
generated deck passes the deck reader, and random structures give valid, equivalent decks.

The four real decks of the corpus are the references: the structure is read from the
deck itself (or, for the EXTERNAL NiO deck, from the geometry its output prints), the
method parameters are those the deck uses, and the deck we write must agree on space
group, cell, SHRINK and keywords. Symmetry-operator counts come from CRYSTAL's own
outputs ("N. OF SYMMETRY OPERATORS", "SYMMOPS").
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import spglib
from ase import Atoms
from ase.build import bulk, fcc111, make_supercell, molecule
from ase.data import chemical_symbols
from ase.geometry import get_distances
from ase.spacegroup import crystal
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from eventflow.codes.crystal import PLUGIN, d3, d12
from eventflow.codes.crystal import deck as deckmod
from eventflow.codes.crystal import parse as parsemod
from tests.corpus.conftest import read_corpus

REPO = Path(__file__).resolve().parents[2]
# spglib 2.5+ announces a change of its error handling on every call.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:spglib")


def _basis_sets(deck: deckmod.Deck) -> dict[str, str]:
    """The explicit basis of a real deck, element by element, as written."""
    return {
        chemical_symbols[z % 100]: "\n".join(deck.lines[a:b + 1])
        for z, (a, b) in zip(deck.basis.atoms, deck.basis.atom_spans, strict=True)
    }


def _records(deck: deckmod.Deck, name: str) -> list[list]:
    entry = deck.scf_keyword(name)
    assert entry is not None, f"{name} missing"
    return [list(r) for r in entry.records]


def _children(entry: deckmod.Entry | None) -> dict[str, list[list]]:
    assert entry is not None
    return {c.name: [list(r) for r in c.records] for c in entry.children}


def _signature(atoms: Atoms, symprec: float = 1e-3) -> tuple[int, int, float]:
    """Space group, atoms per primitive cell, volume per atom: what makes two cells equal."""
    cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
    dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
    prim = spglib.find_primitive(cell, symprec=symprec)
    return dataset.number, len(prim[2]), round(atoms.get_volume() / len(atoms), 4)


def test_defaults_equal_the_shipped_config_file() -> None:
    text = (REPO / "config" / "crystal.yaml").read_text()
    assert d12.parse_defaults(text) == {**d12.DEFAULTS, **d12.PROPERTIES_DEFAULTS}


def test_a_misspelt_setting_is_refused() -> None:
    with pytest.raises(d12.InputError, match="unknown CRYSTAL parameter 'kspaceing'"):
        d12.parse_defaults("kspaceing: 0.3\n")


# --- the corpus decks ---------------------------------------------------------------------------


def test_si_test08_is_written_back_with_the_same_essentials() -> None:
    """c14_si_lda_test08.d12: Fd-3m, a 5.42, Si at 1/8 1/8 1/8 (origin choice 2: the
    output reports 2 atoms per primitive cell), Becke exchange + PZ correlation, SHRINK 4 4,
    TOLDEE 7."""
    real = deckmod.validate(read_corpus("crystal/c14_si_lda_test08.d12"))
    atoms = d12.atoms_from_deck(real)
    assert len(atoms) == 8  # conventional cell: 2 atoms per primitive cell, as the output says
    params = {"functional": {"exchange": "BECKE", "correlation": "PZ"}, "grid": None,
              "shrink": [4, 4], "toldee": 7, "basis_sets": _basis_sets(real)}
    ours = deckmod.validate(PLUGIN.render_inputs(atoms, "SP", params)["INPUT"])
    assert ours.geometry.group == real.geometry.group == 227
    assert ours.geometry.params == pytest.approx(real.geometry.params)
    assert _signature(d12.atoms_from_deck(ours)) == _signature(atoms)
    assert _records(ours, "SHRINK") == _records(real, "SHRINK")
    assert _records(ours, "TOLDEE") == _records(real, "TOLDEE")
    assert _children(ours.dft) == _children(real.dft)
    assert ours.basis.atoms == real.basis.atoms


def test_mgo_optimisation_is_written_back_with_the_same_essentials() -> None:
    """c_mgo_opt_b3lyp_cryspytools.d12: Fm-3m, a 4.217, OPTGEOM TOLDEG/TOLDEX, B3LYP
    XXLGRID, SHRINK 12 24, TOLINTEG 7 7 7 7 14, FMIXING 70, MAXCYCLE 200."""
    real = deckmod.validate(read_corpus("crystal/c_mgo_opt_b3lyp_cryspytools.d12"))
    atoms = d12.atoms_from_deck(real)
    params = {"functional": "B3LYP", "grid": "XXLGRID", "shrink": [12, 24], "maxcycle": 200,
              "fmixing": 70, "tolinteg": [7, 7, 7, 7, 14],
              "opt": {"toldeg": 0.0003, "toldex": 0.0012}, "basis_sets": _basis_sets(real)}
    ours = deckmod.validate(PLUGIN.render_inputs(atoms, "OPT", params)["INPUT"])
    assert ours.geometry.group == 225 and ours.geometry.params == pytest.approx((4.217,))
    assert _signature(d12.atoms_from_deck(ours)) == _signature(atoms)
    for name in ("SHRINK", "TOLINTEG", "FMIXING", "MAXCYCLE"):
        assert _records(ours, name) == _records(real, name), name
    assert _children(ours.dft) == _children(real.dft)
    opt = _children(ours.optgeom)
    assert {k: opt[k] for k in ("TOLDEG", "TOLDEX")} == _children(real.optgeom)
    assert "FULLOPTG" in opt


def _fes_supercell() -> Atoms:
    """FeS rocksalt a 4.84 with SUPERCEL 2 0 0 / 0 1 0 / 0 0 1 applied to the primitive cell,
    Fe first; spins as the deck's ATOMSPIN 1 1 / 2 -1."""
    real = deckmod.validate(read_corpus("crystal/c17_fes_rocksalt_2x1_opt.d12"))
    conventional = d12.atoms_from_deck(real)
    assert _signature(conventional)[0] == 225
    primitive = bulk("FeS", "rocksalt", a=real.geometry.params[0])
    supercell = make_supercell(primitive, [[2, 0, 0], [0, 1, 0], [0, 0, 1]])
    order = np.argsort([0 if s == "Fe" else 1 for s in supercell.get_chemical_symbols()],
                       kind="stable")
    supercell = supercell[order]
    supercell.set_initial_magnetic_moments([1.0, -1.0, 0.0, 0.0])
    return supercell


def test_fes_afm_supercell_optimisation() -> None:
    """c17_fes_rocksalt_2x1_opt.d12 (HSE06, SPIN, ATOMSPIN 1 1 / 2 -1, SHRINK 8 16,
    FMIXING 80, MAXCYCLE 250, OPTGEOM FULLOPTG MAXCYCLE 100). Its properties run
    (p17_fes_rocksalt_pdos_runprop.outp) reports 4 atoms per cell and 12 symmetry
    operators: the fort.34 we write for the magnetic cell must carry the same 12."""
    real = deckmod.validate(read_corpus("crystal/c17_fes_rocksalt_2x1_opt.d12"))
    atoms = _fes_supercell()
    params = {"functional": "HSE06", "grid": "XXLGRID", "shrink": [8, 16], "fmixing": 80,
              "maxcycle": 250, "toldee": 7, "tolinteg": [7, 7, 7, 7, 14],
              "opt": {"maxcycle": 100}, "spinlock_cycles": None,
              "basis_sets": _basis_sets(real)}
    files = PLUGIN.render_inputs(atoms, "OPT", params)
    ours = deckmod.validate(files["INPUT"])
    assert ours.geometry.kind == "EXTERNAL"
    for name in ("SHRINK", "FMIXING", "MAXCYCLE", "TOLDEE", "TOLINTEG", "ATOMSPIN"):
        assert _records(ours, name) == _records(real, name), name
    assert _children(ours.dft) == _children(real.dft)
    assert _children(ours.optgeom) == _children(real.optgeom)
    assert ours.basis.atoms == real.basis.atoms
    fort34 = files["fort.34"]
    assert int(fort34.splitlines()[4]) == 12
    back = d12.atoms_from_fort34(fort34)
    assert np.allclose(back.positions, atoms.positions)
    assert list(back.numbers) == list(atoms.numbers)


def test_nio_afm_external_deck() -> None:
    """c17_nio_afm_scf_TOO_MANY_CYCLES.d12: EXTERNAL, UHF, SHRINK 8 8, ATOMSPIN 1 1 / 2 -1,
    FMIXING 50, MAXCYCLE 10, SPINLOCK 0 15, PPAN. Its output prints the geometry (4 atoms,
    a 2.944 c 4.164) and '16 SYMMOPS'."""
    real = deckmod.validate(read_corpus("crystal/c17_nio_afm_scf_TOO_MANY_CYCLES.d12"))
    output = parsemod.parse_output(read_corpus("crystal/c17_nio_afm_scf_TOO_MANY_CYCLES.out"))
    atoms = d12.atoms_from_geometry(output.properties["initial_geometry"])
    assert atoms.get_chemical_symbols() == ["Ni", "Ni", "O", "O"]
    atoms.set_initial_magnetic_moments([1.0, -1.0, 0.0, 0.0])
    params = {"functional": "HF", "shrink": [8, 8], "fmixing": 50, "maxcycle": 10,
              "spinlock_cycles": 15, "basis_sets": _basis_sets(real)}
    files = PLUGIN.render_inputs(atoms, "SP", params)
    ours = deckmod.validate(files["INPUT"])
    assert ours.geometry.kind == real.geometry.kind == "EXTERNAL"
    for name in ("SHRINK", "ATOMSPIN", "FMIXING", "MAXCYCLE", "SPINLOCK"):
        assert _records(ours, name) == _records(real, name), name
    assert ours.scf_keyword("UHF") is not None and ours.scf_keyword("PPAN") is not None
    assert ours.dft is None
    assert ours.basis.atoms == real.basis.atoms
    assert int(files["fort.34"].splitlines()[4]) == 16


def test_optimised_structures_read_back_from_outputs() -> None:
    """c22_mgo_opt_onelog_converged.out prints the optimised MgO primitive cell (VOLUME=
    19.059213) and c14_slab_opt.out a 3-atom Fe slab (z = 0, +-1.319490701006)."""
    mgo = d12.atoms_from_geometry(parsemod.parse_output(
        read_corpus("crystal/c22_mgo_opt_onelog_converged.out")).properties["final_geometry"])
    assert mgo.get_volume() == pytest.approx(19.059213, rel=1e-6)
    assert _signature(mgo)[:2] == (225, 2)
    slab = d12.atoms_from_geometry(parsemod.parse_output(
        read_corpus("crystal/c14_slab_opt.out")).properties["final_geometry"])
    assert list(slab.pbc) == [True, True, False]
    assert sorted(slab.positions[:, 2]) == pytest.approx([-1.319490701006, 0, 1.319490701006])
    deck = deckmod.validate(PLUGIN.render_inputs(slab, "SP", {})["INPUT"])
    assert deck.geometry.kind == "SLAB"


def test_optimised_nanotube_read_back_from_its_output() -> None:
    """c22_carbon_nanotube_opt_elastic1d.out: a 1D cell a = 8.92207637 with 52 C atoms (an
    extra R(ANGS) column on each atom line); its neighbour table gives the shortest C-C
    distance, 1.4251 A."""
    geometry = parsemod.parse_output(
        read_corpus("crystal/c22_carbon_nanotube_opt_elastic1d.out")).properties["final_geometry"]
    tube = d12.atoms_from_geometry(geometry)
    assert len(tube) == 52 and list(tube.pbc) == [True, False, False]
    assert _pair_distances(tube)[0] == pytest.approx(1.4251, abs=1e-4)
    deck = deckmod.validate(PLUGIN.render_inputs(tube, "SP", {})["INPUT"])
    assert deck.geometry.kind == "POLYMER" and len(deck.geometry.atoms) == 52


# --- k points -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cubic", [False, True])
def test_shrink_follows_the_reciprocal_lengths_of_crystals_primitive_cell(cubic: bool) -> None:
    """fcc MgO: CRYSTAL works in the primitive cell, |b_i| = 2 pi sqrt(3) / a, whatever cell
    is given; n = ceil(|b| / kspacing), ISP = 2 n."""
    a = 4.217
    atoms = bulk("MgO", "rocksalt", a=a, cubic=cubic)
    n = math.ceil(2 * math.pi * math.sqrt(3) / a / 0.3)
    assert d12.shrink_factors(atoms, {"kspacing": 0.3}) == [[n, 2 * n]]


def test_hexagonal_cell_gets_an_anisotropic_mesh() -> None:
    """hcp: |a*| = 4 pi / (sqrt(3) a), |c*| = 2 pi / c."""
    a, c = 3.21, 5.21
    atoms = bulk("Mg", "hcp", a=a, c=c)
    na = math.ceil(4 * math.pi / (math.sqrt(3) * a) / 0.25)
    nc = math.ceil(2 * math.pi / c / 0.25)
    assert na != nc
    assert d12.shrink_factors(atoms, {"kspacing": 0.25}) == [[0, 2 * na], [na, na, nc]]
    deck = deckmod.validate(PLUGIN.render_inputs(atoms, "SP", {"kspacing": 0.25})["INPUT"])
    assert _records(deck, "SHRINK") == [[0, 2 * na], [na, na, nc]]


# --- lower dimensions ---------------------------------------------------------------------------


def _pair_distances(atoms: Atoms) -> np.ndarray:
    _, d = get_distances(atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    return np.sort(d[np.triu_indices(len(atoms), 1)])


def test_slab_deck_keeps_the_slab() -> None:
    slab = fcc111("Al", size=(1, 1, 3), vacuum=8.0)
    slab.pbc = (True, True, False)
    files = PLUGIN.render_inputs(slab, "OPT", {})
    deck = deckmod.validate(files["INPUT"])
    assert deck.geometry.kind == "SLAB" and deck.geometry.group == 1
    back = d12.atoms_from_deck(deck)
    assert np.allclose(_pair_distances(back), _pair_distances(slab), atol=1e-6)
    assert np.mean([a[3] for a in deck.geometry.atoms]) == pytest.approx(0.0, abs=1e-9)


def test_molecule_deck_keeps_the_molecule_and_optimises_atoms_only() -> None:
    water = molecule("H2O")
    deck = deckmod.validate(PLUGIN.render_inputs(water, "OPT", {})["INPUT"])
    assert deck.geometry.kind == "MOLECULE"
    assert deck.scf_keyword("SHRINK") is None
    assert "ATOMONLY" in _children(deck.optgeom)
    back = d12.atoms_from_deck(deck)
    assert np.allclose(_pair_distances(back), _pair_distances(water), atol=1e-6)


def test_polymer_deck_keeps_the_chain() -> None:
    chain = Atoms("CH", positions=[[0, 0, 0], [0.5, 1.09, 0]], cell=[2.5, 10, 10],
                  pbc=(True, False, False))
    deck = deckmod.validate(PLUGIN.render_inputs(chain, "SP", {})["INPUT"])
    assert deck.geometry.kind == "POLYMER" and deck.geometry.params == (2.5,)
    back = d12.atoms_from_deck(deck)
    assert np.allclose(_pair_distances(back), _pair_distances(chain), atol=1e-6)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "atoms, step, params, message",
    [
        (Atoms("H", cell=[3, 3, 3], pbc=(True, False, True)), "SP", {}, "pbc"),
        (bulk("Si"), "SP", {"functional": "B4LYP"}, "functional 'B4LYP' unknown"),
        (bulk("Si"), "SP", {"kspacing": 0}, "kspacing must be positive"),
        (bulk("Si"), "SP", {"basis_sets": {"O": "8 1\n1 0 3 2.0 1.0"}}, "no basis for Si"),
        (bulk("Si"), "MD", {}, "no step 'MD'"),
        (bulk("Si"), "SP", {"tolinteg": [7, 7]}, "tolinteg needs 5"),
        (fcc111("Al", size=(1, 1, 2), vacuum=5, periodic=False), "SP", {"geometry": "external"},
         "EXTERNAL geometry is written only for 3D"),
        (molecule("H2O"), "BAND", {}, "molecule has no band structure"),
    ],
)
def test_bad_input_is_one_clear_error(atoms: Atoms, step: str, params: dict,
                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PLUGIN.render_inputs(atoms, step, params)


def test_main_output_names() -> None:
    assert PLUGIN.main_output("OPT") == "crystal.out"
    assert PLUGIN.main_output("DOS") == "properties.out"
    with pytest.raises(ValueError, match="no step"):
        PLUGIN.main_output("NEB")


# --- properties inputs --------------------------------------------------------------------------


def _fractions(ints: list[int], iss: int) -> tuple[Fraction, ...]:
    return tuple(Fraction(v, iss) for v in ints)


def test_mgo_band_path_contains_the_points_of_a_real_crystal_run() -> None:
    """p14_mgo_band.fort25 (a real MgO BAND run; ends in units of 1/8 of the primitive
    reciprocal vectors: X 4 0 4, U 5 2 5, K 3 3 6, L 4 4 4, W 4 2 6) uses only special
    points our path for the same crystal also visits, in the same coordinates."""
    from eventflow.codes.crystal import fort25

    real = fort25.parse_fort25(read_corpus("crystal/p14_mgo_band.fort25")).bands[0]
    real_points = {_fractions(list(p), 8) for seg in real.segments for p in seg}
    atoms = bulk("MgO", "rocksalt", a=4.21)
    d3text = PLUGIN.render_inputs(atoms, "BAND", {})["INPUT"]
    band = next(e for e in d3.parse_d3(d3text) if e.name == "BAND")
    nline, iss = band.records[1][0], band.records[1][1]
    ours = {_fractions(list(r[:3]), iss) for r in band.records[2:]} | {
        _fractions(list(r[3:]), iss) for r in band.records[2:]}
    assert len(band.records) == 2 + nline
    assert real_points <= ours


def test_hexagonal_band_path_equals_a_real_crystal_input() -> None:
    """p14_tis2_band.prop.o echoes a real BAND input for TiS2 (P-3m1): 9 segments,
    ISS 6, G-M-K-G-A-L-H-A|L-M|K-H. The path we write for TiS2 is the same, line by line."""
    echo = read_corpus("crystal/p14_tis2_band.prop.o").splitlines()
    start = echo.index("BAND")
    head = [int(v) for v in echo[start + 2].split()]
    real = [[int(v) for v in line.split()[:6]] for line in echo[start + 3:start + 3 + head[0]]]
    tis2 = crystal(["Ti", "S"], [(0, 0, 0), (1 / 3, 2 / 3, 0.25)], spacegroup=164,
                   cellpar=[3.41, 3.41, 5.70, 90, 90, 120])
    band = next(e for e in d3.parse_d3(PLUGIN.render_inputs(tis2, "BAND", {})["INPUT"])
                if e.name == "BAND")
    assert band.records[1][:2] == tuple(head[:2]) == (9, 6)
    assert [list(r) for r in band.records[2:]] == real
    assert band.records[0][0].endswith("G-M-K-G-A-L-H-A|L-M|K-H")


def test_mgo_dos_input() -> None:
    """MgO: 12 + 8 = 20 electrons per primitive cell, 10 occupied bands, window 2..18;
    NEWK uses the SCF mesh; one projection per element covering each atom once."""
    atoms = bulk("MgO", "rocksalt", a=4.21)
    text = PLUGIN.render_inputs(atoms, "DOS", {"kspacing": 0.3})["INPUT"]
    entries = {e.name: e for e in d3.parse_d3(text)}
    assert [list(r) for r in entries["NEWK"].records[:-1]] == d12.shrink_factors(
        atoms, {"kspacing": 0.3})
    head = entries["DOSS"].records[0]
    assert head[0] == 2 and head[2:4] == (2, 18)
    labels = sorted(i for r in entries["DOSS"].records[1:] for i in r[1:])
    assert labels == [1, 2]


@pytest.mark.parametrize("name", ["c17_fes_rocksalt_pdos.d3", "p17_mgo_newk_doss.d3",
                                  "p_mgo_many_properties.d3"])
def test_real_d3_files_areread_corpus(name: str) -> None:
    entries = {e.name: e for e in d3.parse_d3(read_corpus(f"crystal/{name}"))}
    assert entries["NEWK"].records[-1] == (1, 0)
    assert "DOSS" in entries


def test_bad_d3_is_refused() -> None:
    with pytest.raises(deckmod.DeckError, match="DOSS projection"):
        d3.parse_d3("NEWK\n8 16\n1 0\nDOSS\n1 100 1 10 1 14 0\n-2 1\nEND\n")
    with pytest.raises(deckmod.DeckError, match="no final END"):
        d3.parse_d3("NEWK\n8 16\n1 0\n")


# --- random structures --------------------------------------------------------------------------

SAMPLE_GROUPS = [1, 2, 11, 14, 15, 59, 62, 63, 70, 123, 141, 148, 160, 166, 167, 187, 194, 221,
                 225, 227, 229]
SITES = st.sampled_from([0.0, 0.125, 0.25, 1 / 3, 0.375, 0.5, 2 / 3, 0.75]) | st.floats(0, 1)


def _cellpar(group: int, a: float, b: float, c: float, beta: float,
             angles: tuple[float, float, float]) -> list[float]:
    if group <= 2:
        return [a, b, c, *angles]
    if group <= 15:
        return [a, b, c, 90, beta, 90]
    if group <= 74:
        return [a, b, c, 90, 90, 90]
    if group <= 142:
        return [a, a, c, 90, 90, 90]
    if group <= 194:
        return [a, a, c, 90, 90, 120]
    return [a, a, a, 90, 90, 90]


@st.composite
def symmetric_crystals(draw: st.DrawFn) -> Atoms:
    group = draw(st.sampled_from(SAMPLE_GROUPS))
    a, b, c = (draw(st.floats(3.0, 7.0)) for _ in range(3))
    beta = draw(st.floats(95, 115))
    angles = (draw(st.floats(75, 105)), draw(st.floats(75, 105)), draw(st.floats(75, 105)))
    n_sites = draw(st.integers(1, 2))
    sites = [(draw(SITES), draw(SITES), draw(SITES)) for _ in range(n_sites)]
    symbols = draw(st.lists(st.sampled_from(["Mg", "O", "Si", "Na", "Cl"]),
                            min_size=n_sites, max_size=n_sites))
    setting = 2 if group in d12.TWO_ORIGIN_GROUPS else 1
    try:
        atoms = crystal(symbols, sites, spacegroup=group, setting=setting,
                        cellpar=_cellpar(group, a, b, c, beta, angles), onduplicates="replace")
    except Exception:  # ase refuses impossible cells (e.g. triclinic angles)
        assume(False)
    assume(len(atoms) <= 48)
    if len(atoms) > 1:
        assume(_pair_distances(atoms)[0] > 1.0)
    return atoms


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(symmetric_crystals(), st.sampled_from(["SP", "OPT", "FREQ"]))
def test_random_symmetric_crystals_give_valid_equivalent_decks(atoms: Atoms, step: str) -> None:
    """The deck's space group, cell and asymmetric unit rebuild the same crystal."""
    text = PLUGIN.render_inputs(atoms, step, {"geometry": "symmetry"})["INPUT"]
    deck = deckmod.validate(text)
    back = d12.atoms_from_deck(deck)
    assert _signature(back) == _signature(atoms)


@st.composite
def random_structures(draw: st.DrawFn) -> Atoms:
    n = draw(st.integers(1, 5))
    dims = draw(st.sampled_from([0, 1, 2, 3]))
    lengths = [draw(st.floats(3.0, 9.0)) for _ in range(3)]
    frac = [[draw(st.floats(0, 1)) for _ in range(3)] for _ in range(n)]
    numbers = [draw(st.sampled_from([1, 6, 8, 14, 26])) for _ in range(n)]
    atoms = Atoms(numbers=numbers, scaled_positions=frac, cell=np.diag(lengths),
                  pbc=[i < dims for i in range(3)])
    if n > 1:
        assume(_pair_distances(atoms)[0] > 0.8)
    moments = [draw(st.sampled_from([0.0, 0.0, 2.0, -2.0])) for _ in range(n)]
    atoms.set_initial_magnetic_moments(moments)
    return atoms


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(random_structures(), st.sampled_from(["SP", "OPT", "FREQ"]),
       st.sampled_from(["PBE0", "PBE", "HF", "B3LYP"]), st.sampled_from([None, "D3"]))
def test_random_structures_give_valid_decks(atoms: Atoms, step: str, functional: str,
                                            dispersion: str | None) -> None:
    params = {"functional": functional, "dispersion": dispersion if functional != "HF" else None}
    files = PLUGIN.render_inputs(atoms, step, params)
    deck = deckmod.validate(files["INPUT"])
    if deck.geometry.kind == "EXTERNAL":
        assert len(d12.atoms_from_fort34(files["fort.34"])) == len(atoms)
    elif deck.geometry.group == 1:
        assert len(deck.geometry.atoms) == len(atoms)
    magnetic = any(abs(m) > 0 for m in atoms.get_initial_magnetic_moments())
    spins = deck.scf_keyword("ATOMSPIN")
    assert (spins is not None) == magnetic
    if spins is not None:
        assert spins.records[0][0] == sum(1 for m in atoms.get_initial_magnetic_moments() if m)


# --- the deck reader -------------------------------------------------------------------------

REAL_DECKS = ["c14_si_lda_test08.d12", "c17_fes_rocksalt_2x1_opt.d12",
              "c17_nio_afm_scf_TOO_MANY_CYCLES.d12", "c_mgo_opt_b3lyp_cryspytools.d12"]


@pytest.mark.parametrize("name", REAL_DECKS)
def test_real_decks_pass_the_strict_reader(name: str) -> None:
    deck = deckmod.validate(read_corpus(f"crystal/{name}"), strict=True)
    assert deck.unknown == ()
    assert deck.lines[deck.end].strip().upper().startswith("END")


def test_real_deck_structure_is_read_as_written() -> None:
    """c17_fes_rocksalt_2x1_opt.d12, read by eye: SUPERCEL 2 0 0/0 1 0/0 0 1, MODISYMM of
    2 atoms, OPTGEOM FULLOPTG MAXCYCLE 100, basis for Fe (14 shells) and S (10 shells)."""
    deck = deckmod.validate(read_corpus("crystal/c17_fes_rocksalt_2x1_opt.d12"))
    assert deck.geometry.atoms == ((26, 0.0, 0.0, 0.0), (16, 0.5, 0.5, 0.5))
    supercell = deck.geometry_keyword("SUPERCEL")
    assert [list(r) for r in supercell.records] == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert deck.geometry_keyword("MODISYMM").records == ((2,), (1, 1, 2, -1))
    assert _children(deck.optgeom) == {"FULLOPTG": [], "MAXCYCLE": [[100]]}
    assert deck.basis.atoms == (26, 16)
    assert deck.lines[deck.basis.atom_spans[0][0]].split() == ["26", "14"]
    assert deck.lines[deck.basis.atom_spans[1][0]].split() == ["16", "10"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.rstrip("\n").rsplit("\n", 1)[0] + "\n", "never closed"),
        (lambda t: t.replace("\n4.217\n", "\nfour\n"), r"line 5: lattice parameters expects"),
        (lambda t: t.replace("\n225\n", "\n225.5\n"), "expects an integer"),
        (lambda t: t.replace("\nMAXCYCLE\n200\n", "\nMAXCYCLE\nMANY\n"), "MAXCYCLE's data"),
        (lambda t: t.replace("ENDOPT\n", ""), "line 15: number '12 4' where a geometry keyword"),
        (lambda t: t.replace("\nCRYSTAL\n", "\nCRYSTALS\n"), "must start with one of"),
        (lambda t: t + "SHRINK\n", "after the final END"),
    ],
)
def test_broken_decks_are_refused_with_the_line(edit, message: str) -> None:
    """Derived: c_mgo_opt_b3lyp_cryspytools.d12 with one deliberate mistake each."""
    text = read_corpus("crystal/c_mgo_opt_b3lyp_cryspytools.d12")
    with pytest.raises(deckmod.DeckError, match=message):
        deckmod.validate(edit(text))


def test_unknown_keywords_are_kept_and_refused_only_when_strict() -> None:
    """Derived: the Si test08 deck with a made-up keyword and its number in block 3."""
    text = read_corpus("crystal/c14_si_lda_test08.d12")
    text = text.replace("NODIRECT\n", "NODIRECT\nWIBBLE\n3\n")
    deck = deckmod.parse_deck(text)
    assert deck.unknown and "WIBBLE" in deck.unknown[0]
    assert deck.scf_keyword("WIBBLE").records == (("3",),)
    with pytest.raises(deckmod.DeckError, match="unknown keyword"):
        deckmod.validate(text, strict=True)


def test_plugin_satisfies_the_protocol() -> None:
    from eventflow.codes.base import CodePlugin

    assert isinstance(PLUGIN, CodePlugin)
    assert PLUGIN.name == "crystal" and PLUGIN.parser_version


def test_ferromagnet_with_symmetry_counts_spins_in_crystals_cell() -> None:
    """bcc Fe given as the cubic cell (2 atoms, moment 1 each). CRYSTAL works in the
    primitive cell, one atom: ATOMSPIN names that atom and SPINLOCK locks
    n(alpha) - n(beta) to that cell's moment, 1; SPIN is switched on."""
    iron = bulk("Fe", "bcc", a=2.87, cubic=True)
    iron.set_initial_magnetic_moments([1.0, 1.0])
    deck = deckmod.validate(PLUGIN.render_inputs(iron, "SP", {"geometry": "symmetry"})["INPUT"])
    assert deck.geometry.group == 229 and len(deck.geometry.atoms) == 1
    assert _records(deck, "ATOMSPIN") == [[1], [1, 1]]
    assert _records(deck, "SPINLOCK") == [[1, 15]]
    assert "SPIN" in _children(deck.dft)
