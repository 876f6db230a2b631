"""The Python API: ``tracker = eventflow.open(".")``.

Every call appends events (after checking them against the material's
lifecycle, so an illegal one is refused before anything is written) and
answers from the projections, which it brings up to date first.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eventflow.core import commands as cmd
from eventflow.core import events as ev
from eventflow.core.ids import check_material_id, check_step, material_id_from_name
from eventflow.core.intents import intent
from eventflow.core.kinds import check_kind
from eventflow.core.lifecycle import CALCULATION_STATES, MATERIAL_STATES
from eventflow.core.policy import PolicyConfig, decide
from eventflow.core.state import MaterialState, apply, calculation_id, fold, would_accept
from eventflow.errors import ConcurrencyError, EventflowError, IllegalTransition
from eventflow.shell.handoff import read_structure
from eventflow.shell.project import Project, initialise, set_store
from eventflow.shell.projections import open_projections
from eventflow.shell.store import open_store

_RETRIES = 20
# Folded states kept per Tracker, so a state is brought up to date by the events since,
# not folded from the start. Bounded: a watcher of 100,000 materials must stay small.
_FOLDED_KEPT = 512


class Tracker:
    def __init__(self, project: Project, *, policy: PolicyConfig | None = None) -> None:
        self.project = project
        self.store = open_store(project.store)
        self.projections = open_projections(project)
        self._policy = policy
        self._folded: OrderedDict[str, MaterialState] = OrderedDict()

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str | None = ".", **kw: Any) -> Tracker:
        return cls(Project.at(path), **kw)

    @classmethod
    def init(cls, path: Path | str = ".", *, store: str | None = None) -> Tracker:
        project = initialise(path)
        if store is not None:
            set_store(project, store)
        open_store(project.store, create=True).close()
        open_projections(project, create=True).close()
        return cls(project)

    def close(self) -> None:
        self.store.close()
        self.projections.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def policy(self) -> PolicyConfig:
        if self._policy is None:
            from eventflow.shell.config import load_policy

            self._policy = load_policy(self.project)
        return self._policy

    # -- the write path -----------------------------------------------------------------------
    def state(self, material_id: str) -> MaterialState:
        """The material's state now: a copy of its own, the caller may change it."""
        kept = self._folded.pop(material_id, None)
        after = kept.last_seq if kept is not None else 0
        # The log is append-only and seq is commit-ordered: the events after the kept
        # state's last seq are exactly those it has not folded yet.
        new = list(self.store.read(stream=material_id, after=after))
        state = fold(material_id, new, kept) if new or kept is None else kept
        self._folded[material_id] = state
        if len(self._folded) > _FOLDED_KEPT:
            self._folded.popitem(last=False)
        return state.copy()

    def append(
        self,
        material_id: str,
        events: Sequence[ev.Event],
        *,
        key: str | None = None,
        meta: dict[str, Any] | None = None,
        react: bool = True,
    ) -> list[ev.Recorded]:
        """Check ``events`` against the material's lifecycle, append them, then react.

        Reacting runs the policy on each new event and records the intents of its
        commands (themselves checked and idempotent). Returns the recorded events.
        """
        for _ in range(_RETRIES):
            if key is not None:
                stored = self.store.by_key(key)
                if stored is not None:
                    return [stored]
            state = self.state(material_id)
            version = state.version
            for i, e in enumerate(events):
                would_accept(state, e)
                apply(state, ev.Recorded(0, material_id, version + i + 1, e, "", {}))
            try:
                recorded = self.store.append(
                    material_id, events, expected_version=version, idempotency_key=key, meta=meta
                )
            except ConcurrencyError:
                continue
            break
        else:
            raise ConcurrencyError(f"{material_id}: too much contention appending to this stream")
        if react and recorded and recorded[0].version > version:
            self._react(material_id, recorded)
        self.projections.catch_up(self.store)
        return recorded

    def _react(self, material_id: str, recorded: list[ev.Recorded]) -> None:
        state = self.state(material_id)
        for rec in recorded:
            for command in decide(state, rec, self.policy):
                self.execute(command)
            state = self.state(material_id)

    def execute(self, command: cmd.Command) -> list[ev.Recorded]:
        """Record the intent of ``command``; effects (sbatch, scancel) happen in the runner."""
        found = intent(command)
        if found is None:
            return []
        event, key = found
        try:
            return self.append(command.material_id, [event], key=key,  # type: ignore[attr-defined]
                               meta={"actor": "policy"})
        except IllegalTransition:
            # Another process moved the material first (e.g. the step is already requested).
            return []

    # -- the documented API -------------------------------------------------------------------
    def create_material(
        self,
        structure: Path | str,
        *,
        source: str = "file",
        material_id: str | None = None,
        workflow: str = "test",
        code: str = "qe",
        params: dict[str, Any] | None = None,
    ) -> str:
        """Register the structure in a file (CIF or anything ASE reads); return the material id.

        The same file content registered twice is the same material (said so by
        returning the existing id); a different structure under an existing id is refused.
        """
        path = Path(structure)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise EventflowError(f"{path}: cannot read structure: {exc.strerror}") from exc
        sha = hashlib.sha256(content).hexdigest()
        formula = _formula_of(path)
        mid = check_material_id(material_id) if material_id else material_id_from_name(path.stem)
        existing = self.state(mid)
        if existing.state != "new":
            first = next(self.store.read(stream=mid, limit=1)).event
            if getattr(first, "structure_sha256", None) == sha:
                return mid
            raise EventflowError(
                f"{path}: material {mid!r} already exists with a different structure; "
                "pass another material id"
            )
        if workflow not in self.policy.workflows:
            known = ", ".join(sorted(self.policy.workflows))
            raise EventflowError(f"unknown workflow {workflow!r} (known: {known})")
        target = self.project.inside(Path("calcs") / mid / f"structure{path.suffix.lower()}")
        event = ev.MaterialRegistered(
            material_id=mid, formula=formula, workflow=workflow, code=code,
            source=f"{source}:{path.name}", structure_sha256=sha, params=dict(params or {}),
        )
        # Intent first: the registration is recorded, then the structure copied beside it.
        self.append(mid, [event], key=f"register:{mid}", react=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            tmp = target.with_name(target.name + ".tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(target)
        self._react(mid, [self.store.by_key(f"register:{mid}")])  # type: ignore[list-item]
        self.projections.catch_up(self.store)
        return mid

    def submit_calculation(
        self, material_id: str, step: str, *, slurm_job_id: str | None = None
    ) -> str:
        """Record a calculation of ``step``; with ``slurm_job_id``, one submitted outside eventflow.

        From then on it is followed like any other job (the watcher reconciles it).
        """
        check_step(step)
        state = self.state(check_material_id(material_id))
        attempt = len(state.attempts(step)) + 1
        cid = calculation_id(material_id, step, attempt)
        events: list[ev.Event] = [
            ev.SubmissionRequested(cid, step, attempt, directory=f"calcs/{cid}", reason="api")
        ]
        if slurm_job_id is not None:
            events.append(ev.JobSubmitted(cid, str(slurm_job_id), "slurm", external=True))
        self.append(material_id, events, key=f"request:{cid}", meta={"actor": "api"})
        return cid

    def update_calculation_status(
        self, calc_id: str, status: str, *, error_kind: str | None = None, reason: str = ""
    ) -> None:
        """Record a status a user observed (``completed`` = succeeded): a manual override."""
        if status not in CALCULATION_STATES:
            raise EventflowError(
                f"unknown status {status!r}; use one of {', '.join(CALCULATION_STATES)}"
            )
        material_id = calc_id.split("/", 1)[0]
        state = self.state(material_id)
        calc = state.calcs.get(calc_id)
        if calc is None:
            raise EventflowError(f"unknown calculation {calc_id!r}")
        event: ev.Event
        if status == "completed":
            event = ev.CalculationSucceeded(calc_id, parser="manual", summary={"reason": reason})
        elif status == "failed":
            event = ev.CalculationFailed(
                calc_id, check_kind(error_kind or "input_error") if error_kind else "input_error",
                evidence=[{"line": 0, "text": reason or "marked failed by a user"}],
                parser="manual",
            )
        elif status == "running":
            event = ev.JobStarted(calc_id, calc.job_id or "")
        elif status == "cancelled":
            event = ev.CalculationCancelled(calc_id, reason or "cancelled by a user")
        elif status == "submitted":
            event = ev.JobSubmitted(calc_id, calc.job_id or "", external=True)
        elif status == "lost":
            event = ev.JobLost(calc_id, calc.job_id or "", None, reason or "marked lost by a user")
        else:
            raise EventflowError(f"cannot set a calculation back to {status!r}")
        self.append(material_id, [event], meta={"actor": "user"})

    def get_materials_by_status(self, status: str) -> list[dict[str, Any]]:
        if status not in MATERIAL_STATES:
            known = ", ".join(MATERIAL_STATES)
            raise EventflowError(f"unknown state {status!r}; use one of {known}")
        self.projections.catch_up(self.store)
        return self.projections.materials(status)

    def materials(self) -> list[dict[str, Any]]:
        self.projections.catch_up(self.store)
        return self.projections.materials()

    def hold(self, material_id: str, reason: str = "") -> None:
        self.append(material_id, [ev.MaterialHeld(reason or "held by a user")],
                    meta={"actor": "user"})

    def release(self, material_id: str, reason: str = "") -> None:
        self.append(material_id, [ev.MaterialReleased(reason)], meta={"actor": "user"})

    def cancel(self, material_id: str, reason: str = "") -> list[str]:
        """Cancel a material; returns the job ids the runner must scancel (recorded first)."""
        state = self.state(material_id)
        events: list[ev.Event] = [
            ev.CalculationCancelled(c.id, reason or "cancelled by a user")
            for c in state.active_calcs()
        ]
        events.append(ev.MaterialCancelled(reason or "cancelled by a user"))
        self.append(material_id, events, meta={"actor": "user"})
        return [c.job_id for c in state.active_calcs() if c.job_id]


def _formula_of(path: Path) -> str:
    try:
        atoms = read_structure(path)
    except Exception as exc:  # ASE raises many types for unreadable files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EventflowError(f"{path}: not a structure ASE can read: {first}") from exc
    return atoms.get_chemical_formula(mode="hill", empirical=False)
