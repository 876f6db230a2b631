"""Small validators for recovery.yaml values; each error names file, line and key path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventflow.core.recovery import units
from eventflow.core.yamltext import Lines, Path
from eventflow.errors import ConfigError


class Where:
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


def resource_value(name: str, value: Any, path: Path, where: Where) -> int:
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


def factor(value: Any, path: Path, where: Where, minimum: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise where.error(path, f"factor {value!r}: expected a positive number")
    if minimum is not None and value < minimum:
        raise where.error(path, f"factor {value} is below {minimum:g}: memory and walltime "
                                "are only ever raised by recovery")
    return float(value)


def duration(value: Any, path: Path, where: Where) -> int:
    try:
        return units.duration_seconds(value)
    except ValueError as exc:
        raise where.error(path, str(exc)) from None


def integer(value: Any, path: Path, where: Where, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise where.error(path, f"{value!r}: expected a whole number >= {minimum}")
    return value


def mapping(value: Any, path: Path, where: Where) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise where.error(path, f"expected a mapping, got {type(value).__name__}")
    return value


def known_keys(body: Mapping[Any, Any], known: tuple[str, ...], path: Path, where: Where,
                what: str) -> None:
    for key in body:
        if key not in known:
            raise where.error((*path, key), f"unknown {what} {key!r}; known: {', '.join(known)}")
