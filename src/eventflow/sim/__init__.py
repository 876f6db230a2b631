"""Deterministic simulation: the real runner, policy and parsers against a simulated world.

This package is neither the functional core nor the shell. It is a test harness shipped with
the package (``eventflow-sim --seed N``) that runs the shell's real ``Runner`` - and through it
the real log, projections, workflow engine, recovery policy and code parsers - in one process
against a simulated SLURM cluster (:mod:`eventflow.sim.cluster`), job folders written by the
simulation with injected faults, and a simulated clock (:mod:`eventflow.shell.clock`). The
runner and its helpers are "killed" between any two effects and restarted from the log. One
seed gives one history; invariants (:mod:`eventflow.sim.invariants`) are checked after every
step, and a failure names the seed and the command that replays it.
"""

from eventflow.sim.run import SimResult, run_seed

__all__ = ["SimResult", "run_seed"]
