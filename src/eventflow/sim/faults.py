"""The seeded source of every choice a simulation makes, and the count of each fault injected.

One ``random.Random(seed)`` drives everything (the world's timings, the job outcomes, the
faults, the crashes), so a seed is a history. Fault rates are per opportunity (per scheduler
call, per job end, per effect) and a run may scale them all (``intensity``).
"""

from __future__ import annotations

import random
from collections import Counter

# Fault kind -> probability per opportunity.
RATES: dict[str, float] = {
    # the scheduler's commands
    "sbatch_refused": 0.02,          # sbatch fails; no job was created
    "sbatch_timeout_before": 0.02,   # sbatch times out before slurmctld created the job
    "sbatch_timeout_after": 0.03,    # ... after it created the job (the id never came back)
    "squeue_fails": 0.02,            # squeue/sacct do not answer
    "squeue_lags": 0.05,             # squeue answers with the state of up to 2 minutes ago
    "find_fails": 0.01,              # the look-up by name does not answer
    "scancel_fails": 0.05,           # scancel does not answer
    "slow_command": 0.04,            # a command takes 5-40 s (the clock moves during it)
    # how jobs end (per job; otherwise the program's own outcome from the corpus)
    "time_limit": 0.05,
    "out_of_memory": 0.05,
    "node_failure": 0.03,
    "preempted": 0.03,
    "admin_cancel": 0.02,
    # the job folder (per ended job)
    "record_never": 0.03,            # no completion record at all
    "record_late": 0.05,             # the record appears 10-900 s after the job left
    "record_half": 0.03,             # half a record first (the rest later, or never)
    "record_twice": 0.04,            # the record written again later
    "output_truncated": 0.03,        # the program's output cut short
    # processes
    "crash": 0.01,                   # the runner is killed at an effect (per effect)
    "user_action": 0.004,            # another process appends (hold/release/cancel/retry)
    "runner_interleaved": 0.01,      # another runner's whole cycle runs between two effects
                                     # of this one (a paused watcher whose stale lock was
                                     # taken over resumes mid-cycle); needs 2 runners
}


class Dice:
    """The seeded random source and the fault counter."""

    def __init__(self, seed: int, intensity: float = 1.0, *, faults: bool = True,
                 disabled: frozenset[str] = frozenset()) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.intensity = intensity
        self.enabled = faults
        self.disabled = disabled  # kinds switched off (shrinking): their draws still happen
        self.injected: Counter[str] = Counter()

    def fault(self, kind: str) -> bool:
        """Whether fault ``kind`` happens at this opportunity (counted when it does).

        The draw is made even for a disabled kind, so switching one kind off leaves every
        other choice of the history where it was: that is what makes shrinking work."""
        if not self.enabled:
            return False
        hit = self.rng.random() < RATES[kind] * self.intensity
        if hit and kind not in self.disabled:
            self.injected[kind] += 1
            return True
        return False

    def uniform(self, lo: float, hi: float) -> float:
        return self.rng.uniform(lo, hi)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, items: list) -> object:
        return items[self.rng.randrange(len(items))]

    def weighted(self, rows: list[tuple]) -> tuple:
        """One row of ``(weight, ...)`` rows, by weight."""
        total = sum(r[0] for r in rows)
        x = self.rng.uniform(0, total)
        for row in rows:
            x -= row[0]
            if x <= 0:
                return row
        return rows[-1]
