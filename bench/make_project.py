"""Realistic event logs (and projects around them) for the benchmarks, cached on disk.

A log of N events over M materials is generated once with ``EventStore.append_many``
in batches of 1,000 and kept under the temp folder (``<tmp>/eventflow-bench/``), so
the replay and query benchmarks do not pay for generating a million events each run.

Every material follows a legal history (the fold checks every event against the
lifecycles, so an illegal one would make the replay benchmark fail): registered,
submission requested, job submitted / started / finished, calculation succeeded or
failed (with evidence), properties extracted, recovery decided, resubmitted, lost
jobs, materials completed, held, or needing attention. Materials run interleaved,
as on a real cluster. The histories are cut so the log has exactly N events; a cut
history is a legal prefix (a material still in progress). One material, ``heavy``,
has 1,000 events spread over the whole log (for the ``show`` benchmark).

Run ``python bench/make_project.py --materials 10000 --events 100000 --project DIR``
to make a project folder to try the CLI on.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from eventflow.core import events as ev
from eventflow.shell.store import EventStore, NewEvent

GENERATOR_VERSION = 1  # bump when the histories change: old cached logs are then ignored
HEAVY = "heavy"
HEAVY_EVENTS = 1000
BATCH = 1000
CHUNK_MATERIALS = 200  # materials whose histories are interleaved in the log

_FORMULAS = ("Si2", "C2", "MgO", "Al2O3", "TiO2", "GaAs", "ZnO", "NaCl", "Fe2O3", "LiCoO2")
_HOSTS = ("node001", "node017", "node042", "node108")
_FAIL_KINDS = (
    ("scf_not_converged", "convergence NOT achieved after 100 iterations: stopping"),
    ("walltime", "CANCELLED AT 2024-05-01T12:00:00 DUE TO TIME LIMIT"),
    ("out_of_memory", "Some of your processes may have been killed by the cgroup out-of-memory"),
    ("geometry_not_converged", "The maximum number of steps has been reached."),
)


def bench_root() -> Path:
    """Where generated logs and projects are cached (``$EVENTFLOW_BENCH_DIR`` overrides)."""
    root = Path(os.environ.get("EVENTFLOW_BENCH_DIR") or Path(tempfile.gettempdir())
                / "eventflow-bench")
    root.mkdir(parents=True, exist_ok=True)
    return root


# --- histories ----------------------------------------------------------------------------


class History:
    """Builds one material's events; each helper appends a legal stretch of its life."""

    def __init__(self, mid: str, rng: random.Random) -> None:
        self.mid = mid
        self.rng = rng
        self.events: list[ev.Event] = []
        self.attempts: dict[str, int] = {}
        self.job = rng.randrange(1_000_000, 9_000_000)

    def register(self, workflow: str) -> History:
        rng = self.rng
        code = "crystal" if rng.random() < 0.3 else "qe"
        self.events.append(ev.MaterialRegistered(
            material_id=self.mid, formula=rng.choice(_FORMULAS), workflow=workflow, code=code,
            source=f"file:{self.mid}.cif", structure_sha256=f"{rng.getrandbits(256):064x}",
            params={"ecutwfc": 60, "kpoints": [6, 6, 6]} if rng.random() < 0.2 else {},
        ))
        return self

    def _start(self, step: str, recovery: bool) -> tuple[str, str]:
        attempt = self.attempts[step] = self.attempts.get(step, 0) + 1
        cid = f"{self.mid}/{step}/{attempt}"
        self.job += 1
        job = str(self.job)
        self.events.append(ev.SubmissionRequested(
            calculation_id=cid, step=step, attempt=attempt, directory=f"calcs/{cid}",
            changes={"electron_maxstep": 200, "mixing_beta": 0.3} if recovery else {},
            resources={"time": "00:20:00", "ntasks": 16, "mem": "4G"},
            reason="recovery: resubmit" if recovery else "workflow",
        ))
        self.events.append(ev.JobSubmitted(calculation_id=cid, job_id=job))
        return cid, job

    def _run(self, cid: str, job: str, exit_code: int) -> None:
        host = self.rng.choice(_HOSTS)
        self.events.append(ev.JobStarted(cid, job, started_at="2024-05-01T10:00:00Z", host=host))
        self.events.append(ev.JobFinished(
            cid, job, exit_code, started_at="2024-05-01T10:00:00Z",
            finished_at="2024-05-01T10:14:31Z", host=host,
        ))

    def ok(self, step: str, recovery: bool = False) -> History:
        cid, job = self._start(step, recovery)
        self._run(cid, job, 0)
        energy = -15.8 - self.rng.random()
        self.events.append(ev.CalculationSucceeded(
            cid, parser="qe-pw/1", summary={"energy_ev": energy, "scf_iterations": 11},
        ))
        self.events.append(ev.PropertiesExtracted(cid, {
            "energy": {"value": energy, "unit": "eV"},
            "band_gap": {"value": self.rng.random() * 3, "unit": "eV"},
            "fermi_energy": {"value": 6.1 + self.rng.random(), "unit": "eV"},
            "total_force": {"value": 0.0012, "unit": "Ry/bohr"},
        }, parser="qe-pw/1"))
        return self

    def fail(self, step: str, recovery: bool = False) -> History:
        kind, text = self.rng.choice(_FAIL_KINDS)
        cid, job = self._start(step, recovery)
        self._run(cid, job, 1 if kind != "scf_not_converged" else 0)
        self.events.append(ev.CalculationFailed(
            cid, kind, evidence=[{"line": 1234, "text": text, "pattern": kind}], parser="qe-pw/1",
        ))
        self.events.append(ev.RecoveryDecided(
            cid, kind, "resubmit", stage=1, changes={"mixing_beta": 0.3},
            resources={"time": "00:40:00"}, reason=f"{kind}: stage 1",
        ))
        return self

    def lost(self, step: str) -> History:
        cid, job = self._start(step, False)
        self.events.append(ev.JobStarted(cid, job, started_at="2024-05-01T10:00:00Z",
                                         host="node013"))
        self.events.append(ev.JobLost(cid, job, "NODE_FAIL", reason="node_failure",
                                      evidence=["sacct: NODE_FAIL", "no completion record"]))
        self.events.append(ev.RecoveryDecided(cid, "node_failure", "resubmit", stage=1))
        return self

    def running(self, step: str) -> History:
        cid, job = self._start(step, False)
        self.events.append(ev.JobStarted(cid, job, started_at="2024-05-01T10:00:00Z",
                                         host="node001"))
        return self

    def then(self, e: ev.Event) -> History:
        self.events.append(e)
        return self


