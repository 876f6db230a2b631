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

An ``ERROR **** <ROUTINE> ****`` line that no row names (an unknown keyword, for
one: no public text of that message was found) is still an error: an input
error when it comes before the first SCF cycle, else the run is truncated.
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
    example: str = ""  # the whole message line as documented, for rows no corpus file shows

    @kind.validator
    def _known_kind(self, _attribute: attrs.Attribute, value: str) -> None:
        if value not in ERROR_KINDS:
            raise ValueError(f"pattern kind {value!r} is not one of eventflow.core.kinds")


def _p(name: str, kind: str, text: str, source: str, example: str = "") -> ErrorPattern:
    return ErrorPattern(name=name, kind=kind, text=text, source=source, example=example)


_AIIDA = "documented: aiida-crystal17 parsers/raw/main_out.py KNOWN_ERRORS"
_MACE = ("documented: real CRYSTAL23 outputs quoted by the MACE workflow tool "
         "(test/FAILED_QA/*.out)")
_IFORT = "documented: Intel Fortran run-time error messages"
_SLURM = "documented: slurmstepd messages"

# Order matters only when two rows match the same line: the first row wins.
ERROR_PATTERNS: tuple[ErrorPattern, ...] = (
    # A missing fort.34 prints "GEOMETRY DATA FILE NOT FOUND - EXTERNAL KEYWORD NOT
    # ALLOWED": it is a missing file, so this row comes before the input errors.
    _p("wavefunction_not_found", "missing_file", "Wavefunction file can not be found",
       "corpus: crystal/c09_fe50_opt_then_properties_ERROR_wavefunction_not_found.out"),
    _p("geometry_file_not_found", "missing_file", "GEOMETRY DATA FILE NOT FOUND",
       "documented: aiida-crystal17 parsers/cry_main.py comment",
       " ERROR **** EXTRN **** GEOMETRY DATA FILE NOT FOUND - EXTERNAL KEYWORD NOT ALLOWED"),
    _p("end_of_input_deck", "input_error", "END OF DATA IN INPUT DECK",
       "documented: CRYSTAL23 1.0.1 startup diagnostic with no input, quoted by public "
       "tooling; also aiida-crystal17 KNOWN_ERRORS",
       " ERROR **** INPUT ****  END OF DATA IN INPUT DECK"),
    _p("format_error_input_deck", "input_error", "FORMAT ERROR IN INPUT DECK", _AIIDA,
       "FORMAT ERROR IN INPUT DECK"),
    _p("neighb_error", "atoms_too_close", "ERROR **** NEIGHB ****", _MACE,
       " ERROR **** NEIGHB **** USE KEYWORD SMALLDIST TO RUN ANYWAY"),
    _p("distance_too_small", "atoms_too_close", "DISTANCE BETWEEN ATOMS", _MACE,
       " DISTANCE BETWEEN ATOMS 13 54 TOO SMALL"),
    _p("basis_linearly_dependent", "basis_linearly_dependent", "BASIS SET LINEARLY DEPENDENT",
       _AIIDA, " ERROR **** CHOLSK **** BASIS SET LINEARLY DEPENDENT"),
    _p("anisotropic_shrink", "kpoint_mesh", "ANISOTROPIC SHRINKING FACTOR",
       "documented: CRYSTAL error categories of the MACE workflow tool (ERROR_PATTERNS)",
       "ANISOTROPIC SHRINKING FACTOR"),
    _p("shrink_error", "kpoint_mesh", "ERROR **** SHRINK",
       "derived: the corpus line ' WARNING **** SHRINK **** MOLECULAR CASE - SHRINKING "
       "NOT USED' (crystal/c17_s2_molecule_opt_converged.out) shows routine SHRINK; "
       "CRYSTAL's fatal messages are ' ERROR **** <ROUTINE> **** <TEXT>'",
       " ERROR **** SHRINK **** MOLECULAR CASE - SHRINKING NOT USED"),
    _p("no_space_left", "disk_full", "No space left on device", _IFORT,
       "forrtl: No space left on device"),
    _p("disk_quota", "disk_full", "Disk quota exceeded", _IFORT,
       "forrtl: Disk quota exceeded"),
    _p("fortran_write_error", "disk_full", "error during write", _IFORT,
       "forrtl: severe (38): error during write, unit 9, file /scratch/job/fort.9"),
    _p("oom_kill", "out_of_memory", "oom-kill event",
       "documented: ARCHER2 documentation, CRYSTAL known issues",
       "slurmstepd: error: Detected 1 oom-kill event(s) in step 411502.0 cgroup."),
    _p("oom_kill_underscore", "out_of_memory", "oom_kill event", _SLURM,
       "slurmstepd: error: Detected 1 oom_kill event in StepId=42.batch. "
       "Some of the step tasks have been OOM Killed."),
    _p("oom_handler", "out_of_memory", "out-of-memory handler", _SLURM,
       "slurmstepd: error: Some of your processes may have been killed by the cgroup "
       "out-of-memory handler."),
    _p("fortran_no_memory", "out_of_memory", "insufficient virtual memory", _IFORT,
       "forrtl: severe (41): insufficient virtual memory"),
    _p("scf_too_many_cycles", "scf_not_converged", "SCF ENDED - TOO MANY CYCLES",
       "corpus: crystal/c17_nio_afm_scf_TOO_MANY_CYCLES.out"),
    _p("scf_failed", "scf_not_converged", "SCF FAILED",
       "corpus: crystal/c14_bcc_iron_opt_SCF_FAILED_optgeom_stop.out"),
    _p("fermi_not_in_interval", "scf_not_converged", "FERMI ENERGY NOT IN INTERVAL", _MACE,
       " ERROR **** ZERO **** FERMI ENERGY NOT IN INTERVAL"),
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
       "corpus: slurm/slurm_stderr_time_limit_tqdm.e"),
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
