"""``eventflow stats recovery``: how often each correction was tried and how often it worked.

Read from the folded states: every recorded resubmission (``RecoveryDecided`` with
action resubmit or wait) is one try of (error kind, stage); it worked if the next
attempt of the same step succeeded, failed if that attempt failed (or was lost or
cancelled), and is pending while it has not ended (or was never requested).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs

from eventflow.core.recovery.plan import RESUBMITTING
from eventflow.core.state import calculation_id

_STAGE_NAME = re.compile(r"^recovery: \S+ stage \d+: (.*?)(?: \(.*\))?$")


@attrs.define
class StageStats:
    error_kind: str
    stage: int
    correction: str
    tried: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0

    @property
    def success_rate(self) -> float | None:
        ended = self.succeeded + self.failed
        return self.succeeded / ended if ended else None

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "success_rate": self.success_rate}


@attrs.define
class KindStats:
    error_kind: str
    failures: int = 0
    escalated: int = 0
    given_up: int = 0


def correction_name(reason: str) -> str:
    """The stage's name from a recovery reason ('recovery: kind stage 2: NAME (details)')."""
    match = _STAGE_NAME.match(reason)
    return match.group(1) if match else reason


def recovery_stats(states: Iterable[Any]) -> tuple[list[StageStats], list[KindStats]]:
    """Per (kind, stage) tries and outcomes, and per kind failures and escalations."""
    stages: dict[tuple[str, int], StageStats] = {}
    kinds: dict[str, KindStats] = {}
    for state in states:
        for calc in state.calcs.values():
            if calc.state in ("failed", "lost") and calc.error_kind:
                kinds.setdefault(calc.error_kind, KindStats(calc.error_kind)).failures += 1
            decision = calc.recovery
            if decision is None:
                continue
            kind = kinds.setdefault(decision.error_kind, KindStats(decision.error_kind))
            if decision.action == "escalate":
                kind.escalated += 1
            elif decision.action == "give_up":
                kind.given_up += 1
            if decision.action not in RESUBMITTING:
                continue
            key = (decision.error_kind, decision.stage or 0)
            row = stages.get(key)
            if row is None:
                row = stages[key] = StageStats(key[0], key[1], correction_name(decision.reason))
            row.tried += 1
            following = state.calcs.get(calculation_id(state.id, calc.step, calc.attempt + 1))
            if following is None or following.active:
                row.pending += 1
            elif following.state == "completed":
                row.succeeded += 1
            else:
                row.failed += 1
    return (sorted(stages.values(), key=lambda s: (s.error_kind, s.stage)),
            sorted(kinds.values(), key=lambda k: k.error_kind))
