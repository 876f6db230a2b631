"""Scheduler logs: what SLURM (or PBS) wrote into a job's stderr/stdout when it ended the job.

A table of named patterns, each with the exact text the scheduler prints and where that text
comes from, and the order that picks the root cause when several match. Also the mapping
from SLURM job states (``squeue``/``scontrol``/``sacct``) to error kinds.

The lines are split on carriage returns as well as newlines: a tqdm progress bar rewrites one
physical line with ``\\r`` and slurmstepd's message ends up glued to its end (corpus files
slurm/slurm_stderr_*.e). Pure: text in, ParseResult out.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from eventflow.codes.base import Finding, ParseResult
from eventflow.core.kinds import ErrorKind

PARSER_VERSION = "1"
PARSER = f"slurm/{PARSER_VERSION}"


@attrs.frozen
class SchedulerPattern:
    """One named scheduler message: the error kind it means, the program, the exact text."""

    name: str
    kind: str
    program: str  # "slurm" or "pbs"
    regex: str
    source: str

    def search(self, segment: str) -> re.Match[str] | None:
        return re.search(self.regex, segment)


# slurmstepd prints "slurmstepd: error: *** JOB 42189 ON clr1247 CANCELLED AT <time> ... ***";
# newer versions prefix the host ("slurmstepd-vm: error: ..."). STEP lines have the same shape.
_STEPD = r"slurmstepd(?:-[^:\s]+)?: error: \*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT \S+"

PATTERNS: tuple[SchedulerPattern, ...] = (
    SchedulerPattern(
        "slurm_oom_kill_event", ErrorKind.OUT_OF_MEMORY.value, "slurm",
        r"Detected \d+ oom-kill event\(s\)",
        "task/cgroup; real: tests/data/slurm/oom_cgroup_stderr.txt "
        "('slurmstepd-vm: error: Detected 1 oom-kill event(s) in StepId=4.batch. ...')",
    ),
    SchedulerPattern(
        "slurm_exceeded_memory_limit", ErrorKind.OUT_OF_MEMORY.value, "slurm",
        r"Exceeded (?:job|step) memory limit|exceeded memory limit \(\d+ > \d+\), being killed",
        "jobacct_gather OverMemoryKill; real: tests/data/slurm/oom_overmemorykill_stderr.txt",
    ),
    SchedulerPattern(
        "slurm_out_of_memory_state", ErrorKind.OUT_OF_MEMORY.value, "slurm",
        r"\bOUT_OF_MEMORY\b",
        "the job state name as sacct/scontrol print it (tests/data/slurm/scontrol_*.txt)",
    ),
    SchedulerPattern(
        "pbs_memory_exceeded", ErrorKind.OUT_OF_MEMORY.value, "pbs",
        r"PBS: job killed: mem \S+ exceeded limit \S+",
        "PBS Pro MOM message, same shape as the walltime one (documentation form)",
    ),
    SchedulerPattern(
        "slurm_node_failure", ErrorKind.NODE_FAILURE.value, "slurm",
        _STEPD + r" DUE TO NODE FAILURE",
        "real: tests/data/slurm/node_failure_stderr.txt",
    ),
    SchedulerPattern(
        "slurm_node_fail_state", ErrorKind.NODE_FAILURE.value, "slurm",
        r"\bNODE_FAIL\b",
        "the job state name as sacct/scontrol print it (tests/data/slurm/scontrol_*.txt)",
    ),
    SchedulerPattern(
        "slurm_time_limit", ErrorKind.WALLTIME.value, "slurm",
        _STEPD + r" DUE TO TIME LIMIT",
        "real: corpus slurm/slurm_stderr_time_limit_tqdm.e, tests/data/slurm/time_limit_*",
    ),
    SchedulerPattern(
        "pbs_walltime", ErrorKind.WALLTIME.value, "pbs",
        r"PBS: job killed: walltime \d+ exceeded limit \d+",
        "real: corpus crystal/c17_nio_afm_opt_killed_walltime.pbs_stderr.txt",
    ),
    SchedulerPattern(
        "slurm_preempted", ErrorKind.CANCELLED.value, "slurm",
        _STEPD + r" DUE TO PREEMPTION",
        "slurmstepd's message when the job is preempted (SLURM source, same shape)",
    ),
    SchedulerPattern(
        "slurm_cancelled", ErrorKind.CANCELLED.value, "slurm",
        _STEPD + r" \*\*\*",
        "real: corpus slurm/slurm_stderr_user_cancelled.e, slurm/slurm_err_multi_job_cancelled.err",
    ),
)

# When several match, the root cause is the first kind here: an OOM kill or a node failure
# explains a later cancellation (slurmstepd prints "CANCELLED AT" without a reason after
# OverMemoryKill), and a walltime message is more specific than a bare cancellation.
KIND_PRIORITY: tuple[str, ...] = (
    ErrorKind.OUT_OF_MEMORY.value,
    ErrorKind.NODE_FAILURE.value,
    ErrorKind.WALLTIME.value,
    ErrorKind.CANCELLED.value,
)

_DETECT = re.compile(r"slurmstepd(?:-[^:\s]+)?: error:|=>> PBS: |\bsrun: error:")


def _segments(text: str) -> list[tuple[int, str]]:
    """(1-based physical line number, segment) for every \\r- or \\n-separated piece."""
    pieces: list[tuple[int, str]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        for segment in line.split("\r"):
            if segment.strip():
                pieces.append((number, segment))
    return pieces


def find_messages(text: str) -> list[tuple[SchedulerPattern, Finding]]:
    """Every pattern match, in file order, with the text from the match's start onwards."""
    found: list[tuple[SchedulerPattern, Finding]] = []
    for number, segment in _segments(text):
        for pattern in PATTERNS:
            match = pattern.search(segment)
            if match is None:
                continue
            # The evidence starts at the scheduler's own words: a tqdm bar may precede them.
            start = segment.rfind("slurmstepd", 0, match.start() + 1)
            start = match.start() if start < 0 else start
            if pattern.program == "pbs":
                start = max(0, segment.rfind("=>>", 0, match.start() + 1))
            evidence = segment[start:].strip()
            found.append((pattern, Finding(kind=pattern.kind, line=number, text=evidence,
                                           pattern=pattern.name)))
            break  # one pattern per segment: the table order puts specific ones first
    return found


