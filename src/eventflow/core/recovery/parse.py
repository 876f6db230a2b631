"""Validating recovery.yaml into a :class:`RecoveryConfig`; every error names file and line.

Pure: ``parse_recovery`` takes the loaded mapping (and, from ``load_recovery_text``,
the line of every key), never a path to open.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from eventflow.core.kinds import ERROR_KINDS, SCHEDULER_KINDS
from eventflow.core.recovery import units
from eventflow.core.recovery.model import (
    ACTIONS_EXHAUSTED,
    NO_RESTART,
    RESOURCE_NAMES,
    Caps,
    CodeRules,
    RecoveryConfig,
    Rule,
    Stage,
)
from eventflow.core.recovery.yamltext import Lines, Path
from eventflow.errors import ConfigError

KNOWN_CODES = ("qe", "crystal")
# Changes the runner handles itself, for every code: "structure: last" renders the next
# attempt from the final structure of the attempt it restarts from.
SHELL_MARKERS = frozenset({"structure"})
_QE_KEY = re.compile(r"^(control|system|electrons|ions|cell)\.[a-z][a-z0-9_]*(\(\d+(,\d+)*\))?$")
CRYSTAL_KEYS = frozenset({
    "MAXCYCLE", "FMIXING", "LEVSHIFT", "ANDERSON", "BROYDEN", "GUESSP", "SHRINK", "TOLDEE",
    "SPINLOCK", "OPTGEOM_RESTART", "MAXTRADIUS", "OPTGEOM_MAXCYCLE", "SCALE_CELL",
})
PARAMETER_CHECKS: dict[str, Callable[[str], bool]] = {
    "qe": lambda key: bool(_QE_KEY.match(key)),
    "crystal": lambda key: key in CRYSTAL_KEYS,
}
PARAMETER_HINTS = {
    "qe": "a namelist variable such as electrons.mixing_beta",
    "crystal": f"one of {', '.join(sorted(CRYSTAL_KEYS))}",
}
_TOP = ("limits", "caps", "default_resources", "slurm")
_RULE_KEYS = ("stages", "max_retries", "delay", "caps", "exhausted", "instructions", "restart")
_STAGE_KEYS = ("name", "set", "multiply", "resources", "max_retries", "delay", "restart",
               "exclude_failed_node")
_CAP_KEYS = {"max_memory": "mem", "max_walltime": "time", "max_cores": "ntasks"}


class _Where:
    """Turns a path in the document into 'file:line: a.b[2].c: problem'."""

    def __init__(self, source: str, lines: Lines | None) -> None:
        self.source, self.lines = source, lines or {}

    def error(self, path: Path, problem: str) -> ConfigError:
        for end in range(len(path), -1, -1):
            found = self.lines.get(tuple(path[:end]))
            if found is not None:
                place = f"{found[0]}:{found[1]}"
                break
        else:
            place = self.source
        dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        return ConfigError(f"{place}: {dotted or 'top level'}: {problem}")


def parse_recovery(doc: Any, source: str = "recovery.yaml", *, lines: Lines | None = None,
                   codes: tuple[str, ...] = KNOWN_CODES) -> RecoveryConfig:
    """Validate a loaded recovery.yaml; raise ConfigError naming file, line and problem."""
    where = _Where(source, lines)
    doc = _mapping(doc if doc is not None else {}, (), where)
    _known_keys(doc, (*_TOP, *codes), (), where, "section")
    limits = _mapping(doc.get("limits") or {}, ("limits",), where)
    _known_keys(limits, ("max_recoveries_per_material", "max_concurrent_recoveries"),
                ("limits",), where, "limit")
    defaults = _default_resources(doc.get("default_resources") or {}, where)
    caps = _caps(doc.get("caps") or {}, ("caps",), where, defaults)
    sections = {}
    for code in codes:
        sections[code] = _code_section(code, doc.get(code) or {}, where, caps, defaults)
    slurm_doc = _mapping(doc.get("slurm") or {}, ("slurm",), where)
    slurm = {}
    for kind, body in slurm_doc.items():
        path = ("slurm", kind)
        _check_kind(kind, path, where)
        if kind not in SCHEDULER_KINDS:
            raise where.error(path, f"{kind} is not a scheduler-level kind "
                                    f"({', '.join(sorted(SCHEDULER_KINDS))}): put it under a code")
        slurm[kind] = _rule(kind, "slurm", body, path, where, caps, defaults, sections, None)
    return RecoveryConfig(
        codes=sections,
        slurm=slurm,
        caps=caps,
        default_resources=defaults,
        max_recoveries_per_material=_int(limits.get("max_recoveries_per_material", 10),
                                         ("limits", "max_recoveries_per_material"), where, 0),
        max_concurrent_recoveries=_int(limits.get("max_concurrent_recoveries", 20),
                                       ("limits", "max_concurrent_recoveries"), where, 1),
        source=source,
    )


def _code_section(code: str, body: Any, where: _Where, caps: Caps,
                  defaults: Mapping[str, Any]) -> CodeRules:
    body = _mapping(body, (code,), where)
    parameters = dict(_mapping(body.get("parameters") or {}, (code, "parameters"), where))
    for key in parameters:
        _check_parameter(code, key, (code, "parameters", key), where)
    restarts: dict[str, dict[str, Any]] = {}
    for name, changes in _mapping(body.get("restarts") or {}, (code, "restarts"), where).items():
        changes = _mapping(changes, (code, "restarts", name), where)
        for key in changes:
            _check_parameter(code, key, (code, "restarts", name, key), where)
        restarts[str(name)] = dict(changes)
    partial = CodeRules(code, {}, parameters, restarts)
    rules = {}
    for kind, rule_doc in body.items():
        if kind in ("parameters", "restarts"):
            continue
        _check_kind(kind, (code, kind), where)
        rules[kind] = _rule(kind, code, rule_doc, (code, kind), where, caps, defaults,
                            {code: partial}, code)
    return CodeRules(code, rules, parameters, restarts)


def _rule(kind: str, section: str, body: Any, path: Path, where: _Where, caps: Caps,
          defaults: Mapping[str, Any], codes: Mapping[str, CodeRules], code: str | None) -> Rule:
    body = _mapping(body or {}, path, where)
    _known_keys(body, _RULE_KEYS, path, where, "rule key")
    exhausted = body.get("exhausted", "escalate")
    if exhausted not in ACTIONS_EXHAUSTED:
        raise where.error((*path, "exhausted"),
                          f"{exhausted!r}: expected one of {', '.join(ACTIONS_EXHAUSTED)}")
    restart = _restart(body.get("restart"), (*path, "restart"), where, codes)
    stages_doc = body.get("stages") or []
    if not isinstance(stages_doc, list):
        raise where.error((*path, "stages"), "expected a list of stages")
    stages = tuple(_stage(s, (*path, "stages", i), where, codes, code, restart)
                   for i, s in enumerate(stages_doc))
    max_retries = body.get("max_retries")
    return Rule(
        kind=kind,
        section=section,
        stages=stages,
        max_retries=None if max_retries is None else _int(max_retries, (*path, "max_retries"),
                                                            where, 0),
        delay_s=_duration(body.get("delay", 0), (*path, "delay"), where),
        caps=_caps(body.get("caps") or {}, (*path, "caps"), where, defaults).over(caps),
        exhausted=exhausted,
        instructions=str(body.get("instructions") or ""),
        restart=restart,
    )


def _stage(body: Any, path: Path, where: _Where, codes: Mapping[str, CodeRules],
           code: str | None, rule_restart: str | None) -> Stage:
    body = _mapping(body, path, where)
    _known_keys(body, _STAGE_KEYS, path, where, "correction")
    changes = {}
    for key in ("set", "multiply"):
        values = _mapping(body.get(key) or {}, (*path, key), where)
        if values and code is None:
            raise where.error((*path, key), "input parameters are code-specific: put this "
                                            "rule under qe: or crystal:, not slurm:")
        for name, value in values.items():
            _check_parameter(code or "", name, (*path, key, name), where)
            if key == "multiply":
                _factor(value, (*path, key, name), where, minimum=None)
        changes[key] = dict(values)
    resources = dict(_mapping(body.get("resources") or {}, (*path, "resources"), where))
    for name, factor in resources.items():
        if name not in RESOURCE_NAMES:
            raise where.error((*path, "resources", name),
                              f"unknown resource {name!r}; known: {', '.join(RESOURCE_NAMES)}")
        floor = 1.0 if name in ("mem", "time") else None
        resources[name] = _factor(factor, (*path, "resources", name), where, minimum=floor)
    restart = body.get("restart")
    delay = body.get("delay")
    return Stage(
        name=str(body.get("name") or _describe(changes, resources)),
        set=changes["set"],
        multiply={k: float(v) for k, v in changes["multiply"].items()},
        resources=resources,
        max_retries=_int(body.get("max_retries", 1), (*path, "max_retries"), where, 0),
        delay_s=None if delay is None else _duration(delay, (*path, "delay"), where),
        restart=rule_restart if restart is None else _restart(restart, (*path, "restart"),
                                                              where, codes),
        exclude_failed_node=bool(body.get("exclude_failed_node", False)),
    )


def _describe(changes: Mapping[str, Mapping[str, Any]], resources: Mapping[str, float]) -> str:
    parts = [f"{k}={v}" for k, v in changes["set"].items()]
    parts += [f"{k} x{v}" for k, v in changes["multiply"].items()]
    parts += [f"{k} x{v}" for k, v in resources.items()]
    return ", ".join(parts) or "resubmit as is"


def _restart(value: Any, path: Path, where: _Where, codes: Mapping[str, CodeRules]) -> str | None:
    if value is None or value == NO_RESTART or value is False:
        return None
    for code, rules in codes.items():
        if str(value) not in rules.restarts:
            known = ", ".join(sorted(rules.restarts)) or "none defined"
            raise where.error(path, f"restart {value!r} is not defined in {code}.restarts "
                                    f"(known: {known})")
    return str(value)


def _check_parameter(code: str, key: Any, path: Path, where: _Where) -> None:
    check = PARAMETER_CHECKS.get(code)
    if key in SHELL_MARKERS or (check is not None and check(str(key))):
        return
    hint = PARAMETER_HINTS.get(code, "a parameter the code plugin knows")
    raise where.error(path, f"unknown correction {key!r} for {code}: expected {hint}")


def _check_kind(kind: Any, path: Path, where: _Where) -> None:
    if kind not in ERROR_KINDS:
        raise where.error(path, f"unknown error kind {kind!r}; known: "
                                f"{', '.join(sorted(ERROR_KINDS))}")


def _default_resources(body: Any, where: _Where) -> dict[str, Any]:
    body = _mapping(body, ("default_resources",), where)
    _known_keys(body, RESOURCE_NAMES, ("default_resources",), where, "resource")
    for name, value in body.items():
        _resource_value(name, value, ("default_resources", name), where)
    return dict(body)


def _caps(body: Any, path: Path, where: _Where, defaults: Mapping[str, Any]) -> Caps:
    body = _mapping(body, path, where)
    _known_keys(body, tuple(_CAP_KEYS), path, where, "cap")
    values: dict[str, int | None] = {}
    for key, resource in _CAP_KEYS.items():
        if body.get(key) is None:
            values[key] = None
            continue
        cap = _resource_value(resource, body[key], (*path, key), where)
        if resource in defaults and cap < _resource_value(resource, defaults[resource], (), where):
            raise where.error((*path, key), f"cap {body[key]} is below the default "
                                            f"{resource} {defaults[resource]} (default_resources)")
        values[key] = cap
    return Caps(values["max_memory"], values["max_walltime"], values["max_cores"])


def _resource_value(name: str, value: Any, path: Path, where: _Where) -> int:
    try:
        if name == "mem":
            return units.memory_mb(value)
        if name == "time":
            return units.walltime_seconds(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} {value!r}: expected a whole number >= 1")
        return value
    except ValueError as exc:
        raise where.error(path, str(exc)) from None


def _factor(value: Any, path: Path, where: _Where, minimum: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise where.error(path, f"factor {value!r}: expected a positive number")
    if minimum is not None and value < minimum:
        raise where.error(path, f"factor {value} is below {minimum:g}: memory and walltime "
                                "are only ever raised by recovery")
    return float(value)


def _duration(value: Any, path: Path, where: _Where) -> int:
    try:
        return units.duration_seconds(value)
    except ValueError as exc:
        raise where.error(path, str(exc)) from None


def _int(value: Any, path: Path, where: _Where, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise where.error(path, f"{value!r}: expected a whole number >= {minimum}")
    return value


def _mapping(value: Any, path: Path, where: _Where) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise where.error(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _known_keys(body: Mapping[Any, Any], known: tuple[str, ...], path: Path, where: _Where,
                what: str) -> None:
    for key in body:
        if key not in known:
            raise where.error((*path, key), f"unknown {what} {key!r}; known: {', '.join(known)}")
