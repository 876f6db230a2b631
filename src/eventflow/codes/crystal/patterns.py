"""The table of CRYSTAL error messages: which exact text means which error kind.

Each row names one message, the error kind it proves and where the exact text
comes from: a real output in the corpus (``corpus:``) or, for messages no public
output shows, the wording quoted by the program's documentation or by the tools
that parse it (``documented:``). Matching is a plain substring test on the text
of a line, so a row matches exactly what it says and nothing looser.

Traps the table is built to avoid (each one is a real corpus file):

* ``ERROR.pe2`` in the directory listing a wrapper prints after a successful run
  (c06_quartz_hf_freqcalc.out): no row is the bare word ``ERROR``.
* ``IEEE_UNDERFLOW_FLAG`` notes from gfortran (c17_paracetamol_freq_qha_archer2_...):
  harmless, not matched.
* ``CONVERGENCE TESTS NOT SATISFIED AFTER n`` inside an optimisation that still ends
  in ``OPT END - CONVERGED`` (c14_mgo_opt_finalrun_converged.out): the geometry row
  is the final verdict ``CONVERGENCE TESTS UNSATISFIED``, a different phrase.
* ``WARNING **** SHRINK **** MOLECULAR CASE`` (c17_s2_molecule_opt_converged.out):
  the k-mesh row needs ``ERROR **** SHRINK``.
* ``open_hca: device mlx4_0 not found`` from the MPI layer
  (c17_mackinawite_opt_FAILED_100points.out): the missing-file rows name the file.
"""

from __future__ import annotations

import attrs

from eventflow.codes.base import Finding
from eventflow.core.kinds import ERROR_KINDS


@attrs.frozen
class ErrorPattern:
    """One named message: the exact ``text`` that, found in a line, proves ``kind``."""

    name: str
    kind: str = attrs.field()
    text: str
    source: str

    @kind.validator
    def _known_kind(self, _attribute: attrs.Attribute, value: str) -> None:
        if value not in ERROR_KINDS:
            raise ValueError(f"pattern kind {value!r} is not one of eventflow.core.kinds")


def _p(name: str, kind: str, text: str, source: str) -> ErrorPattern:
    return ErrorPattern(name=name, kind=kind, text=text, source=source)


_AIIDA = "documented: aiida-crystal17 parsers/raw/main_out.py KNOWN_ERRORS"
_MACE = "documented: CRYSTAL23 output quoted by the MACE workflow tool's tests"

# Order matters only when two rows match the same line: the first row wins.
ERROR_PATTERNS: tuple[ErrorPattern, ...] = (
    # Missing files first: "GEOMETRY DATA FILE NOT FOUND - EXTERNAL KEYWORD NOT ALLOWED"
    # must be a missing fort.34, not an input error.
    _p("wavefunction_not_found", "missing_file", "Wavefunction file can not be found",
       "corpus: crystal/c09_fe50_opt_then_properties_ERROR_wavefunction_not_found.out"),
    _p("geometry_file_not_found", "missing_file", "GEOMETRY DATA FILE NOT FOUND", _AIIDA),
    _p("end_of_input_deck", "input_error", "END OF DATA IN INPUT DECK", _AIIDA),
    _p("format_error_input_deck", "input_error", "FORMAT ERROR IN INPUT DECK", _AIIDA),
    _p("keyword_not_allowed", "input_error", "KEYWORD NOT ALLOWED",
       "documented: aiida-crystal17 parsers/cry_main.py comment quoting "
       "'ERROR **** EXTRN **** ... KEYWORD NOT ALLOWED'"),
    _p("neighb_error", "atoms_too_close", "ERROR **** NEIGHB ****", _MACE),
    _p("smalldist_advice", "atoms_too_close", "USE KEYWORD SMALLDIST", _MACE),
    _p("basis_linearly_dependent", "basis_linearly_dependent", "BASIS SET LINEARLY DEPENDENT",
       _AIIDA),
    _p("anisotropic_shrink", "kpoint_mesh", "ANISOTROPIC SHRINKING FACTOR",
       "documented: CRYSTAL error categories of the MACE workflow tool (ERROR_PATTERNS)"),
    _p("shrink_error", "kpoint_mesh", "ERROR **** SHRINK",
       "documented: CRYSTAL 'ERROR **** <ROUTINE> ****' line shape, routine SHRINK"),
    _p("no_space_left", "disk_full", "No space left on device",
       "documented: Linux ENOSPC message (strerror)"),
    _p("disk_quota", "disk_full", "Disk quota exceeded",
       "documented: Linux EDQUOT message (strerror)"),
    _p("fortran_write_error", "disk_full", "error during write",
       "documented: Intel Fortran run-time error 38 'error during write'"),
    _p("oom_kill", "out_of_memory", "oom-kill event",
       "documented: Slurm cgroup message, ARCHER2 CRYSTAL known issues"),
    _p("oom_kill_underscore", "out_of_memory", "oom_kill event",
       "documented: Slurm cgroup message (newer slurmstepd wording)"),
    _p("oom_handler", "out_of_memory", "out-of-memory handler",
       "documented: Slurm 'killed by the cgroup out-of-memory handler'"),
    _p("fortran_no_memory", "out_of_memory", "insufficient virtual memory",
       "documented: Intel Fortran run-time error 41 'insufficient virtual memory'"),
    _p("scf_too_many_cycles", "scf_not_converged", "SCF ENDED - TOO MANY CYCLES",
       "corpus: crystal/c17_nio_afm_scf_TOO_MANY_CYCLES.out"),
    _p("scf_failed_optgeom_stop", "scf_not_converged", "SCF FAILED - OPTGEOM STOP",
       "corpus: crystal/c14_bcc_iron_opt_SCF_FAILED_optgeom_stop.out"),
    _p("scf_failed", "scf_not_converged", "SCF FAILED",
       "corpus: crystal/c17_elastic_SCF_FAILED_optgeom_stop_openmpi.out"),
    _p("fermi_not_in_interval", "scf_not_converged", "FERMI ENERGY NOT IN INTERVAL", _MACE),
    _p("opt_end_failed", "geometry_not_converged", "OPT END - FAILED",
       "corpus: crystal/c17_mackinawite_opt_FAILED_100points.out"),
    _p("convergence_tests_unsatisfied", "geometry_not_converged",
       "CONVERGENCE TESTS UNSATISFIED",
       "corpus: crystal/c17_mackinawite_opt_FAILED_100points.out"),
    _p("geometry_optimization_failed", "geometry_not_converged",
       "GEOMETRY OPTIMIZATION FAILED",
       "corpus: crystal/c17_mackinawite_opt_FAILED_100points.out"),
    _p("sigterm", "walltime", "forrtl: error (78): process killed (SIGTERM)",
       "corpus: crystal/c17_nio_afm_opt_killed_walltime_SIGTERM.out"),
    _p("slurm_time_limit", "walltime", "DUE TO TIME LIMIT",
       "documented: slurmstepd 'CANCELLED AT ... DUE TO TIME LIMIT'"),
    _p("pbs_walltime", "walltime", "PBS: job killed: walltime",
       "corpus: crystal/c17_nio_afm_opt_killed_walltime.pbs_stderr.txt"),
)

