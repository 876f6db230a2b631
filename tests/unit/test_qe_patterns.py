"""The QE error-pattern table: its consistency, and the patterns no public output shows.

Real texts come from the bundled corpus (tests/data/corpus/qe, MIT-licensed
aiida-quantumespresso fixtures). The diagonalisation messages exist in no public
output (corpus README): those cases put the message, verbatim from the ``errore``
calls in QE's sources (cdiaghg/rdiaghg: 'S matrix not positive definite',
'eigenvectors failed to converge'; cdiaghg: 'problems computing cholesky'; c_bands:
'too many bands are not converged'), into the error block layout pw.x really prints
(as in corpus qe/pw73_wse2_charge_is_wrong.out), after a real output cut at its first
SCF iteration.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventflow.codes.qe import PLUGIN
from eventflow.codes.qe.parse import parse, sanity_problems
from eventflow.codes.qe.patterns import (
    LINE_PATTERNS,
    LINE_TRIGGERS,
    PATTERNS,
    PATTERNS_BY_NAME,
    ROOT_CAUSE_ORDER,
    applies,
    match_line,
)
from eventflow.core.kinds import ERROR_KINDS

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus" / "qe"
RULE = " " + "%" * 78


def _corpus(name: str) -> str:
    return (CORPUS / name).read_text()


def _cut_at_first_iteration() -> str:
    lines = _corpus("pw66_si_scf_converged.out").splitlines()
    first = next(i for i, line in enumerate(lines) if "iteration #  1" in line)
    return "\n".join(lines[: first + 3])


def _error_block(routine: str, code: int, message: str) -> str:
    header = f"     Error in routine {routine} ({code}):"
    return f"\n{RULE}\n{header}\n     {message}\n{RULE}\n\n     stopping ...\n"


def test_table_uses_only_known_kinds_and_unique_names() -> None:
    assert {p.kind for p in PATTERNS} <= ERROR_KINDS
    assert len({p.name for p in PATTERNS}) == len(PATTERNS)
    assert {p.kind for p in PATTERNS} <= set(ROOT_CAUSE_ORDER)
    assert len(set(ROOT_CAUSE_ORDER)) == len(ROOT_CAUSE_ORDER)


def test_prefilter_lets_every_exact_string_through() -> None:
    """The cheap trigger check in match_line must never hide a pattern's string."""
    for pattern in LINE_PATTERNS:
        for text in pattern.strings:
            assert any(t in text for t in LINE_TRIGGERS), (pattern.name, text)
            assert match_line(f"     {text}") is pattern


@pytest.mark.parametrize(
    ("routine", "message"),
    [
        ("cdiaghg", "problems computing cholesky"),
        ("cdiaghg", "S matrix not positive definite"),
        ("rdiaghg", "eigenvectors failed to converge"),
        ("c_bands", "too many bands are not converged"),
    ],
)
def test_diagonalization_failures(routine: str, message: str) -> None:
    text = _cut_at_first_iteration() + _error_block(routine, 1, message)
    result = parse(text)
    assert (result.status, result.error_kind) == ("error", "diagonalization_failed")
    assert result.errors[0].text == message
    assert result.errors[0].pattern == "diagonalization_failed"
    assert len(result.errors) == 1  # the block is explained, so no input_error fallback


def test_unexplained_error_block_is_an_input_error_at_its_message() -> None:
    """Derived: an error block whose message no pattern knows falls back to input_error,
    and the finding points at the message line under the 'Error in routine' header."""
    text = _cut_at_first_iteration() + _error_block("iosys", 1, "some other complaint")
    result = parse(text)
    assert result.error_kind == "input_error"
    assert result.errors[0].text == "some other complaint"
    assert text.splitlines()[result.errors[0].line - 1].strip() == "some other complaint"
    assert "Error in routine iosys" in text.splitlines()[result.errors[0].line - 2]


def test_geometry_pattern_applies_only_to_optimisations() -> None:
    pattern = match_line("     The maximum number of steps has been reached.")
    assert pattern is PATTERNS_BY_NAME["geometry_not_converged"]
    assert applies(pattern, "RELAX") and applies(pattern, "VC-RELAX")
    assert not applies(pattern, "MD")


