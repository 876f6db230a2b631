"""Commands turned into the events that record their intent, with deterministic keys.

Two processes that decide the same command produce the same idempotency key,
so the log stores the intent once and both see the same stored event.
"""

from __future__ import annotations

from eventflow.core import commands as cmd
from eventflow.core import events as ev
from eventflow.core.state import calculation_id


def intent(command: cmd.Command) -> tuple[ev.Event, str] | None:
    """The (event, idempotency key) recording ``command``; None for commands with no event."""
    if isinstance(command, cmd.RequestStep):
        cid = calculation_id(command.material_id, command.step, command.attempt)
        return (
            ev.SubmissionRequested(
                calculation_id=cid,
                step=command.step,
                attempt=command.attempt,
                directory=f"calcs/{cid}",
                changes=dict(command.changes),
                resources=dict(command.resources),
                reason=command.reason,
                restart_from=command.restart_from,
            ),
            f"request:{cid}",
        )
    if isinstance(command, cmd.Escalate):
        suffix = command.calculation_id or "material"
        if command.again:
            suffix += f":again:{command.again}"
        return ev.NeedsAttention(command.reason, command.calculation_id), (
            f"attention:{command.material_id}:{suffix}"
        )
    if isinstance(command, cmd.CompleteMaterial):
        return ev.MaterialCompleted(), f"completed:{command.material_id}"
    if isinstance(command, cmd.WaitUntil):
        return ev.WaitScheduled(command.until, command.reason), (
            f"wait:{command.material_id}:{command.until}"
        )
    if isinstance(command, cmd.RecordRecovery):
        return (
            ev.RecoveryDecided(
                calculation_id=command.calculation_id,
                error_kind=command.error_kind,
                action=command.action,
                stage=command.stage,
                changes=dict(command.changes),
                resources=dict(command.resources),
                reason=command.reason,
            ),
            f"recovery:{command.calculation_id}",
        )
    return None
