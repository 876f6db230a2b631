"""Changes to Fortran namelist inputs (pw.x, bands.x, dos.x) as pure text transforms.

The recovery policy asks for changes such as ``{"electrons.mixing_beta": 0.3}`` or
``{"electrons.mixing_beta": {"multiply": 0.5}}``; :func:`apply_changes` rewrites only
the assignment concerned and leaves every other line of the input as it was, so a
diff of the old and new input shows exactly what the policy did.
"""

from __future__ import annotations

import re
from typing import Any

# pw.x namelists in the order pw.x reads them; a missing one is inserted in this order.
PW_NAMELISTS: tuple[str, ...] = ("control", "system", "electrons", "ions", "cell")

# Change keys the runner itself acts on ("structure: last" renders the next attempt from
# the last structure); they are not namelist variables, so apply_changes skips them.
# Kept equal to eventflow.core.recovery.parse.SHELL_MARKERS (a unit test checks).
RUNNER_MARKERS = frozenset({"structure"})

# pw.x defaults (INPUT_PW), used when a change multiplies a variable the input omits.
QE_DEFAULTS: dict[str, float] = {
    "electrons.mixing_beta": 0.7,
    "electrons.conv_thr": 1e-6,
    "electrons.electron_maxstep": 100,
    "electrons.mixing_ndim": 8,
    "control.nstep": 50,
    "control.max_seconds": 1e7,
    "ions.trust_radius_max": 0.8,
    "ions.trust_radius_ini": 0.5,
    "cell.press_conv_thr": 0.5,
}

_NAMELIST_START = re.compile(r"^\s*&(\w+)", re.IGNORECASE)
_ASSIGNMENT = re.compile(
    r"([A-Za-z_][\w%]*(?:\(\s*[\d\s,]+\))?)\s*=\s*('[^']*'|\"[^\"]*\"|[^,\s!]+)"
)
_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eEdD][-+]?\d+)?$")


def fortran_value(value: Any) -> str:
    """``value`` written as a Fortran namelist literal."""
    if isinstance(value, bool):
        return ".true." if value else ".false."
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise ValueError(f"cannot write {value!r} ({type(value).__name__}) into a Fortran namelist")


def parse_fortran_value(text: str) -> bool | int | float | str:
    """A Fortran namelist literal as a Python value (the inverse of :func:`fortran_value`)."""
    token = text.strip()
    lowered = token.lower()
    if lowered in {".true.", ".t.", "t", "true"}:
        return True
    if lowered in {".false.", ".f.", "f", "false"}:
        return False
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1].replace(token[0] * 2, token[0])
    if _INT.match(token):
        return int(token)
    if _FLOAT.match(token):
        return float(lowered.replace("d", "e"))
    return token


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "!":
            return line[:i]
    return line


def _blocks(lines: list[str]) -> dict[str, tuple[int, int]]:
    """Namelist name (lower case) -> (index of the &NAME line, index of the closing '/')."""
    found: dict[str, tuple[int, int]] = {}
    current: tuple[str, int] | None = None
    for i, line in enumerate(lines):
        if current is None:
            match = _NAMELIST_START.match(line)
            if match:
                current = (match.group(1).lower(), i)
                if _strip_comment(line)[match.end() :].strip() == "/":  # "&CELL /" on one line
                    found[current[0]] = (i, i)
                    current = None
        elif _strip_comment(line).strip() == "/":
            found[current[0]] = (current[1], i)
            current = None
    return found


def _key(name: str) -> str:
    return re.sub(r"\s+", "", name).lower()


def read_namelists(text: str) -> dict[str, dict[str, bool | int | float | str]]:
    """Every namelist of ``text``: {namelist: {variable: value}}, names in lower case."""
    lines = text.splitlines()
    result: dict[str, dict[str, bool | int | float | str]] = {}
    for name, (start, end) in _blocks(lines).items():
        values: dict[str, bool | int | float | str] = {}
        for line in lines[start + 1 : end]:
            for key, raw in _ASSIGNMENT.findall(_strip_comment(line)):
                values[_key(key)] = parse_fortran_value(raw)
        result[name] = values
    return result


def _split_key(change_key: str) -> tuple[str, str]:
    namelist, dot, variable = change_key.partition(".")
    if not dot or not namelist or not variable:
        raise ValueError(
            f"change {change_key!r} must name 'namelist.variable', e.g. 'electrons.mixing_beta'"
        )
    return namelist.lower(), _key(variable)


def _find_assignment(lines: list[str], start: int, end: int, variable: str) -> tuple[int, Any]:
    for i in range(start + 1, end):
        for match in _ASSIGNMENT.finditer(_strip_comment(lines[i])):
            if _key(match.group(1)) == variable:
                return i, match
    return -1, None


