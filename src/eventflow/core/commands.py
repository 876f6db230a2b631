"""Every command the policy can return: data that says what to do next.

The shell carries each out by first appending the event that records the
intent, with an idempotency key derived from the command itself, so two
processes deciding the same thing record it once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs


@attrs.frozen
class Command:
    TYPE: ClassVar[str] = ""

    def to_data(self) -> dict[str, Any]:
        return {"type": self.TYPE, **attrs.asdict(self, recurse=False)}


@attrs.frozen
class RequestStep(Command):
    """Run (or re-run) ``step`` as ``attempt`` with these input and resource changes."""

    TYPE = "RequestStep"
    material_id: str
    step: str
    attempt: int
    changes: dict[str, Any] = attrs.field(factory=dict)
    resources: dict[str, Any] = attrs.field(factory=dict)
    reason: str = ""
    restart_from: str | None = None


@attrs.frozen
class Escalate(Command):
    """Stop and ask a human: the material goes to needs_attention with ``reason``."""

    TYPE = "Escalate"
    material_id: str
    reason: str
    calculation_id: str | None = None
    # Set when the same escalation is made again (after a hold and release forgot it): part
    # of the intent's key, which would otherwise find the first NeedsAttention and add nothing.
    again: str = ""


@attrs.frozen
class WaitUntil(Command):
    TYPE = "WaitUntil"
    material_id: str
    until: str
    reason: str


@attrs.frozen
class CompleteMaterial(Command):
    TYPE = "CompleteMaterial"
    material_id: str


@attrs.frozen
class CancelJob(Command):
    TYPE = "CancelJob"
    material_id: str
    calculation_id: str
    job_id: str | None


@attrs.frozen
class RecordRecovery(Command):
    """Record why a recovery was chosen (stage, changes), before the resubmission it leads to."""

    TYPE = "RecordRecovery"
    material_id: str
    calculation_id: str
    error_kind: str
    action: str
    stage: int | None = None
    changes: dict[str, Any] = attrs.field(factory=dict)
    resources: dict[str, Any] = attrs.field(factory=dict)
    reason: str = ""