def _sp_done(h: History) -> History:
    return h.register("scf_only").ok("SP").then(ev.MaterialCompleted())


def _sp_retry_done(h: History) -> History:
    return h.register("scf_only").fail("SP").ok("SP", True).then(ev.MaterialCompleted())


def _full_done(h: History) -> History:
    h.register("full_characterization").ok("OPT").ok("SP").ok("BAND").ok("DOS")
    return h.then(ev.MaterialCompleted())


def _full_in_progress(h: History) -> History:
    return h.register("full_characterization").ok("OPT").running("SP")


def _lost_then_ok(h: History) -> History:
    return h.register("scf_only").lost("SP").ok("SP", True).then(ev.MaterialCompleted())


def _gave_up(h: History) -> History:
    h.register("scf_only").fail("SP").fail("SP", True)
    return h.then(ev.NeedsAttention("SP failed twice: scf_not_converged", f"{h.mid}/SP/2"))


def _running(h: History) -> History:
    return h.register("scf_only").running("SP")


def _held(h: History) -> History:
    return h.register("full_characterization").ok("OPT").then(ev.MaterialHeld("checking OPT"))


def _registered(h: History) -> History:
    return h.register("scf_only")


# (weight, scenario): about 10.2 events per material; a few histories are then cut short
SCENARIOS = (
    (40, _sp_done),  # 8 events
    (12, _sp_retry_done),  # 14
    (7, _full_done),  # 26
    (8, _full_in_progress),  # 10
    (6, _lost_then_ok),  # 13
    (6, _gave_up),  # 14
    (14, _running),  # 4
    (5, _held),  # 8
    (2, _registered),  # 1
)


def _heavy_events() -> list[ev.Event]:
    h = History(HEAVY, random.Random(7)).register("scf_only")
    while len(h.events) + 6 <= HEAVY_EVENTS - 3:
        h.fail("SP", recovery=len(h.events) > 1)
    h.running("SP")
    while len(h.events) < HEAVY_EVENTS:  # pad with held/released pairs (legal when running)
        h.then(ev.MaterialHeld("inspecting")).then(ev.MaterialReleased())
    return h.events[:HEAVY_EVENTS]


def _plan(n_materials: int, n_events: int, seed: int) -> tuple[list[int], list[int]]:
    """Scenario index and kept length per ordinary material, summing to the exact total."""
    rng = random.Random(seed)
    weights = [w for w, _ in SCENARIOS]
    lengths = [len(s(History("x", random.Random(0))).events) for _, s in SCENARIOS]
    n_plain = n_materials - 1
    budget = n_events - HEAVY_EVENTS
    if n_plain < 1 or budget < n_plain:
        raise ValueError(f"need at least {n_materials - 1 + HEAVY_EVENTS} events for "
                         f"{n_materials} materials")
    picks = rng.choices(range(len(SCENARIOS)), weights, k=n_plain)
    keep = [lengths[p] for p in picks]
    excess = sum(keep) - budget
    full = next(i for i, (_, s) in enumerate(SCENARIOS) if s is _full_done)
    while excess > 0:  # cut a history short (a legal prefix: a material still in progress)
        i = rng.randrange(n_plain)
        if keep[i] > 1:
            cut = min(excess, rng.randint(1, keep[i] - 1))
            keep[i] -= cut
            excess -= cut
    while excess < 0:  # too few events: some materials run the longer workflow instead
        i = rng.randrange(n_plain)
        grow = min(-excess, lengths[full] - keep[i])
        if grow > 0:
            picks[i] = full
            keep[i] += grow
            excess += grow
    return picks, keep


