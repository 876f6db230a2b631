"""Folding a material's events into its state.

``apply`` checks the event against both lifecycles *before* it changes
anything, so an illegal event raises and leaves the state as it was. The
state objects are plain slotted classes mutated in place by the fold: replay
of a million events must not allocate a new object graph per event. From the
outside the fold is pure: the same events always give the same state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventflow.core import events as ev
from eventflow.core.lifecycle import CALCULATION, CALCULATION_ACTIVE, MATERIAL, IllegalTransition


def calculation_id(material_id: str, step: str, attempt: int) -> str:
    return f"{material_id}/{step}/{attempt}"


class CalcState:
    __slots__ = (
        "id",
        "step",
        "attempt",
        "state",
        "job_id",
        "scheduler",
        "directory",
        "error_kind",
        "evidence",
        "started_at",
        "finished_at",
        "requested_at",
        "changes",
        "resources",
        "restart_from",
        "exit_code",
        "parser",
        "recovery",
        "submit_failures",
        "finished_seen",
    )

    def __init__(self, e: ev.SubmissionRequested, recorded_at: str) -> None:
        self.id = e.calculation_id
        self.step = e.step
        self.attempt = e.attempt
        self.state = "requested"
        self.job_id: str | None = None
        self.scheduler: str | None = None
        self.directory = e.directory
        self.error_kind: str | None = None
        self.evidence: list[dict[str, Any]] = []
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.requested_at = recorded_at
        self.changes = e.changes
        self.resources = e.resources
        self.restart_from = e.restart_from
        self.exit_code: int | None = None
        self.parser: str | None = None
        self.recovery: ev.RecoveryDecided | None = None
        self.submit_failures = 0
        self.finished_seen = False

    @property
    def active(self) -> bool:
        return self.state in CALCULATION_ACTIVE

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "recovery"}


class MaterialState:
    __slots__ = (
        "id",
        "formula",
        "workflow",
        "code",
        "params",
        "state",
        "version",
        "last_seq",
        "updated_at",
        "calcs",
        "reason",
        "wait_until",
        "properties",
        "errors",
        "recoveries",
    )

    def __init__(self, material_id: str) -> None:
        self.id = material_id
        self.formula = ""
        self.workflow = ""
        self.code = ""
        self.params: dict[str, Any] = {}
        self.state = "new"
        self.version = 0
        self.last_seq = 0
        self.updated_at = ""
        self.calcs: dict[str, CalcState] = {}
        self.reason = ""
        self.wait_until: str | None = None
        # (name, value, unit, calculation_id, seq), latest values win in the projection
        self.properties: list[tuple[str, Any, str, str, int]] = []
        self.errors: list[tuple[str, str, str]] = []  # (calculation_id, kind, evidence)
        self.recoveries = 0

    # -- derived views --------------------------------------------------------------------
    def attempts(self, step: str) -> list[CalcState]:
        return [c for c in self.calcs.values() if c.step == step]

    def latest(self, step: str) -> CalcState | None:
        found = None
        for c in self.calcs.values():
            if c.step == step:
                found = c
        return found

    def active_calcs(self) -> list[CalcState]:
        return [c for c in self.calcs.values() if c.state in CALCULATION_ACTIVE]

    def is_idle(self) -> bool:
        return not any(c.state in CALCULATION_ACTIVE for c in self.calcs.values())

    @property
    def current_step(self) -> str | None:
        last = None
        for c in self.calcs.values():
            if c.state in CALCULATION_ACTIVE:
                return c.step
            last = c.step
        return last


def _material_dest(state: MaterialState, trigger: str, calc_after: dict[str, str]) -> str | None:
    if trigger not in MATERIAL.triggers:
        return None

    def idle() -> bool:
        return not any(
            calc_after.get(c.id, c.state) in CALCULATION_ACTIVE for c in state.calcs.values()
        )

    return MATERIAL.next_state(state.state, trigger, {"idle": idle})


def check(state: MaterialState, e: ev.Event) -> tuple[str | None, str | None]:
    """Return (new material state, new calculation state) for ``e``, or raise IllegalTransition."""
    trigger = e.TYPE
    calc_dest: str | None = None
    calc_after: dict[str, str] = {}
    cid = getattr(e, "calculation_id", None)
    if state.state == "new" and trigger != "MaterialRegistered":
        raise IllegalTransition(f"material {state.id!r} is not registered")
    if cid is not None and trigger in CALCULATION.triggers:
        calc = state.calcs.get(cid)
        if trigger == "SubmissionRequested":
            assert isinstance(e, ev.SubmissionRequested)
            if calc is not None:
                raise IllegalTransition(f"calculation {cid} was already requested")
            previous = state.attempts(e.step)
            if any(c.active for c in previous):
                raise IllegalTransition(
                    f"step {e.step} of {state.id} already has an active attempt"
                )
            if e.attempt != len(previous) + 1:
                raise IllegalTransition(
                    f"step {e.step} of {state.id}: attempt {e.attempt} requested, "
                    f"next is {len(previous) + 1}"
                )
            calc_dest = CALCULATION.next_state("new", trigger)
        else:
            if calc is None:
                raise IllegalTransition(f"unknown calculation {cid!r} for material {state.id!r}")
            try:
                calc_dest = CALCULATION.next_state(calc.state, trigger)
            except IllegalTransition as exc:
                raise IllegalTransition(f"{cid}: {exc}") from None
        calc_after[cid] = calc_dest
    try:
        return _material_dest(state, trigger, calc_after), calc_dest
    except IllegalTransition as exc:
        raise IllegalTransition(f"{state.id}: {exc}") from None


def apply(state: MaterialState, rec: ev.Recorded) -> MaterialState:
    """Fold one recorded event into ``state`` (in place), after checking it is legal."""
    e = rec.event
    material_dest, calc_dest = check(state, e)
    at = rec.recorded_at
    cid = getattr(e, "calculation_id", None)
    calc = state.calcs.get(cid) if cid is not None else None
    t = e.TYPE

    if t == "MaterialRegistered":
        state.formula, state.workflow, state.code = e.formula, e.workflow, e.code
        state.params = e.params
    elif t == "SubmissionRequested":
        calc = CalcState(e, at)
        state.calcs[e.calculation_id] = calc
        state.wait_until = None
        if e.reason.startswith("recovery"):
            state.recoveries += 1
    elif t == "JobSubmitted":
        calc.job_id, calc.scheduler = e.job_id, e.scheduler
    elif t == "SubmissionFailed":
        calc.submit_failures += 1
    elif t == "JobStarted":
        calc.started_at = calc.started_at or e.started_at or at
    elif t == "JobFinished":
        calc.exit_code = e.exit_code
        calc.started_at = calc.started_at or e.started_at or None
        calc.finished_at = e.finished_at or at
        calc.finished_seen = True
    elif t == "JobLost":
        calc.finished_at = calc.finished_at or at
        calc.error_kind = e.reason or calc.error_kind
    elif t == "CalculationSucceeded":
        calc.parser = e.parser
        calc.error_kind = None
        calc.finished_at = calc.finished_at or at
    elif t == "CalculationFailed":
        calc.error_kind, calc.evidence, calc.parser = e.error_kind, e.evidence, e.parser
        calc.finished_at = calc.finished_at or at
        text = "; ".join(str(x.get("text", "")) for x in e.evidence)[:500]
        state.errors.append((e.calculation_id, e.error_kind, text))
    elif t == "PropertiesExtracted":
        for name, prop in e.properties.items():
            state.properties.append(
                (name, prop.get("value"), prop.get("unit", ""), e.calculation_id, rec.seq)
            )
    elif t == "RecoveryDecided":
        calc.recovery = e
    elif t == "NeedsAttention" or t == "MaterialHeld" or t == "MaterialCancelled":
        state.reason = e.reason
    elif t == "WaitScheduled":
        state.wait_until, state.reason = e.until, e.reason
    elif t == "MaterialReleased":
        state.reason = ""
    elif t == "CalculationCancelled":
        calc.finished_at = calc.finished_at or at

    if calc is not None and calc_dest is not None:
        calc.state = calc_dest
    if material_dest is not None:
        state.state = material_dest
    state.version = rec.version
    state.last_seq = rec.seq
    state.updated_at = at
    return state


def fold(material_id: str, records: Iterable[ev.Recorded]) -> MaterialState:
    """The state of one material after all of ``records`` (its stream, in order)."""
    state = MaterialState(material_id)
    for rec in records:
        apply(state, rec)
    return state


def would_accept(state: MaterialState, e: ev.Event) -> None:
    """Raise IllegalTransition if ``e`` cannot be appended to this material now."""
    check(state, e)


__all__ = [
    "CalcState",
    "IllegalTransition",
    "MaterialState",
    "apply",
    "calculation_id",
    "fold",
    "would_accept",
]
