"""The CRYSTAL error table: well-formed rows, documented messages, traps, root-cause order.

Rows proven by a real output are tested in tests/corpus/test_crystal_corpus.py.
The rows tested here on their ``example`` are the messages no public output in
the corpus shows (SHRINK, memory, linear dependence, NEIGHB, disk, input-deck
errors): the example is the message as the program's documentation, or the tools
that quote real CRYSTAL outputs, give it; each row's ``source`` says which.
"""

from __future__ import annotations

import pytest

from eventflow.codes.base import Finding
from eventflow.codes.crystal import parse, patterns
from eventflow.core.kinds import ERROR_KINDS

DOCUMENTED = [p for p in patterns.ERROR_PATTERNS if not p.source.startswith("corpus:")]


def test_rows_have_unique_names_known_kinds_and_a_source() -> None:
    names = [p.name for p in patterns.ERROR_PATTERNS]
    assert len(names) == len(set(names))
    for p in patterns.ERROR_PATTERNS:
        assert p.kind in ERROR_KINDS
        assert p.text.strip() == p.text and p.text
        assert p.source.split(":")[0] in ("corpus", "documented", "derived")


def test_a_row_with_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        patterns.ErrorPattern(name="x", kind="gremlins", text="X", source="documented: x")


def test_every_row_not_proven_by_the_corpus_has_a_documented_example() -> None:
    assert DOCUMENTED, "expected documented-only rows (SHRINK, memory, NEIGHB ...)"
    for p in DOCUMENTED:
        assert p.example, f"{p.name} has neither a corpus file nor a documented message"


@pytest.mark.parametrize("pattern", DOCUMENTED, ids=lambda p: p.name)
def test_documented_message_is_found_by_its_own_row(pattern: patterns.ErrorPattern) -> None:
    """Documented-only row: tested on the message as documented (see the row's source)."""
    findings = patterns.find_errors(f"some earlier line\n{pattern.example}\nlater line\n")
    assert [f.pattern for f in findings] == [pattern.name]
    assert findings[0].kind == pattern.kind
    assert findings[0].line == 2
    assert findings[0].text == pattern.example.strip()


@pytest.mark.parametrize(
    "line",
    [
        # Directory listing printed after a successful run (c06_quartz_hf_freqcalc.out).
        "-rw-r--r--  1 test users     1128 2006-08-31 14:07 ERROR.pe2",
        # gfortran's exit note (c17_paracetamol_freq_qha_archer2_ieee_notes.out).
        "Note: The following floating-point exceptions are signalling: IEEE_UNDERFLOW_FLAG "
        "IEEE_DENORMAL",
        # An optimisation step that later ends converged (c14_mgo_opt_finalrun_converged.out).
        " CONVERGENCE TESTS NOT SATISFIED AFTER  12 ENERGY AND GRADIENT CALCULATIONS",
        # A warning from the SHRINK routine in a converged run (c17_s2_molecule_opt_converged).
        " WARNING **** SHRINK **** MOLECULAR CASE - SHRINKING NOT USED",
        # MPI noise in a run whose real problem is elsewhere (c17_mackinawite_opt_FAILED).
        "cx1-140-4-3:SCM:17c7:5519100: 62 us(62 us):  open_hca: device mlx4_0 not found",
        # Trust-radius information in optimisations (many corpus files).
        " INFORMATION **** OPTGEN **** TOO SMALL TRUST RADIUS - INDICES UPDATED IN NEXT POINT",
    ],
)
def test_traps_from_real_outputs_match_no_row(line: str) -> None:
    """Each line is copied from the corpus file named in the comment."""
    assert patterns.find_errors(line + "\n") == []
    assert patterns.unclassified_errors(line + "\n") == []


