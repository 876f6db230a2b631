"""What a step takes from the steps before it: the structure, and files such as QE's ``.save``.

A step works on the latest *completed* attempt of its prerequisite, never on a
superseded one, and gets its own copy of what is handed on (BAND and DOS run at
the same time on SP's charge density). The checksums of what was handed on are
recorded in an ``InputsPrepared`` event, so the log says exactly which files a
calculation started from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from eventflow.core import events as ev
from eventflow.core.jobscript import Command, walltime_seconds
from eventflow.core.state import CalcState, MaterialState
from eventflow.errors import EventflowError
from eventflow.shell.jobs import copy_tree
from eventflow.shell.parsing import read_text
from eventflow.shell.project import Project

# What a step copies from its prerequisite (source, destination), for plugins that do not say.
DEFAULT_HANDOFF: dict[str, dict[str, list[tuple[str, str]]]] = {
    "qe": {"BAND": [("out", "out")], "DOS": [("out", "out")]},
}
# What a restart copies from the attempt it continues.
DEFAULT_CHECKPOINTS: dict[str, list[str]] = {"qe": ["out"]}


def handoff_of(plugin: Any, step: str) -> list[tuple[str, str]]:
    if hasattr(plugin, "handoff"):
        return list(plugin.handoff(step))
    return DEFAULT_HANDOFF.get(plugin.name, {}).get(step, [])


def checkpoints_of(plugin: Any, step: str) -> list[str]:
    if hasattr(plugin, "checkpoint_files"):
        return list(plugin.checkpoint_files(step))
    return DEFAULT_CHECKPOINTS.get(plugin.name, [])


def tree_checksum(path: Path) -> str:
    """One sha256 over the relative names and contents of every file under ``path``."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def prerequisite(state: MaterialState, step_def: Any) -> CalcState | None:
    """The latest completed attempt of the step's first prerequisite (None for a first step)."""
    if step_def is None:
        return None
    for name in step_def.after_ok + step_def.after_any:
        latest = state.latest(name)
        if latest is not None and latest.state == "completed":
            return latest
    return None


def structure_of(project: Project, plugin: Any, state: MaterialState, calc: CalcState | None,
                 initial: Path) -> Any:
    """The structure to start from: the prerequisite's final one if it printed one, else the
    initial file (walking back through the chain of prerequisites)."""
    from ase import Atoms
    from ase.io import read

    seen = 0
    while calc is not None and seen < 10:
        seen += 1
        output = project.root / calc.directory / plugin.main_output(calc.step)
        if output.is_file():
            final = plugin.parse(read_text(output)).properties.get("structure")
            if final:
                return Atoms(symbols=final["symbols"], positions=final["positions"],
                             cell=final["cell"], pbc=final.get("pbc", True))
        break
    return read(str(initial))


def prepare_inputs(
    project: Project,
    plugin: Any,
    state: MaterialState,
    calc: CalcState,
    params: dict[str, Any],
    folder: Path,
    step_def: Any,
    resources: Any,
    initial: Path,
    launcher: list[str] | None = None,
) -> tuple[dict[str, str], list[Command], dict[str, Any]]:
    """Input files, job commands, and the record of what was handed on, for ``calc``."""
    params = dict(params)
    params.setdefault("walltime_seconds", walltime_seconds(resources.time))
    source = prerequisite(state, step_def)
    handed: dict[str, Any] = {}
    for rel_src, rel_dest in handoff_of(plugin, calc.step):
        if source is None:
            raise EventflowError(f"{calc.id}: needs {rel_src} from a prerequisite, none completed")
        src = project.root / source.directory / rel_src
        if not src.exists():
            raise EventflowError(f"{calc.id}: {src} (from {source.id}) is missing")
        dest = folder / rel_dest
        copy_tree(src, dest) if src.is_dir() else dest.write_bytes(src.read_bytes())
        handed[rel_dest] = {"from": source.id, "sha256": tree_checksum(dest)}
    if calc.restart_from:
        previous = state.calcs.get(calc.restart_from)
        for rel in checkpoints_of(plugin, calc.step):
            src = project.root / previous.directory / rel if previous else None
            if src is not None and src.exists():
                dest = folder / rel
                copy_tree(src, dest) if src.is_dir() else dest.write_bytes(src.read_bytes())
                handed[rel] = {"from": calc.restart_from, "sha256": tree_checksum(dest)}
    atoms = structure_of(project, plugin, state, source, initial)
    try:
        files = plugin.render_inputs(atoms, calc.step, params)
    except ValueError as exc:
        raise EventflowError(f"{calc.id}: cannot write the inputs: {exc}") from exc
    launcher = [str(a) for a in launcher or []]
    commands = [
        Command(argv=(*launcher, "env", "OMP_NUM_THREADS=1", exe, "-in", inp), stdout=out)
        for exe, inp, out in plugin.run_sequence(calc.step)
    ]
    return files, commands, handed


def inputs_event(calc: CalcState, files: dict[str, str], handed: dict[str, Any]) -> ev.Event:
    checks = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()}
    return ev.InputsPrepared(calc.id, checks, handed)
