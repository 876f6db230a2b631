"""One simulated history: a project, its materials, runners that crash, a world that fails.

:func:`run_seed` builds a fresh project in a scratch folder, registers a few materials (QE
and CRYSTAL, the real workflows of config/workflows.yaml), and then steps the world: the
clock moves, the simulated cluster starts and ends jobs, and one of the runner processes
runs the real ``Runner.cycle``. The runner is killed (a :class:`Crash` raised at an effect:
an append, an sbatch, an scancel, a job folder write) and restarted from the log; another
process appends between effects (hold, release, cancel). Invariants are checked after every
step; when the world is quiet (no jobs, nothing left to write) the faults stop, the clock
jumps past every wait, and the quiescence invariants are checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

from eventflow.errors import EventflowError
from eventflow.shell import clock
from eventflow.shell.api import Tracker
from eventflow.shell.lock import LockLost
from eventflow.shell.runner import Runner
from eventflow.shell.scheduler import SchedulerError
from eventflow.sim.cluster import SimClock, SimCluster
from eventflow.sim.corpus import Corpus
from eventflow.sim.faults import Dice
from eventflow.sim.invariants import Checker

WORKFLOWS = ("full_characterization", "scf_only")
CODES = ("qe", "crystal")
STRUCTURES = ("Si.cif", "C.cif", "Pb.cif")
DRAIN_ROUNDS = 60  # fault-free cycles at most, once the world is quiet
DRAIN_STEP_S = 4000.0  # longer than any wait or submission back-off (3600 s)


class Crash(BaseException):
    """The runner process dies here (a BaseException: nothing in the runner may catch it)."""


@attrs.define
class SimResult:
    seed: int
    materials: int = 0
    lifecycles: int = 0  # scheduler jobs that ended
    steps: int = 0
    events: int = 0
    crashes: int = 0
    faults: Counter = attrs.field(factory=Counter)
    violations: list[str] = attrs.field(factory=list)
    final_states: Counter = attrs.field(factory=Counter)
    digest: str = ""  # of the whole log but its process metadata: one seed, one digest

    @property
    def ok(self) -> bool:
        return not self.violations

    def replay_command(self) -> str:
        return f"eventflow-sim --seed {self.seed}  (or: python -m eventflow.sim --seed {self.seed})"


class _Process:
    """A runner process: its own connections to the log, restarted after a crash."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.tracker: Tracker | None = None
        self.runner: Runner | None = None
        self.start()

    def start(self) -> None:
        world = self.world
        self.tracker = Tracker.open(world.root, policy=world.policy)
        store = self.tracker.store
        append_many = store.append_many

        def append_with_effects(items: Any, **kw: Any) -> Any:
            what = items[0].event.TYPE if items else "nothing"
            world.effect(f"before append {what}")
            out = append_many(items, **kw)
            world.effect(f"after append {what}")
            return out

        store.append_many = append_with_effects  # type: ignore[method-assign]
        self.runner = Runner(self.tracker, world.cluster)
        write = self.runner.writer.write

        def write_with_effects(state: Any, calc: Any, job_dir: str | None = None) -> Any:
            world.effect("before writing the job folder")
            return write(state, calc, job_dir=job_dir)

        self.runner.writer.write = write_with_effects  # type: ignore[method-assign]

        def fence() -> None:  # the project lock, as shell.lock.ProjectLock.fence checks it
            if world.lock_holder is not self:
                raise LockLost("the project lock was taken over")

        self.runner.fence = fence

    def restart(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
        self.start()


class World:
    def __init__(self, seed: int, root: Path, corpus: Corpus, *, intensity: float,
                 materials: int | None, disabled: frozenset[str] = frozenset()) -> None:
        self.dice = Dice(seed, intensity, disabled=disabled)
        self.clock = SimClock()
        self.root = root
        self.corpus = corpus
        self.crashing = True
        self.n_materials = materials or 2 + self.dice.rng.randrange(6)
        self.cluster = SimCluster(self.dice, self.clock, corpus,
                                  accounting=self.dice.chance(0.7), effect=self.effect,
                                  code_of=self._code_of)
        self.codes: dict[str, str] = {}
        self._busy = False  # inside another process's action: no nested effects
        # Runs another runner's whole cycle (set by _run when the history has two runners).
        self.interleave: Any = None
        self.lock_holder: Any = None  # the _Process holding the project lock
        self.user: Tracker | None = None
        self.policy: Any = None

    def _code_of(self, folder: str) -> tuple[str, str]:
        rel = Path(folder).resolve().relative_to(self.root.resolve() / "calcs").parts
        return self.codes[rel[0]], rel[1]

    # -- between effects -------------------------------------------------------------------
    def effect(self, where: str) -> None:
        if self._busy:
            return
        if self.dice.fault("user_action"):
            self._user_action()
        # Not between the lock's fence and the sbatch it guards: that window is the time of
        # one check, while a take-over needs the holder paused for the lock's stale_after.
        if (self.interleave is not None and self.dice.fault("runner_interleaved")
                and where != "before sbatch"):
            self._busy = True  # the other runner's effects are plain (no nesting)
            try:
                self.interleave()
            finally:
                self._busy = False
        if self.crashing and self.dice.fault("crash"):
            raise Crash(where)

    def _user_action(self) -> None:
        assert self.user is not None
        self._busy = True
        try:
            mid = str(self.dice.pick(sorted(self.codes)))
            state = self.user.state(mid)
            action = self.dice.weighted([(4, "hold"), (4, "release"), (1, "cancel")])[1]
            self.dice.injected[f"user_{action}"] += 1
            try:
                if action == "hold" and state.state not in ("held", "cancelled", "completed"):
                    self.user.hold(mid, "held by the simulation's user")
                elif action == "release" and state.state == "held":
                    self.user.release(mid, "released by the simulation's user")
                elif action == "cancel" and state.state not in ("cancelled", "completed"):
                    for job_id in self.user.cancel(mid, "cancelled by the simulation's user"):
                        with contextlib.suppress(SchedulerError):  # the job runs on;
                            self.cluster.cancel(job_id)  # the watcher reconciles it
            except EventflowError:
                pass  # refused by the lifecycle: the runner moved the material first
        finally:
            self._busy = False


def shrink(seed: int, *, corpus: Corpus | None = None, materials: int | None = None,
           intensity: float = 1.0) -> tuple[list[str], SimResult]:
    """The fault kinds a failing history needs: each injected kind is switched off in turn
    and stays off when the history still fails. Returns those kinds and the last failure."""
    corpus = corpus or Corpus()
    failing = run_seed(seed, corpus=corpus, materials=materials, intensity=intensity)
    if failing.ok:
        return [], failing
    off: set[str] = set()
    tried: set[str] = set()
    # Switching a kind off moves the rest of the history (other faults may appear): go on
    # until no kind the failing history still has can be switched off.
    while True:
        candidates = sorted(k for k in failing.faults if k not in tried)
        if not candidates:
            return sorted(failing.faults), failing
        for kind in candidates:
            tried.add(kind)
            trial = run_seed(seed, corpus=corpus, materials=materials, intensity=intensity,
                             disabled=frozenset(off | {kind}))
            if not trial.ok:
                off.add(kind)
                failing = trial


def _structures(corpus: Corpus) -> Path:
    return corpus.root.parent / "structures"


def _memory_folder() -> Path | None:
    """A RAM-backed folder for the simulated project, where the system has one.

    The simulation kills processes, never the machine, so the log's fsyncs buy nothing
    here; on a disk they were 40% of the run's time. Anywhere else: the usual temp folder.
    """
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def run_seed(seed: int, *, corpus: Corpus | None = None, materials: int | None = None,
             max_steps: int = 800, intensity: float = 1.0, workdir: Path | None = None,
             keep: bool = False, disabled: frozenset[str] = frozenset()) -> SimResult:
    """Run the history of ``seed``; return what happened and every invariant violated.
    ``disabled``: fault kinds that do not happen (their random draws still do)."""
    corpus = corpus or Corpus()
    scratch = Path(tempfile.mkdtemp(prefix=f"eventflow-sim-{seed}-",
                                    dir=workdir or _memory_folder()))
    result = SimResult(seed)
    quiet = logging.getLogger("eventflow")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL + 1)  # the runner's log is noise here
    try:
        root = scratch / "proj"
        world = World(seed, root, corpus, intensity=intensity, materials=materials,
                      disabled=disabled)
        with clock.using(world.clock):
            _run(world, result, max_steps)
    finally:
        quiet.setLevel(level)
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


