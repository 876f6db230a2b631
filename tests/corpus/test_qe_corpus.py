"""The QE parser against the real-output corpus: every TRUTH.tsv row, and the pattern table.

Expected values come from TRUTH.tsv / MANIFEST.tsv (written by hand from the files)
or from the numbers the files themselves print. Cases derived by cutting a real file
short say so in their docstring.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from eventflow.codes.base import RYDBERG_EV
from eventflow.codes.qe import PLUGIN
from eventflow.codes.qe.parse import BOHR_ANGSTROM, parse, sanity_problems
from eventflow.codes.qe.patterns import PATTERNS
from tests.corpus.conftest import (
    SHARED,
    assert_parsed_as_truth,
    corpus_files,
    read_corpus,
    truth_rows,
)

QE_ROWS = truth_rows("qe")

# Patterns with no real text anywhere public (corpus README): tested in
# tests/unit/test_qe_patterns.py on the message text of QE's sources.
NO_REAL_TEXT = {"diagonalization_failed"}


def test_truth_has_qe_rows() -> None:
    assert len(QE_ROWS) >= 20, "TRUTH.tsv lost its QE rows"


@pytest.mark.parametrize("row", QE_ROWS, ids=[r["file"] for r in QE_ROWS])
def test_truth_row(row: dict[str, str]) -> None:
    text = read_corpus(row["file"])
    assert PLUGIN.detect(text)
    result = parse(text)
    assert_parsed_as_truth(result, row)
    if row["energy"]:
        assert result.energy == float(row["energy"])
        assert result.energy_unit == row["energy_unit"]
        expected = float(row["energy_ev"])
        assert result.energy_ev == pytest.approx(expected, rel=1e-6)
    else:
        assert result.energy is None and result.energy_ev is None
    if row["band_gap_ev"]:
        assert result.band_gap_ev == pytest.approx(float(row["band_gap_ev"]), abs=1e-4)
    else:
        assert result.band_gap_ev is None
    if row["status"] == "error":
        root = result.errors[0]
        assert root.kind == row["error_kind"]
        assert row["evidence"] in root.text
        assert text.splitlines()[root.line - 1].strip() == root.text
    else:
        assert result.errors == ()
        assert row["evidence"] in text


def _all_corpus_qe_files() -> list[Path]:
    return corpus_files("qe", {".out", ".log", ".CRASH"})


def patterns_hit_by_corpus() -> set[str]:
    """Names of the table's patterns that decide at least one corpus file's findings."""
    hit: set[str] = set()
    for path in _all_corpus_qe_files():
        hit |= {f.pattern for f in parse(path.read_text(errors="replace")).errors}
    return hit


def test_every_pattern_is_hit_by_a_real_corpus_file() -> None:
    """Each named pattern matches a real output, except those no public output shows."""
    if not SHARED.is_dir():
        pytest.skip("the full shared corpus (../shared/corpus) is not beside the checkout")
    names = {p.name for p in PATTERNS}
    assert patterns_hit_by_corpus() == names - NO_REAL_TEXT


def test_crash_files() -> None:
    """pw.x CRASH files (one error block per MPI task) give the same kinds as the outputs."""
    missing = parse(read_corpus("qe/pw_readpp_file_not_found.CRASH"))
    assert (missing.status, missing.error_kind) == ("error", "missing_file")
    assert missing.errors[0].pattern == "missing_pseudopotential"
    assert "Li.pbe-sl-kjpaw_psl.1.0.0.UPF" in missing.errors[0].text
    charge = parse(read_corpus("qe/pw73_wse2_charge_is_wrong.CRASH"))
    assert charge.error_kind == "charge_wrong"
    assert len(charge.errors) == 4  # tasks 0, 1, 4 and 5 each wrote a block


def test_md_end_is_not_a_geometry_failure() -> None:
    """'The maximum number of steps has been reached.' ends an MD run normally."""
    text = read_corpus("qe/pw53_si_md.out")
    assert "The maximum number of steps has been reached." in text
    result = parse(text)
    assert result.calculation == "MD" and result.status == "ok"
    assert result.properties["n_energies"] == text.count("\n!    total energy")


def test_vcrelax_final_structure_matches_printed_volume_and_density() -> None:
    """The final cell read from CELL_PARAMETERS gives the volume pw.x prints beside it."""
    result = parse(read_corpus("qe/pw66_vcrelax_converged.out"))
    props = result.properties
    assert props["structure_source"] == "final_coordinates"
    structure = props["structure"]
    assert structure["symbols"] == ["Si", "Si"]
    assert structure["cell"][0] == pytest.approx([0.0, 2.806884226, 2.806884226])
    assert structure["positions"][1] == pytest.approx([1.4034421133] * 3)
    # 'new unit-cell volume =    298.46960 a.u.^3 (    44.22863 Ang^3 )', 'density = 2.10887'
    assert props["volume_ang3"] == pytest.approx(44.22863, abs=1e-4)
    assert props["volume_ang3"] == pytest.approx(298.46960 * BOHR_ANGSTROM**3, rel=1e-6)
    assert props["density_g_cm3"] == pytest.approx(2.10887)
    assert props["a_ang"] == pytest.approx(math.sqrt(2) * 2.806884226)
    assert props["alpha_deg"] == pytest.approx(60.0)
    assert props["final_enthalpy_ev"] == pytest.approx(-22.6605295919 * RYDBERG_EV)


def test_alat_cell_and_crystal_positions_give_the_printed_volume() -> None:
    """TiO2 prints CELL_PARAMETERS (alat= ...) and crystal positions; the volume and the
    density derived from the parsed structure match what pw.x printed for it."""
    from ase.data import atomic_masses, atomic_numbers

    result = parse(read_corpus("qe/pw73_tio2_relax_converged.out"))
    props = result.properties
    structure = props["structure"]
    assert structure["symbols"] == ["Ti", "Ti", "O", "O", "O", "O"]
    # 'new unit-cell volume =    426.72517 a.u.^3 (    63.23415 Ang^3 )', density 4.19454
    assert props["volume_ang3"] == pytest.approx(63.23415, abs=1e-4)
    mass = sum(atomic_masses[atomic_numbers[s]] for s in structure["symbols"])
    assert mass * 1.66053906660e-24 / (props["volume_ang3"] * 1e-24) == pytest.approx(
        4.19454, rel=2e-4
    )
    assert props["c_ang"] == pytest.approx(8.68089159 * 0.643342070 * BOHR_ANGSTROM)


def test_forces_relate_to_the_convergence_threshold() -> None:
    """A converged relax ends below its force threshold; one stopped by nstep does not."""
    converged = parse(read_corpus("qe/pw73_tio2_relax_converged.out"))
    threshold = 5.0e-4 * RYDBERG_EV / BOHR_ANGSTROM  # 'force convergence thresh. = 5.0E-04'
    assert 0 < converged.properties["max_force_ev_per_ang"] < threshold
    stopped = parse(read_corpus("qe/pw66_relax_max_steps_reached.out"))
    assert stopped.properties["max_force_ev_per_ang"] > 1.0e-3 * RYDBERG_EV / BOHR_ANGSTROM


def test_values_quoted_in_the_manifest() -> None:
    """Fermi energies, magnetisations and SCF iteration counts quoted in MANIFEST.tsv
    (for the three-run Mn log: as printed at the end of its last run, lines 20348 and
    20363; the manifest's "1.1857/1.2049/1.2167" lists the runs backwards, and its
    magnetisations do not occur in the file)."""
    spin = parse(read_corpus("qe/pw75_spin_scf_converged.out")).properties
    assert spin["fermi_energy_ev"] == 6.0386
    assert spin["total_magnetization"] == 0.0
    assert spin["n_scf_iterations"] == 18
    mn = parse(read_corpus("qe/pw51_mn_vdw_3runs_scf_forces_eigs_not_converged.log"))
    assert mn.properties["fermi_energy_ev"] == 1.1857
    assert mn.properties["total_magnetization"] == 11.18
    assert any("eigenvalues not converged" in w for w in mn.warnings)
    gap = parse(read_corpus("qe/pw70_si_scf_216k_gap.out")).properties
    assert (gap["highest_occupied_ev"], gap["lowest_unoccupied_ev"]) == (6.0520, 6.7082)
    assert gap["n_scf_iterations"] == 4
    pt = parse(read_corpus("qe/pw73_pt_noncollinear_soc_scf.out")).properties
    assert pt["fermi_energy_ev"] == 23.6117
    assert pt["total_magnetization"] == [0.0, 0.0, 0.0]  # noncollinear: a vector


def test_converged_outputs_pass_the_sanity_check() -> None:
    for relative in ("qe/pw66_si_scf_converged.out", "qe/pw66_vcrelax_converged.out"):
        assert sanity_problems(parse(read_corpus(relative))) == []


def test_failed_scf_has_no_energy_and_is_rejected() -> None:
    result = parse(read_corpus("qe/pw66_scf_convergence_NOT_achieved.out"))
    assert any("no total energy" in reason for reason in sanity_problems(result))


def test_cut_short_is_truncated() -> None:
    """Derived: the real pw66_si_scf_converged.out cut before its timing report and
    JOB DONE, and cut in the middle of the SCF, both read as truncated SCF runs."""
    text = read_corpus("qe/pw66_si_scf_converged.out")
    lines = text.splitlines()
    writing = next(i for i, line in enumerate(lines) if "Writing output data file" in line)
    after_writing = parse("\n".join(lines[: writing + 1]))
    assert (after_writing.status, after_writing.error_kind) == ("error", "truncated")
    assert after_writing.energy == -22.65170508  # the '!' line is already there
    assert after_writing.errors[0].line == writing + 1
    iteration = next(i for i, line in enumerate(lines) if "iteration #  3" in line)
    mid_scf = parse("\n".join(lines[: iteration + 1]))
    assert (mid_scf.calculation, mid_scf.error_kind, mid_scf.energy) == ("SCF", "truncated", None)


def test_last_run_of_a_concatenated_file_decides() -> None:
    """Derived: a failed run followed by a converged one reads as the converged run, and
    the reverse as the failed one (TRUTH_NOTES: the last run is described)."""
    failed = read_corpus("qe/pw66_scf_convergence_NOT_achieved.out")
    converged = read_corpus("qe/pw66_si_scf_converged.out")
    assert parse(failed + converged).status == "ok"
    reverse = parse(converged + failed)
    assert reverse.error_kind == "scf_not_converged"
    assert reverse.errors[0].line > len(converged.splitlines())
