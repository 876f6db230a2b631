"""From parsed calculations to the events each material gets (``eventflow import``).

A material's events are the ones eventflow would have recorded had it run the
calculations: registered, then per calculation requested, submitted, finished and
the parser's verdict (with properties), or, for a job still in the queue, requested
and submitted only. They are checked against the material's lifecycle here, on the
material's folded state, so what reaches the log is legal; a material with any
illegal event is left out whole.

Idempotency: each calculation's request carries the key ``import:<material>/<step>:<sha256
of the output>`` (``...:job:<id>`` for an attached job), so an output imported before is
recognised, and a changed output becomes a new attempt of its step.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from eventflow.core import events as ev
from eventflow.core.state import MaterialState, apply_event, calculation_id
from eventflow.errors import IllegalTransition
from eventflow.shell.import_parse import Parsed
from eventflow.shell.import_scan import Skipped
from eventflow.shell.projections import fold_log
from eventflow.shell.store import LogBase, NewEvent

IMPORTED_WORKFLOW = "imported"
ACTOR = "import"


@attrs.frozen
class PlannedCalc:
    calculation_id: str
    material: str
    step: str
    attempt: int
    state: str  # completed | failed | submitted (attached: the watcher follows it)
    error_kind: str | None
    job_id: str
    source: str
    code: str
    program: str | None
    events: int
    structure: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, filter=lambda a, _: a.name != "structure")


@attrs.define
class MaterialPlan:
    material_id: str
    new: bool
    expected_version: int
    items: list[NewEvent] = attrs.field(factory=list)
    calcs: list[PlannedCalc] = attrs.field(factory=list)
    structure_text: str | None = None  # extxyz for calcs/<material>/structure.extxyz


@attrs.define
class Plan:
    materials: list[MaterialPlan] = attrs.field(factory=list)
    unchanged: int = 0
    skipped: list[Skipped] = attrs.field(factory=list)

    @property
    def calcs(self) -> list[PlannedCalc]:
        return [c for m in self.materials for c in m.calcs]

    @property
    def events(self) -> int:
        return sum(len(m.items) for m in self.materials)


def iso(mtime: float) -> str:
    return datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _chunks(values: list[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _stored(store: LogBase, column: str, values: Iterable[str]) -> set[str]:
    """Which of ``values`` the log holds in ``column`` (a fixed column name, never user text)."""
    found: set[str] = set()
    for chunk in _chunks(sorted(set(values))):
        marks = ",".join("?" * len(chunk))
        found.update(r[0] for r in store.query(
            f"SELECT DISTINCT {column} FROM events WHERE {column} IN ({marks})", chunk))
    return found


def existing_streams(store: LogBase, ids: Iterable[str]) -> set[str]:
    return _stored(store, "stream", ids)


def stored_keys(store: LogBase, keys: Iterable[str]) -> set[str]:
    return _stored(store, "idempotency_key", keys)


def may_be_running(p: Parsed) -> bool:
    """An output that is no finished success may be one still being written."""
    return p.job_id is not None and (p.pending or p.outcome == "failed")


def request_key(p: Parsed, attached: bool) -> str:
    if attached:
        return f"import:{p.material}/{p.step}:job:{p.job_id}"
    return f"import:{p.material}/{p.step}:{p.sha256}"


def plan_import(
    store: LogBase,
    parsed: list[Parsed],
    *,
    running: set[str],
    workflow: str | None,
    source: str,
    project_root: Path,
) -> Plan:
    """The events to append per material; ``running`` are the job ids still in the queue."""
    plan = Plan()
    by_material: dict[str, list[Parsed]] = {}
    for p in parsed:
        if p.pending and p.job_id not in running:
            plan.skipped.append(Skipped(p.path, f"an input without an output, and its job "
                                                f"{p.job_id} is not in the queue"))
            continue
        by_material.setdefault(p.material, []).append(p)
    existing = existing_streams(store, by_material)
    states, _ = fold_log(store, streams=sorted(existing)) if existing else ({}, 0)
    attached = {p.path for group in by_material.values() for p in group
                if p.job_id in running and may_be_running(p)}
    keys = {p.path: request_key(p, p.path in attached)
            for group in by_material.values() for p in group}
    done = stored_keys(store, keys.values())
    seen: set[str] = set()
    for mid in sorted(by_material):
        group = sorted(by_material[mid], key=lambda p: (
            p.path in attached, p.attempt_hint or 0, p.mtime, p.path))
        state = states.get(mid) or MaterialState(mid)
        try:
            found = _plan_material(state, group, keys, done, seen, attached, workflow, source,
                                   project_root, plan)
        except IllegalTransition as exc:
            plan.skipped.extend(Skipped(p.path, f"material {mid}: {exc}") for p in group)
            continue
        if found is not None:
            plan.materials.append(found)
    return plan


def _plan_material(state: MaterialState, group: list[Parsed], keys: dict[str, str],
                   done: set[str], seen: set[str], attached: set[str], workflow: str | None,
                   source: str, project_root: Path, plan: Plan) -> MaterialPlan | None:
    mid = state.id
    out = MaterialPlan(mid, state.state == "new", state.version)
    meta = {"actor": ACTOR, "source": source}

    def add(e: ev.Event, key: str | None, meta: dict[str, Any]) -> None:
        apply_event(state, e, 0, state.version + 1, "")
        out.items.append(NewEvent(mid, e, key, meta))

    fresh = [p for p in group if keys[p.path] not in done]
    plan.unchanged += len(group) - len(fresh)
    if not fresh or all(keys[p.path] in seen for p in fresh):
        plan.unchanged += len(fresh)
        return None
    if out.new:
        out.structure_text, sha = _structure_file(fresh)
        formula = next((p.formula for p in reversed(fresh) if p.formula), "")
        add(ev.MaterialRegistered(mid, formula, workflow or IMPORTED_WORKFLOW, fresh[0].code,
                                  source=f"import:{source}", structure_sha256=sha),
            f"register:{mid}", meta)
        if workflow is None:
            add(ev.MaterialHeld(f"imported from {source}: history only; import with "
                                "--workflow NAME to let the watcher continue a workflow"),
                None, meta)
    for p in fresh:
        key = keys[p.path]
        if key in seen:  # the same output twice in the tree (a copy): imported once
            plan.unchanged += 1
            continue
        if p.code != state.code:
            plan.skipped.append(Skipped(p.path, f"a {p.code} output, but {mid} is a "
                                                f"{state.code} material"))
            continue
        if p.job_id and any(c.job_id == p.job_id for c in state.calcs.values()):
            plan.unchanged += 1  # recorded already (followed by the watcher since)
            continue
        latest = state.latest(p.step)
        if latest is not None and latest.active:
            plan.skipped.append(Skipped(p.path, f"step {p.step} of {mid} has an active attempt "
                                                f"({latest.id}): the watcher follows it"))
            continue
        seen.add(key)
        is_attached = p.path in attached
        attempt = len(state.attempts(p.step)) + 1
        cid = calculation_id(mid, p.step, attempt)
        events = calculation_events(p, cid, attempt, _directory(p.folder, project_root),
                                    is_attached)
        calc_meta = {"actor": ACTOR, "source": p.path}
        for i, e in enumerate(events):
            add(e, key if i == 0 else None, calc_meta)
        out.calcs.append(PlannedCalc(
            cid, mid, p.step, attempt, "submitted" if is_attached else p.outcome,
            None if is_attached else p.error_kind, p.job_id or "", p.path, p.code, p.program,
            len(events), p.structure if p.outcome == "completed" and not is_attached else None))
    return out if out.calcs else None


def _directory(folder: str, project_root: Path) -> str:
    """The calculation's folder: relative to the project when inside it, else absolute."""
    root = os.path.abspath(project_root)
    absolute = os.path.abspath(folder)
    if absolute == root or absolute.startswith(root + os.sep):
        return os.path.relpath(absolute, root)
    return absolute


