"""Scheduler logs: the corpus rows of TRUTH.tsv, and real text made on the local cluster.

The corpus has no SLURM out-of-memory or node-failure log (see its README), so those kinds
are tested on text captured from real jobs on slurm/local-cluster (tests/data/slurm/, made
by capture.sh there; README.md says how).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eventflow.codes.slurm import PATTERNS, PLUGIN, find_messages, parse
from eventflow.core.kinds import ERROR_KINDS, kind_from_scheduler_state

from .conftest import assert_parsed_as_truth, corpus_file, corpus_path, truth_rows

CAPTURED = Path(__file__).resolve().parents[1] / "data" / "slurm"
ROWS = truth_rows("slurm")


def _read(path: Path) -> str:
    # newline="" keeps the carriage returns of tqdm's progress bars, as the scheduler wrote them
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        return handle.read()


def test_the_corpus_has_its_slurm_rows() -> None:
    assert len(ROWS) >= 1  # the PBS walltime log is bundled; the shared corpus adds three
    assert all(r["calculation"] == "JOB" for r in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_corpus_logs_parse_as_truth_says(row: dict[str, str]) -> None:
    path = corpus_path(row["file"])
    text = _read(path)
    result = parse(text)
    assert_parsed_as_truth(result, row)
    assert any(row["evidence"] in f.text for f in result.errors), row["evidence"]
    assert PLUGIN.detect(text)


def test_the_tqdm_line_does_not_hide_the_time_limit() -> None:
    """TRUTH_NOTES: the slurmstepd message is glued with \\r onto one long tqdm line."""
    path = corpus_path("slurm/slurm_stderr_time_limit_tqdm.e")
    text = _read(path)
    assert "\r" in text
    found = find_messages(text)
    assert [f.kind for _, f in found] == ["walltime"]
    assert found[0][1].text.startswith("slurmstepd: error: *** JOB 42189 ON clr1247")


def test_a_cancellation_is_not_a_time_limit() -> None:
    path = corpus_path("slurm/slurm_stderr_user_cancelled.e")
    assert parse(_read(path)).error_kind == "cancelled"


def test_every_cancelled_job_of_a_batch_is_found() -> None:
    path = corpus_path("slurm/slurm_err_multi_job_cancelled.err")
    result = parse(_read(path))
    assert len(result.errors) == 10
    assert {f.kind for f in result.errors} == {"cancelled"}


@pytest.mark.parametrize(
    ("name", "kind", "pattern"),
    [
        ("oom_cgroup_stderr.txt", "out_of_memory", "slurm_oom_kill_event"),
        ("oom_overmemorykill_stderr.txt", "out_of_memory", "slurm_exceeded_memory_limit"),
        ("node_failure_stderr.txt", "node_failure", "slurm_node_failure"),
        ("time_limit_stderr.txt", "walltime", "slurm_time_limit"),
        ("cancelled_stderr.txt", "cancelled", "slurm_cancelled"),
    ],
)
def test_real_logs_from_the_local_cluster(name: str, kind: str, pattern: str) -> None:
    result = parse(_read(CAPTURED / name))
    assert (result.status, result.error_kind) == ("error", kind)
    assert result.properties["pattern"] == pattern
    assert result.program == "slurm"


def test_an_oom_kill_explains_the_cancellation_that_follows_it() -> None:
    """OverMemoryKill: slurmstepd prints 'CANCELLED AT' without a reason after the memory lines."""
    result = parse(_read(CAPTURED / "oom_overmemorykill_stderr.txt"))
    assert "cancelled" in {f.kind for f in result.errors}
    assert result.error_kind == "out_of_memory"


def test_a_plain_failure_log_is_no_scheduler_error() -> None:
    result = parse(_read(CAPTURED / "exit3_stderr.txt"))
    assert (result.status, result.error_kind, result.errors) == ("ok", None, ())


def test_every_pattern_names_a_known_kind_and_is_tested_on_real_text() -> None:
    assert {p.kind for p in PATTERNS} <= ERROR_KINDS
    texts = [_read(p) for p in CAPTURED.glob("*.txt")]
    for row in ROWS:
        path = corpus_file(row["file"])
        if path is not None:
            texts.append(_read(path))
    matched = {p.name for text in texts for p, _ in find_messages(text)}
    # Not seen for real here: preemption and the PBS memory kill (documentation form only).
    untested = {p.name for p in PATTERNS} - matched - {"slurm_preempted", "pbs_memory_exceeded"}
    assert not untested, f"patterns without a real text: {sorted(untested)}"


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        ("TIMEOUT", "walltime"), ("OUT_OF_MEMORY", "out_of_memory"), ("NODE_FAIL", "node_failure"),
        ("CANCELLED", "cancelled"), ("CANCELLED by 0", "cancelled"), ("CANCELLED+", "cancelled"),
        ("BOOT_FAIL", "node_failure"), ("DEADLINE", "walltime"), ("PREEMPTED", "cancelled"),
        ("OUT_OF_ME+", "out_of_memory"),
        ("COMPLETED", None), ("FAILED", None), ("RUNNING", None), ("PENDING", None), ("", None),
    ],
)
def test_kind_from_scheduler_state(state: str, kind: str | None) -> None:
    """States as scontrol printed them for the captured jobs (tests/data/slurm/scontrol_*.txt)
    and as sacct prints them ('CANCELLED by <uid>', a '+' when truncated), per sacct(1)."""
    assert kind_from_scheduler_state(state) == kind
