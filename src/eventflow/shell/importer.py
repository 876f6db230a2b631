"""``eventflow import DIR``: bring existing calculation folders into the event log.

Stages, each timed for the report:

* scan: walk the tree and find candidate calculations by their names (import_scan);
* parse: read, checksum and parse every candidate in worker processes (import_parse);
* queue: ask SLURM which of the jobs found beside unfinished outputs are still queued;
* plan: fold the materials concerned and build their events, checked against the
  lifecycle (import_plan);
* append: whole materials per transaction, a batch of materials at a time;
* structures: final structures into the ASE database, each new material's structure
  into calcs/<material>/structure.extxyz (what a workflow continues from);
* projections: bring the read models up to date.

``dry_run`` stops after the plan. Files that cannot be read, binary files, symlink
loops and the like are reported in ``skipped`` and never stop the import.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from eventflow.core.naming import NamingRule, rule_from_config
from eventflow.errors import ConcurrencyError, EventflowError
from eventflow.shell.import_parse import Parsed, init_worker, parse_candidate
from eventflow.shell.import_plan import (
    MaterialPlan,
    Plan,
    PlannedCalc,
    atoms_of,
    may_be_running,
    plan_import,
)
from eventflow.shell.import_scan import Candidate, Skipped, walk

UNKNOWN_PROGRAM = "not an output of a known program"
Advance = Callable[[int], None]


@attrs.frozen
class ImportOptions:
    root: Path
    code: str | None = None
    workflow: str | None = None
    dry_run: bool = False
    workers: int | None = None  # None: every core
    min_parallel: int = 200  # fewer candidates are parsed in this process (no pool to start)
    follow_links: bool = False
    batch_events: int = 5000
    use_queue: bool = True
    scheduler: Any = None  # anything with states(ids); None: SLURM if it answers
    progress: bool = False  # draw progress bars on stderr


@attrs.define
class ImportReport:
    root: str
    dry_run: bool
    files: int = 0
    candidates: int = 0
    calculations: list[PlannedCalc] = attrs.field(factory=list)
    materials_new: int = 0
    materials: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = attrs.field(factory=list)
    ignored: list[str] = attrs.field(factory=list)  # files no known program wrote
    events: int = 0
    queue: str = ""
    requested: list[str] = attrs.field(factory=list)  # next steps requested (--workflow)
    timings: dict[str, float] = attrs.field(factory=dict)

    def by_state(self) -> dict[str, int]:
        return dict(Counter(c.state for c in self.calculations))

    def by_error_kind(self) -> dict[str, int]:
        return dict(Counter(c.error_kind for c in self.calculations if c.error_kind))

    def rate(self) -> float:
        total = sum(self.timings.values())
        return len(self.calculations) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "dry_run": self.dry_run, "files": self.files,
            "candidates": self.candidates, "materials": self.materials,
            "materials_new": self.materials_new, "events": self.events,
            "unchanged": self.unchanged, "queue": self.queue, "requested": self.requested,
            "by_state": self.by_state(), "by_error_kind": self.by_error_kind(),
            "calculations": [c.to_dict() for c in self.calculations],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "ignored": self.ignored,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }


def naming_rule(project: Any) -> NamingRule:
    return rule_from_config(project.config("naming.yaml"),
                            str(project.config_path("naming.yaml")))


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started


def run_import(tracker: Any, options: ImportOptions) -> ImportReport:
    """Import ``options.root`` into ``tracker``'s log (or only plan it, ``dry_run``)."""
    root = Path(options.root).expanduser()
    if not root.is_dir():
        raise EventflowError(f"{root}: no such folder to import")
    if options.workflow is not None and options.workflow not in tracker.policy.workflows:
        known = ", ".join(sorted(tracker.policy.workflows))
        raise EventflowError(f"unknown workflow {options.workflow!r} (known: {known})")
    rule = naming_rule(tracker.project)
    report = ImportReport(str(root.resolve()), options.dry_run)
    t = report.timings
    with _progress(options.progress) as bar:
        with _stage(t, "scan"):
            scan = walk(root, rule, follow_links=options.follow_links)
        report.files, report.candidates = scan.files, len(scan.candidates)
        report.skipped.extend(scan.skipped)
        with _stage(t, "parse"):
            advance = bar("parsing", len(scan.candidates))
            parsed = _parse_all(scan.candidates, rule, options, advance)
        good = []
        for p in parsed:
            if p.problem == UNKNOWN_PROGRAM:
                report.ignored.append(p.path)
            elif p.problem is not None:
                report.skipped.append(Skipped(p.path, p.problem))
            else:
                good.append(p)
        with _stage(t, "queue"):
            running, report.queue = _running_jobs(good, options)
        with _stage(t, "plan"):
            plan = plan_import(tracker.store, good, running=running, workflow=options.workflow,
                               source=report.root, project_root=tracker.project.root)
        report.skipped.extend(plan.skipped)
        report.unchanged = plan.unchanged
        if options.dry_run:
            _summarise(report, plan)
            return report
        with _stage(t, "append"):
            _append(tracker.store, plan, options.batch_events, bar("appending", plan.events))
        _summarise(report, plan)
        with _stage(t, "structures"):
            _save_structures(tracker.project, plan.materials)
        if options.workflow is not None:
            with _stage(t, "workflow"):
                report.requested = _continue(tracker, plan.materials, options.workflow)
        with _stage(t, "projections"):
            tracker.projections.catch_up(tracker.store)
    return report


def _summarise(report: ImportReport, plan: Plan) -> None:
    report.calculations = plan.calcs
    report.materials = len(plan.materials)
    report.materials_new = sum(1 for m in plan.materials if m.new)
    report.events = plan.events


# --- parse ----------------------------------------------------------------------------------


