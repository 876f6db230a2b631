"""The numbers the shell's throttle needs: how many recovery attempts run, how many may start.

``limits.max_concurrent_recoveries`` cannot be enforced by the policy, which sees one
material at a time. The policy records every resubmission at once; the runner, which
sees all materials, holds back the ``sbatch`` of requested recovery attempts while
that many recovery attempts are already submitted or running.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventflow.core.recovery.plan import RESUBMITTING
from eventflow.core.state import calculation_id

RUNNING = ("submitted", "running")


def is_recovery_attempt(state: Any, calc: Any) -> bool:
    """True if ``calc`` is the resubmission the policy decided for the attempt before it."""
    if calc.attempt <= 1:
        return False
    previous = state.calcs.get(calculation_id(state.id, calc.step, calc.attempt - 1))
    return previous is not None and previous.recovery is not None and (
        previous.recovery.action in RESUBMITTING
    )


def recovery_slots(states: Iterable[Any], limit: int) -> int:
    """How many more requested recovery attempts may be submitted now (never negative)."""
    busy = sum(1 for state in states for calc in state.calcs.values()
               if calc.state in RUNNING and is_recovery_attempt(state, calc))
    return max(0, limit - busy)