def parse(text: str) -> ParseResult:
    """Classify a scheduler log: error with the root-cause kind, or ok when nothing matched."""
    found = find_messages(text)
    program = "pbs" if "PBS:" in text and "slurmstepd" not in text else "slurm"
    if not found:
        return ParseResult(code="slurm", program=program, calculation="JOB", status="ok",
                           parser=PARSER)
    kinds = {pattern.kind for pattern, _ in found}
    root = next(k for k in KIND_PRIORITY if k in kinds)
    deciding = next(p for p, _ in found if p.kind == root)
    return ParseResult(
        code="slurm",
        program=deciding.program,
        calculation="JOB",
        status="error",
        error_kind=root,
        errors=tuple(f for _, f in found),
        properties={"pattern": deciding.name},
        parser=PARSER,
    )


def detect(text: str) -> bool:
    """True if ``text`` holds a scheduler's own error line (slurmstepd, srun or PBS)."""
    return _DETECT.search(text) is not None


class SlurmLogPlugin:
    """Scheduler logs behind the CodePlugin interface (parse only: nothing to render)."""

    name = "slurm"
    parser_version = PARSER_VERSION

    def detect(self, text: str) -> bool:
        return detect(text)

    def parse(self, text: str) -> ParseResult:
        return parse(text)

    def render_inputs(self, structure: Any, step: str, params: dict[str, Any]) -> dict[str, str]:
        raise NotImplementedError("scheduler logs have no inputs to render")

    def main_output(self, step: str) -> str:
        return "slurm-%j.out"

    def apply_changes(self, inputs: dict[str, str], changes: dict[str, Any]) -> dict[str, str]:
        raise NotImplementedError("scheduler logs have no inputs to change")


PLUGIN = SlurmLogPlugin()
