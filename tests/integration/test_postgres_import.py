"""``eventflow import`` on a PostgreSQL project: the same tree imported into a SQLite project
and into one whose log is on the real test server gives the same history, the same states
and the same projections; importing again adds nothing on either.

The tree holds bundled corpus outputs (real CRYSTAL and QE runs, finished and failed) and one
made here: a failed QE output whose error line is followed by NUL bytes past the first
64 KiB (a crashed node's file is often padded with zeros), so its evidence would carry NUL
characters, which PostgreSQL's text cannot hold.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from eventflow.shell.store import open_store
from tests.corpus.conftest import BUNDLED
from tests.integration.helpers import eventflow

OUTPUTS = ("qe/pw66_si_scf_converged.out", "qe/pw66_relax_converged.out",
           "crystal/c14_bcc_iron_scf_converged.out",
           "crystal/c14_bcc_iron_opt_SCF_FAILED_optgeom_stop.out")
FAILED = "qe/pw66_scf_convergence_NOT_achieved.out"
ERROR_LINE = b"     convergence NOT achieved after"


def _tree(root: Path) -> Path:
    for relative in OUTPUTS:
        source = BUNDLED / relative
        folder = root / source.stem
        folder.mkdir(parents=True)
        shutil.copy2(source, folder / source.name)
    raw = (BUNDLED / FAILED).read_bytes()
    at = raw.index(ERROR_LINE)
    end = raw.index(b"\n", at)
    padded = raw[:at] + b"\n" * 70_000 + raw[at:end] + b"\x00\x00\x00 zeros" + raw[end:]
    (root / "crashed").mkdir()
    (root / "crashed" / "crashed.out").write_bytes(padded)
    return root


def _history(project: Path) -> list[dict[str, Any]]:
    """Every event but what differs by nature between two imports (time, host, pid)."""
    lines = eventflow(project, "tail", "-n", "1000", "--json").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row.pop("recorded_at")
        row["meta"] = {k: v for k, v in row["meta"].items() if k not in ("host", "pid")}
    return rows


def _states(project: Path) -> list[dict[str, Any]]:
    materials = json.loads(eventflow(project, "status", "--json").stdout)["materials"]
    for m in materials:
        m.pop("updated_at")  # when it was imported
    return sorted(materials, key=lambda m: m["id"])


def test_import_gives_the_same_history_on_both_stores(tmp_path: Path,
                                                      need_postgres: str) -> None:
    tree = _tree(tmp_path / "old_runs")
    on_file, on_server = tmp_path / "sqlite", tmp_path / "postgres"
    eventflow(tmp_path, "init", str(on_file))
    eventflow(tmp_path, "init", str(on_server), "--store", need_postgres)
    outs = [eventflow(p, "import", "--no-queue", str(tree)).stdout for p in (on_file, on_server)]
    assert "imported 5 calculations" in outs[0], outs[0]
    assert outs[0].splitlines()[0] == outs[1].splitlines()[0]

    history = _history(on_file)
    assert history == _history(on_server)
    assert len(history) > 20
    assert _states(on_file) == _states(on_server)
    # The crashed output's evidence: the error line, its NULs read as U+FFFD on both.
    (failed,) = [r for r in history if r["type"] == "CalculationFailed"
                 and r["meta"]["source"].endswith("crashed.out")]
    texts = [e["text"] for e in failed["data"]["evidence"]]
    assert any(t.endswith("stopping\ufffd\ufffd\ufffd zeros") for t in texts), texts
    assert failed["data"]["error_kind"] == "scf_not_converged"

    for project in (on_file, on_server):  # again: nothing new; replay and verify agree
        again = eventflow(project, "import", "--no-queue", str(tree)).stdout
        assert again.startswith("imported 0 calculations (nothing new)"), again
        assert "0 events; 5 already in the log" in again, again
        assert "rebuilt" in eventflow(project, "replay").stdout
        assert eventflow(project, "verify").stdout.startswith(f"ok: {len(history)} events")
    with open_store(need_postgres) as store:
        assert store.last_seq() == len(history)
