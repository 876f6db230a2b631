"""Validating recovery.yaml into a :class:`RecoveryConfig`; every error names file and line.

Pure: ``parse_recovery`` takes the loaded mapping (and, from ``load_recovery_text``,
the line of every key), never a path to open.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from eventflow.core.kinds import ERROR_KINDS, SCHEDULER_KINDS
from eventflow.core.recovery.checks import (
    Where,
    duration,
    factor,
    integer,
    known_keys,
    mapping,
    resource_value,
)
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
from eventflow.core.yamltext import Lines, Path

KNOWN_CODES = ("qe", "crystal")
# Changes the runner handles itself, for every code: "structure: last" renders the next
# attempt from the final structure of the attempt it restarts from.
SHELL_MARKERS = frozenset({"structure"})
_QE_KEY = re.compile(r"^(control|system|electrons|ions|cell)\.[a-z][a-z0-9_]*(\(\d+(,\d+)*\))?$")
# The keys eventflow.codes.crystal.corrections.apply_changes accepts.
CRYSTAL_KEYS = frozenset({
    "MAXCYCLE", "FMIXING", "LEVSHIFT", "GUESSP", "MIXER", "ANDERSON", "BROYDEN", "SHRINK",
    "OPTGEOM_RESTART", "MAXTRADIUS", "SCALE_CELL", "TOLINTEG",
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


def parse_recovery(doc: Any, source: str = "recovery.yaml", *, lines: Lines | None = None,
                   codes: tuple[str, ...] = KNOWN_CODES) -> RecoveryConfig:
    """Validate a loaded recovery.yaml; raise ConfigError naming file, line and problem."""
    where = Where(source, lines)
    doc = mapping(doc if doc is not None else {}, (), where)
    known_keys(doc, (*_TOP, *codes), (), where, "section")
    limits = mapping(doc.get("limits") or {}, ("limits",), where)
    known_keys(limits, ("max_recoveries_per_material", "max_concurrent_recoveries"),
                ("limits",), where, "limit")
    defaults = _default_resources(doc.get("default_resources") or {}, where)
    caps = _caps(doc.get("caps") or {}, ("caps",), where, defaults)
    sections = {}
    for code in codes:
        sections[code] = _code_section(code, doc.get(code) or {}, where, caps, defaults)
    slurm_doc = mapping(doc.get("slurm") or {}, ("slurm",), where)
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
        max_recoveries_per_material=integer(limits.get("max_recoveries_per_material", 10),
                                         ("limits", "max_recoveries_per_material"), where, 0),
        max_concurrent_recoveries=integer(limits.get("max_concurrent_recoveries", 20),
                                       ("limits", "max_concurrent_recoveries"), where, 1),
        source=source,
    )


def _code_section(code: str, body: Any, where: Where, caps: Caps,
                  defaults: Mapping[str, Any]) -> CodeRules:
    body = mapping(body, (code,), where)
    parameters = dict(mapping(body.get("parameters") or {}, (code, "parameters"), where))
    for key in parameters:
        _check_parameter(code, key, (code, "parameters", key), where)
    restarts: dict[str, dict[str, Any]] = {}
    for name, changes in mapping(body.get("restarts") or {}, (code, "restarts"), where).items():
        changes = mapping(changes, (code, "restarts", name), where)
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


def _rule(kind: str, section: str, body: Any, path: Path, where: Where, caps: Caps,
          defaults: Mapping[str, Any], codes: Mapping[str, CodeRules], code: str | None) -> Rule:
    body = mapping(body or {}, path, where)
    known_keys(body, _RULE_KEYS, path, where, "rule key")
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
        max_retries=None if max_retries is None else integer(max_retries, (*path, "max_retries"),
                                                            where, 0),
        delay_s=duration(body.get("delay", 0), (*path, "delay"), where),
        caps=_caps(body.get("caps") or {}, (*path, "caps"), where, defaults).over(caps),
        exhausted=exhausted,
        instructions=str(body.get("instructions") or ""),
        restart=restart,
    )


def _stage(body: Any, path: Path, where: Where, codes: Mapping[str, CodeRules],
           code: str | None, rule_restart: str | None) -> Stage:
    body = mapping(body, path, where)
    known_keys(body, _STAGE_KEYS, path, where, "correction")
    changes = {}
    for key in ("set", "multiply"):
        values = mapping(body.get(key) or {}, (*path, key), where)
        if values and code is None:
            raise where.error((*path, key), "input parameters are code-specific: put this "
                                            "rule under qe: or crystal:, not slurm:")
        for name, value in values.items():
            _check_parameter(code or "", name, (*path, key, name), where)
            if key == "multiply":
                factor(value, (*path, key, name), where, minimum=None)
        changes[key] = dict(values)
    resources = dict(mapping(body.get("resources") or {}, (*path, "resources"), where))
    for name, given in resources.items():
        if name not in RESOURCE_NAMES:
            raise where.error((*path, "resources", name),
                              f"unknown resource {name!r}; known: {', '.join(RESOURCE_NAMES)}")
        floor = 1.0 if name in ("mem", "time") else None
        resources[name] = factor(given, (*path, "resources", name), where, minimum=floor)
    restart = body.get("restart")
    delay = body.get("delay")
    return Stage(
        name=str(body.get("name") or _describe(changes, resources)),
        set=changes["set"],
        multiply={k: float(v) for k, v in changes["multiply"].items()},
        resources=resources,
        max_retries=integer(body.get("max_retries", 1), (*path, "max_retries"), where, 0),
        delay_s=None if delay is None else duration(delay, (*path, "delay"), where),
        restart=rule_restart if restart is None else _restart(restart, (*path, "restart"),
                                                              where, codes),
        exclude_failed_node=bool(body.get("exclude_failed_node", False)),
    )


def _describe(changes: Mapping[str, Mapping[str, Any]], resources: Mapping[str, float]) -> str:
    parts = [f"{k}={v}" for k, v in changes["set"].items()]
    parts += [f"{k} x{v}" for k, v in changes["multiply"].items()]
    parts += [f"{k} x{v}" for k, v in resources.items()]
    return ", ".join(parts) or "resubmit as is"


def _restart(value: Any, path: Path, where: Where, codes: Mapping[str, CodeRules]) -> str | None:
    if value is None or value == NO_RESTART or value is False:
        return None
    for code, rules in codes.items():
        if str(value) not in rules.restarts:
            known = ", ".join(sorted(rules.restarts)) or "none defined"
            raise where.error(path, f"restart {value!r} is not defined in {code}.restarts "
                                    f"(known: {known})")
    return str(value)


def _check_parameter(code: str, key: Any, path: Path, where: Where) -> None:
    check = PARAMETER_CHECKS.get(code)
    if key in SHELL_MARKERS or (check is not None and check(str(key))):
        return
    hint = PARAMETER_HINTS.get(code, "a parameter the code plugin knows")
    raise where.error(path, f"unknown correction {key!r} for {code}: expected {hint}")


def _check_kind(kind: Any, path: Path, where: Where) -> None:
    if kind not in ERROR_KINDS:
        raise where.error(path, f"unknown error kind {kind!r}; known: "
                                f"{', '.join(sorted(ERROR_KINDS))}")


def _default_resources(body: Any, where: Where) -> dict[str, Any]:
    body = mapping(body, ("default_resources",), where)
    known_keys(body, RESOURCE_NAMES, ("default_resources",), where, "resource")
    for name, value in body.items():
        resource_value(name, value, ("default_resources", name), where)
    return dict(body)


def _caps(body: Any, path: Path, where: Where, defaults: Mapping[str, Any]) -> Caps:
    body = mapping(body, path, where)
    known_keys(body, tuple(_CAP_KEYS), path, where, "cap")
    values: dict[str, int | None] = {}
    for key, resource in _CAP_KEYS.items():
        if body.get(key) is None:
            values[key] = None
            continue
        cap = resource_value(resource, body[key], (*path, key), where)
        if resource in defaults and cap < resource_value(resource, defaults[resource], (), where):
            raise where.error((*path, key), f"cap {body[key]} is below the default "
                                            f"{resource} {defaults[resource]} (default_resources)")
        values[key] = cap
    return Caps(values["max_memory"], values["max_walltime"], values["max_cores"])