def generate(n_materials: int, n_events: int, seed: int = 1) -> Iterator[NewEvent]:
    """The log's events in order: histories of CHUNK_MATERIALS materials interleaved."""
    picks, keep = _plan(n_materials, n_events, seed)
    heavy = _heavy_events()
    heavy_every = max(1, (n_events - HEAVY_EVENTS) // HEAVY_EVENTS)
    rng = random.Random(seed + 1)
    emitted = 0
    h_next = 0

    def with_heavy(item: NewEvent) -> Iterator[NewEvent]:
        nonlocal emitted, h_next
        yield item
        emitted += 1
        if h_next < HEAVY_EVENTS and emitted % heavy_every == heavy_every // 2:
            yield NewEvent(HEAVY, heavy[h_next], meta={"actor": "bench"})
            h_next += 1

    for start in range(0, len(picks), CHUNK_MATERIALS):
        queues = []
        for i in range(start, min(start + CHUNK_MATERIALS, len(picks))):
            mid = f"mp-{i + 1:06d}"
            events = SCENARIOS[picks[i]][1](History(mid, rng)).events[: keep[i]]
            queues.append((mid, events))
        pos = 0
        while queues:
            remaining = []
            for mid, events in queues:
                yield from with_heavy(NewEvent(mid, events[pos], meta={"actor": "bench"}))
                if pos + 1 < len(events):
                    remaining.append((mid, events))
            queues = remaining
            pos += 1
    while h_next < HEAVY_EVENTS:  # small logs: the rest of the heavy material at the end
        yield NewEvent(HEAVY, heavy[h_next], meta={"actor": "bench"})
        h_next += 1


def batches(items: Iterator[NewEvent], size: int = BATCH) -> Iterator[list[NewEvent]]:
    batch: list[NewEvent] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_log(path: Path, n_materials: int, n_events: int) -> None:
    """Generate the log at ``path`` with append_many in batches of 1,000 (synchronous=NORMAL)."""
    with EventStore(path, create=True, synchronous="NORMAL") as store:
        for batch in batches(generate(n_materials, n_events)):
            store.append_many(batch)


def cached_log(n_materials: int, n_events: int, *, quiet: bool = False) -> Path:
    """The path of a generated log of this size, generating it the first time."""
    path = bench_root() / f"log-v{GENERATOR_VERSION}-{n_materials}m-{n_events}e.db"
    if not path.exists():
        if not quiet:
            print(f"generating {n_events:,} events of {n_materials:,} materials into {path} "
                  "(cached for the next runs)...", file=sys.stderr, flush=True)
        tmp = path.with_name(path.name + ".partial")
        for stale in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            stale.unlink(missing_ok=True)
        write_log(tmp, n_materials, n_events)
        os.replace(tmp, path)
    return path


def make_project(folder: Path, n_materials: int, n_events: int) -> Path:
    """A project folder (``eventflow init``) whose log is a copy of the cached log, projected."""
    from eventflow.shell.api import Tracker
    from eventflow.shell.projections import Projections

    folder = Path(folder)
    if not (folder / ".eventflow").is_dir():
        Tracker.init(folder).close()
    with Tracker.open(folder) as tracker:
        log, projections = tracker.project.log_path, tracker.project.projections_path
    for path in (log, projections):
        for extra in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            extra.unlink(missing_ok=True)
    shutil.copyfile(cached_log(n_materials, n_events), log)
    with EventStore(log) as store:
        views = Projections(projections, create=True)
        views.rebuild(store)
        views.close()
    return folder


def cached_project(n_materials: int, n_events: int) -> Path:
    """A cached project folder with a log of this size and up-to-date projections."""
    folder = bench_root() / f"project-v{GENERATOR_VERSION}-{n_materials}m-{n_events}e"
    done = folder / ".bench-ready"
    if not done.exists():
        make_project(folder, n_materials, n_events)
        done.write_text("ok\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--materials", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--project", type=Path, help="make a project folder here (else: print "
                        "the cached log's path)")
    args = parser.parse_args(argv)
    if args.project is not None:
        print(make_project(args.project, args.materials, args.events))
    else:
        print(cached_log(args.materials, args.events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