def _run(world: World, result: SimResult, max_steps: int) -> None:
    dice = world.dice
    Tracker.init(world.root).close()
    user = world.user = Tracker.open(world.root)
    world.policy = user.policy
    structures = _structures(world.corpus)
    for i in range(world.n_materials):
        code = str(dice.pick(list(CODES)))
        workflow = str(dice.pick(list(WORKFLOWS)))
        mid = f"m{i:02d}-{code}"
        world.codes[mid] = code
        user.create_material(structures / str(dice.pick(list(STRUCTURES))), material_id=mid,
                             workflow=workflow, code=code)
    result.materials = world.n_materials
    checker = Checker(Tracker.open(world.root, policy=world.policy), world.cluster)
    processes = [_Process(world) for _ in range(1 + int(dice.chance(0.5)))]

    current: list[_Process] = []

    def run_cycle(proc: _Process, step: int, reconcile: bool, who: str) -> None:
        try:
            assert proc.runner is not None
            report = proc.runner.cycle(reconcile=reconcile)
            if report.unreadable:  # the watcher goes on without them; still a parser's bug
                result.violations.append(f"step {step}: {who} cycle met {report.unreadable} "
                                         "output(s) a parser raised on (see the log)")
        except Crash:
            result.crashes += 1
            proc.restart()
        except LockLost:
            proc.restart()  # the watcher stops; it (or another) starts again later
        except SchedulerError:
            pass  # the watcher logs it and tries again at its next cycle
        except Exception as exc:  # the watcher would go on; the simulation calls it a bug
            result.violations.append(f"step {step}: {who} cycle raised "
                                     f"{type(exc).__name__}: {exc}")
            proc.restart()

    def one_cycle(step: int, reconcile: bool) -> None:
        proc = processes[dice.rng.randrange(len(processes))]
        current[:] = [proc]
        world.lock_holder = proc  # a cycle runs under the project lock
        run_cycle(proc, step, reconcile, "the runner's")
        current.clear()

    def interleave() -> None:
        """Another runner's whole cycle, between two effects of the current one."""
        others = [p for p in processes if p not in current]
        if others:  # the current runner paused past stale_after: another takes the lock over
            world.lock_holder = others[0]
            run_cycle(others[0], step, dice.chance(0.6), "an interleaved runner's")

    if len(processes) > 1:
        world.interleave = interleave

    step = 0
    for step in range(max_steps):
        # Mostly minutes between cycles, sometimes seconds (a record's verdict wait is 15 s).
        world.clock.advance(dice.uniform(1, 20) if dice.chance(0.3) else dice.uniform(20, 400))
        world.cluster.tick()
        one_cycle(step, reconcile=dice.chance(0.6))
        result.violations += checker.step_if_changed()
        if result.violations:
            break
        if step > 5 and not world.cluster.active() and not world.cluster.writes and \
                not _unsettled(checker.tracker):
            break
    result.steps = step + 1
    if not result.violations:
        # The world quiets down: no more faults; waits and back-offs run out.
        dice.enabled = False
        world.crashing = False
        last, same = -1, 0
        for round_ in range(DRAIN_ROUNDS):
            world.clock.advance(DRAIN_STEP_S)
            world.cluster.tick()
            one_cycle(max_steps + round_, reconcile=True)
            result.violations += checker.step_if_changed()
            seq = checker.tracker.store.last_seq()
            busy = world.cluster.active() or world.cluster.writes
            same = same + 1 if seq == last and not busy else 0
            last = seq
            if result.violations or same >= 3:
                break
        if not result.violations:
            result.violations += checker.quiescent()
    result.faults = dice.injected
    result.lifecycles = sum(1 for j in world.cluster.jobs.values() if j.ended_at is not None)
    result.events = checker.tracker.store.last_seq()
    result.final_states = Counter(s["state"] for s in checker.tracker.materials())
    result.digest = _digest(checker.tracker)
    for proc in processes:
        if proc.tracker is not None:
            proc.tracker.close()
    checker.tracker.close()
    user.close()


def _unsettled(tracker: Tracker) -> bool:
    """Whether some material still has work the runner would do without the world moving."""
    tracker.projections.catch_up(tracker.store)
    return bool(tracker.projections.db.execute(
        "SELECT 1 FROM materials WHERE state IN ('registered', 'ready', 'running', 'waiting') "
        "LIMIT 1").fetchone())


def _digest(tracker: Tracker) -> str:
    """The log's content but what differs between runs of one history: process metadata
    (pid, host), the project's random id and its scratch folder. Equal for equal histories."""
    digest = hashlib.sha256()
    root, project_id = str(tracker.project.root), tracker.project.project_id
    for row in tracker.store.db.execute(
            "SELECT seq, stream, version, type, data, recorded_at, idempotency_key FROM events "
            "ORDER BY seq"):
        text = repr(row).replace(root, "PROJECT")
        digest.update(text.replace(project_id, "ID").encode())
    return digest.hexdigest()
