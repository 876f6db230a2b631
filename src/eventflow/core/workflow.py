"""Workflows: named steps with prerequisites, and what may run next.

Pure: ``parse_workflows`` takes the already-loaded YAML mapping (with line numbers
when the shell has them) and ``next_steps`` the folded material state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from eventflow.core.ids import check_step
from eventflow.core.yamltext import Lines
from eventflow.errors import ConfigError

FINAL_FAILURE = ("failed", "lost", "cancelled")


@attrs.frozen
class StepDef:
    name: str
    after_ok: tuple[str, ...] = ()
    after_any: tuple[str, ...] = ()
    after_failed: tuple[str, ...] = ()
    optional: bool = False
    resources: Mapping[str, Any] = attrs.field(factory=dict)
    params: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def prerequisites(self) -> tuple[str, ...]:
        return self.after_ok + self.after_any + self.after_failed


@attrs.frozen
class Workflow:
    name: str
    steps: Mapping[str, StepDef]

    def order(self) -> list[str]:
        """Steps in dependency order (earlier steps first): the submission priority."""
        done: list[str] = []
        pending = list(self.steps)
        while pending:
            for name in pending:
                if all(p in done for p in self.steps[name].prerequisites):
                    done.append(name)
                    pending.remove(name)
                    break
        return done


# A small built-in workflow for tests and for trying eventflow without a DFT code.
BUILTIN = {
    "test": Workflow("test", {"A": StepDef("A"), "B": StepDef("B", after_ok=("A",))}),
    "single": Workflow("single", {"SP": StepDef("SP")}),
    # Materials brought in by `eventflow import` without --workflow: nothing to run next.
    "imported": Workflow("imported", {}),
}


def _given_up(calc: Any) -> bool:
    return calc.recovery is not None and calc.recovery.action in ("escalate", "give_up")


def next_steps(state: Any, workflow: Workflow) -> list[str]:
    """Steps never attempted whose prerequisites are met, in dependency order."""
    ready = []
    for name in workflow.order():
        step = workflow.steps[name]
        if state.latest(name) is not None:
            continue
        latest = {p: state.latest(p) for p in step.prerequisites}
        ok = all(latest[p] is not None and latest[p].state == "completed" for p in step.after_ok)
        anyway = all(
            latest[p] is not None
            and (latest[p].state == "completed" or (latest[p].state in FINAL_FAILURE
                                                    and _given_up(latest[p])))
            for p in step.after_any
        )
        failed = all(
            latest[p] is not None and latest[p].state in FINAL_FAILURE and _given_up(latest[p])
            for p in step.after_failed
        )
        if ok and anyway and failed:
            ready.append(name)
    return ready


def is_complete(state: Any, workflow: Workflow) -> bool:
    """Every required step's latest attempt succeeded, and nothing still runs."""
    if not state.is_idle():
        return False
    if not workflow.steps:  # e.g. imported: done when the latest attempt of every step is
        steps = {c.step for c in state.calcs.values()}
        return bool(steps) and all(state.latest(s).state == "completed" for s in steps)
    for name, step in workflow.steps.items():
        latest = state.latest(name)
        if step.optional or step.after_failed:
            continue
        if latest is None or latest.state != "completed":
            return False
    return True


def parse_workflows(
    doc: Mapping[str, Any], source: str = "workflows.yaml", lines: Lines | None = None
) -> dict[str, Workflow]:
    """Validate a ``workflows:`` mapping: unknown keys or prerequisites and cycles are errors
    that name the file and, when ``lines`` are given (``core.yamltext``), the line."""
    lines = lines or {}

    def fail(path: tuple[Any, ...], message: str) -> ConfigError:
        while path and path not in lines:
            path = path[:-1]
        where = f"{source}:{lines[path][1]}" if path in lines else source
        return ConfigError(f"{where}: {message}")

    if not isinstance(doc, Mapping) or not isinstance(doc.get("workflows"), Mapping):
        raise fail((), "expected a top-level 'workflows:' mapping")
    out: dict[str, Workflow] = {}
    for wname, body in doc["workflows"].items():
        here = ("workflows", wname)
        steps_doc = (body or {}).get("steps") if isinstance(body, Mapping) else None
        if not isinstance(steps_doc, Mapping) or not steps_doc:
            raise fail(here, f"workflow {wname!r} needs a 'steps:' mapping")
        steps: dict[str, StepDef] = {}
        for sname, sdoc in steps_doc.items():
            at = (*here, "steps", sname)
            sdoc = sdoc or {}
            try:
                check_step(sname)
            except ValueError as exc:
                raise fail(at, f"workflow {wname!r}: {exc}") from exc
            if not isinstance(sdoc, Mapping):
                raise fail(at, f"workflow {wname!r} step {sname!r}: expected a mapping")
            unknown = set(sdoc) - {"after_ok", "after_any", "after_failed", "optional",
                                   "resources", "params"}
            if unknown:
                key = sorted(unknown)[0]
                raise fail((*at, key), f"workflow {wname!r} step {sname!r}: unknown key "
                           f"{key!r} (known: after_ok, after_any, after_failed, optional, "
                           "resources, params)")

            def names(key: str, sdoc: Mapping[str, Any] = sdoc) -> tuple[str, ...]:
                value = sdoc.get(key) or ()
                return (value,) if isinstance(value, str) else tuple(value)

            steps[sname] = StepDef(
                name=sname,
                after_ok=names("after_ok"),
                after_any=names("after_any"),
                after_failed=names("after_failed"),
                optional=bool(sdoc.get("optional", False)),
                resources=dict(sdoc.get("resources") or {}),
                params=dict(sdoc.get("params") or {}),
            )
        for step in steps.values():
            for key in ("after_ok", "after_any", "after_failed"):
                for pre in getattr(step, key):
                    if pre not in steps:
                        raise fail((*here, "steps", step.name, key),
                                   f"workflow {wname!r} step {step.name!r} depends on unknown "
                                   f"step {pre!r}")
        try:
            _check_acyclic(wname, steps, source)
        except ConfigError as exc:
            raise fail(here, str(exc).split(": ", 1)[1]) from None
        out[wname] = Workflow(wname, steps)
    return out


def _check_acyclic(wname: str, steps: Mapping[str, StepDef], source: str) -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*path[path.index(name):], name])
            raise ConfigError(f"{source}: workflow {wname!r} has a cycle: {cycle}")
        visiting.add(name)
        for pre in steps[name].prerequisites:
            visit(pre, [*path, name])
        visiting.discard(name)
        done.add(name)

    for name in steps:
        visit(name, [])
