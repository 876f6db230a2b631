"""The CRYSTAL parser against the real-output corpus: every TRUTH.tsv row, the error table,
fort.25 / BAND.DAT / DOSS.DAT data, and cases derived from real files.

Expected values come from TRUTH.tsv / MANIFEST.tsv (written by hand from the files),
or from numbers the files themselves print. Derived cases (a real file cut short,
or with a documented message appended) say so in their docstring.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from eventflow.codes.base import HARTREE_EV
from eventflow.codes.crystal import PLUGIN, fort25, parse, patterns
from tests.corpus.conftest import (
    BUNDLED,
    SHARED,
    assert_parsed_as_truth,
    corpus_file,
    corpus_files,
    corpus_path,
    read_corpus,
    truth_rows,
)

CRYSTAL_ROWS = truth_rows("crystal")


def test_truth_has_the_crystal_rows() -> None:
    assert len(CRYSTAL_ROWS) >= 51, "TRUTH.tsv lost CRYSTAL rows"


@pytest.mark.parametrize("row", CRYSTAL_ROWS, ids=[r["file"] for r in CRYSTAL_ROWS])
def test_truth_row(row: dict[str, str]) -> None:
    text = read_corpus(row["file"])
    assert PLUGIN.detect(text)
    result = PLUGIN.parse(text)
    assert_parsed_as_truth(result, row)
    if row["energy"]:
        assert result.energy == pytest.approx(float(row["energy"]), rel=1e-6)
        assert result.energy_unit == row["energy_unit"] == "Ha"
        assert result.energy_ev == pytest.approx(float(row["energy_ev"]), rel=1e-6)
    else:
        assert result.energy is None and result.energy_ev is None
    if row["band_gap_ev"]:
        assert result.band_gap_ev == pytest.approx(float(row["band_gap_ev"]), abs=1e-4)
    else:
        assert result.band_gap_ev is None
    if row["status"] == "error":
        assert row["evidence"] in [f.text for f in result.errors]
        lines = text.splitlines()
        for finding in result.errors:
            assert lines[finding.line - 1].strip() == finding.text
    else:
        assert result.errors == ()
        assert row["evidence"] in text


def test_parse_is_deterministic_and_serialisable() -> None:
    text = read_corpus("crystal/c17_mackinawite_spin_opt_converged.out")
    first, second = PLUGIN.parse(text), PLUGIN.parse(text)
    assert first == second
    assert first.to_dict()["properties"]["opt_points"] == 21


# --- properties the files print ------------------------------------------------


def test_optimised_geometry_of_a_slab() -> None:
    """c14_slab_opt.out prints a final 2D cell 2.8485 x 2.8485 and 3 Fe atoms."""
    props = PLUGIN.parse(read_corpus("crystal/c14_slab_opt.out")).properties
    geometry = props["final_geometry"]
    assert geometry["dimensionality"] == 2
    assert geometry["lattice"]["a"] == pytest.approx(2.8485)
    assert geometry["lattice"]["gamma"] == pytest.approx(90.0)
    assert geometry["coordinates"] == ["fractional", "fractional", "angstrom"]
    assert [a["symbol"] for a in geometry["atoms"]] == ["Fe", "Fe", "Fe"]
    assert geometry["atoms"][0]["position"][2] == pytest.approx(1.319490701006)
    assert props["opt_converged"] is True and props["opt_points"] == 70


def test_optimised_mgo_cell_matches_its_volume() -> None:
    """c22_mgo_opt_onelog_converged.out: primitive fcc cell a = 2.99828782, VOLUME= 19.059213."""
    geometry = PLUGIN.parse(read_corpus("crystal/c22_mgo_opt_onelog_converged.out")).properties[
        "final_geometry"]
    lat = geometry["lattice"]
    a = lat["a"]
    cos = math.cos(math.radians(lat["alpha"]))
    volume = a**3 * math.sqrt(1 - 3 * cos**2 + 2 * cos**3)
    assert volume == pytest.approx(19.059213, rel=1e-6)
    assert sorted(at["z"] for at in geometry["atoms"]) == [8, 12]


def test_molecule_geometry_is_cartesian() -> None:
    """c17_co_molecule_opt_converged.out prints the C-O neighbour distance as 1.1879 A."""
    props = PLUGIN.parse(read_corpus("crystal/c17_co_molecule_opt_converged.out")).properties
    geometry = props["final_geometry"]
    assert geometry["dimensionality"] == 0 and "lattice" not in geometry
    assert geometry["coordinates"] == ["angstrom"] * 3
    c, o = (np.array(a["position"]) for a in geometry["atoms"])
    assert np.linalg.norm(c - o) == pytest.approx(1.1879, abs=1e-4)


def test_scf_outcome_and_cpu_time() -> None:
    """c17_nio_afm_scf_TOO_MANY_CYCLES.out: 'TOO MANY CYCLES ... CYCLES  10', no TOTAL CPU
    TIME line, last timing line 'END TELAPSE 179.47 TCPU 158.40'."""
    props = PLUGIN.parse(read_corpus("crystal/c17_nio_afm_scf_TOO_MANY_CYCLES.out")).properties
    assert props["scf_converged"] is False and props["scf_cycles"] == 10
    assert props["cpu_time_s"] == pytest.approx(158.40)
    big = PLUGIN.parse(read_corpus("crystal/c17_large_scf_130k_cpu_s.out")).properties
    assert big["cpu_time_s"] == pytest.approx(130919.652)


def test_fermi_energy_of_a_metal_after_opt_end() -> None:
    """c22_carbon_nanotube: last 'POSSIBLY CONDUCTING STATE - EFERMI(AU) -1.6766295E-01'."""
    props = PLUGIN.parse(read_corpus("crystal/c22_carbon_nanotube_opt_elastic1d.out")).properties
    assert props["fermi_energy_ha"] == pytest.approx(-0.16766295)
    assert props["fermi_energy_ev"] == pytest.approx(-0.16766295 * HARTREE_EV)


def test_killed_optimisation_counts_its_points() -> None:
    """c17_nio_afm_opt_killed_walltime_SIGTERM.out has no OPT END; its last optimisation
    line is 'CELL OPTIMIZATION - POINT   20' (killed during that point)."""
    text = read_corpus("crystal/c17_nio_afm_opt_killed_walltime_SIGTERM.out")
    props = PLUGIN.parse(text).properties
    assert props["opt_converged"] is False
    assert props["opt_points"] == 20


def test_concatenated_file_lists_both_runs() -> None:
    props = PLUGIN.parse(read_corpus("crystal/c14_test04_scf_plus_properties.out")).properties
    assert props["runs"] == ["CRYSTAL14 1.0.4", "CRYSTAL14 properties 1.0.4"]


# --- the error table on real text ------------------------------------------------

CORPUS_ROWS = [p for p in patterns.ERROR_PATTERNS if p.source.startswith("corpus:")]


@pytest.mark.parametrize("pattern", CORPUS_ROWS, ids=lambda p: p.name)
def test_row_is_hit_by_its_real_file(pattern: patterns.ErrorPattern) -> None:
    relative = pattern.source.split(":", 1)[1].strip()
    text = read_corpus(relative).replace("\r\n", "\n")
    hits = [f for f in patterns.find_errors(text) if f.pattern == pattern.name]
    assert hits, f"{pattern.name} not found in {relative}"
    assert all(h.kind == pattern.kind for h in hits)


def test_every_row_is_proven_by_a_real_file_or_a_documented_message() -> None:
    """Rows without a corpus file carry the documented message, tested in
    tests/unit/test_crystal_patterns.py; this checks none is left unproven."""
    for p in patterns.ERROR_PATTERNS:
        if p.source.startswith("corpus:"):
            assert p.source.split(":", 1)[1].strip().split("/")[0] in ("crystal", "slurm")
        else:
            assert p.example and p.text in p.example, p.name
            assert [f.pattern for f in patterns.find_errors(p.example)] == [p.name]


def _all_main_outputs() -> list[Path]:
    return corpus_files("crystal", {".out", ".o", ".outp"})


def test_successful_runs_trigger_no_row() -> None:
    """No false alarm: ok rows of TRUTH.tsv give no finding at all (ERROR.pe2 listings,
    IEEE notes, 'CONVERGENCE TESTS NOT SATISFIED' in converged optimisations ...)."""
    checked = 0
    for row in CRYSTAL_ROWS:
        path = corpus_file(row["file"])
        if row["status"] != "ok" or path is None:
            continue
        text = path.read_text(errors="replace")
        assert patterns.find_errors(text) == [], row["file"]
        checked += 1
    if checked == 0:
        pytest.skip("no corpus file available")


def test_detect_accepts_crystal_outputs_and_nothing_else() -> None:
    outputs = _all_main_outputs()
    if not outputs:
        pytest.skip("no corpus available")
    for path in outputs:
        assert PLUGIN.detect(path.read_text(errors="replace")), path.name
    others: list[Path] = []
    for root in (BUNDLED, SHARED):
        for sub in ("qe", "slurm"):
            if (root / sub).is_dir():
                others += [p for p in (root / sub).iterdir() if p.is_file()]
        if (root / "crystal").is_dir():
            others += [p for p in (root / "crystal").iterdir()
                       if p.suffix not in {".out", ".o", ".outp"}]
    assert others, "expected QE/Slurm files and CRYSTAL inputs in the corpus"
    for path in others:
        assert not PLUGIN.detect(path.read_text(errors="replace")), path.name


# --- derived cases ------------------------------------------------


def _cut_before(text: str, marker: str) -> str:
    index = text.find(marker)
    assert index != -1, marker
    return text[: text.rfind("\n", 0, index) + 1]


def test_real_output_cut_before_termination_is_truncated() -> None:
    """Derived: c17_mgo_scf_converged_bare.out cut just before its TERMINATION line."""
    original = read_corpus("crystal/c17_mgo_scf_converged_bare.out")
    text = _cut_before(original, "EEEEEEEEEE TERMINATION")
    result = PLUGIN.parse(text)
    assert (result.status, result.error_kind) == ("error", "truncated")
    assert result.energy == pytest.approx(-2.7121814707840e02, rel=1e-12)  # SCF had ended


@pytest.mark.parametrize("name", ["c14_mgo_opt_finalrun_converged.out",
                                  "c17_co_molecule_opt_converged.out"])
def test_real_output_cut_anywhere_in_a_geometry_block_is_truncated(name: str) -> None:
    """Derived; eventflow-sim --seed 4230: an output cut right after "FINAL OPTIMIZED
    GEOMETRY - DIMENSIONALITY OF THE SYSTEM" (a job killed while writing it) made the parser
    raise IndexError, and the watcher's whole cycle with it; --seed 9103: a cut right after
    the minus sign of a coordinate, ValueError."""
    original = read_corpus(f"crystal/{name}")
    cuts = 0
    for marker in (parse._FINAL_GEOMETRY, parse._INITIAL_GEOMETRY):
        at = original.rfind(marker) + len(marker)
        block = original[at:original.find("\n\n", original.find(" T ", at))]
        signs = [at + i + 1 for i, c in enumerate(block) if c == "-"]  # --seed 9103
        for cut in (at - 5, at, at + 1, at + 3, original.find("\n", at) + 1, at + 400,
                    *signs):
            result = PLUGIN.parse(original[:cut])
            assert (result.status, result.error_kind) == ("error", "truncated"), (marker, cut)
            cuts += 1
    assert cuts > 14


@pytest.mark.parametrize(
    "name", ["neighb_error", "basis_linearly_dependent", "anisotropic_shrink",
             "end_of_input_deck", "fortran_no_memory", "no_space_left"],
)
def test_real_output_killed_by_a_documented_message(name: str) -> None:
    """Derived: c17_mgo_scf_converged_bare.out cut before its first SCF cycle, with the
    documented message of row ``name`` appended (the row's example)."""
    row = next(p for p in patterns.ERROR_PATTERNS if p.name == name)
    text = _cut_before(read_corpus("crystal/c17_mgo_scf_converged_bare.out"), " CYC   0")
    result = PLUGIN.parse(text + row.example + "\n")
    assert (result.status, result.error_kind) == ("error", row.kind)
    assert result.program == "CRYSTAL17 1.0.2"
    assert result.calculation == "SP"


def test_walltime_kill_after_a_real_scf_failure_keeps_the_scf_cause() -> None:
    """Derived: c17_nio_afm_scf_TOO_MANY_CYCLES.out with the documented Slurm time-limit
    line appended: the SCF failure is the root cause, both are reported."""
    text = read_corpus("crystal/c17_nio_afm_scf_TOO_MANY_CYCLES.out")
    result = PLUGIN.parse(text + "slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT "
                          "2024-01-01T00:00:00 DUE TO TIME LIMIT ***\n")
    assert result.error_kind == "scf_not_converged"
    assert {f.kind for f in result.errors} == {"scf_not_converged", "walltime"}


# --- fort.25 and .DAT files ------------------------------------------------


def test_fort25_band_structure_of_mgo() -> None:
    """MANIFEST: header '-%-0BAND   14    7 0.00000E+00 1.32237E-01-3.08269E-01'
    (14 bands, 7 points, EFermi -0.308269 Ha); the properties output prints the same
    Fermi energy (FERMI ENERGY -0.308E+00) and 'TOTAL OF 30 K-POINTS' (31 with segment
    ends counted twice)."""
    data = fort25.parse_fort25(read_corpus("crystal/p14_mgo_band.fort25"))
    assert data.dos == ()
    bands = data.bands[0]
    assert bands.nspin == 1 and bands.nbands == 14
    assert bands.efermi_ha == pytest.approx(-0.308269)
    assert bands.energies.shape == (1, 31, 14)
    assert bands.segments[0] == ((0, 0, 0), (4, 0, 4))
    assert np.all(np.diff(bands.kdist) >= 0)
    assert np.all(np.diff(bands.energies[0], axis=1) >= -1e-9)  # bands in ascending order
    outp = PLUGIN.parse(read_corpus("crystal/p14_mgo_band_properties.outp"))
    assert outp.properties["fermi_energy_ha"] == pytest.approx(bands.efermi_ha, abs=5e-4)


def test_fort25_dos_headers() -> None:
    """MANIFEST: MgO DOSS 102 points, dE 7.42411E-03 Ha, EFermi -1.46501E-01; NiO pdos
    spin-polarised (IHFERM 3) with alpha and beta blocks."""
    mgo = fort25.parse_fort25(read_corpus("crystal/p17_mgo_doss.fort25")).dos[0]
    assert mgo.dos.shape == (1, 1, 102)
    assert mgo.energies[1] - mgo.energies[0] == pytest.approx(7.42411e-3)
    assert mgo.efermi_ha == pytest.approx(-0.146501)
    assert np.all(mgo.dos >= 0)
    nio = fort25.parse_fort25(read_corpus("crystal/p17_nio_afm_pdos.fort25")).dos[0]
    assert nio.nspin == 2 and nio.nproj == 3


def test_spin_polarised_fort25_has_two_spins_on_the_same_path() -> None:
    data = fort25.parse_fort25(read_corpus("crystal/p_spinpolarized_band.fort25"))
    bands = data.bands[0]
    assert bands.nspin == 2 and bands.nbands == 41
    assert bands.efermi_ha == pytest.approx(-0.125107)
    # Integers that touch in the header ('    125002') are read by column.
    assert data.dos[0].dos.shape == (2, 1, 25002)


def test_broken_band_path_keeps_every_segment() -> None:
    bands = fort25.parse_fort25(read_corpus("crystal/p_lif_broken_band_path.fort25")).bands[0]
    ends = [seg[1] for seg in bands.segments[:-1]]
    starts = [seg[0] for seg in bands.segments[1:]]
    assert any(e != s for e, s in zip(ends, starts, strict=True)), "expected a jump"
    assert bands.nbands == 25 and bands.efermi_ha == pytest.approx(-0.951249)


def test_band_dat_and_gap_against_the_properties_output() -> None:
    """p17_mgo_BAND.DAT: 201 k points, 26 bands, 4 panels, energies relative to the top of
    the valence band; the run's output (p17_mgo_band.outp) prints DIRECT ENERGY BAND GAP
    7.1237 eV, which the path through Gamma must reproduce from the band energies."""
    bands = fort25.parse_band_dat(read_corpus("crystal/p17_mgo_BAND.DAT"))
    assert bands.energies.shape == (1, 201, 26)
    assert bands.labels == (
        "(0,0,0)/4", "(2,0,2)/4", "(2,2,2)/4", "(0,0,0)/4", "(2,1,3)/4"
    )
    e = bands.energies[0]
    assert bands.efermi_ha == pytest.approx(-0.15202)
    gap = (e[e > 1e-6].min() - e[e <= 1e-6].max()) * HARTREE_EV
    outp = PLUGIN.parse(read_corpus("crystal/p17_mgo_band.outp"))
    assert gap == pytest.approx(outp.band_gap_ev, abs=0.01)


def test_doss_dat_files() -> None:
    nacl = fort25.parse_doss_dat(read_corpus("crystal/p14_nacl_DOSS.DAT"))
    assert nacl.dos.shape == (1, 1, 302) and nacl.efermi_ha is None
    cu = fort25.parse_doss_dat(read_corpus("crystal/p_cu_DOSS.DAT"))
    assert cu.dos.shape == (2, 5, 202)
    assert cu.efermi_ha == pytest.approx(-0.18149)
    assert cu.dos[1].sum() < 0 < cu.dos[0].sum()  # beta densities are written negative
    nacl_bands = fort25.parse_band_dat(read_corpus("crystal/p14_nacl_BAND.DAT"))
    assert nacl_bands.energies.shape == (1, 61, 18)


def test_bad_fort25_is_refused_in_one_line() -> None:
    with pytest.raises(fort25.Fort25Error, match="no '-%-' block header"):
        fort25.parse_fort25("not a fort.25\n")
    text = read_corpus("crystal/p17_mgo_doss.fort25")
    with pytest.raises(fort25.Fort25Error, match="expects 102 points"):
        fort25.parse_fort25(text[: len(text) // 2])


# --- parsing everything ------------------------------------------------


def test_whole_corpus_parses() -> None:
    """Every main output parses (timings are measured by bench/bench_parse_crystal.py)."""
    outputs = _all_main_outputs()
    if not outputs:
        pytest.skip("no corpus available")
    for path in outputs:
        result = parse.parse_output(path.read_text(errors="replace"))
        assert result.status in ("ok", "error")


@pytest.mark.parametrize("name", ["crystal/c09_water_molecule_opt.out",
                                  "crystal/c14_albite_freqcalc_intens.out"])
def test_crlf_files_read_as_bytes_parse_like_the_truth(name: str) -> None:
    """These two files have CRLF line ends; read without newline translation they must
    give the same answer as TRUTH.tsv."""
    path = corpus_path(name)
    raw = path.read_bytes().decode(errors="replace")
    assert "\r\n" in raw
    row = next(r for r in CRYSTAL_ROWS if r["file"] == name)
    assert PLUGIN.detect(raw)
    result = PLUGIN.parse(raw)
    assert (result.program, result.calculation, result.status) == (
        row["program"], row["calculation"], row["status"])
    assert result.energy == pytest.approx(float(row["energy"]), rel=1e-6)
