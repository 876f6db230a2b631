"""From a finished job's files to interpretation events.

The observation (the completion record) is already in the log as JobFinished;
here the step's main output is read and handed to its code plugin, whose
verdict, with the parser's version, becomes CalculationSucceeded (plus
PropertiesExtracted) or CalculationFailed.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from pathlib import Path
from typing import Any

from eventflow.core import events as ev
from eventflow.core.kinds import kind_from_scheduler_state
from eventflow.core.state import CalcState, MaterialState
from eventflow.errors import UnreadableOutput
from eventflow.shell.jobs import open_nonblocking
from eventflow.shell.parsing import decode_output
from eventflow.shell.project import Project

MAX_OUTPUT_BYTES = 256 * 1024 * 1024

UNITS = (
    ("_ev_per_ang", "eV/Å"), ("_ev", "eV"), ("_ang3", "Å^3"), ("_ang", "Å"), ("_kbar", "kbar"),
    ("_g_cm3", "g/cm^3"), ("_deg", "°"), ("_ha", "Ha"), ("_ry", "Ry"), ("_s", "s"),
    ("_bohr_mag", "μB/cell"), ("_mu_b", "μB"),
)


def _read(path: Path) -> str | None:
    """A program's output as text; None if absent, unreadable or not a regular file (a FIFO
    would block the watcher). Of a huge one, the head and the end (which says how it ended)."""
    try:
        with open(path, "rb", opener=open_nonblocking) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return None
            if info.st_size > MAX_OUTPUT_BYTES:
                head = handle.read(MAX_OUTPUT_BYTES // 2)
                handle.seek(-MAX_OUTPUT_BYTES // 2, 2)
                data = head + b"\n" + handle.read()
            else:
                data = handle.read()
    except OSError:
        return None
    return decode_output(data)


def unit_of(name: str) -> str:
    for suffix, unit in UNITS:
        if name.endswith(suffix):
            return unit
    return ""


def as_properties(values: dict[str, Any]) -> dict[str, Any]:
    """The scalar, finite values of a parse, named with their units."""
    out = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[name] = {"value": value, "unit": unit_of(name)}
    return out


def _parsed(parse: Any, folder: Path, output: str, *args: Any) -> Any:
    try:
        return parse(*args)
    except Exception as exc:  # whatever a parser's bug raises, the run itself said nothing
        raise UnreadableOutput(f"{folder / output}: the parser {parse.__qualname__} raised "
                               f"{type(exc).__name__}: {exc}") from exc


def interpret(
    project: Project,
    plugins: dict[str, Any],
    state: MaterialState,
    calc: CalcState,
    record: dict[str, Any],
    params: dict[str, Any],
    scheduler_kind: str | None = None,
) -> list[ev.Event]:
    """Interpretation events for a finished job. ``scheduler_kind`` is what the scheduler says
    ended it (cancelled, out_of_memory, node_failure, walltime), when it ended by a signal."""
    plugin = plugins.get(state.code)
    if plugin is None:
        return [ev.CalculationFailed(calc.id, "input_error",
                                     [{"line": 0, "text": f"no plugin for code {state.code!r}"}],
                                     "eventflow")]
    folder = project.root / calc.directory
    text = _read(folder / plugin.main_output(calc.step))
    exit_code = record.get("exit_code")
    time_limit = record.get("reason") == "time_limit"
    if hasattr(plugin, "interpret"):
        result = _parsed(plugin.interpret, folder, plugin.main_output(calc.step),
                         text, exit_code, params)
    elif text is None:
        kind = "walltime" if time_limit else "missing_file"
        return [ev.CalculationFailed(
            calc.id, kind,
            [{"line": 0, "text": f"no output {plugin.main_output(calc.step)} (exit {exit_code})"}],
            getattr(plugin, "parser_version", plugin.name))]
    else:
        result = _parsed(plugin.parse, folder, plugin.main_output(calc.step), text)
    if hasattr(plugin, "check"):  # judgements that need the run's parameters
        # (a ValueError: they changed since the inputs were written; the parse's own stands)
        with contextlib.suppress(ValueError):
            result = plugin.check(result, params)
    parser = result.parser or getattr(plugin, "parser_version", plugin.name)
    kind = result.error_kind
    if time_limit and kind in (None, "truncated"):
        kind = "walltime"
    elif (scheduler_kind is not None and exit_code not in (0, None)
          and (kind in (None, "truncated") or result.status == "ok")):
        kind = scheduler_kind
    evidence = [f.to_dict() for f in result.errors]
    if scheduler_kind is not None and kind == scheduler_kind:
        evidence.append({"line": 0, "text": f"the scheduler ended the job: {scheduler_kind}"})
    if result.status != "ok" or kind is not None:
        return [ev.CalculationFailed(calc.id, kind or "truncated", evidence, parser)]
    if exit_code not in (0, None):
        return [ev.CalculationFailed(
            calc.id, "truncated",
            [{"line": 0, "text": f"the job exited with {exit_code} after a complete output"}],
            parser)]
    problems = list(getattr(plugin, "sanity_problems", lambda r: [])(result))
    if problems:
        return [ev.ResultRejected(calc.id, problems, parser),
                ev.CalculationFailed(calc.id, "unphysical_result",
                                     [{"line": 0, "text": p} for p in problems], parser)]
    values = dict(result.properties)
    values.update(_postprocessed(folder, state.code, calc.step))
    if result.energy_ev is not None:
        values.setdefault("total_energy_ev", result.energy_ev)
    if result.band_gap_ev is not None:
        values.setdefault("band_gap_ev", result.band_gap_ev)
    events: list[ev.Event] = []
    props = as_properties(values)
    if props:
        events.append(ev.PropertiesExtracted(calc.id, props, parser))
    summary: dict[str, Any] = {"program": result.program, "calculation": result.calculation}
    if result.warnings:
        summary["warnings"] = list(result.warnings)
    if "residual_pressure_kbar" in values:  # the policy's cutoff rule reads it (core.policy)
        summary["residual_pressure_kbar"] = values["residual_pressure_kbar"]
    events.append(ev.CalculationSucceeded(calc.id, parser, summary))
    from eventflow.shell.handoff import final_structure

    atoms = final_structure(plugin, result)
    if atoms is not None:
        _save_structure(project, state, calc, atoms)
    return events


def _save_structure(project: Project, state: MaterialState, calc: CalcState, atoms: Any) -> None:
    """Keep the final structure in the ASE database (a projection: derivable from the output)."""
    from ase.db import connect

    with connect(str(project.structures_db)) as db:
        if db.count(calculation_id=calc.id) == 0:
            db.write(atoms, material_id=state.id, step=calc.step, attempt=calc.attempt,
                     calculation_id=calc.id, kind="final")


def _postprocessed(folder: Path, code: str, step: str) -> dict[str, Any]:
    if code != "qe":
        return {}
    from eventflow.codes.qe import postproc

    texts = {}
    for name in postproc.OUTPUTS.get(step, ()):
        text = _read(folder / name)
        if text is not None:
            texts[name] = text
    try:
        return postproc.extract(step, texts)
    except (ValueError, IndexError):
        return {}


def classify_lost(
    project: Project, calc: CalcState, sched_state: str | None, plugins: dict[str, Any]
) -> tuple[str | None, list[str]]:
    """Why a job left the queue without a record: its scheduler state, else its log file."""
    evidence: list[str] = []
    kind = None
    slurm = plugins.get("slurm")
    if slurm is not None and sched_state:
        kind = kind_from_scheduler_state(sched_state)
        evidence.append(f"scheduler state {sched_state}")
    folder = project.root / calc.directory
    if slurm is not None and calc.job_id:
        for log in (folder / f"slurm-{calc.job_id}.out", folder / f"slurm-{calc.job_id}.err"):
            text = _read(log) if log.is_file() else None
            if text:
                result = slurm.parse(text)
                if result.error_kind:
                    kind = kind or result.error_kind
                    evidence.extend(f"{log.name}:{f.line}: {f.text}" for f in result.errors)
    return kind, evidence