def _parse_all(candidates: list[Candidate], rule: NamingRule, options: ImportOptions,
               advance: Advance) -> list[Parsed]:
    workers = options.workers or os.cpu_count() or 1
    if workers <= 1 or len(candidates) < options.min_parallel:
        init_worker(rule, options.code)
        out = []
        for c in candidates:
            out.append(parse_candidate(c))
            advance(1)
        return out
    import multiprocessing

    # forkserver: the progress bar's thread must not be forked; the server preloads the
    # parsers once, so each worker starts in milliseconds.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["eventflow.shell.import_parse"])
    chunk = max(1, min(32, len(candidates) // (workers * 16)))
    out = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker,
                             initargs=(rule, options.code)) as pool:
        for p in pool.map(parse_candidate, candidates, chunksize=chunk):
            out.append(p)
            advance(1)
    return out


# --- the queue ------------------------------------------------------------------------------


def _running_jobs(parsed: list[Parsed], options: ImportOptions) -> tuple[set[str], str]:
    """Job ids beside unfinished outputs that the scheduler still lists as queued/running."""
    from eventflow.shell.runner import ACTIVE_SCHEDULER_STATES
    from eventflow.shell.scheduler import SchedulerError, SlurmScheduler

    ids = sorted({p.job_id for p in parsed if p.job_id and may_be_running(p)})
    if not ids:
        return set(), "no unfinished output with a job log: the queue was not asked"
    if not options.use_queue:
        return set(), f"{len(ids)} jobs not looked up (--no-queue): none attached"
    scheduler = options.scheduler
    if scheduler is None:
        scheduler = SlurmScheduler()
        if not scheduler.ping():
            return set(), f"SLURM does not answer: {len(ids)} jobs not looked up, none attached"
    running: set[str] = set()
    for i in range(0, len(ids), 200):
        try:
            infos = scheduler.states(ids[i : i + 200])
        except (SchedulerError, ValueError) as exc:
            return running, f"asking the scheduler failed ({exc}); {len(running)} attached"
        running.update(j for j, info in infos.items() if info.state in ACTIVE_SCHEDULER_STATES)
    return running, f"{len(ids)} jobs looked up, {len(running)} still queued or running"


# --- append ---------------------------------------------------------------------------------


def _append(store: Any, plan: Plan, batch_events: int, advance: Advance) -> None:
    """Append whole materials, a batch per transaction; a material whose stream moved
    meanwhile (a watcher, another import) is left out and reported."""
    batch: list[MaterialPlan] = []
    size = 0
    for material in list(plan.materials):
        batch.append(material)
        size += len(material.items)
        if size >= batch_events:
            _flush(store, plan, batch, advance)
            batch, size = [], 0
    if batch:
        _flush(store, plan, batch, advance)


def _append_group(store: Any, group: list[MaterialPlan]) -> bool:
    items = [i for m in group for i in m.items]
    expected = {m.material_id: m.expected_version for m in group}
    try:
        out = store.append_many(items, expected_versions=dict(expected))
    except ConcurrencyError:
        return False
    # Records returned from an earlier append (a key stored meanwhile) are not ours.
    return len(out) == len(items) and all(r.version > expected[r.stream] for r in out)


def _flush(store: Any, plan: Plan, batch: list[MaterialPlan], advance: Advance) -> None:
    if _append_group(store, batch):
        advance(sum(len(m.items) for m in batch))
        return
    for material in batch:  # one by one: keep every material that is still as planned
        if not _append_group(store, [material]):
            plan.materials.remove(material)
            plan.skipped.extend(Skipped(c.source, f"{material.material_id} changed while "
                                                  "importing; run the import again")
                                for c in material.calcs)
        advance(len(material.items))


# --- after the append -------------------------------------------------------------------------


def _save_structures(project: Any, materials: list[MaterialPlan]) -> None:
    rows = [c for m in materials for c in m.calcs if c.structure]
    if rows:
        from ase.db import connect

        existed = project.structures_db.exists()
        with connect(str(project.structures_db)) as db:
            have = ({r.get("calculation_id") for r in db.select(include_data=False)}
                    if existed else set())
            for c in rows:
                if c.calculation_id not in have:
                    db.write(atoms_of(c.structure), material_id=c.material, step=c.step,
                             attempt=c.attempt, calculation_id=c.calculation_id, kind="final")
    for m in materials:
        if not (m.new and m.structure_text):
            continue
        folder = project.inside(Path("calcs") / m.material_id)
        if list(folder.glob("structure.*")) if folder.is_dir() else False:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "structure.extxyz.tmp"
        tmp.write_text(m.structure_text, encoding="utf-8")
        tmp.replace(folder / "structure.extxyz")


def _continue(tracker: Any, materials: list[MaterialPlan], workflow: str) -> list[str]:
    """Request what the workflow runs next for each imported material that can go on."""
    from eventflow.core.policy import advance

    flow = tracker.policy.workflows[workflow]
    requested = []
    for m in materials:
        state = tracker.state(m.material_id)
        if state.workflow != workflow or state.state not in ("registered", "ready"):
            continue
        for command in advance(state, flow):
            for rec in tracker.execute(command):
                cid = getattr(rec.event, "calculation_id", None)
                if rec.type == "SubmissionRequested" and cid:
                    requested.append(cid)
    return requested


@contextmanager
def _progress(show: bool) -> Iterator[Callable[[str, int], Advance]]:
    """``bar(description, total)`` -> an advance function; nothing drawn unless ``show``."""
    if not show:
        yield lambda description, total: (lambda n: None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as progress:

        def bar(description: str, total: int) -> Advance:
            task = progress.add_task(description, total=total)
            return lambda n: progress.advance(task, n)

        yield bar
