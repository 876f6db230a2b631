"""The decision: (material state, event, config) -> commands. No I/O, no clock, no randomness.

The first rule is the workflow's: when a step succeeds, request what comes
next; when everything succeeded, complete the material. Failures go to the
recovery policy (``core.recovery``) when one is configured, else to a human.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from eventflow.core import commands as cmd
from eventflow.core.events import Recorded
from eventflow.core.state import MaterialState
from eventflow.core.workflow import BUILTIN, Workflow, is_complete, next_steps

QUIET_STATES = ("held", "cancelled", "completed", "new")

# (state, failed calculation, event, config) -> commands; filled in by core.recovery
RecoveryRule = Callable[[MaterialState, Any, Recorded, "PolicyConfig"], list[cmd.Command]]


@attrs.frozen
class PolicyConfig:
    workflows: Mapping[str, Workflow] = attrs.field(factory=lambda: dict(BUILTIN))
    recovery: Any = None  # core.recovery.RecoveryConfig, when configured
    recover: RecoveryRule | None = None
    # (state, succeeded calculation, event, config) -> commands that redo the step instead
    # of going on (empty: go on); filled in by core.recovery
    review: RecoveryRule | None = None


def advance(state: MaterialState, workflow: Workflow) -> list[cmd.Command]:
    steps = next_steps(state, workflow)
    if steps:
        return [
            cmd.RequestStep(state.id, s, len(state.attempts(s)) + 1, reason="workflow")
            for s in steps
        ]
    if is_complete(state, workflow):
        return [cmd.CompleteMaterial(state.id)]
    return []


def decide(state: MaterialState, rec: Recorded, config: PolicyConfig) -> list[cmd.Command]:
    """What to do after ``rec`` was folded into ``state``."""
    if state.state in QUIET_STATES:
        return []
    workflow = config.workflows.get(state.workflow)
    if workflow is None:
        return [cmd.Escalate(state.id, f"unknown workflow {state.workflow!r}")]
    t = rec.type
    if t in ("MaterialRegistered", "MaterialReleased", "CalculationSucceeded"):
        if state.state == "needs_attention":
            return []
        if t == "CalculationSucceeded" and config.review is not None:
            calc = state.calcs[rec.event.calculation_id]  # type: ignore[attr-defined]
            if calc.recovery is None and state.latest(calc.step) is calc:
                redo = config.review(state, calc, rec, config)
                if redo:
                    return redo
        return advance(state, workflow)
    if t in ("CalculationFailed", "JobLost"):
        calc = state.calcs[rec.event.calculation_id]  # type: ignore[attr-defined]
        if calc.recovery is not None or state.latest(calc.step) is not calc:
            return []  # already decided, or superseded by a later attempt
        if config.recover is not None:
            return config.recover(state, calc, rec, config)
        kind = calc.error_kind or "unknown error"
        return [cmd.Escalate(state.id, f"step {calc.step} attempt {calc.attempt} failed: {kind}",
                             calc.id)]
    return []
