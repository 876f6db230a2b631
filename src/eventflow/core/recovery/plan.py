"""Which correction comes next for a failed attempt, read from the material's history.

Nothing here counts: how often a stage was tried is the number of earlier attempts of
the same step whose recorded decision (``RecoveryDecided``) names that kind and stage;
the input changes already applied are the failed attempt's own ``changes``; the
resources it ran with are its ``resources`` over the workflow step's and the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from eventflow.core.recovery import units
from eventflow.core.recovery.model import Caps, CodeRules, RecoveryConfig, Rule, Stage

RESUBMITTING = ("resubmit", "wait")
# Resource entries that concern one attempt only, never carried to the next.
TRANSIENT_RESOURCES = frozenset({"exclude_host_of"})


@attrs.frozen
class Plan:
    """The next attempt: its stage, cumulative input changes, resources, checkpoint, delay."""

    stage_number: int  # 1-based, as recorded in RecoveryDecided.stage
    stage: Stage
    changes: dict[str, Any]
    resources: dict[str, Any]
    restart_from: str | None
    delay_s: int
    details: tuple[str, ...]


def recoveries_used(state: Any) -> int:
    """Automatic resubmissions decided for this material so far (all steps, all kinds)."""
    return sum(1 for c in state.calcs.values()
               if c.recovery is not None and c.recovery.action in RESUBMITTING)


def stage_tries(state: Any, step: str, kind: str) -> dict[int, int]:
    """Stage number -> how many attempts of ``step`` were resubmitted with it for ``kind``."""
    tries: dict[int, int] = {}
    for c in state.calcs.values():
        r = c.recovery
        if r is not None and c.step == step and r.error_kind == kind and r.action in RESUBMITTING:
            stage = r.stage or 0
            tries[stage] = tries.get(stage, 0) + 1
    return tries


def effective_resources(state: Any, calc: Any, rc: RecoveryConfig,
                        workflows: Mapping[str, Any]) -> dict[str, Any]:
    """What the failed attempt ran with: its own resources over the step's and the defaults."""
    workflow = workflows.get(state.workflow)
    step = workflow.steps.get(calc.step) if workflow is not None else None
    step_resources = dict(step.resources) if step is not None else {}
    return {**rc.default_resources, **step_resources, **calc.resources}


def step_params(state: Any, calc: Any, workflows: Mapping[str, Any]) -> Mapping[str, Any]:
    workflow = workflows.get(state.workflow)
    step = workflow.steps.get(calc.step) if workflow is not None else None
    return step.params if step is not None else {}


def next_plan(state: Any, calc: Any, kind: str, rule: Rule, rc: RecoveryConfig,
              workflows: Mapping[str, Any]) -> Plan | str:
    """The plan for the next attempt, or why there is none (a sentence for the escalation)."""
    tries = stage_tries(state, calc.step, kind)
    total = sum(tries.values())
    if rule.max_retries is not None and total >= rule.max_retries:
        return f"the {kind} recovery was already tried {total} time(s) on step {calc.step} " \
               f"(max_retries {rule.max_retries})"
    if not rule.stages:
        return f"recovery.yaml has no automatic correction for {kind}"
    code = rc.code(state.code)
    skipped: list[str] = []
    for number, stage in enumerate(rule.stages, 1):
        if tries.get(number, 0) >= stage.max_retries:
            continue
        plan = _plan_stage(number, stage, state, calc, code, rule, rc, workflows)
        if isinstance(plan, str):
            skipped.append(f"stage {number} ({stage.name}): {plan}")
            continue
        return plan
    used = ", ".join(f"stage {n} ({rule.stages[n - 1].name}) x{t}" for n, t in sorted(tries.items())
                     if 0 < n <= len(rule.stages))
    why = f"every stage of the {kind} recovery has been used ({used or 'none applicable'})"
    return why + ("; " + "; ".join(skipped) if skipped else "")


