"""Walking a tree of job folders and finding the calculations in it (``eventflow import``).

Only names are looked at here (no file is read): a candidate is a main output by its
suffix, with the inputs of the same name and the scheduler logs of the folder; whether it
really is an output of a known program is for its code plugin to say, in the parse stage.
Unreadable folders, symlink loops and things named like outputs that are not files are
reported per path and skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import attrs

from eventflow.core.naming import NamingRule, input_of, job_log, output_stem


@attrs.frozen
class Candidate:
    """A calculation to parse: its main output (or, when ``pending``, its input only)."""

    path: str  # absolute path of the output (of the input when pending)
    folders: tuple[str, ...]  # folder names from the import root to the file's folder
    stem: str
    inputs: tuple[str, ...] = ()  # absolute paths of its inputs
    job_logs: tuple[tuple[str, str], ...] = ()  # (job id, absolute path)
    pending: bool = False  # an input with a job log but no output yet
    code: str | None = None  # the input's code, for a pending candidate


@attrs.frozen
class Skipped:
    path: str
    reason: str


@attrs.define
class Scan:
    candidates: list[Candidate] = attrs.field(factory=list)
    skipped: list[Skipped] = attrs.field(factory=list)
    files: int = 0
    folders: int = 0


def _entries(folder: str, scan: Scan) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        scan.skipped.append(Skipped(folder, f"cannot list the folder: {exc.strerror}"))
        return []


def _stat_problem(path: str) -> str | None:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def walk(root: Path, rule: NamingRule, *, follow_links: bool = False) -> Scan:
    """Every candidate calculation under ``root``, folder by folder, in name order."""
    scan = Scan()
    start = os.path.abspath(root)
    try:
        first = os.stat(start)
    except OSError as exc:
        raise FileNotFoundError(f"{root}: {exc.strerror}") from exc
    seen = {(first.st_dev, first.st_ino)}
    stack: list[tuple[str, tuple[str, ...]]] = [(start, ())]
    while stack:
        folder, names = stack.pop()
        scan.folders += 1
        subfolders = _folder(folder, names, rule, scan)
        for path, name in reversed(subfolders):
            if os.path.islink(path):
                if not follow_links:
                    scan.skipped.append(Skipped(path, "a symbolic link to a folder: not "
                                                      "followed (use --follow-links)"))
                    continue
                try:
                    st = os.stat(path)
                except OSError as exc:
                    scan.skipped.append(Skipped(path, f"cannot follow the link: {exc.strerror}"))
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    scan.skipped.append(Skipped(path, "symbolic link loop: this folder is "
                                                      "already being imported"))
                    continue
                seen.add((st.st_dev, st.st_ino))
            stack.append((path, (*names, name)))
    return scan


def _folder(folder: str, names: tuple[str, ...], rule: NamingRule,
            scan: Scan) -> list[tuple[str, str]]:
    """Record the folder's candidates in ``scan``; return its sub-folders (path, name)."""
    outputs: list[tuple[str, str]] = []  # (stem, path)
    inputs: dict[str, list[tuple[str, str]]] = {}  # stem -> [(code, path)]
    logs: list[tuple[str, str | None, str]] = []  # (job id, name, path)
    subfolders = []
    for entry in _entries(folder, scan):
        name, path = entry.name, entry.path
        try:
            is_dir = entry.is_dir()
            is_file = entry.is_file()
        except OSError:
            is_dir = is_file = False
        if is_dir:
            if name in rule.skip_folders:
                continue
            if output_stem(rule, name) is not None and input_of(rule, name) is None:
                scan.skipped.append(Skipped(path, "a folder named like an output, not a file"))
            subfolders.append((path, name))
            continue
        scan.files += 1
        log = job_log(rule, name)
        if log is not None:
            logs.append((log[0], log[1], path))
            continue
        stem = output_stem(rule, name)
        code_stem = input_of(rule, name)
        if not is_file and (stem is not None or code_stem is not None):
            problem = _stat_problem(path) or "not a regular file"
            scan.skipped.append(Skipped(path, f"cannot read: {problem}"))
            continue
        if code_stem is not None:
            inputs.setdefault(code_stem[1], []).append((code_stem[0], path))
        elif stem is not None:
            outputs.append((stem, path))
    if len(outputs) > 1:
        outputs = [o for o in outputs if os.path.basename(o[1]) not in rule.auxiliary] or outputs
    scan.candidates.extend(_candidates(folder, names, outputs, inputs, logs))
    return subfolders


def _candidates(folder: str, names: tuple[str, ...], outputs: list[tuple[str, str]],
                inputs: dict[str, list[tuple[str, str]]],
                logs: list[tuple[str, str | None, str]]) -> Iterator[Candidate]:
    stems = {stem for stem, _ in outputs}
    pending = {stem: found for stem, found in inputs.items() if stem not in stems}
    only_one = len(outputs) == 1 if outputs else len(pending) == 1
    every_input = tuple(p for found in inputs.values() for _, p in found)

    def logs_of(stem: str) -> tuple[tuple[str, str], ...]:
        return tuple((job, path) for job, name, path in logs
                     if name == stem or (name is None and only_one))

    for stem, path in outputs:
        own = tuple(p for _, p in inputs.get(stem, ()))
        yield Candidate(path, names, stem, own or (every_input if len(outputs) == 1 else ()),
                        logs_of(stem))
    for stem, found in pending.items():
        job_logs = logs_of(stem)
        if job_logs and not outputs:
            code, path = found[0]
            yield Candidate(path, names, stem, tuple(p for _, p in found), job_logs,
                            pending=True, code=code)
