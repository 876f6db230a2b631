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
        "reason",
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
        self.reason = e.reason  # why it was requested: workflow, recovery ..., import, api

    @property
    def active(self) -> bool:
        return self.state in CALCULATION_ACTIVE

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "recovery"}

    def copy(self) -> CalcState:
        """A copy folding may change apart from this one: folding only ever sets a
        calculation's fields (never changes their values in place), so a shallow copy is it."""
        twin = CalcState.__new__(CalcState)
        for name in CalcState.__slots__:
            setattr(twin, name, getattr(self, name))
        return twin


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

    def copy(self) -> MaterialState:
        """A copy that folding more events into leaves this one as it is. Folding sets
        fields, adds calculations, and appends to ``properties`` and ``errors``: those
        containers are copied, the values in them shared."""
        twin = MaterialState.__new__(MaterialState)
        for name in MaterialState.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.calcs = {cid: calc.copy() for cid, calc in self.calcs.items()}
        twin.properties = list(self.properties)
        twin.errors = list(self.errors)
        return twin

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


_MATERIAL_TABLE = MATERIAL.table
_CALC_TABLE = CALCULATION.table
_MATERIAL_TRIGGERS = MATERIAL.triggers
_CALC_TRIGGERS = CALCULATION.triggers


def _idle_after(state: MaterialState, calc: CalcState | None, calc_dest: str | None) -> bool:
    """Whether no calculation is active once ``calc`` (if any) has moved to ``calc_dest``."""
    if calc is not None and calc_dest in CALCULATION_ACTIVE:
        return False
    return not any(c.state in CALCULATION_ACTIVE and c is not calc for c in state.calcs.values())


def _check_request(state: MaterialState, e: ev.SubmissionRequested) -> None:
    if e.calculation_id in state.calcs:
        raise IllegalTransition(f"calculation {e.calculation_id} was already requested")
    count = 0
    for c in state.calcs.values():
        if c.step == e.step:
            count += 1
            if c.state in CALCULATION_ACTIVE:
                raise IllegalTransition(
                    f"step {e.step} of {state.id} already has an active attempt"
                )
    if e.attempt != count + 1:
        raise IllegalTransition(
            f"step {e.step} of {state.id}: attempt {e.attempt} requested, next is {count + 1}"
        )


def _transition(
    state: MaterialState, e: ev.Event
) -> tuple[str | None, CalcState | None, str | None]:
    """(the material's new state, the calculation ``e`` concerns, its new state); None where
    nothing changes. Raises IllegalTransition, having changed nothing. The replay hot path:
    plain lookups in the compiled tables."""
    trigger = e.TYPE
    if state.state == "new" and trigger != "MaterialRegistered":
        raise IllegalTransition(f"material {state.id!r} is not registered")
    calc: CalcState | None = None
    calc_dest: str | None = None
    if trigger in _CALC_TRIGGERS:
        if trigger == "SubmissionRequested":
            _check_request(state, e)  # type: ignore[arg-type]
            calc_dest = "requested"
        else:
            cid = e.calculation_id  # type: ignore[attr-defined]
            calc = state.calcs.get(cid)
            if calc is None:
                raise IllegalTransition(f"unknown calculation {cid!r} for material {state.id!r}")
            options = _CALC_TABLE.get((calc.state, trigger))
            if options is None:
                try:
                    CALCULATION.next_state(calc.state, trigger)
                except IllegalTransition as exc:
                    raise IllegalTransition(f"{cid}: {exc}") from None
            calc_dest = options[0][1]  # type: ignore[index] - no conditions on calculations
    if trigger not in _MATERIAL_TRIGGERS:
        return None, calc, calc_dest
    options = _MATERIAL_TABLE.get((state.state, trigger))
    if options is not None:
        for condition, dest in options:  # the only condition in the table is "idle"
            if condition is None or _idle_after(state, calc, calc_dest):
                return dest, calc, calc_dest
    try:  # not allowed: let the lifecycle say so in its own words
        MATERIAL.next_state(state.state, trigger, {"idle": lambda: False})
    except IllegalTransition as exc:
        raise IllegalTransition(f"{state.id}: {exc}") from None
    raise AssertionError("unreachable: the lifecycle refused nothing")


