"""Random command sequences against the real log, checked after every step.

Invariants: incremental projections equal a full replay; replay is
deterministic; versions per stream are gapless; the hash chain verifies; no step
has two active attempts; an illegal event is refused and leaves the log as it was.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from eventflow.core import events as ev
from eventflow.core.kinds import ERROR_KINDS
from eventflow.core.lifecycle import CALCULATION_ACTIVE
from eventflow.errors import IllegalTransition
from eventflow.shell.api import Tracker
from eventflow.shell.projections import Projections, fold_log, rows_of
from tests.conftest import require

try:
    import psycopg
except ImportError:  # only the PostgreSQL run needs it; it requires the server (and so psycopg)
    psycopg = None

MATERIALS = ["Si", "C", "NaCl", "MgO"]
STEPS = ["A", "B"]
CIF = """data_x
_cell_length_a 5.43
_cell_length_b 5.43
_cell_length_c 5.43
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Si1 0 0 0
Si2 0.25 0.25 0.25
"""


def _sorted_rows(rows: dict) -> dict:
    return {t: sorted((tuple(r) for r in v), key=repr) for t, v in rows.items()}


class LogMachine(RuleBasedStateMachine):
    server: str | None = None  # a PostgreSQL server's URL: each run's log in a schema of its own

    @initialize()
    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ef-sm-"))
        self.schema = None
        url = None
        if self.server is not None:
            self.schema = f"sm_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(self.server, autocommit=True) as db:
                db.execute(f"CREATE SCHEMA {self.schema}")  # fixed-format name
            url = f"{self.server}{'&' if '?' in self.server else '?'}" \
                  f"options=-csearch_path%3D{self.schema}"
        self.tracker = Tracker.init(self.dir, store=url)
        (self.dir / "s.cif").write_text(CIF)

    def teardown(self) -> None:
        if hasattr(self, "tracker"):
            self.tracker.close()
        if getattr(self, "schema", None):
            with psycopg.connect(self.server, autocommit=True) as db:
                db.execute(f"DROP SCHEMA {self.schema} CASCADE")
        shutil.rmtree(self.dir, ignore_errors=True)

    def _calc(self, mid: str, pick: int, states: tuple[str, ...]) -> str | None:
        calcs = [c for c in self.tracker.state(mid).calcs.values() if c.state in states]
        return calcs[pick % len(calcs)].id if calcs else None

    def _try(self, mid: str, events: list[ev.Event]) -> None:
        """Append; if refused, the log must be exactly as before."""
        before = self.tracker.store.last_seq()
        try:
            self.tracker.append(mid, events, react=self.react)
        except IllegalTransition:
            assert self.tracker.store.last_seq() == before

    react = False

    @rule(mid=st.sampled_from(MATERIALS), react=st.booleans())
    def register(self, mid: str, react: bool) -> None:
        self.react = react
        self.tracker.create_material(self.dir / "s.cif", material_id=mid, workflow="test")

    @rule(mid=st.sampled_from(MATERIALS), step=st.sampled_from(STEPS), extra=st.integers(0, 1))
    def request(self, mid: str, step: str, extra: int) -> None:
        attempt = len(self.tracker.state(mid).attempts(step)) + 1 + extra
        cid = f"{mid}/{step}/{attempt}"
        self._try(mid, [ev.SubmissionRequested(cid, step, attempt)])

    @rule(mid=st.sampled_from(MATERIALS), pick=st.integers(0, 5), job=st.integers(1, 10**6))
    def submitted(self, mid: str, pick: int, job: int) -> None:
        cid = self._calc(mid, pick, ("requested", "running", "completed"))
        if cid:
            self._try(mid, [ev.JobSubmitted(cid, str(job))])

    @rule(mid=st.sampled_from(MATERIALS), pick=st.integers(0, 5))
    def started(self, mid: str, pick: int) -> None:
        cid = self._calc(mid, pick, ("submitted", "requested"))
        if cid:
            self._try(mid, [ev.JobStarted(cid, "1")])

    @rule(mid=st.sampled_from(MATERIALS), pick=st.integers(0, 5), ok=st.booleans(),
          kind=st.sampled_from(sorted(ERROR_KINDS)), react=st.booleans())
    def outcome(self, mid: str, pick: int, ok: bool, kind: str, react: bool) -> None:
        self.react = react
        cid = self._calc(mid, pick, ("submitted", "running", "requested", "completed"))
        if cid:
            e = ev.CalculationSucceeded(cid, "test/1") if ok else ev.CalculationFailed(
                cid, kind, [{"line": 1, "text": "x"}], "test/1")
            self._try(mid, [e])
        self.react = False

    @rule(mid=st.sampled_from(MATERIALS), pick=st.integers(0, 5))
    def properties(self, mid: str, pick: int) -> None:
        cid = self._calc(mid, pick, ("running", "completed"))
        if cid:
            self._try(mid, [ev.PropertiesExtracted(cid, {"energy": {"value": -1.5, "unit": "eV"}})])

    @rule(mid=st.sampled_from(MATERIALS), pick=st.integers(0, 5))
    def lost(self, mid: str, pick: int) -> None:
        cid = self._calc(mid, pick, ("submitted", "running", "failed"))
        if cid:
            self._try(mid, [ev.JobLost(cid, "1", "TIMEOUT", "walltime")])

    @rule(mid=st.sampled_from(MATERIALS), what=st.sampled_from(["hold", "release", "cancel"]))
    def user(self, mid: str, what: str) -> None:
        e = {"hold": ev.MaterialHeld("x"), "release": ev.MaterialReleased(),
             "cancel": ev.MaterialCancelled("x")}[what]
        self._try(mid, [e])

    @invariant()
    def projections_equal_a_full_replay(self) -> None:
        if not hasattr(self, "tracker"):
            return
        tracker = self.tracker
        tracker.projections.catch_up(tracker.store)
        incremental = tracker.projections.dump()
        states, _ = fold_log(tracker.store)
        fresh = _sorted_rows(rows_of(states.values()))
        assert {t: [tuple(r) for r in v] for t, v in incremental.items()} == fresh
        again, _ = fold_log(tracker.store)
        assert _sorted_rows(rows_of(again.values())) == fresh  # deterministic
        scratch = Projections(self.dir / "scratch.db", create=True)
        scratch.rebuild(tracker.store)
        assert {t: [tuple(r) for r in v] for t, v in scratch.dump().items()} == fresh
        scratch.close()
        (self.dir / "scratch.db").unlink()

    @invariant()
    def log_is_sound(self) -> None:
        if not hasattr(self, "tracker"):
            return
        _, problems = self.tracker.store.verify_chain()
        assert problems == []

    @invariant()
    def never_two_active_attempts_of_a_step(self) -> None:
        if not hasattr(self, "tracker"):
            return
        for mid in MATERIALS:
            state = self.tracker.state(mid)
            for step in STEPS:
                active = [c for c in state.attempts(step) if c.state in CALCULATION_ACTIVE]
                assert len(active) <= 1


LogMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLogMachine = LogMachine.TestCase


class PostgresLogMachine(LogMachine):
    pass


def test_the_same_machine_on_postgresql(postgres_server: str | None) -> None:
    """The same rules and invariants with the log on the PostgreSQL server (fewer runs: each
    makes a schema and many round trips)."""
    require(postgres_server is not None,
            "no PostgreSQL server with psycopg (start one: scripts/local-postgres start)")
    PostgresLogMachine.server = postgres_server
    run_state_machine_as_test(PostgresLogMachine, settings=settings(
        max_examples=12, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
