"""Reading an output file and handing its text to the right code plugin."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from eventflow.errors import EventflowError

MAX_BYTES = 512 * 1024 * 1024


def plugins() -> dict[str, Any]:
    """Code plugins by name: the built-in ones, plus any registered under ``eventflow.codes``."""
    return dict(_plugins())


@functools.cache
def _plugins() -> dict[str, Any]:
    # Looked up once per process: scanning the installed distributions' entry points took
    # longer than parsing the output it was asked for.
    from importlib.metadata import entry_points

    found: dict[str, Any] = {}
    for name, module in (("qe", "eventflow.codes.qe"), ("crystal", "eventflow.codes.crystal"),
                         ("slurm", "eventflow.codes.slurm"), ("noop", "eventflow.codes.noop")):
        try:
            mod = __import__(module, fromlist=["PLUGIN"])
            found[name] = mod.PLUGIN
        except (ImportError, AttributeError):
            continue
    for entry in entry_points(group="eventflow.codes"):
        if entry.name not in found:
            try:
                found[entry.name] = entry.load()
            except Exception as exc:  # a broken third-party plugin must not stop eventflow
                import logging

                logging.getLogger("eventflow").warning("code plugin %s not loaded: %s",
                                                       entry.name, exc)
    return found


def decode_output(raw: bytes) -> str:
    """A program's output bytes as text: undecodable bytes, and NUL (a crashed node's file
    often ends in blocks of zeros), become U+FFFD. Evidence quoted from it then holds no NUL,
    which PostgreSQL's text cannot store, and reads the same on every store."""
    return raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise EventflowError(f"{path}: {size} bytes is too large to parse")
        raw = path.read_bytes()
    except OSError as exc:
        raise EventflowError(f"{path}: cannot read: {exc.strerror}") from exc
    if b"\x00" in raw[:65536]:
        raise EventflowError(f"{path}: binary data, not a program output")
    return decode_output(raw)


def parse_text(text: str, code: str | None = None, *, source: str = "text") -> Any:
    available = plugins()
    if code is None:
        for name in ("crystal", "qe", "slurm"):
            plugin = available.get(name)
            if plugin is not None and plugin.detect(text):
                code = name
                break
        else:
            raise EventflowError(f"{source}: cannot tell which program wrote it (use --code)")
    plugin = available.get(code)
    if plugin is None:
        raise EventflowError(f"{source}: no parser for code {code!r}")
    return plugin.parse(text)


def parse_file(path: Path, code: str | None = None) -> Any:
    return parse_text(read_text(path), code, source=str(path))
