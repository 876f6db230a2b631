"""The table of Quantum ESPRESSO failure patterns, and the order that picks the root cause.

Every pattern names the exact text pw.x (or a post-processing program) prints, the
error kind it means, and where the text comes from. The strings are those of the
real outputs in the corpus (tests/data/corpus/qe, ../shared/corpus/qe), of pw.x runs
made by the integration tests, or, for the diagonalisation messages that no public
output shows, of the ``errore`` calls in QE's cdiaghg/rdiaghg/c_bands sources.

Two entries are rules rather than strings (``strings`` is empty): ``truncated``
(the text ends without ``JOB DONE.`` and nothing else explains why) and
``unphysical_result`` (the final ``!`` total energy is positive); parse.py applies them.
"""

from __future__ import annotations

import re

import attrs

from eventflow.core.kinds import ErrorKind

# A fatal pw.x error is printed as a block between two lines of '%' characters:
#      Error in routine electrons (1):          <- pw.x output
#      charge is wrong
# or, in the CRASH file, one block per MPI task:
#      from readpp : error #         1
#      file ./Li.pbe-sl-kjpaw_psl.1.0.0.UPF not found
ERROR_BLOCK_RULE = "%%%%%%%%%%"
ERROR_BLOCK_HEADER = re.compile(
    r"^\s*(?:Error in routine\s+(\S+)\s*\(|from\s+(\S+)\s*:\s*error\s*#)"
)


@attrs.frozen
class ErrorPattern:
    """One named failure: the kind it means and the exact texts that reveal it.

    ``calculations`` limits a pattern to some calculation types (the same sentence is
    the normal end of an MD run). ``fallback`` claims any ``%%%%`` error block whose
    message no other pattern explains. ``source`` says where the text was seen.
    """

    name: str
    kind: str
    strings: tuple[str, ...] = ()
    regex: str | None = None
    calculations: frozenset[str] | None = None
    fallback: bool = False
    source: str = ""

    def matches(self, line: str) -> bool:
        """True if ``line`` holds one of the pattern's exact strings or its regex."""
        if any(s in line for s in self.strings):
            return True
        return self.regex is not None and _compiled(self.regex).search(line) is not None


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def _compiled(regex: str) -> re.Pattern[str]:
    compiled = _REGEX_CACHE.get(regex)
    if compiled is None:
        compiled = _REGEX_CACHE[regex] = re.compile(regex)
    return compiled


_GEOMETRY_OPTIMISATIONS = frozenset({"RELAX", "VC-RELAX"})

PATTERNS: tuple[ErrorPattern, ...] = (
    ErrorPattern(
        name="missing_pseudopotential",
        kind=ErrorKind.MISSING_FILE.value,
        regex=r"^\s*file \S+ not found",
        source="readpp error block, e.g. corpus qe/pw_readpp_file_not_found.CRASH",
    ),
    ErrorPattern(
        name="missing_save",
        kind=ErrorKind.MISSING_FILE.value,
        strings=("fatal error reading xml file",),
        regex=r"xml data file \S+ not found",
        source="corpus qe/pw70_graphene_bands_FAILED_missing_save.out",
    ),
    ErrorPattern(
        name="charge_wrong",
        kind=ErrorKind.CHARGE_WRONG.value,
        strings=("charge is wrong",),
        source="corpus qe/pw73_wse2_charge_is_wrong.out",
    ),
    ErrorPattern(
        name="diagonalization_failed",
        kind=ErrorKind.DIAGONALIZATION_FAILED.value,
        strings=(
            "problems computing cholesky",
            "S matrix not positive definite",
            "too many bands are not converged",
            "eigenvectors failed to converge",
        ),
        source="errore calls in QE's cdiaghg/rdiaghg/c_bands (no public output has them)",
    ),
    ErrorPattern(
        name="input_error",
        kind=ErrorKind.INPUT_ERROR.value,
        fallback=True,
        source="any other error block (read_namelists, card_*, iosys ...); "
        "corpus qe/pw74_input_error_atomic_species.out",
    ),
    ErrorPattern(
        name="walltime",
        kind=ErrorKind.WALLTIME.value,
        strings=("Maximum CPU time exceeded",),
        source="corpus qe/pw66_max_cpu_time_exceeded.out (max_seconds reached)",
    ),
    ErrorPattern(
        name="scf_not_converged",
        kind=ErrorKind.SCF_NOT_CONVERGED.value,
        strings=("convergence NOT achieved",),
        source="corpus qe/pw66_scf_convergence_NOT_achieved.out (electron_maxstep=2)",
    ),
    ErrorPattern(
        name="bfgs_failed",
        kind=ErrorKind.BFGS_FAILED.value,
        strings=("history already reset at previous step",),
        source="corpus qe/pw61_vcrelax_bfgs_history_reset_failure.out",
    ),
    ErrorPattern(
        name="geometry_not_converged",
        kind=ErrorKind.GEOMETRY_NOT_CONVERGED.value,
        strings=("The maximum number of steps has been reached.",),
        calculations=_GEOMETRY_OPTIMISATIONS,
        source="corpus qe/pw66_relax_max_steps_reached.out; in MD (pw53_si_md.out) "
        "the same sentence is the normal end",
    ),
    ErrorPattern(
        name="unphysical_result",
        kind=ErrorKind.UNPHYSICAL_RESULT.value,
        source="rule: the last '!' total energy is positive; corpus "
        "qe/pw70_graphene_scf_POSITIVE_total_energy.out",
    ),
    ErrorPattern(
        name="truncated",
        kind=ErrorKind.TRUNCATED.value,
        source="rule: no 'JOB DONE.' and no other finding; corpus "
        "qe/pw74_nacl_scf_truncated_mid_scf.out",
    ),
)

