"""Which material and which step a calculation found on disk belongs to, from its name.

Pure: the rule is read from config/naming.yaml by the shell and handed in as a
``NamingRule``; the functions take names and return names. A group's history
arrives as folders named after their own conventions (``mat_1_dia_opt_BULK_OPTGEOM``,
``NaCl_sp``, ``NaCl_band``, eventflow's own ``calcs/<material>/<STEP>/<attempt>/pw.out``),
so the rule is configuration, not code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from eventflow.core.ids import material_id_from_name
from eventflow.errors import ConfigError

LAYOUT_FIELDS = ("material", "step", "attempt")
_STEP_SAFE = re.compile(r"[^A-Za-z0-9_]+")


@attrs.frozen
class NamingRule:
    """The parsed naming.yaml. Tokens and generic names are stored lower-case."""

    separators: str = "_."
    step_tokens: Mapping[str, str] = attrs.field(factory=dict)
    stop_tokens: frozenset[str] = frozenset()
    calculation_steps: Mapping[str, str] = attrs.field(factory=dict)
    generic_names: frozenset[str] = frozenset()
    layouts: tuple[tuple[str, ...], ...] = ()
    outputs: tuple[str, ...] = (".out",)
    auxiliary: frozenset[str] = frozenset()
    inputs: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    job_logs: tuple[re.Pattern[str], ...] = ()
    skip_folders: frozenset[str] = frozenset()

    @property
    def steps(self) -> frozenset[str]:
        """Every step name the rule can give (what a {step} folder of a layout may be)."""
        return frozenset(self.step_tokens.values()) | frozenset(self.calculation_steps.values())


@attrs.frozen
class Naming:
    """Where a calculation belongs: its material, its step, and the attempt a layout said."""

    material: str
    step: str
    attempt: int | None = None


# --- reading the configuration --------------------------------------------------------------


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise ConfigError(f"{where}: expected a list of names")
    return [str(v) for v in value]


def _mapping(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of name: STEP")
    out = {}
    for key, step in value.items():
        out[str(key)] = check_step_name(str(step), f"{where}.{key}")
    return out


def check_step_name(step: str, where: str = "step") -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", step):
        raise ConfigError(f"{where}: {step!r} is not a step name (a letter, then letters, "
                          "digits or _)")
    return step


def _layout(text: str, where: str) -> tuple[str, ...]:
    fields = []
    for part in text.strip("/").split("/"):
        match = re.fullmatch(r"\{(\w+)\}", part)
        if match is None or match.group(1) not in LAYOUT_FIELDS:
            raise ConfigError(f"{where}: {text!r}: each part must be one of "
                              + ", ".join("{" + f + "}" for f in LAYOUT_FIELDS))
        fields.append(match.group(1))
    if "material" not in fields:
        raise ConfigError(f"{where}: {text!r} has no {{material}}")
    return tuple(fields)


def _pattern(text: str, where: str) -> re.Pattern[str]:
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise ConfigError(f"{where}: {text!r} is not a regular expression: {exc}") from None
    if "job" not in pattern.groupindex:
        raise ConfigError(f"{where}: {text!r} has no (?P<job>...) group for the job id")
    return pattern


def rule_from_config(doc: Mapping[str, Any] | None, source: str = "naming.yaml") -> NamingRule:
    """The rule from the loaded YAML document; a bad entry is a ConfigError naming it."""
    doc = doc or {}
    naming = doc.get("naming") or {}
    files = doc.get("files") or {}
    if not isinstance(naming, dict) or not isinstance(files, dict):
        raise ConfigError(f"{source}: 'naming' and 'files' must be mappings")
    seps = str(naming.get("separators", "_."))
    if not seps:
        raise ConfigError(f"{source}: naming.separators must not be empty")
    inputs = files.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise ConfigError(f"{source}: files.inputs must map a code to its input names")
    return NamingRule(
        separators=seps,
        step_tokens={k.lower(): v for k, v in
                     _mapping(naming.get("step_tokens"), f"{source}: naming.step_tokens").items()},
        stop_tokens=frozenset(s.lower() for s in _strings(naming.get("stop_tokens"),
                                                          f"{source}: naming.stop_tokens")),
        calculation_steps={k.upper(): v for k, v in _mapping(
            naming.get("calculation_steps"), f"{source}: naming.calculation_steps").items()},
        generic_names=frozenset(s.lower() for s in _strings(naming.get("generic_names"),
                                                            f"{source}: naming.generic_names")),
        layouts=tuple(_layout(str(t), f"{source}: naming.layouts")
                      for t in _strings(naming.get("layouts"), f"{source}: naming.layouts")),
        outputs=tuple(_strings(files.get("outputs"), f"{source}: files.outputs")) or (".out",),
        auxiliary=frozenset(_strings(files.get("auxiliary"), f"{source}: files.auxiliary")),
        inputs={str(code): tuple(_strings(names, f"{source}: files.inputs.{code}"))
                for code, names in inputs.items()},
        job_logs=tuple(_pattern(t, f"{source}: files.job_logs")
                       for t in _strings(files.get("job_logs"), f"{source}: files.job_logs")),
        skip_folders=frozenset(_strings(files.get("skip_folders"),
                                        f"{source}: files.skip_folders")),
    )


# --- files --------------------------------------------------------------------------------


def job_log(rule: NamingRule, filename: str) -> tuple[str, str | None] | None:
    """(job id, name of the calculation or None) if ``filename`` is a scheduler log."""
    for pattern in rule.job_logs:
        match = pattern.fullmatch(filename)
        if match is not None:
            name = match.groupdict().get("name")
            return match.group("job"), name
    return None


def output_stem(rule: NamingRule, filename: str) -> str | None:
    """The name of a candidate main output without its suffix, or None if it is not one."""
    lower = filename.lower()
    for suffix in rule.outputs:
        if lower.endswith(suffix.lower()) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return None


def input_of(rule: NamingRule, filename: str) -> tuple[str, str] | None:
    """(code, stem) if ``filename`` is an input of a code (by suffix or exact name)."""
    for code, names in rule.inputs.items():
        for name in names:
            if name.startswith("."):
                if filename.lower().endswith(name.lower()) and len(filename) > len(name):
                    return code, filename[: -len(name)]
            elif filename == name:
                return code, filename
    return None


# --- names -> material and step -----------------------------------------------------------


def split_name(rule: NamingRule, name: str) -> tuple[str, str | None]:
    """(material name, step or None) from one calculation name, by the token rule."""
    seps = re.escape(rule.separators)
    tokens = list(re.finditer(f"[^{seps}]+", name))
    if not tokens:
        return name, None
    end = None
    step = None
    for index, token in enumerate(tokens[1:], start=1):
        word = token.group().lower()
        if end is None and (word in rule.step_tokens or word in rule.stop_tokens):
            end = index
        if end is not None and word in rule.step_tokens:
            step = rule.step_tokens[word]
            break
    if end is None:
        return name.strip(rule.separators) or name, None
    return name[: tokens[end].start()].rstrip(rule.separators), step


def _layout_match(rule: NamingRule, folders: Sequence[str]) -> Naming | None:
    for layout in rule.layouts:
        if len(folders) < len(layout):
            continue
        tail = folders[len(folders) - len(layout):]
        found: dict[str, str] = {}
        for field, part in zip(layout, tail, strict=True):
            if field == "step" and part.upper() not in rule.steps:
                break
            if field == "attempt" and not part.isdigit():
                break
            found[field] = part.upper() if field == "step" else part
        else:
            attempt = int(found["attempt"]) if "attempt" in found else None
            return Naming(found["material"], found.get("step", ""), attempt)
    return None


def step_of(rule: NamingRule, calculation: str | None) -> str:
    """The step for a parser's calculation type when the name gives none."""
    if calculation:
        known = rule.calculation_steps.get(calculation.upper())
        if known:
            return known
        cleaned = _STEP_SAFE.sub("_", calculation.upper()).strip("_")
        if cleaned and cleaned[0].isalpha():
            return cleaned[:32]
    return "CALC"


