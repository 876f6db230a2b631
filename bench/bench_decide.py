"""Benchmarks of the recovery policy: decisions per second, and what-if replay of a big log.

1. ``decide`` on failures whose recovery is not decided yet (the full recovery path:
   history, stage choice, corrections, caps), against a baseline that only does what
   any decide must (look the calculation up in the state) and returns nothing.
   Target: >= 50,000 decisions/s.
2. ``replay --what-if`` over a log of N events (default 1,000,000): the log is made by
   simulating materials through the real policy, round by round, as the runner and the
   Tracker would record them; then ``compare_log`` replays it with the same policy
   (must find no difference) and with a changed rule. Target: < 30 s for 1M events.

The store stamps each append with the current time; the simulation stamps every round
with a simulated time instead (``store.utc_now`` is replaced for the run), so waits
end in later rounds exactly as they would on a cluster and the log replays faithfully.

Run: ``python bench/bench_decide.py [--events 1000000] [--decisions 5000] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eventflow.core import events as ev
from eventflow.core.intents import intent
from eventflow.core.policy import PolicyConfig, decide
from eventflow.core.recovery import due, units
from eventflow.core.state import MaterialState, apply
from eventflow.shell import store as store_module
from eventflow.shell.api import Tracker
from eventflow.shell.config import load_policy
from eventflow.shell.project import Project
from eventflow.shell.store import EventStore, NewEvent
from eventflow.shell.whatif import compare_log, load_other_policy

T0 = "2024-05-01T00:00:00.000000Z"
ROUND_SECONDS = 600
FAILURES = (
    ("scf_not_converged", 6), ("walltime", 3), ("out_of_memory", 3), ("node_failure", 2),
    ("geometry_not_converged", 2), ("input_error", 1), ("diagonalization_failed", 1),
    ("cancelled", 1), ("kpoint_mesh", 1),
)
WORKFLOWS = ("full_characterization", "scf_only", "single")


class Simulation:
    """Materials driven through the real policy; events collected per round for the log."""

    def __init__(self, config: PolicyConfig, seed: int = 7) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.states: dict[str, MaterialState] = {}
        self.seq = 0
        self.out: list[NewEvent] = []
        self.kinds = [k for k, w in FAILURES for _ in range(w)]

    def put(self, mid: str, event: ev.Event, actor: str, at: str) -> ev.Recorded:
        state = self.states[mid]
        self.seq += 1
        rec = ev.Recorded(self.seq, mid, state.version + 1, event, at, {})
        apply(state, rec)
        self.out.append(NewEvent(mid, event, None, {"actor": actor}))
        return rec

    def react(self, mid: str, batch: list[ev.Recorded], at: str) -> None:
        """What the Tracker does after an append: decide on each event, record the intents."""
        for rec in batch:
            for command in decide(self.states[mid], rec, self.config):
                found = intent(command)
                if found is not None:
                    self.put(mid, found[0], "policy", at)

    def step(self, mid: str, at: str) -> bool:
        """One round of a material's life; False when it has nothing left to do."""
        state = self.states.get(mid)
        if state is None:
            self.states[mid] = MaterialState(mid)
            workflow = self.rng.choice(WORKFLOWS)
            code = "crystal" if self.rng.random() < 0.3 else "qe"
            rec = self.put(mid, ev.MaterialRegistered(mid, "Si2", workflow, code), "user", at)
            self.react(mid, [rec], at)
            return True
        requested = [c for c in state.calcs.values() if c.state == "requested"]
        if requested:
            batch = []
            for calc in requested:
                job = str(100000 + self.seq)
                batch.append(self.put(mid, ev.JobSubmitted(calc.id, job), "runner", at))
                batch.append(self.put(mid, ev.JobStarted(calc.id, job, host="node1"), "runner",
                                      at))
                if self.rng.random() < 0.3:
                    kind = self.rng.choice(self.kinds)
                    batch.append(self.put(mid, ev.CalculationFailed(
                        calc.id, kind, [{"line": 1, "text": kind}], "bench/1"), "runner", at))
                else:
                    batch.append(self.put(mid, ev.JobFinished(calc.id, job, 0), "runner", at))
                    batch.append(self.put(mid, ev.CalculationSucceeded(calc.id, "bench/1"),
                                          "runner", at))
                    batch.append(self.put(mid, ev.PropertiesExtracted(
                        calc.id, {"energy": {"value": -10.0, "unit": "eV"}}), "runner", at))
            self.react(mid, batch, at)
            return True
        if state.state == "waiting":
            if state.wait_until is not None and units.not_after(state.wait_until, at):
                for command in due(state, at, self.config):
                    found = intent(command)
                    if found is not None:
                        self.put(mid, found[0], "policy", at)
            return True
        return False


