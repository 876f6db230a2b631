"""``eventflow replay --what-if --policy OTHER.yaml``: another policy over the recorded history.

Each material's stream is folded as recorded. Wherever the recorded policy could have
decided (after every batch of events appended together by someone other than the
policy), the other policy's ``decide`` runs on the same state and its commands, turned
into the events that would record them, are compared with the events the policy
actually appended (``meta.actor == "policy"``). Policy events left over after a
batch's decisions came from the runner's tick (a wait that ended, a failure decided
after a release): those are compared with the other policy's ``due`` at their time.
The first difference per material is reported with the commands the other policy
would have issued; after it the histories part, so the rest of that stream is skipped.
Nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson

from eventflow.core import commands as cmd
from eventflow.core import events as ev
from eventflow.core.intents import intent
from eventflow.core.policy import PolicyConfig, decide
from eventflow.core.recovery import due, load_recovery_texts, recover, review
from eventflow.core.state import MaterialState, apply
from eventflow.errors import EventflowError
from eventflow.resources import data_text
from eventflow.shell.project import Project
from eventflow.shell.store import LogBase, open_store

_POLICY_ACTOR = '"actor":"policy"'  # meta is stored as canonical JSON (no spaces)
Row = tuple[Any, ...]


@attrs.frozen
class Divergence:
    """Where one material's history would have gone another way."""

    material: str
    seq: int  # the event after which the policies differ
    trigger: str  # what happened there
    recorded: list[dict[str, Any]]  # events the recorded policy appended
    would: list[dict[str, Any]]  # commands the other policy would have issued

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class WhatIfReport:
    policy: str
    materials: int
    events: int
    decisions: int  # points where both policies were asked
    divergences: list[Divergence]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self, recurse=False)
        out["divergences"] = [d.to_dict() for d in self.divergences]
        return out


def load_other_policy(project: Project, path: Path) -> PolicyConfig:
    """The other recovery.yaml over the shipped defaults, with the project's workflows."""
    from eventflow.shell.config import load_workflows

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EventflowError(f"{path}: cannot read the other policy: {exc.strerror}") from exc
    rules = load_recovery_texts(data_text("config", "recovery.yaml"), text, user_source=str(path))
    return PolicyConfig(workflows=load_workflows(project), recovery=rules, recover=recover,
                        review=review)


def run_what_if(project: Project, args: argparse.Namespace) -> int:
    """The CLI entry: compare, print per material the first divergence, write nothing."""
    if not args.policy:
        raise EventflowError("--what-if needs --policy OTHER.yaml (the recovery policy to try)")
    config = load_other_policy(project, Path(args.policy))
    with open_store(project.store) as store:
        report = compare_log(store, config, policy_name=str(args.policy))
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str))
        sys.stdout.write("\n")
        return 0
    print(f"what-if {report.policy}: {report.materials} materials, {report.events} events, "
          f"{report.decisions} decisions compared in {report.seconds:.2f} s")
    if not report.divergences:
        print("no differences: the other policy decides exactly as the recorded one")
        return 0
    print(f"{len(report.divergences)} material(s) would differ:")
    for d in report.divergences:
        print(f"{d.material}: first divergence after seq {d.seq} ({d.trigger})")
        print("  recorded: " + ("; ".join(_brief(e) for e in d.recorded) or "nothing"))
        print("  would:    " + ("; ".join(_brief(c) for c in d.would) or "nothing"))
    return 0


def _brief(item: dict[str, Any]) -> str:
    data = {k: v for k, v in item.items() if k != "type" and v not in ("", None, {}, [])}
    return f"{item['type']} " + " ".join(f"{k}={v}" for k, v in data.items())


def compare_log(store: LogBase, config: PolicyConfig, *, policy_name: str = "") -> WhatIfReport:
    """Compare ``config``'s decisions with the recorded ones over the whole log."""
    started = time.perf_counter()
    materials = events = decisions = 0
    divergences: list[Divergence] = []
    for stream in sorted(store.streams()):
        if stream == ev.SYSTEM_STREAM:
            continue
        rows = list(store.read_raw(stream=stream))
        materials += 1
        events += len(rows)
        found, asked = compare_stream(stream, rows, config)
        decisions += asked
        if found is not None:
            divergences.append(found)
    return WhatIfReport(policy_name, materials, events, decisions, divergences,
                        time.perf_counter() - started)


def _is_policy(row: Row) -> bool:
    return _POLICY_ACTOR in row[6]


def _recorded(row: Row) -> ev.Recorded:
    seq, stream, version, type_, sv, data, _meta, at, key = row[:9]
    return ev.Recorded(seq, stream, version, ev.decode_json(type_, sv, data), at, {}, key)


def _as_events(commands: Iterable[cmd.Command]) -> list[ev.Event]:
    out = []
    for command in commands:
        found = intent(command)
        if found is not None:
            out.append(found[0])
    return out


def _key(e: ev.Event) -> bytes:
    return orjson.dumps([e.TYPE, e.to_data()], option=orjson.OPT_SORT_KEYS)


def compare_stream(stream: str, rows: Sequence[Row],
                   config: PolicyConfig) -> tuple[Divergence | None, int]:
    """The first divergence in one material's rows (log order), and how many decisions."""
    state = MaterialState(stream)
    asked = 0
    i, n = 0, len(rows)
    while i < n:
        j = i
        while j < n and not _is_policy(rows[j]) and rows[j][7] == rows[i][7] \
                and rows[j][6] == rows[i][6]:
            j += 1
        batch = [_recorded(r) for r in rows[i:j]]
        for rec in batch:
            apply(state, rec)
        k = j
        while k < n and _is_policy(rows[k]):
            k += 1
        run = [_recorded(r) for r in rows[j:k]]
        pos = 0
        for rec in batch:
            asked += 1
            commands = decide(state, rec, config)
            expected = _as_events(commands)
            got = run[pos:pos + len(expected)]
            if [_key(e) for e in expected] != [_key(r.event) for r in got]:
                return _divergence(stream, rec, run[pos:], commands), asked
            for r in got:
                apply(state, r)
            pos += len(expected)
        if pos < len(run):
            rest = run[pos:]
            asked += 1
            commands = due(state, rest[0].recorded_at, config)
            expected = _as_events(commands)
            if [_key(e) for e in expected] != [_key(r.event) for r in rest]:
                return _divergence(stream, rest[0], rest, commands, timer=True), asked
            for r in rest:
                apply(state, r)
        i = k if k > i else i + 1
    return None, asked


def _divergence(stream: str, rec: ev.Recorded, recorded: list[ev.Recorded],
                commands: list[cmd.Command], timer: bool = False) -> Divergence:
    e = rec.event
    if timer:
        trigger = f"the runner's tick at {rec.recorded_at}"
        seq = rec.seq - 1
    else:
        parts = [e.TYPE, getattr(e, "calculation_id", "") or "", getattr(e, "error_kind", "")]
        trigger = " ".join(p for p in parts if p)
        seq = rec.seq
    return Divergence(
        material=stream,
        seq=seq,
        trigger=trigger,
        recorded=[{"type": r.event.TYPE, "seq": r.seq, **r.event.to_data()} for r in recorded],
        would=[c.to_data() for c in commands],
    )