def test_one_finding_per_line_and_in_file_order() -> None:
    text = (" SCF FAILED - OPTGEOM STOP\n"
            "x\n"
            " ERROR **** OPTGEOM **** SCF FAILED - OPTGEOM STOP\n"
            " == SCF ENDED - TOO MANY CYCLES   E(AU) -1.0E+00 CYCLES  10\n")
    findings = patterns.find_errors(text)
    assert [f.line for f in findings] == [1, 3, 4]
    assert [f.pattern for f in findings] == ["scf_failed", "scf_failed", "scf_too_many_cycles"]


def test_first_row_wins_when_two_rows_match_one_line() -> None:
    """The missing fort.34 message also names a keyword: it is a missing file."""
    line = " ERROR **** EXTRN **** GEOMETRY DATA FILE NOT FOUND - EXTERNAL KEYWORD NOT ALLOWED"
    (finding,) = patterns.find_errors(line)
    assert finding.kind == "missing_file"


@pytest.mark.parametrize(
    "kinds, expected",
    [
        (["walltime", "scf_not_converged"], "scf_not_converged"),
        (["geometry_not_converged", "scf_not_converged"], "scf_not_converged"),
        (["walltime", "out_of_memory"], "out_of_memory"),
        (["scf_not_converged", "basis_linearly_dependent"], "basis_linearly_dependent"),
        (["input_error", "missing_file"], "missing_file"),
        (["walltime"], "walltime"),
        ([], None),
    ],
)
def test_root_cause_is_the_most_specific_kind(kinds: list[str], expected: str | None) -> None:
    findings = [Finding(kind=k, line=i + 1, text=k) for i, k in enumerate(kinds)]
    assert patterns.root_cause(findings) == expected


def test_every_kind_in_the_table_has_a_priority() -> None:
    assert {p.kind for p in patterns.ERROR_PATTERNS} <= set(patterns.KIND_PRIORITY)


def test_an_unnamed_error_before_the_scf_is_an_input_error() -> None:
    """Synthetic: an ERROR line in CRYSTAL's shape that no row names (the fallback rule)."""
    text = (" *                               CRYSTAL23                                     *\n"
            " *                      public : 1.0.1 - Dec 2022                              *\n"
            " EEEEEEEEEE STARTING  DATE 01 01 2024 TIME 00:00:00.0\n"
            " ERROR **** XYZINP **** SOMETHING UNHEARD OF\n")
    result = parse.parse_output(text)
    assert (result.status, result.error_kind) == ("error", "input_error")
    assert result.errors[0].pattern == "unclassified_error"
    assert result.program == "CRYSTAL23 1.0.1"


def test_an_unnamed_error_after_scf_cycles_leaves_the_run_truncated() -> None:
    """Synthetic: the same unnamed ERROR line, after an SCF cycle line."""
    text = (" *                               CRYSTAL23                                     *\n"
            " EEEEEEEEEE STARTING  DATE 01 01 2024 TIME 00:00:00.0\n"
            " CYC   0 ETOT(AU) -2.7E+02 DETOT -2.7E+02 tst  0.00E+00 PX  1.00E+00\n"
            " ERROR **** XYZSCF **** SOMETHING UNHEARD OF\n")
    result = parse.parse_output(text)
    assert (result.status, result.error_kind) == ("error", "truncated")


def test_text_without_banner_or_known_message_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="not a CRYSTAL output"):
        parse.parse_output("Program PWSCF v.7.2 starts on ...\n")


def test_a_scheduler_message_alone_is_still_classified() -> None:
    """A job killed before CRYSTAL printed anything: only the scheduler's line (documented)."""
    result = parse.parse_output(
        "slurmstepd: error: *** JOB 42 ON n1 CANCELLED AT 2024-01-01T00:00:00 "
        "DUE TO TIME LIMIT ***\n"
    )
    assert (result.status, result.error_kind, result.program) == ("error", "walltime", None)


def test_an_empty_output_is_truncated() -> None:
    result = parse.parse_output("")
    assert (result.status, result.error_kind) == ("error", "truncated")