def name_calculation(
    rule: NamingRule,
    folders: Sequence[str],
    stem: str,
    calculation: str | None = None,
    input_step: str | None = None,
) -> Naming:
    """Material and step of the calculation whose main output is ``folders/stem.<suffix>``.

    ``folders`` are the folder names from the import root down to the file's folder;
    ``input_step`` is what an input says (BAND or DOS from a .d3); ``calculation`` is the
    parser's calculation type. The name wins over the input, the input over the parser.
    """
    attempt = None
    if stem.lower() in rule.generic_names:
        found = _layout_match(rule, folders)
        if found is not None:
            material, step, attempt = found.material, found.step or None, found.attempt
        else:
            named = [f for f in folders if f.lower() not in rule.generic_names]
            material, step = split_name(rule, named[-1]) if named else (stem, None)
    else:
        material, step = split_name(rule, stem)
    step = step or input_step or step_of(rule, calculation)
    return Naming(material_id_from_name(material), step, attempt)


def hill_formula(symbols: Sequence[str]) -> str:
    """The Hill formula of a list of element symbols (C and H first when there is C)."""
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    order = sorted(counts)
    if "C" in counts:
        order = ["C", *(["H"] if "H" in counts else []),
                 *(s for s in order if s not in ("C", "H"))]
    return "".join(s + (str(counts[s]) if counts[s] > 1 else "") for s in order)