def _plan_stage(number: int, stage: Stage, state: Any, calc: Any, code: CodeRules, rule: Rule,
                rc: RecoveryConfig, workflows: Mapping[str, Any]) -> Plan | str:
    restart_keys = code.restart_keys
    carried = {k: v for k, v in calc.changes.items() if k not in restart_keys}
    changes = dict(carried)
    details: list[str] = []
    params: tuple[Mapping[str, Any], ...] = ()
    if stage.set or stage.multiply:
        params = (carried, state.params, step_params(state, calc, workflows), code.parameters)
    for key, value in stage.set.items():
        if _lookup(key, params) != value:
            changes[key] = value
            details.append(f"{key}={value}")
    for key, factor in stage.multiply.items():
        base = _lookup(key, params)
        value = _times(base, factor) if _numeric(base) else _relative(carried.get(key), factor)
        if value != base:
            changes[key] = value
            details.append(f"{key}={value}" if _numeric(base) else f"{key} x{factor:g}")
    resources = {k: v for k, v in calc.resources.items() if k not in TRANSIENT_RESOURCES}
    blocked: list[str] = []
    current = effective_resources(state, calc, rc, workflows) if stage.resources else {}
    for name, factor in stage.resources.items():
        changed = _scale_resource(name, factor, current.get(name), rule.caps)
        if isinstance(changed, str):
            blocked.append(changed)
        else:
            resources[name] = changed[1]
            details.append(f"{name} {changed[0]} -> {changed[1]}")
    if stage.corrects and not details:
        return "no effect: " + ("; ".join(blocked) or "the values are already in place")
    restart_from = None
    restart = code.restarts.get(stage.restart or "")
    if restart is not None:
        changes.update(restart)
        restart_from = calc.id
        details.append(f"restart: {stage.restart} of {calc.id}")
    if stage.exclude_failed_node:
        resources["exclude_host_of"] = calc.id
        details.append(f"not on the node {calc.id} ran on")
    delay = stage.delay_s if stage.delay_s is not None else rule.delay_s
    return Plan(number, stage, changes, resources, restart_from, delay, tuple(details))


def _scale_resource(name: str, factor: float, value: Any, caps: Caps) -> tuple[str, Any] | str:
    """(old, new) spelled for sbatch, or why the resource cannot change."""
    if value is None:
        return f"{name} is not set anywhere (workflow step, attempt or default_resources)"
    try:
        if name == "mem":
            cur, cap, fmt = units.memory_mb(value), caps.max_memory_mb, units.format_memory
        elif name == "time":
            cur, cap, fmt = units.walltime_seconds(value), caps.max_walltime_s, \
                units.format_walltime
        else:
            cur, cap, fmt = int(value), caps.max_cores, str
    except (TypeError, ValueError):
        return f"{name} {value!r} is not a value eventflow can scale"
    target = math.ceil(cur * factor - 1e-9) if factor >= 1 else max(1, math.floor(cur * factor))
    if cap is not None and target > cap:
        target = cap if cur <= cap else cur  # never above the cap, never below what it had
    if target == cur:
        if cap is not None and cur >= cap:
            return f"{name} {fmt(cur)} is already at the cap {fmt(cap)}"
        return f"{name} {fmt(cur)} x{factor:g} changes nothing"
    if name == "ntasks":
        return str(cur), target
    return fmt(cur), fmt(target)


def _lookup(key: str, sources: tuple[Mapping[str, Any], ...]) -> Any:
    """The value a parameter has now: carried changes, material params, step params, defaults.

    Material and step params use the renderers' names (``mixing_beta``, ``maxcycle``), so
    the last part of a dotted key and its lower case are tried too.
    """
    short = key.rsplit(".", 1)[-1]
    for i, source in enumerate(sources):
        names = (key,) if i in (0, 3) else (key, short, short.lower())
        for name in names:
            if name in source and source[name] is not None:
                return source[name]
    return None


def _numeric(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_numeric(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _times(value: Any, factor: float) -> Any:
    if isinstance(value, list):
        return [_times(v, factor) for v in value]
    product = value * factor
    if isinstance(value, int):
        return math.ceil(product - 1e-9) if factor >= 1 else max(1, math.floor(product + 1e-9))
    return float(f"{product:.10g}")


def _relative(carried: Any, factor: float) -> dict[str, float]:
    """A multiplication the code plugin resolves against the real input (no value known here)."""
    if isinstance(carried, Mapping) and _numeric(carried.get("multiply")):
        return {"multiply": float(f"{carried['multiply'] * factor:.10g}")}
    return {"multiply": factor}
