"""The recovery configuration as frozen data: what ``parse_recovery`` returns.

A rule says, for one error kind, which corrections to try in which order. Its
stages are tried one after another; which ones were already tried is read from
the material's history, never kept here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs

ACTIONS_EXHAUSTED = ("escalate", "give_up")
NO_RESTART = "none"
RESOURCE_NAMES = ("time", "mem", "ntasks")


@attrs.frozen
class Caps:
    """Upper limits for resources the policy raises (None: no limit)."""

    max_memory_mb: int | None = None
    max_walltime_s: int | None = None
    max_cores: int | None = None

    def over(self, other: Caps) -> Caps:
        """These caps, with each unset one taken from ``other``."""
        return Caps(
            self.max_memory_mb if self.max_memory_mb is not None else other.max_memory_mb,
            self.max_walltime_s if self.max_walltime_s is not None else other.max_walltime_s,
            self.max_cores if self.max_cores is not None else other.max_cores,
        )


@attrs.frozen
class Stage:
    """One set of corrections: input parameters to set or multiply, resources to multiply.

    ``max_retries`` is how many attempts of a step may use this stage; ``restart`` the
    kind of checkpoint the next attempt continues from (a name in the code's
    ``restarts``, or None to start from scratch); ``exclude_failed_node`` asks the
    runner to keep the next attempt off the node the failed one ran on.
    """

    name: str
    set: Mapping[str, Any] = attrs.field(factory=dict)
    multiply: Mapping[str, float] = attrs.field(factory=dict)
    resources: Mapping[str, float] = attrs.field(factory=dict)
    max_retries: int = 1
    delay_s: int | None = None
    restart: str | None = None
    exclude_failed_node: bool = False

    @property
    def corrects(self) -> bool:
        """True if the stage changes something (False: resubmit as is)."""
        return bool(self.set or self.multiply or self.resources)


@attrs.frozen
class Rule:
    """What to do about one error kind of one code (or of the scheduler, ``section`` slurm)."""

    kind: str
    section: str
    stages: tuple[Stage, ...] = ()
    max_retries: int | None = None  # over all stages, per step; None: the stages' sum
    delay_s: int = 0
    caps: Caps = Caps()
    exhausted: str = "escalate"
    instructions: str = ""
    restart: str | None = None  # default for the stages


@attrs.frozen
class CodeRules:
    """A code's section: its rules, the defaults of parameters the rules multiply, and how
    each kind of restart is spelled as input changes."""

    name: str
    rules: Mapping[str, Rule] = attrs.field(factory=dict)
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    restarts: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)

    @functools.cached_property
    def restart_keys(self) -> frozenset[str]:
        """Changes that only mean 'continue from the previous attempt': never carried on."""
        return frozenset(k for changes in self.restarts.values() for k in changes)


@attrs.frozen
class RecoveryConfig:
    """Everything in recovery.yaml, validated.

    ``max_recoveries_per_material`` is enforced by the policy from the history;
    ``max_concurrent_recoveries`` by the shell's throttle, which sees all materials.
    """

    codes: Mapping[str, CodeRules] = attrs.field(factory=dict)
    slurm: Mapping[str, Rule] = attrs.field(factory=dict)
    caps: Caps = Caps()
    default_resources: Mapping[str, Any] = attrs.field(factory=dict)
    max_recoveries_per_material: int = 10
    max_concurrent_recoveries: int = 20
    source: str = "recovery.yaml"

    def rule_for(self, code: str, kind: str) -> Rule | None:
        """The code's own rule for ``kind``, else the scheduler-level one, else None."""
        section = self.codes.get(code)
        if section is not None and kind in section.rules:
            return section.rules[kind]
        return self.slurm.get(kind)

    def code(self, name: str) -> CodeRules:
        return self.codes.get(name) or CodeRules(name)
