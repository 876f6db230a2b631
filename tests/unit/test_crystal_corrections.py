"""Corrections to real CRYSTAL decks: each changes exactly what it says and nothing else.

For every corpus deck and every correction, the parsed deck after the change equals
the parsed deck before it with only the intended keyword changed (``Deck.to_dict``:
titles, geometry, basis, every keyword and its numbers), and every comment line of
the original survives.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from ase import Atoms

from eventflow.codes.crystal import PLUGIN, corrections, d12
from eventflow.codes.crystal import deck as deckmod
from eventflow.codes.crystal.deck import DeckError
from tests.corpus.conftest import corpus_path

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:spglib")

DECKS = ["c14_si_lda_test08.d12", "c17_fes_rocksalt_2x1_opt.d12",
         "c17_nio_afm_scf_TOO_MANY_CYCLES.d12", "c_mgo_opt_b3lyp_cryspytools.d12"]
OPT_DECKS = ["c17_fes_rocksalt_2x1_opt.d12", "c_mgo_opt_b3lyp_cryspytools.d12"]


def _read(name: str) -> str:
    return corpus_path(f"crystal/{name}").read_text()


def _meaning(text: str) -> dict[str, Any]:
    return deckmod.parse_deck(text).to_dict()


def _with_scf(meaning: dict[str, Any], name: str, records: list[list]) -> dict[str, Any]:
    """``meaning`` with block-3 keyword ``name`` given ``records`` (appended when absent)."""
    out = copy.deepcopy(meaning)
    for entry in out["scf_keywords"]:
        if entry["name"] == name:
            entry["records"] = records
            return out
    out["scf_keywords"].append({"name": name, "records": records})
    return out


def _without_scf(meaning: dict[str, Any], *names: str) -> dict[str, Any]:
    out = copy.deepcopy(meaning)
    out["scf_keywords"] = [e for e in out["scf_keywords"] if e["name"] not in names]
    return out


def _scf_value(meaning: dict[str, Any], name: str) -> list[list] | None:
    for entry in meaning["scf_keywords"]:
        if entry["name"] == name:
            return entry["records"]
    return None


def _check(original: str, changed: str, expected: dict[str, Any]) -> None:
    assert _meaning(changed) == expected
    comments = [ln for ln in original.splitlines() if ln.strip().startswith("#") or "#" in ln]
    assert all(c in changed.splitlines() for c in comments)
    deckmod.validate(changed)


@pytest.mark.parametrize("name", DECKS)
def test_raise_maxcycle(name: str) -> None:
    text = _read(name)
    before = _meaning(text)
    current = _scf_value(before, "MAXCYCLE")
    expected_cycles = 2 * current[0][0] if current else 2 * corrections.CRYSTAL_MAXCYCLE
    changed = corrections.raise_maxcycle(text)
    _check(text, changed, _with_scf(before, "MAXCYCLE", [[expected_cycles]]))


@pytest.mark.parametrize("name", DECKS)
def test_set_fmixing(name: str) -> None:
    text = _read(name)
    _check(text, corrections.set_fmixing(text, 60), _with_scf(_meaning(text), "FMIXING", [[60]]))


@pytest.mark.parametrize("name", DECKS)
def test_raise_fmixing_stays_below_the_ceiling(name: str) -> None:
    text = _read(name)
    before = _meaning(text)
    current = (_scf_value(before, "FMIXING") or [[30]])[0][0]
    expected = min(90, current + 20)
    _check(text, corrections.raise_fmixing(text), _with_scf(before, "FMIXING", [[expected]]))


@pytest.mark.parametrize("name", DECKS)
def test_add_levshift(name: str) -> None:
    text = _read(name)
    _check(text, corrections.add_levshift(text, 5, 1),
           _with_scf(_meaning(text), "LEVSHIFT", [[5, 1]]))


@pytest.mark.parametrize("name", DECKS)
@pytest.mark.parametrize("mixer", ["ANDERSON", "BROYDEN"])
def test_switch_mixer(name: str, mixer: str) -> None:
    """The MgO deck names DIIS explicitly: switching drops it."""
    text = _read(name)
    expected = _without_scf(_meaning(text), "DIIS", "ANDERSON", "BROYDEN")
    expected["scf_keywords"].append(
        {"name": mixer, "records": [] if mixer == "ANDERSON" else [[0.0001, 50, 2]]})
    _check(text, corrections.set_mixer(text, mixer), expected)


def test_switch_back_to_diis_removes_the_other_mixer() -> None:
    text = _read("c17_nio_afm_scf_TOO_MANY_CYCLES.d12")
    broyden = corrections.set_mixer(text, "BROYDEN")
    assert _meaning(corrections.set_mixer(broyden, "DIIS")) == _meaning(text)


@pytest.mark.parametrize("name", DECKS)
def test_add_guessp(name: str) -> None:
    text = _read(name)
    changed = corrections.add_guessp(text)
    _check(text, changed, _with_scf(_meaning(text), "GUESSP", []))
    assert corrections.add_guessp(changed) == changed  # once is enough


@pytest.mark.parametrize("name, before, after", [
    ("c14_si_lda_test08.d12", [4, 4], [6, 6]),
    ("c17_fes_rocksalt_2x1_opt.d12", [8, 16], [12, 24]),
    ("c17_nio_afm_scf_TOO_MANY_CYCLES.d12", [8, 8], [12, 12]),
    ("c_mgo_opt_b3lyp_cryspytools.d12", [12, 24], [18, 36]),
])
def test_shrink_denser(name: str, before: list[int], after: list[int]) -> None:
    """SHRINK values are those of the real decks; denser is 1.5x, rounded up."""
    text = _read(name)
    assert _scf_value(_meaning(text), "SHRINK") == [before]
    _check(text, corrections.shrink_denser(text), _with_scf(_meaning(text), "SHRINK", [after]))


@pytest.mark.parametrize("name", DECKS)
def test_anisotropic_shrink_becomes_isotropic(name: str) -> None:
    """Derived: the real deck first given an anisotropic mesh 0 16 / 8 8 4."""
    anisotropic = corrections.set_shrink(_read(name), [0, 16, 8, 8, 4])
    assert _scf_value(_meaning(anisotropic), "SHRINK") == [[0, 16], [8, 8, 4]]
    _check(anisotropic, corrections.shrink_isotropic(anisotropic),
           _with_scf(_meaning(anisotropic), "SHRINK", [[8, 16]]))
    denser = corrections.shrink_denser(anisotropic)
    assert _scf_value(_meaning(denser), "SHRINK") == [[0, 24], [12, 12, 6]]


@pytest.mark.parametrize("name", OPT_DECKS)
def test_optgeom_restart_with_a_smaller_trust_radius(name: str) -> None:
    text = _read(name)
    expected = copy.deepcopy(_meaning(text))
    opt = next(e for e in expected["geometry_keywords"] if e["name"] == "OPTGEOM")
    opt["children"] += [{"name": "MAXTRADIUS", "records": [[2.0]]},
                        {"name": "RESTART", "records": []}]
    once = corrections.optgeom_restart(text)
    _check(text, once, expected)
    twice = corrections.optgeom_restart(once)  # halves again, RESTART not repeated
    opt["children"][-2]["records"] = [[1.0]]
    _check(once, twice, expected)


@pytest.mark.parametrize("name", ["c14_si_lda_test08.d12", "c17_nio_afm_scf_TOO_MANY_CYCLES.d12"])
def test_optgeom_restart_needs_an_optimisation(name: str) -> None:
    with pytest.raises(DeckError, match="no OPTGEOM"):
        corrections.optgeom_restart(_read(name))


@pytest.mark.parametrize("name", [n for n in DECKS if "nio" not in n])
def test_scale_cell(name: str) -> None:
    """Lattice lengths x 1.1; fractional coordinates and everything else untouched."""
    text = _read(name)
    expected = copy.deepcopy(_meaning(text))
    expected["geometry"]["params"] = [pytest.approx(1.1 * v) for v in
                                      expected["geometry"]["params"]]
    changed = corrections.scale_cell(text, 1.1)
    _check(text, changed, expected)


def test_scale_cell_of_an_external_deck_scales_fort34() -> None:
    """The NiO EXTERNAL deck with a fort.34 written for the NiO AFM cell its output prints."""
    text = _read("c17_nio_afm_scf_TOO_MANY_CYCLES.d12")
    with pytest.raises(DeckError, match="fort.34"):
        corrections.scale_cell(text, 1.05)
    atoms = Atoms("Ni2O2", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0, 0, 0.5],
                                             [0.5, 0.5, 0]],
                  cell=[2.94439264, 2.94439264, 4.164, 90, 90, 90], pbc=True)
    atoms.set_initial_magnetic_moments([1, -1, 0, 0])
    fort34 = d12.render_fort34(atoms)
    files = PLUGIN.apply_changes({"INPUT": text, "fort.34": fort34}, {"SCALE_CELL": 1.05})
    assert files["INPUT"] == text
    scaled = d12.atoms_from_fort34(files["fort.34"])
    assert np.allclose(scaled.cell[:], 1.05 * atoms.cell[:])
    assert np.allclose(scaled.positions, 1.05 * atoms.positions)
    assert files["fort.34"].splitlines()[4] == fort34.splitlines()[4]  # same operators
    with pytest.raises(ValueError, match="needs fort.34"):
        PLUGIN.apply_changes({"INPUT": text}, {"SCALE_CELL": 1.05})


@pytest.mark.parametrize("name", DECKS)
def test_tighten_tolinteg(name: str) -> None:
    text = _read(name)
    before = _meaning(text)
    current = (_scf_value(before, "TOLINTEG") or [list(corrections.CRYSTAL_TOLINTEG)])[0]
    expected = [v + 1 for v in current[:4]] + [current[4] + 2]
    _check(text, corrections.tighten_tolinteg(text), _with_scf(before, "TOLINTEG", [expected]))


def test_apply_changes_as_the_plugin_receives_them() -> None:
    text = _read("c17_nio_afm_scf_TOO_MANY_CYCLES.d12")
    files = PLUGIN.apply_changes(
        {"INPUT": text},
        {"MAXCYCLE": 200, "FMIXING": 50, "GUESSP": True, "LEVSHIFT": [5, 1], "SHRINK": "denser"},
    )
    expected = _meaning(text)
    for name, records in (("MAXCYCLE", [[200]]), ("FMIXING", [[50]]), ("GUESSP", []),
                          ("LEVSHIFT", [[5, 1]]), ("SHRINK", [[12, 12]])):
        expected = _with_scf(expected, name, records)
    _check(text, files["INPUT"], expected)
    removed = PLUGIN.apply_changes(files, {"GUESSP": False, "LEVSHIFT": None})
    assert _meaning(removed["INPUT"]) == _without_scf(expected, "GUESSP", "LEVSHIFT")


def test_apply_changes_on_a_generated_deck_keeps_it_valid() -> None:
    atoms = Atoms("MgO", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]],
                  cell=[[0, 2.1, 2.1], [2.1, 0, 2.1], [2.1, 2.1, 0]], pbc=True)
    files = PLUGIN.render_inputs(atoms, "OPT", {})
    changed = PLUGIN.apply_changes(files, {"OPTGEOM_RESTART": {"maxtradius": 0.5},
                                           "TOLINTEG": "tighter", "MIXER": "ANDERSON",
                                           "SCALE_CELL": 1.02, "SHRINK": [10, 20]})
    deck = deckmod.validate(changed["INPUT"])
    assert deck.optgeom is not None and deck.optgeom.child("MAXTRADIUS").records == ((0.5,),)
    assert deck.scf_keyword("TOLINTEG").records == ((8, 8, 8, 8, 16),)
    assert deck.scf_keyword("SHRINK").records == ((10, 20),)


@pytest.mark.parametrize("changes, message", [
    ({"FMIXING": 150}, "FMIXING must be 0..99"),
    ({"SHRINK": [0, 8]}, "SHRINK must be"),
    ({"MAXCYCLE": 0}, "MAXCYCLE must be positive"),
    ({"SCALE_CELL": -1}, "scale factor must be positive"),
    ({"MIXER": "PULAY"}, "mixer must be one of"),
    ({"WIBBLE": 1}, "unknown CRYSTAL change 'WIBBLE'"),
])
def test_bad_changes_are_one_clear_error(changes: dict, message: str) -> None:
    text = _read("c14_si_lda_test08.d12")
    with pytest.raises(ValueError, match=message):
        PLUGIN.apply_changes({"INPUT": text}, changes)


def test_inputs_without_a_deck_are_refused() -> None:
    with pytest.raises(ValueError, match="no CRYSTAL deck"):
        PLUGIN.apply_changes({"fort.34": "3 1 1\n"}, {"MAXCYCLE": 10})


def test_a_d12_named_deck_is_found() -> None:
    text = _read("c14_si_lda_test08.d12")
    files = PLUGIN.apply_changes({"si.d12": text}, {"GUESSP": True})
    assert deckmod.parse_deck(files["si.d12"]).scf_keyword("GUESSP") is not None


@pytest.mark.parametrize("order", [("MAXTRADIUS", "OPTGEOM_RESTART"),
                                   ("OPTGEOM_RESTART", "MAXTRADIUS")])
def test_restart_with_a_given_radius_does_not_depend_on_key_order(order: tuple[str, str]) -> None:
    """The recovery policy sends {"MAXTRADIUS": r, "OPTGEOM_RESTART": True}; the event log
    gives the keys back sorted. Either order gives radius r and one RESTART."""
    text = _read("c_mgo_opt_b3lyp_cryspytools.d12")
    values = {"MAXTRADIUS": 1.5, "OPTGEOM_RESTART": True}
    deck = deckmod.parse_deck(
        PLUGIN.apply_changes({"INPUT": text}, {k: values[k] for k in order})["INPUT"])
    assert deck.optgeom.child("MAXTRADIUS").records == ((1.5,),)
    assert [c.name for c in deck.optgeom.children].count("RESTART") == 1


def test_maxtradius_alone_sets_the_radius_and_restart_false_removes_restart() -> None:
    text = corrections.optgeom_restart(_read("c17_fes_rocksalt_2x1_opt.d12"))
    files = PLUGIN.apply_changes({"INPUT": text}, {"MAXTRADIUS": 0.8, "OPTGEOM_RESTART": False})
    deck = deckmod.parse_deck(files["INPUT"])
    assert deck.optgeom.child("MAXTRADIUS").records == ((0.8,),)
    assert deck.optgeom.child("RESTART") is None


@pytest.mark.parametrize("step", ["BAND", "DOS"])
def test_a_restart_of_a_properties_step_leaves_its_deck_as_it_is(step: str) -> None:
    """eventflow-sim --seed 2: the walltime rule's restart (GUESSP) reached a BAND retry, and
    the deck could not be written, so the step ended needing attention instead of running
    again with more time. A properties run reads the SP wave function afresh every attempt."""
    from ase.build import bulk

    inputs = PLUGIN.render_inputs(bulk("MgO", "rocksalt", a=4.21), step, {})
    assert PLUGIN.apply_changes(inputs, {"GUESSP": True}) == inputs
    with pytest.raises(ValueError, match="a properties deck takes none of MAXCYCLE"):
        PLUGIN.apply_changes(inputs, {"GUESSP": True, "MAXCYCLE": 200})