def calculation_events(p: Parsed, cid: str, attempt: int, directory: str,
                       attached: bool) -> list[ev.Event]:
    """What eventflow would have recorded for this calculation, with the files' own times."""
    request = ev.SubmissionRequested(cid, p.step, attempt, directory=directory, reason="import")
    if attached:
        return [request, ev.JobSubmitted(cid, str(p.job_id), "slurm", external=True)]
    job_id = p.job_id or "imported"
    events: list[ev.Event] = [
        request,
        ev.JobSubmitted(cid, job_id, "slurm" if p.job_id else "import", external=True),
        ev.JobFinished(cid, job_id, None, finished_at=iso(p.mtime)),
    ]
    if p.outcome == "completed":
        if p.properties:
            events.append(ev.PropertiesExtracted(cid, dict(p.properties), p.parser))
        events.append(ev.CalculationSucceeded(
            cid, p.parser, {"program": p.program, "calculation": p.calculation}))
        return events
    if p.rejected:
        events.append(ev.ResultRejected(cid, list(p.rejected), p.parser))
    events.append(ev.CalculationFailed(cid, p.error_kind or "truncated", list(p.evidence),
                                       p.parser))
    return events


def atoms_of(structure: dict[str, Any]) -> Any:
    from ase import Atoms

    return Atoms(numbers=structure["numbers"], positions=structure["positions"],
                 cell=structure["cell"], pbc=structure["pbc"])


def _structure_file(group: list[Parsed]) -> tuple[str | None, str]:
    """The material's structure (extxyz text, sha256): the final one of its latest
    successful calculation, else the latest one printed at all."""
    best = [p for p in group if p.structure and p.outcome == "completed"] or [
        p for p in group if p.structure]
    if not best:
        return None, ""
    from ase.io import write

    handle = io.StringIO()
    write(handle, atoms_of(max(best, key=lambda p: p.mtime).structure), format="extxyz")
    text = handle.getvalue()
    return text, hashlib.sha256(text.encode()).hexdigest()