def _set(lines: list[str], namelist: str, variable: str, value: Any) -> list[str]:
    blocks = _blocks(lines)
    if namelist not in blocks:
        lines = _insert_namelist(lines, namelist, blocks)
        blocks = _blocks(lines)
    start, end = blocks[namelist]
    if start == end:  # "&CELL /" on one line: open it up first
        lines = lines[:start] + [f"&{namelist.upper()}", "/"] + lines[start + 1 :]
        start, end = start, start + 1
    index, match = _find_assignment(lines, start, end, variable)
    literal = fortran_value(value)
    if index < 0:
        return lines[:end] + [f"   {variable} = {literal}"] + lines[end:]
    line = lines[index]
    new_line = line[: match.start(2)] + literal + line[match.end(2) :]
    return lines[:index] + [new_line] + lines[index + 1 :]


def _remove(lines: list[str], namelist: str, variable: str) -> list[str]:
    blocks = _blocks(lines)
    if namelist not in blocks:
        return lines
    start, end = blocks[namelist]
    index, match = _find_assignment(lines, start, end, variable)
    if index < 0:
        return lines
    line = lines[index]
    rest = (line[: match.start()] + line[match.end() :]).strip().strip(",").strip()
    if not rest:
        return lines[:index] + lines[index + 1 :]
    return (
        lines[:index]
        + [line[: match.start()] + line[match.end() :].lstrip(", ")]
        + lines[index + 1 :]
    )


def _insert_namelist(
    lines: list[str], namelist: str, blocks: dict[str, tuple[int, int]]
) -> list[str]:
    if namelist not in PW_NAMELISTS or "control" not in blocks:
        raise ValueError(f"the input has no &{namelist.upper()} namelist to change")
    order = PW_NAMELISTS.index(namelist)
    after = max(
        (blocks[n][1] for n in PW_NAMELISTS[:order] if n in blocks), default=blocks["control"][1]
    )
    return lines[: after + 1] + [f"&{namelist.upper()}", "/"] + lines[after + 1 :]


def _new_value(text: str, change_key: str, spec: Any) -> tuple[str, Any]:
    """('set', value) or ('remove', None) for one change specification."""
    if not isinstance(spec, dict):
        return "set", spec
    if set(spec) == {"set"}:
        return "set", spec["set"]
    if set(spec) == {"remove"}:
        return "remove", None
    if set(spec) == {"multiply"}:
        namelist, variable = _split_key(change_key)
        current = read_namelists(text).get(namelist, {}).get(variable)
        if current is None:
            current = QE_DEFAULTS.get(f"{namelist}.{variable}")
        if not isinstance(current, int | float) or isinstance(current, bool):
            raise ValueError(
                f"cannot multiply {change_key}: the input has no numeric value and pw.x "
                "has no default known here"
            )
        product = current * spec["multiply"]
        return "set", int(round(product)) if isinstance(current, int) else float(product)
    raise ValueError(
        f"change {change_key!r}: expected a value or one of {{'set': v}}, {{'multiply': f}}, "
        f"{{'remove': true}}, got {spec!r}"
    )


def change_text(text: str, changes: dict[str, Any]) -> str:
    """``text`` (one namelist input) with every change applied, other lines untouched."""
    lines = text.splitlines()
    for change_key, spec in changes.items():
        namelist, variable = _split_key(change_key)
        action, value = _new_value("\n".join(lines), change_key, spec)
        if action == "remove":
            lines = _remove(lines, namelist, variable)
        else:
            lines = _set(lines, namelist, variable, value)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def apply_changes(inputs: dict[str, str], changes: dict[str, Any]) -> dict[str, str]:
    """The input files with ``changes`` applied (a new dict; ``inputs`` is not modified).

    A change ``namelist.variable`` goes to every file that has that namelist; a pw.x
    namelist missing from the pw.x input (say &IONS in an scf input) is added to the
    files with &CONTROL. A change that fits no file is an error, never silently lost;
    only the runner's own markers (RUNNER_MARKERS) are passed over.
    """
    result = dict(inputs)
    for change_key, spec in changes.items():
        if change_key in RUNNER_MARKERS:
            continue
        namelist, _ = _split_key(change_key)
        has_it = [name for name, text in result.items() if namelist in read_namelists(text)]
        if not has_it and namelist in PW_NAMELISTS:
            has_it = [name for name, text in result.items() if "control" in read_namelists(text)]
        if not has_it:
            raise ValueError(
                f"change {change_key!r}: no input file has a &{namelist.upper()} namelist "
                f"(files: {', '.join(sorted(result)) or 'none'})"
            )
        for name in has_it:
            result[name] = change_text(result[name], {change_key: spec})
    return result
