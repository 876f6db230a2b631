"""``eventflow retry``: the SubmissionRequested a user's retry appends, built from the state.

The new attempt keeps the corrections of the attempt before it (input changes and
resources, without the one-attempt restart markers) unless ``fresh``, and adds the
user's ``--set`` changes on top. Its reason says it was a user, so it never counts
as an automatic recovery.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from eventflow.core import events as ev
from eventflow.core.recovery.parse import PARAMETER_CHECKS, PARAMETER_HINTS, SHELL_MARKERS
from eventflow.core.recovery.plan import TRANSIENT_RESOURCES
from eventflow.core.state import calculation_id
from eventflow.errors import EventflowError

ENDED_BADLY = ("failed", "lost", "cancelled")


def parse_sets(items: Iterable[str], code: str) -> dict[str, Any]:
    """``key=value`` strings as changes; values read as YAML scalars (0.3, true, [5, 1])."""
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise EventflowError(f"--set {item!r}: expected key=value")
        check = PARAMETER_CHECKS.get(code)
        if check is not None and key not in SHELL_MARKERS and not check(key):
            raise EventflowError(f"--set {item!r}: unknown input change for {code}: expected "
                                 f"{PARAMETER_HINTS[code]}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        changes[key] = value
    return changes


def latest_failed_step(state: Any) -> str:
    """The step whose latest attempt ended badly most recently."""
    if state.state == "new":
        raise EventflowError(f"no material {state.id!r} in the log")
    found = None
    for calc in state.calcs.values():
        latest = state.latest(calc.step)
        later = found is None or (calc.finished_at or "") >= (found.finished_at or "")
        if latest is calc and calc.state in ENDED_BADLY and later:
            found = calc
    if found is None:
        raise EventflowError(f"{state.id}: no step has failed; pass --step STEP to run one again")
    return found.step


def retry_request(state: Any, step: str, sets: Mapping[str, Any], *, fresh: bool = False,
                  reason: str = "", restart_keys: Iterable[str] = ()) -> ev.SubmissionRequested:
    """The next attempt of ``step`` with the carried corrections and the user's changes."""
    if state.state == "new":
        raise EventflowError(f"no material {state.id!r} in the log")
    if state.state in ("completed", "cancelled"):
        raise EventflowError(f"{state.id} is {state.state}: there is nothing to retry")
    attempts = state.attempts(step)
    running = [c for c in attempts if c.active]
    if running:
        raise EventflowError(f"{running[0].id} is still {running[0].state}: wait for it or "
                             f"`eventflow cancel {state.id}` first")
    previous = state.latest(step)
    skip = set(restart_keys)
    changes: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    if previous is not None and not fresh:
        changes = {k: v for k, v in previous.changes.items() if k not in skip}
        resources = {k: v for k, v in previous.resources.items() if k not in TRANSIENT_RESOURCES}
    changes.update(sets)
    attempt = len(attempts) + 1
    cid = calculation_id(state.id, step, attempt)
    return ev.SubmissionRequested(
        calculation_id=cid, step=step, attempt=attempt, directory=f"calcs/{cid}",
        changes=changes, resources=resources,
        reason="user retry" + (f": {reason}" if reason else ""),
    )