# When several kinds are found, the most specific cause wins: a bad input or a
# missing file explains everything after it; a kill by the clock explains only itself.
KIND_PRIORITY: tuple[str, ...] = (
    "missing_file",
    "input_error",
    "atoms_too_close",
    "basis_linearly_dependent",
    "kpoint_mesh",
    "disk_full",
    "out_of_memory",
    "scf_not_converged",
    "geometry_not_converged",
    "walltime",
)

# The normal end of a CRYSTAL or properties run.
TERMINATION = " EEEEEEEEEE TERMINATION"
# The shape of every fatal CRYSTAL message; used for lines no row names.
GENERIC_ERROR = "ERROR **** "


def _line_bounds(text: str, pos: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return start, (len(text) if end == -1 else end)


def find_errors(text: str, offset: int = 0) -> list[Finding]:
    """Every line of ``text[offset:]`` that a row of the table matches, in file order.

    Uses ``str.find`` per row (C speed) and computes a line number only for hits,
    so a clean megabyte output costs a few milliseconds. One finding per line.
    """
    by_line: dict[int, Finding] = {}
    for pattern in ERROR_PATTERNS:
        pos = text.find(pattern.text, offset)
        while pos != -1:
            start, end = _line_bounds(text, pos)
            if start not in by_line:
                line_no = text.count("\n", 0, start) + 1
                by_line[start] = Finding(
                    kind=pattern.kind,
                    line=line_no,
                    text=text[start:end].strip(),
                    pattern=pattern.name,
                )
            pos = text.find(pattern.text, end)
    return [by_line[k] for k in sorted(by_line)]


def unclassified_errors(text: str, offset: int = 0) -> list[tuple[int, str]]:
    """``ERROR **** ...`` lines no row of the table names: (line number, text)."""
    out: list[tuple[int, str]] = []
    pos = text.find(GENERIC_ERROR, offset)
    while pos != -1:
        start, end = _line_bounds(text, pos)
        line = text[start:end].strip()
        if not any(p.text in line for p in ERROR_PATTERNS):
            out.append((text.count("\n", 0, start) + 1, line))
        pos = text.find(GENERIC_ERROR, end)
    return out


def root_cause(findings: list[Finding]) -> str | None:
    """The error kind that explains the others, by ``KIND_PRIORITY``; None if no findings."""
    kinds = {f.kind for f in findings}
    for kind in KIND_PRIORITY:
        if kind in kinds:
            return kind
    return next(iter(sorted(kinds)), None)
