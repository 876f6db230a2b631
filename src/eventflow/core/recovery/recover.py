"""The recovery policy: (material state, failed attempt, event, config) -> commands.

Pure: no I/O, no clock (a delay is counted from the event's ``recorded_at``), no
randomness. ``core.policy.decide`` calls :func:`recover` for the failure of a step's
latest attempt that has no decision yet; the shell calls :func:`due` on its ticks,
with the current time as an argument, for resubmissions whose wait is over.
"""

from __future__ import annotations

from typing import Any

import attrs

from eventflow.core import commands as cmd
from eventflow.core import events as ev
from eventflow.core.kinds import ERROR_KINDS, ErrorKind, kind_from_scheduler_state
from eventflow.core.policy import QUIET_STATES, advance
from eventflow.core.recovery import units
from eventflow.core.recovery.plan import Plan, next_plan, recoveries_used

# Material states in which the policy leaves the material alone (a human decides).
HANDS_OFF = (*QUIET_STATES, "needs_attention")


def error_kind(calc: Any, rec: ev.Recorded | None = None) -> str | None:
    """The failure's kind: the parser's, else what the scheduler state of a lost job means."""
    if calc.error_kind in ERROR_KINDS:
        return calc.error_kind
    if rec is not None and isinstance(rec.event, ev.JobLost) and rec.event.scheduler_state:
        return kind_from_scheduler_state(rec.event.scheduler_state)
    return None


def recover(state: Any, calc: Any, rec: ev.Recorded, config: Any) -> list[cmd.Command]:
    """The commands that answer the failure of ``calc`` (the latest attempt of its step)."""
    if state.state in HANDS_OFF:
        return []
    rc = config.recovery
    kind = error_kind(calc, rec)
    failed = f"step {calc.step} attempt {calc.attempt} failed: {kind or calc.error_kind or '?'}"
    if rc is None:
        return _escalate(state, calc, kind, f"{failed}; no recovery policy is configured.")
    rule = rc.rule_for(state.code, kind) if kind else None
    if rule is None:
        return _escalate(state, calc, kind, f"{failed}; recovery.yaml has no rule for this "
                                            f"failure. Look at the output in {calc.directory}.")
    plan = next_plan(state, calc, kind, rule, rc, config.workflows)  # type: ignore[arg-type]
    if isinstance(plan, str):
        why = f"{failed}; {plan}."
        if rule.exhausted == "give_up":
            return _give_up(state, calc, kind, why, rule.instructions, config)
        return _escalate(state, calc, kind, why, rule.instructions)
    used = recoveries_used(state)
    if used >= rc.max_recoveries_per_material:
        return _escalate(state, calc, kind, f"{failed}; the material already had {used} "
                                            "automatic recoveries (limits."
                                            "max_recoveries_per_material).", rule.instructions)
    return _resubmit(state, calc, kind, plan, rec.recorded_at)  # type: ignore[arg-type]


def review(state: Any, calc: Any, rec: ev.Recorded, config: Any) -> list[cmd.Command]:
    """Commands that redo a step which succeeded but which the policy distrusts; [] goes on.

    One case: a vc-relax whose final SCF pressure is off the target (the parse's
    ``residual_pressure_kbar``, in the success's summary). It is redone with the stages of
    the code's ``residual_pressure`` rule (e.g. a higher cutoff) when the rule has any;
    without stages, or once they are used up, the result stands with its warning.
    """
    if state.state in HANDS_OFF or config.recovery is None:
        return []
    summary = getattr(rec.event, "summary", None) or {}
    residual = summary.get("residual_pressure_kbar")
    if not isinstance(residual, int | float):
        return []
    kind = ErrorKind.RESIDUAL_PRESSURE.value
    rule = config.recovery.rule_for(state.code, kind)
    if rule is None or not rule.stages:
        return []
    plan = next_plan(state, calc, kind, rule, config.recovery, config.workflows)
    limit = config.recovery.max_recoveries_per_material
    if isinstance(plan, str) or recoveries_used(state) >= limit:
        return []  # used up: the result stands, with its warning
    # At once: a wait is only ever resumed for failed attempts (``due``), and a finished
    # relaxation has nothing to wait for.
    plan = attrs.evolve(plan, delay_s=0, details=(f"final SCF {residual:+g} kbar off the target",
                                                  *plan.details))
    return _resubmit(state, calc, kind, plan, rec.recorded_at)


def _resubmit(state: Any, calc: Any, kind: str, plan: Plan, recorded_at: str) -> list[cmd.Command]:
    reason = f"recovery: {kind} stage {plan.stage_number}: {plan.stage.name}"
    if plan.details:
        reason += f" ({'; '.join(plan.details)})"
    until = None
    if plan.delay_s:
        try:
            until = units.add_seconds(recorded_at, plan.delay_s)
        except ValueError:
            until = None  # no usable time on the event: resubmit at once rather than never
    record = cmd.RecordRecovery(
        state.id, calc.id, kind, "wait" if until else "resubmit", plan.stage_number,
        dict(plan.changes), dict(plan.resources), reason,
    )
    if until:
        return [record, cmd.WaitUntil(state.id, until, f"{reason}; resubmitting at {until}")]
    attempt = len(state.attempts(calc.step)) + 1
    return [record, cmd.RequestStep(state.id, calc.step, attempt, dict(plan.changes),
                                    dict(plan.resources), reason, plan.restart_from)]