def make_log(project: Project, config: PolicyConfig, target: int) -> int:
    """Simulate until the log holds at least ``target`` events; returns the count."""
    sim = Simulation(config)
    materials = max(1, target // 30)
    active = [f"mat{i:06d}" for i in range(materials)]
    written = 0
    original = store_module.utc_now
    with EventStore(project.log_path, synchronous="NORMAL") as store:
        try:
            rounds = 0
            while active and written < target:
                at = units.add_seconds(T0, rounds * ROUND_SECONDS)
                store_module.utc_now = lambda at=at: at  # type: ignore[assignment]
                still = []
                for mid in active:
                    if written + len(sim.out) >= target:
                        break
                    if sim.step(mid, at):
                        still.append(mid)
                active = still
                for i in range(0, len(sim.out), 50_000):
                    store.append_many(sim.out[i:i + 50_000])
                written += len(sim.out)
                sim.out.clear()
                rounds += 1
                if not active:  # everyone finished early: start new materials
                    active = [f"mat{materials + i:06d}" for i in range(materials)]
                    materials *= 2
        finally:
            store_module.utc_now = original
    return written


def failure_cases(config: PolicyConfig, n: int) -> list[tuple[MaterialState, ev.Recorded]]:
    """``n`` (state, undecided failure) pairs with varied histories."""
    cases: list[tuple[MaterialState, ev.Recorded]] = []
    sim = Simulation(config, seed=11)
    i = 0
    while len(cases) < n:
        mid = f"d{i}"
        i += 1
        at = T0
        for r in range(sim.rng.randint(1, 8)):
            at = units.add_seconds(T0, r * ROUND_SECONDS)
            if not sim.step(mid, at):
                break
        state = sim.states[mid]
        calc = next((c for c in state.calcs.values() if c.state == "requested"), None)
        if calc is None:
            continue
        sim.put(mid, ev.JobSubmitted(calc.id, "1"), "runner", at)
        rec = sim.put(mid, ev.CalculationFailed(calc.id, sim.rng.choice(sim.kinds)), "runner", at)
        cases.append((state, rec))
        sim.out.clear()
    return cases


def noop_decide(state: MaterialState, rec: ev.Recorded, config: PolicyConfig) -> list[Any]:
    """The baseline: find the failed calculation, decide nothing."""
    state.calcs[rec.event.calculation_id]  # type: ignore[attr-defined]  # noqa: B018
    return []


def bench_decisions(config: PolicyConfig, n: int, repeat: int = 5) -> dict[str, float]:
    cases = failure_cases(config, n)
    results = {}
    for name, fn in (("decide", decide), ("baseline", noop_decide)):
        rates = []
        for _ in range(repeat):
            started = time.perf_counter()
            for state, rec in cases:
                fn(state, rec, config)
            rates.append(len(cases) / (time.perf_counter() - started))
        results[name] = statistics.median(rates)
    commands = sum(len(decide(s, r, config)) for s, r in cases)
    results["commands_per_decision"] = commands / len(cases)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run with small sizes (numbers not meaningful)")
    parser.add_argument("--events", type=int, help="events in the log (default 1,000,000)")
    parser.add_argument("--decisions", type=int, help="failures to decide (default 5000)")
    parser.add_argument("--keep", metavar="DIR", help="make the project here and keep it")
    args = parser.parse_args(argv)
    args.events = args.events or (20_000 if args.quick else 1_000_000)
    args.decisions = args.decisions or (500 if args.quick else 5000)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="eventflow-bench-"))
    try:
        with Tracker.init(root) as tracker:
            project = tracker.project
        config = load_policy(project)
        rates = bench_decisions(config, args.decisions)
        print(f"decide (recovery path): {rates['decide']:,.0f} decisions/s "
              f"({rates['commands_per_decision']:.2f} commands each); baseline no-op decide: "
              f"{rates['baseline']:,.0f}/s; target >= 50,000/s: "
              f"{'ok' if rates['decide'] >= 50_000 else 'MISSED'}")

        started = time.perf_counter()
        count = make_log(project, config, args.events)
        print(f"generated {count:,} events in {time.perf_counter() - started:.1f} s")
        same = load_other_policy(project, project.root / "config" / "recovery.yaml")
        with EventStore(project.log_path) as store:
            report = compare_log(store, same)
        per_million = report.seconds * 1_000_000 / max(report.events, 1)
        print(f"what-if, same policy: {report.events:,} events, {report.materials:,} materials, "
              f"{report.decisions:,} decisions in {report.seconds:.1f} s "
              f"({per_million:.1f} s per million events; target < 30 s): "
              f"{len(report.divergences)} differences")
        text = (project.root / "config" / "recovery.yaml").read_text()
        other = project.root / "other.yaml"
        other.write_text(text.replace("set: {electrons.mixing_beta: 0.3}",
                                      "set: {electrons.mixing_beta: 0.2}"))
        with EventStore(project.log_path) as store:
            changed = compare_log(store, load_other_policy(project, other))
        print(f"what-if, mixing_beta 0.2: {len(changed.divergences):,} materials would differ "
              f"({changed.seconds:.1f} s)")
        return 0 if not report.divergences else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
