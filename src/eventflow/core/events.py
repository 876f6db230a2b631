"""Every event eventflow records: small, frozen, past tense, versioned.

An event is a fact. Its ``TYPE`` is the stable name stored in the log and its
``VERSION`` the schema version of its data. When a shape changes, the class gets
a new version and an upcaster turns the stored old shape into the new one on
read (``UPCASTERS``); stored rows are never rewritten.

Observations and interpretations are separate events: ``JobFinished`` and
``JobLost`` record what the completion record or the scheduler said;
``CalculationSucceeded``/``CalculationFailed``/``PropertiesExtracted`` record
what a parser concluded, with the parser's name and version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import msgspec

SYSTEM_STREAM = "_system"


class UnknownEventError(ValueError):
    """A stored event whose type or version this eventflow does not know (a newer one wrote it)."""


@attrs.frozen
class Event:
    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def to_data(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)


EVENT_TYPES: dict[str, type[Event]] = {}


def event(cls: type[Event]) -> type[Event]:
    """Register an event class under its TYPE; a TYPE is defined once."""
    if not cls.TYPE or cls.TYPE in EVENT_TYPES:
        raise ValueError(f"event type {cls.TYPE!r} missing or defined twice")
    EVENT_TYPES[cls.TYPE] = cls
    return cls


def _dict() -> Any:
    return attrs.field(factory=dict)


# --- materials ------------------------------------------------------------------------------


@event
@attrs.frozen
class MaterialRegistered(Event):
    TYPE = "MaterialRegistered"
    VERSION = 2
    material_id: str
    formula: str
    workflow: str
    code: str = "qe"
    source: str = ""  # where the structure came from (a path, "api", "import")
    structure_sha256: str = ""
    params: dict[str, Any] = _dict()  # per-material parameter overrides (--set key=value)


@event
@attrs.frozen
class MaterialCompleted(Event):
    TYPE = "MaterialCompleted"
    reason: str = "all workflow steps succeeded"


@event
@attrs.frozen
class NeedsAttention(Event):
    TYPE = "NeedsAttention"
    reason: str
    calculation_id: str | None = None


@event
@attrs.frozen
class WaitScheduled(Event):
    TYPE = "WaitScheduled"
    until: str  # ISO-8601 UTC
    reason: str


@event
@attrs.frozen
class MaterialHeld(Event):
    TYPE = "MaterialHeld"
    reason: str = ""


@event
@attrs.frozen
class MaterialReleased(Event):
    TYPE = "MaterialReleased"
    reason: str = ""


@event
@attrs.frozen
class MaterialCancelled(Event):
    TYPE = "MaterialCancelled"
    reason: str = ""


# --- calculations ---------------------------------------------------------------------------


@event
@attrs.frozen
class SubmissionRequested(Event):
    """The intent to run ``step`` (attempt ``attempt``); recorded before any effect happens."""

    TYPE = "SubmissionRequested"
    calculation_id: str
    step: str
    attempt: int
    directory: str = ""  # relative to the project
    changes: dict[str, Any] = _dict()  # input parameter changes for this attempt
    resources: dict[str, Any] = _dict()  # resources for this attempt (time, mem, ...)
    reason: str = ""
    restart_from: str | None = None  # calculation id whose outputs this attempt continues


@event
@attrs.frozen
class InputsPrepared(Event):
    """Observation: the job folder was written; checksums of its inputs and of what was handed
    on from earlier calculations (``handed``: name -> {from, sha256})."""

    TYPE = "InputsPrepared"
    calculation_id: str
    files: dict[str, str] = _dict()  # name -> sha256
    handed: dict[str, Any] = _dict()


@event
@attrs.frozen
class JobSubmitted(Event):
    TYPE = "JobSubmitted"
    calculation_id: str
    job_id: str
    scheduler: str = "slurm"
    external: bool = False  # submitted outside eventflow and only recorded here


@event
@attrs.frozen
class SubmissionFailed(Event):
    TYPE = "SubmissionFailed"
    calculation_id: str
    message: str
    retry_at: str | None = None


@event
@attrs.frozen
class JobStarted(Event):
    TYPE = "JobStarted"
    calculation_id: str
    job_id: str
    started_at: str = ""
    host: str = ""


@event
@attrs.frozen
class JobFinished(Event):
    """Observation: what the job's completion record said."""

    TYPE = "JobFinished"
    calculation_id: str
    job_id: str
    exit_code: int | None
    signal: int | None = None
    reason: str | None = None
    started_at: str = ""
    finished_at: str = ""
    host: str = ""


