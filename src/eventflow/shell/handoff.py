"""What a step takes from the steps before it: the structure, and files such as QE's ``.save``.

A step works on the latest *completed* attempt of its prerequisite, never on a
superseded one, and gets its own copy of what is handed on (BAND and DOS run at
the same time on SP's charge density). The checksums of what was handed on are
recorded in an ``InputsPrepared`` event, so the log says exactly which files a
calculation started from.

What a code plugin may say (every method optional except render_inputs):

``run_sequence(step)``
    The programs the job runs, in order. An entry is either ``(program, input, output)``,
    run as ``program -in input > output`` (pw.x, bands.x, dos.x), or a mapping
    ``{"program": name, "args": [...], "stdin": file, "stdout": file, "stderr": file}``
    with every key but ``program`` optional (CRYSTAL: ``crystal < INPUT > crystal.out``).
    ``program`` is a name: ``params["executables"]`` (a code's config, e.g.
    config/crystal.yaml) maps it to the real program, a path or an argv list such as a
    container call; ``params["launcher"]`` (e.g. ``["srun"]``) goes in front.
``handoff(step)``
    ``[(source, destination)]`` or ``[(source, destination, required)]``: files or
    folders copied from the prerequisite's job folder. A required one (the default) that
    is missing stops the job from being written; an optional one is recorded as missing
    and the program itself reports what it lacks (CRYSTAL: "Wavefunction file can not be
    found"), so the failure is classified like any other.
``checkpoint_files(step)``
    What a restart copies from the attempt it continues: names (copied under the same
    name, QE's ``out``) or ``(source, destination)`` pairs (CRYSTAL: fort.9 -> fort.20).
    Copied when there, recorded as missing when not.
``final_structure(result)``
    The structure (``ase.Atoms``) a finished step leaves for the next one, or None;
    without it, ``result.properties["structure"]`` (symbols, positions, cell, pbc).
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eventflow.core import events as ev
from eventflow.core.jobscript import Command, InvalidJobSpec, check_relative_name, walltime_seconds
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


def handoff_of(plugin: Any, step: str) -> list[tuple[str, str, bool]]:
    """(source, destination, required) for each file ``step`` takes from its prerequisite."""
    if hasattr(plugin, "handoff"):
        entries = list(plugin.handoff(step))
    else:
        entries = list(DEFAULT_HANDOFF.get(plugin.name, {}).get(step, []))
    out = []
    for entry in entries:
        items = tuple(entry)
        if len(items) not in (2, 3):
            raise EventflowError(f"{plugin.name} handoff({step!r}): {entry!r} is not "
                                 "(source, destination) or (source, destination, required)")
        out.append((_inside(items[0], plugin, "handoff"), _inside(items[1], plugin, "handoff"),
                    bool(items[2]) if len(items) == 3 else True))
    return out


def checkpoints_of(plugin: Any, step: str) -> list[tuple[str, str]]:
    """(source, destination) for each file a restart of ``step`` copies from the attempt it
    continues; a plain name is copied under the same name."""
    if hasattr(plugin, "checkpoint_files"):
        entries = list(plugin.checkpoint_files(step))
    else:
        entries = list(DEFAULT_CHECKPOINTS.get(plugin.name, []))
    out = []
    for entry in entries:
        items = (entry, entry) if isinstance(entry, str) else tuple(entry)
        if len(items) != 2:
            raise EventflowError(f"{plugin.name} checkpoint_files({step!r}): {entry!r} is not "
                                 "a name or a (source, destination) pair")
        out.append((_inside(items[0], plugin, "checkpoint"),
                    _inside(items[1], plugin, "checkpoint")))
    return out


def _inside(name: Any, plugin: Any, what: str) -> str:
    try:
        return check_relative_name(name, f"{plugin.name} {what} file")
    except InvalidJobSpec as exc:
        raise EventflowError(str(exc)) from None


def executable_argv(program: str, executables: Mapping[str, Any] | None) -> list[str]:
    """The argv that runs ``program``: its entry in ``executables`` (a path, or an argv list
    such as ``["apptainer", "exec", "crystal.sif", "Pcrystal"]``), else the name itself."""
    value = (executables or {}).get(program, program)
    if isinstance(value, str) and value.strip():
        return [value]
    if (isinstance(value, Sequence) and not isinstance(value, str) and value
            and all(isinstance(v, str) and v for v in value)):
        return list(value)
    raise EventflowError(f"executables.{program}: expected a program (a name or a path) or an "
                         f"argv list, not {value!r}")


def launcher_argv(launcher: Any) -> list[str]:
    """The MPI launcher as an argv list: ``[]``, ``["srun"]``, ``["mpirun", "-np", "4"]``; a
    string is split into words like a shell would, but never run by one."""
    if launcher is None or launcher == "":
        return []
    if isinstance(launcher, str):
        try:
            return shlex.split(launcher)
        except ValueError as exc:
            raise EventflowError(f"launcher {launcher!r}: {exc}") from None
    if isinstance(launcher, Sequence) and all(isinstance(a, str | int) for a in launcher):
        return [str(a) for a in launcher]
    raise EventflowError(f"launcher: expected an argv list such as [srun], not {launcher!r}")


def job_commands(plugin: Any, step: str, executables: Mapping[str, Any] | None = None,
                 launcher: Any = None) -> list[Command]:
    """The job's commands for ``step`` from the plugin's ``run_sequence`` (see the module
    docstring): launcher, ``env OMP_NUM_THREADS=1``, the program, its arguments, redirections."""
    if executables is not None and not isinstance(executables, Mapping):
        raise EventflowError(f"executables: expected a mapping of program names to programs, "
                             f"not {executables!r}")
    front = [*launcher_argv(launcher), "env", "OMP_NUM_THREADS=1"]
    commands = []
    for entry in plugin.run_sequence(step):
        if isinstance(entry, Mapping):
            unknown = set(entry) - {"program", "args", "stdin", "stdout", "stderr"}
            if "program" not in entry or unknown:
                raise EventflowError(f"{plugin.name} run_sequence({step!r}): {dict(entry)!r} "
                                     "needs 'program' and may have args, stdin, stdout, stderr")
            args = [str(a) for a in entry.get("args") or ()]
            redirect = {k: entry.get(k) for k in ("stdin", "stdout", "stderr")}
            program = str(entry["program"])
        else:
            program, input_name, output_name = entry
            args = ["-in", input_name]
            redirect = {"stdin": None, "stdout": output_name, "stderr": None}
        try:
            commands.append(Command(argv=(*front, *executable_argv(program, executables), *args),
                                    **redirect))
        except InvalidJobSpec as exc:
            raise EventflowError(f"{plugin.name} step {step}: {exc}") from None
    return commands


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


def final_structure(plugin: Any, result: Any) -> Any:
    """The structure a parsed output leaves for the next step (an ``ase.Atoms``), or None."""
    if hasattr(plugin, "final_structure"):
        return plugin.final_structure(result)
    final = result.properties.get("structure")
    if not final:
        return None
    from ase import Atoms

    return Atoms(symbols=final["symbols"], positions=final["positions"], cell=final["cell"],
                 pbc=final.get("pbc", True))


# Every attempt of every step starts from the material's initial file; ASE's CIF reader
# took as long as writing the rest of the job folder. Keyed on the file's name (ASE picks
# the format by it) and content, and bounded: a watcher may prepare 100,000 materials.
_structures: OrderedDict[tuple[str, str], Any] = OrderedDict()
_STRUCTURES_KEPT = 256


def read_structure(path: Path) -> Any:
    """The structure in ``path`` (a private copy: callers may change it). Raises what ASE
    raises for a file it cannot read."""
    from ase.io import read  # imported here: ASE takes about a second to import

    key = (path.name, hashlib.sha256(path.read_bytes()).hexdigest())
    atoms = _structures.pop(key, None)
    if atoms is None:
        atoms = read(str(path))
    _structures[key] = atoms
    if len(_structures) > _STRUCTURES_KEPT:
        _structures.popitem(last=False)
    return atoms.copy()


def structure_of(project: Project, plugin: Any, state: MaterialState, calc: CalcState | None,
                 initial: Path) -> Any:
    """The structure to start from: the prerequisite's final one if it printed one, else the
    initial file. Outputs print no starting magnetic moments, so those of the initial file
    are kept when the final structure has the same atoms in the same order (CRYSTAL's
    ATOMSPIN of an antiferromagnet must survive OPT -> SP)."""
    start = read_structure(initial)
    if calc is not None:
        output = project.root / calc.directory / plugin.main_output(calc.step)
        if output.is_file():
            atoms = final_structure(plugin, plugin.parse(read_text(output)))
            if atoms is not None:
                moments = start.get_initial_magnetic_moments()
                if (moments.any() and not atoms.get_initial_magnetic_moments().any()
                        and atoms.get_chemical_symbols() == start.get_chemical_symbols()):
                    atoms.set_initial_magnetic_moments(moments)
                return atoms
    return start


def _handed(origin: str, src: Path | None, dest: Path, rel_src: str,
            rel_dest: str) -> dict[str, Any]:
    """Copy ``src`` to ``dest`` when it exists; the log's record of it either way."""
    record: dict[str, Any] = {"from": origin}
    if rel_src != rel_dest:
        record["source"] = rel_src
    if src is None or not src.exists():
        record["missing"] = True
        return record
    dest.parent.mkdir(parents=True, exist_ok=True)
    copy_tree(src, dest) if src.is_dir() else dest.write_bytes(src.read_bytes())
    record["sha256"] = tree_checksum(dest)
    return record


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
    launcher: Any = None,
    executables: Mapping[str, Any] | None = None,
) -> tuple[dict[str, str], list[Command], dict[str, Any]]:
    """Input files, job commands, and the record of what was handed on, for ``calc``."""
    params = dict(params)
    params.setdefault("walltime_seconds", walltime_seconds(resources.time))
    source = prerequisite(state, step_def)
    handed: dict[str, Any] = {}
    for rel_src, rel_dest, required in handoff_of(plugin, calc.step):
        if source is None:
            if not required:
                continue
            raise EventflowError(f"{calc.id}: needs {rel_src} from a prerequisite, none completed")
        src = project.root / source.directory / rel_src
        if not src.exists() and required:
            raise EventflowError(f"{calc.id}: {src} (from {source.id}) is missing")
        handed[rel_dest] = _handed(source.id, src, folder / rel_dest, rel_src, rel_dest)
    if calc.restart_from:
        previous = state.calcs.get(calc.restart_from)
        for rel_src, rel_dest in checkpoints_of(plugin, calc.step):
            src = project.root / previous.directory / rel_src if previous else None
            handed[rel_dest] = _handed(calc.restart_from, src, folder / rel_dest, rel_src,
                                       rel_dest)
    start_from = source
    if calc.changes.get("structure") == "last" and calc.restart_from in state.calcs:
        start_from = state.calcs[calc.restart_from]  # continue from where that attempt ended
    atoms = structure_of(project, plugin, state, start_from, initial)
    try:
        files = plugin.render_inputs(atoms, calc.step, params)
        notes = getattr(plugin, "input_notes", lambda *_: [])(atoms, calc.step, params)
    except ValueError as exc:
        raise EventflowError(f"{calc.id}: cannot write the inputs: {exc}") from exc
    for note in notes:  # a choice made explicitly, never silently (e.g. a low cutoff)
        logging.getLogger("eventflow").warning("%s: %s", calc.id, note)
    commands = job_commands(plugin, calc.step, executables, launcher)
    return files, commands, handed


def inputs_event(calc: CalcState, files: dict[str, str], handed: dict[str, Any]) -> ev.Event:
    checks = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()}
    return ev.InputsPrepared(calc.id, checks, handed)