def test_similar_harmless_lines_do_not_match() -> None:
    """Lines from real outputs that look alike but are not failures."""
    assert match_line("     Message from routine add_xml_clocks_pw: label not found :") is None
    assert match_line("     c_bands:  2 eigenvalues not converged") is None
    assert match_line("     convergence has been achieved in   6 iterations") is None


def test_root_cause_order_walltime_before_truncation() -> None:
    """Corpus: max_seconds stop whose output was cut before JOB DONE is still walltime."""
    result = parse(_corpus("pw66_max_cpu_time_exceeded_truncated.out"))
    assert result.error_kind == "walltime"
    assert [f.kind for f in result.errors] == ["walltime"]


def test_root_cause_order_scf_failure_before_unphysical_energy() -> None:
    """Derived: the real positive-energy output with the real 'convergence NOT achieved'
    line of pw66_scf_convergence_NOT_achieved.out inserted before its '!' line."""
    failure = next(
        line
        for line in _corpus("pw66_scf_convergence_NOT_achieved.out").splitlines()
        if "convergence NOT achieved" in line
    )
    lines = _corpus("pw70_graphene_scf_POSITIVE_total_energy.out").splitlines()
    bang = next(i for i, line in enumerate(lines) if line.startswith("!"))
    result = parse("\n".join(lines[:bang] + [failure] + lines[bang:]))
    assert [f.kind for f in result.errors] == ["scf_not_converged", "unphysical_result"]
    assert result.error_kind == "scf_not_converged"


def test_sanity_flags_overflowed_forces_and_energy() -> None:
    """Derived from the real vc-relax output: a force and the energy replaced by the
    asterisks Fortran prints on overflow (as pw.x does for atoms on top of each other,
    see tests/integration/test_pwx_real.py)."""
    text = _corpus("pw66_vcrelax_converged.out")
    lines = text.splitlines()
    block = max(i for i, line in enumerate(lines) if "Forces acting on atoms" in line)
    row = next(i for i in range(block, len(lines)) if "force =" in lines[i])
    lines[row] = "     atom    1 type  1   force = **************    0.00000000    0.00000000"
    bang = max(i for i, line in enumerate(lines) if line.startswith("!"))
    lines[bang] = "!    total energy              = ************** Ry"
    reasons = sanity_problems(parse("\n".join(lines)))
    assert any("max_force_ev_per_ang is not finite" in r for r in reasons)
    assert any("exceeds 1000" in r for r in reasons)
    assert any(r.startswith("energy is not finite") for r in reasons)
    assert sanity_problems(parse(text)) == []


_REAL = [
    "pw66_vcrelax_converged.out",
    "pw73_tio2_relax_converged.out",
    "pw53_si_md.out",
    "pw70_graphene_bands_FAILED_missing_save.out",
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_REAL), st.floats(0.0, 1.0), st.lists(st.integers(0, 10**6), max_size=5))
def test_parse_never_fails_on_cut_or_damaged_real_outputs(
    name: str, fraction: float, dropped: list[int]
) -> None:
    """Derived: real outputs cut anywhere and with random lines removed still parse;
    without 'JOB DONE.' the verdict is always an error."""
    lines = _corpus(name).splitlines()
    lines = lines[: int(len(lines) * fraction)]
    for index in dropped:
        if lines:
            del lines[index % len(lines)]
    text = "\n".join(lines)
    result = parse(text)
    assert result.status in {"ok", "error"}
    assert (result.status == "error") == (result.error_kind is not None)
    if "JOB DONE." not in text:
        assert result.status == "error"
    sanity_problems(result)


def test_detect() -> None:
    assert PLUGIN.detect(_corpus("pw66_si_scf_converged.out"))
    assert PLUGIN.detect(_corpus("dos73_pt_dos.out"))
    crystal = Path(__file__).resolve().parents[1] / "data" / "corpus" / "crystal"
    assert not PLUGIN.detect((crystal / "c14_mgo_freqcalc_raman.out").read_text(errors="replace"))
    assert not PLUGIN.detect("")


def test_empty_text_is_truncated() -> None:
    result = parse("")
    assert (result.status, result.error_kind, result.program) == ("error", "truncated", None)
