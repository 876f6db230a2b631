"""The lifecycles of a material and of a calculation attempt, declared once.

The tables below are the single definition. They are validated by building a
``transitions.Machine`` from them (which also draws the diagram for the docs),
and then compiled into plain dict lookups: folding 100,000 materials must not
create 100,000 machine objects, and a dict lookup is ~75x faster than a trigger.

State names are part of the interface (CLI filters, JSON, projections).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from transitions import Machine

from eventflow.errors import IllegalTransition

MATERIAL_STATES = (
    "registered",
    "ready",
    "running",
    "waiting",
    "held",
    "needs_attention",
    "completed",
    "cancelled",
)
MATERIAL_ACTIVE = ("registered", "ready", "running", "waiting")
_NOT_FINAL = ("registered", "ready", "running", "waiting", "held", "needs_attention")

# Each row: trigger (an event TYPE), sources, destination, and an optional condition on the
# material ("idle" = no calculation attempt is active). Rows are tried in order.
MATERIAL_TRANSITIONS: tuple[dict[str, Any], ...] = (
    {"trigger": "MaterialRegistered", "source": "new", "dest": "registered"},
    {
        "trigger": "SubmissionRequested",
        "source": ["registered", "ready", "running", "waiting", "needs_attention"],
        "dest": "running",
    },
    {"trigger": "SubmissionRequested", "source": "held", "dest": "held"},
    # A step that ends leaves the material ready once nothing else runs.
    *(
        row
        for trig in ("CalculationSucceeded", "CalculationFailed", "JobLost", "CalculationCancelled")
        for row in (
            {"trigger": trig, "source": "running", "dest": "ready", "conditions": "idle"},
            {"trigger": trig, "source": "running", "dest": "running"},
            {"trigger": trig, "source": ["registered", "ready", "waiting"], "dest": "="},
            {"trigger": trig, "source": ["held", "needs_attention", "cancelled"], "dest": "="},
        )
    ),
    {"trigger": "WaitScheduled", "source": ["ready", "running", "waiting"], "dest": "waiting"},
    # A submission that failed (an unreachable cluster, a refusing sbatch) leaves the material
    # waiting for its retry, with the reason; the submission that then succeeds resumes it.
    {"trigger": "SubmissionFailed", "source": ["running", "waiting"], "dest": "waiting"},
    {"trigger": "SubmissionFailed",
     "source": ["registered", "ready", "held", "needs_attention", "completed", "cancelled"],
     "dest": "="},
    {"trigger": "JobSubmitted", "source": "waiting", "dest": "running"},
    {"trigger": "JobSubmitted",
     "source": ["registered", "ready", "running", "held", "needs_attention", "completed",
                "cancelled"],
     "dest": "="},
    {"trigger": "NeedsAttention", "source": list(_NOT_FINAL), "dest": "needs_attention"},
    {"trigger": "MaterialHeld", "source": list(_NOT_FINAL), "dest": "held"},
    {"trigger": "MaterialReleased", "source": "held", "dest": "ready"},
    {"trigger": "MaterialCancelled", "source": list(_NOT_FINAL), "dest": "cancelled"},
    {"trigger": "MaterialCompleted", "source": ["ready", "running"], "dest": "completed"},
)

CALCULATION_STATES = (
    "requested",
    "submitted",
    "running",
    "completed",
    "failed",
    "lost",
    "cancelled",
)
CALCULATION_ACTIVE = ("requested", "submitted", "running")

CALCULATION_TRANSITIONS: tuple[dict[str, Any], ...] = (
    {"trigger": "SubmissionRequested", "source": "new", "dest": "requested"},
    {"trigger": "SubmissionFailed", "source": "requested", "dest": "requested"},
    {"trigger": "InputsPrepared", "source": "requested", "dest": "requested"},
    {"trigger": "JobSubmitted", "source": "requested", "dest": "submitted"},
    {"trigger": "JobStarted", "source": "submitted", "dest": "running"},
    {"trigger": "JobStarted", "source": "running", "dest": "running"},
    # The completion record is an observation; the verdict comes with the parse.
    {"trigger": "JobFinished", "source": ["submitted", "running"], "dest": "running"},
    # A short job can end before anyone sees it run; a user may override a failure.
    {
        "trigger": "CalculationSucceeded",
        "source": ["submitted", "running", "failed", "lost"],
        "dest": "completed",
    },
    {
        "trigger": "CalculationFailed",
        "source": ["requested", "submitted", "running", "lost"],
        "dest": "failed",
    },
    {"trigger": "JobLost", "source": ["submitted", "running"], "dest": "lost"},
    {"trigger": "CalculationCancelled", "source": list(CALCULATION_ACTIVE), "dest": "cancelled"},
    # Interpretations that do not move the attempt. A job that ended before anyone saw it run
    # and left no record is judged from ``submitted`` (by its output, once the scheduler says
    # COMPLETED).
    {"trigger": "PropertiesExtracted", "source": ["submitted", "running", "completed"],
     "dest": "="},
    {"trigger": "ResultRejected", "source": ["submitted", "running", "completed"],
     "dest": "running"},
    {"trigger": "ScratchCleanupDecided", "source": "completed", "dest": "completed"},
    {"trigger": "RemoteScratchRemoved", "source": list(CALCULATION_STATES), "dest": "="},
    {"trigger": "OutputReinterpreted", "source": list(CALCULATION_STATES), "dest": "="},
    # On a completed attempt: the policy redoes a success it distrusts (core.recovery.review).
    {"trigger": "RecoveryDecided", "source": ["failed", "lost", "completed"], "dest": "="},
)


@attrs.frozen
class CompiledLifecycle:
    """(state, trigger) -> ordered (condition or None, destination) pairs."""

    name: str
    states: tuple[str, ...]
    table: Mapping[tuple[str, str], tuple[tuple[str | None, str], ...]]
    triggers: frozenset[str]

    def next_state(
        self, state: str, trigger: str, conditions: Mapping[str, Callable[[], bool]] | None = None
    ) -> str:
        options = self.table.get((state, trigger))
        if options is None:
            raise IllegalTransition(f"{self.name}: {trigger} is not allowed in state {state!r}")
        for condition, dest in options:
            if condition is None or (conditions is not None and conditions[condition]()):
                return dest
        raise IllegalTransition(
            f"{self.name}: {trigger} has no applicable transition from {state!r}"
        )


def build_machine(states: tuple[str, ...], transitions: tuple[dict[str, Any], ...]) -> Machine:
    """The transitions.Machine for a table (validation and diagrams; not used to fold)."""
    return Machine(
        model=None,
        states=["new", *states],
        transitions=[dict(t) for t in transitions],
        initial="new",
        auto_transitions=False,
        ignore_invalid_triggers=False,
    )


def compile_lifecycle(
    name: str, states: tuple[str, ...], transitions: tuple[dict[str, Any], ...]
) -> CompiledLifecycle:
    """Validate a table by building a Machine, then read its transitions into a dict table."""
    machine = build_machine(states, transitions)
    table: dict[tuple[str, str], list[tuple[str | None, str]]] = {}
    for trigger, ev in machine.events.items():
        for source, transition_list in ev.transitions.items():
            for tr in transition_list:
                conds = [c.func for c in tr.conditions]
                if len(conds) > 1:
                    raise ValueError(f"{name}: one condition per transition, got {conds}")
                dest = source if tr.dest is None else tr.dest
                table.setdefault((source, trigger), []).append((conds[0] if conds else None, dest))
    return CompiledLifecycle(
        name=name,
        states=states,
        table={k: tuple(v) for k, v in table.items()},
        triggers=frozenset(machine.events),
    )


MATERIAL = compile_lifecycle("material", MATERIAL_STATES, MATERIAL_TRANSITIONS)
CALCULATION = compile_lifecycle("calculation", CALCULATION_STATES, CALCULATION_TRANSITIONS)
