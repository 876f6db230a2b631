"""Recovery as a pure policy: recovery.yaml rules, and the decisions they lead to.

* :func:`parse_recovery` validates a loaded recovery.yaml into a :class:`RecoveryConfig`;
  :func:`load_recovery_text` does the same from the text, so errors name the line;
  :func:`load_recovery_texts` merges a user's file over the shipped defaults key by key.
* :func:`recover` is the rule ``core.policy.decide`` calls for a failed attempt;
  :func:`review` the one it calls for a succeeded attempt it may redo.
* :func:`due` is what the shell's tick asks once a delayed resubmission's wait is over.
"""

from __future__ import annotations

from typing import Any

from eventflow.core.recovery import units
from eventflow.core.recovery.model import Caps, CodeRules, RecoveryConfig, Rule, Stage
from eventflow.core.recovery.parse import KNOWN_CODES, parse_recovery
from eventflow.core.recovery.plan import TRANSIENT_RESOURCES, recoveries_used, stage_tries
from eventflow.core.recovery.recover import due, error_kind, recover, review
from eventflow.core.recovery.throttle import is_recovery_attempt, recovery_slots
from eventflow.core.yamltext import load_with_lines, merge, merge_lines


def load_recovery_text(text: str, source: str = "recovery.yaml", *,
                       codes: tuple[str, ...] = KNOWN_CODES) -> RecoveryConfig:
    """Validate a recovery.yaml text; errors name ``source`` and the line."""
    doc, lines = load_with_lines(text, source)
    return parse_recovery(doc, source, lines=lines, codes=codes)


def load_recovery_texts(default_text: str, user_text: str | None, *,
                        default_source: str = "recovery.yaml (defaults)",
                        user_source: str = "recovery.yaml",
                        codes: tuple[str, ...] = KNOWN_CODES) -> RecoveryConfig:
    """The user's recovery.yaml merged over the shipped defaults, key by key, then validated.

    An error in a value the user's file set names the user's file and line; one in a
    default names the defaults.
    """
    defaults, default_lines = load_with_lines(default_text, default_source)
    if user_text is None:
        return parse_recovery(defaults, default_source, lines=default_lines, codes=codes)
    user, user_lines = load_with_lines(user_text, user_source)
    doc: Any = merge(defaults or {}, user or {})
    lines = merge_lines(default_lines, user_lines, user or {})
    return parse_recovery(doc, user_source, lines=lines, codes=codes)


__all__ = [
    "KNOWN_CODES",
    "TRANSIENT_RESOURCES",
    "Caps",
    "CodeRules",
    "RecoveryConfig",
    "Rule",
    "Stage",
    "due",
    "error_kind",
    "is_recovery_attempt",
    "load_recovery_text",
    "load_recovery_texts",
    "merge",
    "parse_recovery",
    "recover",
    "review",
    "recoveries_used",
    "recovery_slots",
    "stage_tries",
    "units",
]