@event
@attrs.frozen
class JobLost(Event):
    """Observation: the job left the scheduler without a completion record."""

    TYPE = "JobLost"
    calculation_id: str
    job_id: str
    scheduler_state: str | None
    reason: str = ""
    evidence: list[str] = attrs.field(factory=list)


@event
@attrs.frozen
class CalculationSucceeded(Event):
    """Interpretation: the output says the step succeeded (or a user said so)."""

    TYPE = "CalculationSucceeded"
    calculation_id: str
    parser: str = ""
    summary: dict[str, Any] = _dict()


@event
@attrs.frozen
class CalculationFailed(Event):
    """Interpretation: the step failed, and why (one of ``core.kinds``)."""

    TYPE = "CalculationFailed"
    calculation_id: str
    error_kind: str
    evidence: list[dict[str, Any]] = attrs.field(factory=list)  # [{line, text, pattern}]
    parser: str = ""


@event
@attrs.frozen
class PropertiesExtracted(Event):
    TYPE = "PropertiesExtracted"
    calculation_id: str
    properties: dict[str, Any]  # name -> {"value": v, "unit": u}
    parser: str = ""


@event
@attrs.frozen
class ResultRejected(Event):
    """The parse looked successful but failed a sanity check; nothing was stored as a property."""

    TYPE = "ResultRejected"
    calculation_id: str
    reasons: list[str]
    parser: str = ""


@event
@attrs.frozen
class OutputReinterpreted(Event):
    """A newer parser's reading of an old output, appended by an explicit re-parse.

    It changes no past decision: it only records the new interpretation beside the old.
    """

    TYPE = "OutputReinterpreted"
    calculation_id: str
    parser: str
    status: str
    error_kind: str | None = None
    previous_error_kind: str | None = None


@event
@attrs.frozen
class ScratchCleanupDecided(Event):
    """Intent: these globs in a succeeded step's folder are removed (nothing later reads them)."""

    TYPE = "ScratchCleanupDecided"
    calculation_id: str
    patterns: list[str] = attrs.field(factory=list)


@event
@attrs.frozen
class RemoteScratchRemoved(Event):
    """Observation: a remote cluster removed a ScratchCleanupDecided's globs from the job's
    folder there (``removed`` files); its clean-up is not sent again."""

    TYPE = "RemoteScratchRemoved"
    calculation_id: str
    cluster: str
    removed: int = 0


@event
@attrs.frozen
class RecoveryDecided(Event):
    TYPE = "RecoveryDecided"
    calculation_id: str
    error_kind: str
    action: str  # "resubmit", "wait", "escalate", "give_up"
    stage: int | None = None
    changes: dict[str, Any] = _dict()
    resources: dict[str, Any] = _dict()
    reason: str = ""


@event
@attrs.frozen
class CalculationCancelled(Event):
    TYPE = "CalculationCancelled"
    calculation_id: str
    reason: str = ""


# --- clusters (recorded in the system stream) -----------------------------------------------


