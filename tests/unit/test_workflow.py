"""Workflows: what may run next, when a material is done, and line-numbered validation."""

from __future__ import annotations

import pytest

from eventflow.core import events as ev
from eventflow.core.state import fold
from eventflow.core.workflow import is_complete, next_steps, parse_workflows
from eventflow.core.yamltext import load_with_lines
from eventflow.errors import ConfigError

FULL = """workflows:
  full:
    steps:
      OPT: {}
      SP: {after_ok: [OPT]}
      BAND: {after_ok: [SP]}
      DOS: {after_ok: [SP]}
"""


def history(*events: ev.Event):
    return fold("m", [ev.Recorded(i + 1, "m", i + 1, e, f"2026-01-01T00:00:{i:02d}Z")
                      for i, e in enumerate(events)])


def test_band_and_dos_become_ready_together_after_sp() -> None:
    wf = parse_workflows(load_with_lines(FULL, "w.yaml")[0])["full"]
    reg = ev.MaterialRegistered("m", "Si2", "full")
    state = history(reg)
    assert next_steps(state, wf) == ["OPT"]
    done = [reg]
    for step in ("OPT", "SP"):
        cid = f"m/{step}/1"
        done += [ev.SubmissionRequested(cid, step, 1), ev.JobSubmitted(cid, "1"),
                 ev.CalculationSucceeded(cid)]
    state = history(*done)
    assert sorted(next_steps(state, wf)) == ["BAND", "DOS"]
    assert not is_complete(state, wf)


def test_a_failed_prerequisite_blocks_its_dependents() -> None:
    wf = parse_workflows(load_with_lines(FULL, "w.yaml")[0])["full"]
    state = history(ev.MaterialRegistered("m", "Si2", "full"),
                    ev.SubmissionRequested("m/OPT/1", "OPT", 1), ev.JobSubmitted("m/OPT/1", "1"),
                    ev.CalculationFailed("m/OPT/1", "scf_not_converged"))
    assert next_steps(state, wf) == []
    assert not is_complete(state, wf)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (FULL.replace("SP: {after_ok: [OPT]}", "SP: {after_ok: [NOPE]}"), 5, "unknown step"),
        (FULL.replace("OPT: {}", "OPT: {after_ok: [DOS]}"), 2, "cycle"),
        (FULL.replace("BAND: {after_ok: [SP]}", "BAND: {after_okk: [SP]}"), 6, "unknown key"),
    ],
)
def test_errors_name_the_file_and_line(text: str, line: int, words: str) -> None:
    doc, lines = load_with_lines(text, "workflows.yaml")
    with pytest.raises(ConfigError) as info:
        parse_workflows(doc, "workflows.yaml", lines)
    message = str(info.value)
    assert message.startswith(f"workflows.yaml:{line}:"), message
    assert words in message
