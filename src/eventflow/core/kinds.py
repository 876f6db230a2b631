"""The one list of error kinds, shared by every parser, the policy, the projections and the CLI.

The vocabulary is the one of the real-output corpus (TRUTH.tsv), so a parser's
verdict can be compared with the expected one word for word.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    SCF_NOT_CONVERGED = "scf_not_converged"
    GEOMETRY_NOT_CONVERGED = "geometry_not_converged"
    BFGS_FAILED = "bfgs_failed"
    WALLTIME = "walltime"
    OUT_OF_MEMORY = "out_of_memory"
    DIAGONALIZATION_FAILED = "diagonalization_failed"
    CHARGE_WRONG = "charge_wrong"
    BASIS_LINEARLY_DEPENDENT = "basis_linearly_dependent"
    ATOMS_TOO_CLOSE = "atoms_too_close"
    KPOINT_MESH = "kpoint_mesh"
    MISSING_FILE = "missing_file"
    INPUT_ERROR = "input_error"
    TRUNCATED = "truncated"
    CANCELLED = "cancelled"
    NODE_FAILURE = "node_failure"
    DISK_FULL = "disk_full"
    UNPHYSICAL_RESULT = "unphysical_result"
    # Not a failure: a vc-relax that succeeded with its final SCF off the target pressure
    # (Pulay stress, too low a cutoff). Only the recovery policy's review of a success uses it.
    RESIDUAL_PRESSURE = "residual_pressure"

    def __str__(self) -> str:
        return self.value


ERROR_KINDS: frozenset[str] = frozenset(k.value for k in ErrorKind)

# Kinds the scheduler (not the DFT code) reports; every code shares their recovery rules.
SCHEDULER_KINDS: frozenset[str] = frozenset(
    {"walltime", "out_of_memory", "node_failure", "cancelled"}
)


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a known error kind, else raise ValueError naming it."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"unknown error kind {kind!r}; known: {', '.join(sorted(ERROR_KINDS))}")
    return kind

# Scheduler job states (SLURM's, as squeue, scontrol and sacct print them) -> the error kind
# they mean. None: the state says nothing about a failure, or the DFT code's output has to
# decide, as for FAILED. Defined here, not with the SLURM parser, because the recovery policy
# reads it too (a lost job's scheduler state).
SCHEDULER_STATE_KINDS: dict[str, str | None] = {
    "TIMEOUT": ErrorKind.WALLTIME.value,
    "DEADLINE": ErrorKind.WALLTIME.value,
    "OUT_OF_MEMORY": ErrorKind.OUT_OF_MEMORY.value,
    "OUT_OF_ME": ErrorKind.OUT_OF_MEMORY.value,  # sacct's default column cuts it: OUT_OF_ME+
    "NODE_FAIL": ErrorKind.NODE_FAILURE.value,
    "BOOT_FAIL": ErrorKind.NODE_FAILURE.value,
    "CANCELLED": ErrorKind.CANCELLED.value,
    "PREEMPTED": ErrorKind.CANCELLED.value,
    "REVOKED": ErrorKind.CANCELLED.value,
    "COMPLETED": None,
    "FAILED": None,
    "PENDING": None,
    "RUNNING": None,
}


def kind_from_scheduler_state(state: str | None) -> str | None:
    """The error kind a job state means ('TIMEOUT' -> walltime), None if it means none.

    Accepts the forms sacct and scontrol print: 'CANCELLED by 1000', 'CANCELLED+'.
    """
    if not state:
        return None
    word = state.strip().split(" ")[0].rstrip("+").upper()
    return SCHEDULER_STATE_KINDS.get(word)