def check(state: MaterialState, e: ev.Event) -> tuple[str | None, str | None]:
    """Return (new material state, new calculation state) for ``e``, or raise IllegalTransition."""
    material_dest, _, calc_dest = _transition(state, e)
    return material_dest, calc_dest


# -- what each event does to the state, beyond the lifecycle (one small function per type) --


def _registered(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    state.formula, state.workflow, state.code = e.formula, e.workflow, e.code
    state.params = e.params


def _requested(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    state.calcs[e.calculation_id] = CalcState(e, at)
    if state.state == "needs_attention" or (state.wait_until is not None
                                            and state.state == "waiting"):
        state.reason = ""  # a retry out of needs_attention, or the wait is over: moot now
    state.wait_until = None
    if e.reason.startswith("recovery"):
        state.recoveries += 1


def _submitted(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    calc.job_id, calc.scheduler = e.job_id, e.scheduler
    if state.state == "waiting" and state.wait_until is None:
        state.reason = ""  # the failed submission's reason no longer holds


def _submit_failed(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    calc.submit_failures += 1
    if state.state in ("running", "waiting"):
        state.reason = f"submission failed: {e.message}"[:500]


def _started(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    calc.started_at = calc.started_at or e.started_at or at


def _finished(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    calc.exit_code = e.exit_code
    calc.started_at = calc.started_at or e.started_at or None
    calc.finished_at = e.finished_at or at
    calc.finished_seen = True


def _lost(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    calc.finished_at = calc.finished_at or at
    calc.error_kind = e.reason or calc.error_kind


def _succeeded(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    calc.parser = e.parser
    calc.error_kind = None
    calc.finished_at = calc.finished_at or at


def _failed(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    calc.error_kind, calc.evidence, calc.parser = e.error_kind, e.evidence, e.parser
    calc.finished_at = calc.finished_at or at
    text = "; ".join(str(x.get("text", "")) for x in e.evidence)[:500]
    state.errors.append((e.calculation_id, e.error_kind, text))


def _properties(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    for name, prop in e.properties.items():
        state.properties.append((name, prop.get("value"), prop.get("unit", ""),
                                 e.calculation_id, seq))


def _recovery(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    calc.recovery = e


def _reason(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    state.reason = e.reason


def _wait(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    state.wait_until, state.reason = e.until, e.reason


def _released(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    state.reason = ""


def _cancelled(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    calc.finished_at = calc.finished_at or at


def _nothing(state: MaterialState, calc: Any, e: Any, at: str, seq: int) -> None:
    return None


MUTATE = {
    "MaterialRegistered": _registered,
    "SubmissionRequested": _requested,
    "JobSubmitted": _submitted,
    "SubmissionFailed": _submit_failed,
    "JobStarted": _started,
    "JobFinished": _finished,
    "JobLost": _lost,
    "CalculationSucceeded": _succeeded,
    "CalculationFailed": _failed,
    "PropertiesExtracted": _properties,
    "RecoveryDecided": _recovery,
    "NeedsAttention": _reason,
    "MaterialHeld": _reason,
    "MaterialCancelled": _reason,
    "WaitScheduled": _wait,
    "MaterialReleased": _released,
    "CalculationCancelled": _cancelled,
}


def apply_event(state: MaterialState, e: ev.Event, seq: int, version: int, at: str) -> None:
    """Fold one event into ``state`` (in place), after checking it is legal."""
    material_dest, calc, calc_dest = _transition(state, e)
    MUTATE.get(e.TYPE, _nothing)(state, calc, e, at, seq)
    if calc is not None:
        calc.state = calc_dest  # type: ignore[assignment] - set with calc
    if material_dest is not None:
        state.state = material_dest
    state.version = version
    state.last_seq = seq
    state.updated_at = at


def apply(state: MaterialState, rec: ev.Recorded) -> MaterialState:
    """Fold one recorded event into ``state`` (in place), after checking it is legal."""
    apply_event(state, rec.event, rec.seq, rec.version, rec.recorded_at)
    return state


def fold(material_id: str, records: Iterable[ev.Recorded],
         start: MaterialState | None = None) -> MaterialState:
    """The state of one material after all of ``records`` (its stream, in order), or, from
    ``start`` (left as it is), after the records that follow it."""
    state = start.copy() if start is not None else MaterialState(material_id)
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