@event
@attrs.frozen
class ClusterAdded(Event):
    """A cluster eventflow may submit to over SSH. How to reach it, never a credential: keys,
    agents and passwords stay with OpenSSH (``~/.ssh/config``, the agent)."""

    TYPE = "ClusterAdded"
    name: str
    host: str
    workdir: str  # absolute remote folder; every job folder lives below it
    user: str | None = None
    port: int | None = None
    ssh_config_host: str | None = None  # a Host alias of ~/.ssh/config, used instead of host
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    max_jobs: int | None = None


@event
@attrs.frozen
class ClusterRemoved(Event):
    TYPE = "ClusterRemoved"
    name: str
    reason: str = ""


@event
@attrs.frozen
class ClusterUnreachable(Event):
    """Observation: a cluster stopped answering (ssh's own failure, not a command's); recorded
    once when an outage begins, so its jobs can say why nothing moves."""

    TYPE = "ClusterUnreachable"
    name: str
    reason: str = ""


@event
@attrs.frozen
class ClusterAnswered(Event):
    """Observation: a cluster recorded unreachable answers again (the outage is over)."""

    TYPE = "ClusterAnswered"
    name: str


# --- upcasting ------------------------------------------------------------------------------


def _material_registered_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 had no per-material parameters and called the structure checksum "sha256".
    data = dict(data)
    data.setdefault("params", {})
    if "sha256" in data:
        data["structure_sha256"] = data.pop("sha256")
    return data


# (type, stored version) -> function that returns the data of version + 1
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("MaterialRegistered", 1): _material_registered_v1_to_v2,
}


def decode(type_name: str, schema_version: int, data: dict[str, Any]) -> Event:
    """Turn a stored (type, version, data) into the current event class, upcasting old shapes."""
    cls = EVENT_TYPES.get(type_name)
    if cls is None or schema_version > cls.VERSION:
        raise UnknownEventError(
            f"event {type_name} v{schema_version} is unknown to this eventflow "
            "(written by a newer version?): upgrade eventflow"
        )
    while schema_version < cls.VERSION:
        upcast = UPCASTERS.get((type_name, schema_version))
        if upcast is None:
            raise UnknownEventError(f"no upcaster for {type_name} v{schema_version}")
        data = upcast(data)
        schema_version += 1
    try:
        return cls(**data)
    except TypeError as exc:
        raise UnknownEventError(f"event {type_name} v{schema_version} has bad data: {exc}") from exc


_TYPED_DECODERS: dict[str, Callable[[str | bytes], Event]] = {}


def decode_json(type_name: str, schema_version: int, raw: str | bytes) -> Event:
    """``decode`` of a stored row's JSON text: the replay hot path.

    An event stored in its current version is decoded by msgspec straight into its attrs
    class, checked against the field types, at C speed (a third of ``json.loads`` plus
    ``cls(**data)``). Anything else (an older version to upcast, or data the typed decoder
    refuses) takes the general path, so what decodes is the same either way.
    """
    typed = _TYPED_DECODERS.get(type_name)
    if typed is None:
        cls = EVENT_TYPES.get(type_name)
        if cls is None:
            return decode(type_name, schema_version, {})  # raises UnknownEventError
        typed = _TYPED_DECODERS[type_name] = msgspec.json.Decoder(cls).decode
    if schema_version == EVENT_TYPES[type_name].VERSION:
        try:
            return typed(raw)
        except msgspec.DecodeError:
            pass  # e.g. an int where a str is declared: the general path accepts what it did
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise UnknownEventError(f"event {type_name} v{schema_version}: data is not JSON") from exc
    if not isinstance(data, dict):
        raise UnknownEventError(f"event {type_name} v{schema_version}: data is not an object")
    return decode(type_name, schema_version, data)


@attrs.frozen
class Recorded:
    """An event as stored: its place in the log and its envelope."""

    seq: int
    stream: str
    version: int
    event: Event
    recorded_at: str
    meta: dict[str, Any] = attrs.field(factory=dict)
    idempotency_key: str | None = None

    @property
    def type(self) -> str:
        return self.event.TYPE