PATTERNS_BY_NAME: dict[str, ErrorPattern] = {p.name: p for p in PATTERNS}

# Root cause order: the first kind in this list among the findings is the root cause.
# Errors that stop pw.x at once (a %%%% block) come first, because nothing after
# them ran; then the graceful stops; then judgements on a finished run.
ROOT_CAUSE_ORDER: tuple[str, ...] = (
    ErrorKind.MISSING_FILE.value,
    ErrorKind.CHARGE_WRONG.value,
    ErrorKind.DIAGONALIZATION_FAILED.value,
    ErrorKind.INPUT_ERROR.value,
    ErrorKind.WALLTIME.value,
    ErrorKind.SCF_NOT_CONVERGED.value,
    ErrorKind.BFGS_FAILED.value,
    ErrorKind.GEOMETRY_NOT_CONVERGED.value,
    ErrorKind.UNPHYSICAL_RESULT.value,
    ErrorKind.TRUNCATED.value,
)

# Patterns matched line by line (not rules, not the error-block fallback).
LINE_PATTERNS: tuple[ErrorPattern, ...] = tuple(
    p for p in PATTERNS if (p.strings or p.regex) and not p.fallback
)
# Cheap pre-filter: a line can match a line pattern only if it holds one of these.
LINE_TRIGGERS: tuple[str, ...] = (
    "not found",
    "fatal error reading xml file",
    "charge is wrong",
    "cholesky",
    "S matrix",
    "bands are not converged",
    "eigenvectors failed",
    "Maximum CPU time",
    "convergence NOT",
    "history already reset",
    "maximum number of steps",
)


_TRIGGER = re.compile("|".join(re.escape(t) for t in LINE_TRIGGERS))


def root_cause_rank(kind: str) -> int:
    """Position of ``kind`` in ROOT_CAUSE_ORDER (lower is more fundamental)."""
    try:
        return ROOT_CAUSE_ORDER.index(kind)
    except ValueError:
        return len(ROOT_CAUSE_ORDER)


def match_line(line: str) -> ErrorPattern | None:
    """The first line pattern whose exact text ``line`` holds, else None.

    Whether the pattern counts for the run is decided later by :func:`applies`, once
    the calculation type is known (MD prints its "Molecular Dynamics" banner only
    after the first step).
    """
    if _TRIGGER.search(line) is None:
        return None
    for pattern in LINE_PATTERNS:
        if pattern.matches(line):
            return pattern
    return None


def applies(pattern: ErrorPattern, calculation: str | None) -> bool:
    """True if ``pattern`` means an error for a run of this calculation type."""
    return pattern.calculations is None or calculation in pattern.calculations