def _instructions(state: Any, calc: Any, extra: str) -> str:
    hint = (f"When fixed, run `eventflow retry {state.id} --step {calc.step}` "
            "(add --set key=value to change the input).")
    return f"{extra.strip()} {hint}" if extra.strip() else hint


def _escalate(state: Any, calc: Any, kind: str | None, why: str,
              instructions: str = "") -> list[cmd.Command]:
    reason = f"{why} {_instructions(state, calc, instructions)}"
    recorded_kind = kind or calc.error_kind or "unknown"
    return [cmd.RecordRecovery(state.id, calc.id, recorded_kind, "escalate", None, {}, {}, reason),
            cmd.Escalate(state.id, reason, calc.id)]


def _give_up(state: Any, calc: Any, kind: str, why: str, instructions: str,
             config: Any) -> list[cmd.Command]:
    """Give the step up: the workflow goes on with what runs after a failure, if anything."""
    reason = f"{why} Step {calc.step} is given up."
    record = cmd.RecordRecovery(state.id, calc.id, kind, "give_up", None, {}, {}, reason)
    decision = ev.RecoveryDecided(calc.id, kind, "give_up", None, {}, {}, reason)
    workflow = config.workflows.get(state.workflow)
    follow = advance(_WithDecision(state, calc, decision), workflow) if workflow else []
    return [record, *(follow or [_nothing_follows(state, calc, reason, instructions)])]


def _nothing_follows(state: Any, calc: Any, reason: str, instructions: str = "") -> cmd.Escalate:
    """A given-up step after which the workflow runs nothing: a human decides, told how."""
    return cmd.Escalate(state.id, f"{reason} Nothing in the workflow runs after this step "
                        f"fails. {_instructions(state, calc, instructions)}", calc.id)


class _WithDecision:
    """The material as it will be once ``decision`` is recorded on ``calc`` (read-only view)."""

    def __init__(self, state: Any, calc: Any, decision: ev.RecoveryDecided) -> None:
        self._state, self._calc, self._decision = state, calc, decision
        self.id = state.id

    def latest(self, step: str) -> Any:
        found = self._state.latest(step)
        return _CalcWithDecision(found, self._decision) if found is self._calc else found

    def attempts(self, step: str) -> list[Any]:
        return self._state.attempts(step)

    def is_idle(self) -> bool:
        return self._state.is_idle()


class _CalcWithDecision:
    def __init__(self, calc: Any, decision: ev.RecoveryDecided) -> None:
        self._calc, self.recovery = calc, decision

    def __getattr__(self, name: str) -> Any:
        return getattr(self._calc, name)


def due(state: Any, now: str, config: Any) -> list[cmd.Command]:
    """Commands the shell's tick owes this material at time ``now`` (ISO-8601 UTC).

    * A resubmission decided with a delay (``RecoveryDecided`` action ``wait``) whose
      wait is over: the step is requested with the recorded changes and resources.
    * A resubmission decided (``resubmit``) whose request was never recorded (a crash
      between the two appends): the step is requested now.
    * An escalation or a give-up decided whose consequence (NeedsAttention, the steps that
      run after a failure) was never recorded, and a success whose next steps were not:
      they are recorded now. (Each is a separate append after the decision; a process can
      die in between. Their intents' keys make a repeat harmless.)
    * A failure that no decision answered (it happened while the material was held):
      once the material is released, the policy decides it now.
    Nothing for held, cancelled, completed or needs-attention materials.
    """
    if state.state in HANDS_OFF or config.recovery is None:
        return []
    out: list[cmd.Command] = []
    steps = dict.fromkeys(c.step for c in state.calcs.values())
    for step in steps:
        calc = state.latest(step)
        if calc.state not in ("failed", "lost"):
            continue
        decision = calc.recovery
        if decision is None and config.recover is not None:
            event: ev.Event = ev.CalculationFailed(calc.id, calc.error_kind or "")
            out += config.recover(state, calc, ev.Recorded(state.last_seq, state.id,
                                                           state.version, event, now), config)
        elif decision is not None and decision.action in ("wait", "resubmit"):
            # "resubmit": the decision is recorded but its request is not (the process died
            # between the two appends); the step is requested now, as it was decided.
            if (decision.action == "wait" and state.wait_until is not None
                    and not units.not_after(state.wait_until, now)):
                continue
            restart_keys = config.recovery.code(state.code).restart_keys
            restart_from = calc.id if restart_keys & set(decision.changes) else None
            out.append(cmd.RequestStep(state.id, step, len(state.attempts(step)) + 1,
                                       dict(decision.changes), dict(decision.resources),
                                       decision.reason, restart_from))
        elif decision is not None and decision.action == "escalate":
            # Never recorded (a crash), or recorded and then forgotten by a hold and release:
            # made again under a key of its own (the material's version now).
            out.append(cmd.Escalate(state.id, decision.reason, calc.id, str(state.version)))
        elif decision is not None and decision.action == "give_up":
            workflow = config.workflows.get(state.workflow)
            follow = advance(state, workflow) if workflow else []
            rule = config.recovery.rule_for(state.code, decision.error_kind)
            out += follow or [_nothing_follows(state, calc, decision.reason,
                                               rule.instructions if rule else "")]
    if not out and state.state == "ready":
        # A step succeeded but what it leads to was never recorded: the workflow goes on.
        workflow = config.workflows.get(state.workflow)
        out += advance(state, workflow) if workflow else []
    return out
