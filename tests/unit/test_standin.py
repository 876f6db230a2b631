"""The CRYSTAL stand-in of the integration tests replays real outputs and exits like CRYSTAL.

Run as a program, the way the job scripts run it (deck on stdin or in INPUT).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus.conftest import corpus_path

STANDIN = Path(__file__).resolve().parents[1] / "standin" / "crystal"
D12 = "crystal/c17_nio_afm_scf_TOO_MANY_CYCLES.d12"  # a real .d12 (EXTERNAL, UHF)
D3 = "crystal/p17_mgo_newk_doss.d3"  # a real .d3 (NEWK + DOSS)


def run(folder: Path, rules: list[dict], deck: str | None, stdin: bool = True
        ) -> subprocess.CompletedProcess:
    table = folder / "table.json"
    table.write_text(json.dumps({"rules": rules}))
    path = corpus_path(deck) if deck else None
    text = path.read_text() if path else ""
    if not stdin:
        (folder / "INPUT").write_text(text)
        text = ""
    return subprocess.run([sys.executable, str(STANDIN), "--replay", str(table)],
                          input=text.encode(), capture_output=True, cwd=folder, timeout=60,
                          check=False)


def corpus_bytes(relative: str) -> bytes:
    return corpus_path(relative).read_bytes()


@pytest.mark.parametrize(("output", "code"), [
    # ends with " EEEEEEEEEE TERMINATION" although the SCF ran out of cycles
    ("crystal/c17_nio_afm_scf_TOO_MANY_CYCLES.out", 0),
    # "ERROR **** OPTGEOM **** SCF FAILED - OPTGEOM STOP", then MPI_ABORT
    ("crystal/c17_elastic_SCF_FAILED_optgeom_stop_openmpi.out", 1),
    # cut off mid-SCF: no termination line
    ("crystal/c17_truncated_mid_scf.out", 1),
])
def test_replays_the_real_output_byte_for_byte_and_exits_like_crystal(
    tmp_path: Path, output: str, code: int
) -> None:
    done = run(tmp_path, [{"program": "crystal", "output": output}], D12)
    assert done.stdout == corpus_bytes(output)
    assert done.returncode == code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]  # nothing invented


def test_chooses_by_deck_kind_and_keywords_and_copies_companions(tmp_path: Path) -> None:
    rules = [
        {"program": "crystal", "output": "crystal/c17_mgo_sto3g_scf_converged.out"},
        {"program": "properties", "when": ["BAND"], "output": "crystal/p17_mgo_band.outp"},
        {"program": "properties", "when": ["NEWK", "DOSS"], "output":
         "crystal/p17_mgo_newk_doss.outp", "files": {"fort.25": "crystal/p17_mgo_doss.fort25"}},
    ]
    done = run(tmp_path, rules, D3, stdin=False)  # Pproperties-style: INPUT in the folder
    assert done.returncode == 0, done.stderr
    assert done.stdout == corpus_bytes("crystal/p17_mgo_newk_doss.outp")
    assert (tmp_path / "fort.25").read_bytes() == corpus_bytes("crystal/p17_mgo_doss.fort25")
    assert b"replayed crystal/p17_mgo_newk_doss.outp with fort.25" in done.stderr


def test_a_set_up_problem_is_its_own_exit_status(tmp_path: Path) -> None:
    """No rule for the deck, or no deck at all: exit 2 and a message, never a replay."""
    no_rule = run(tmp_path, [{"program": "crystal", "when": ["GUESSP"], "output": "x"}], D12)
    assert (no_rule.returncode, no_rule.stdout) == (2, b"")
    assert b"no replay rule for this crystal deck" in no_rule.stderr
    no_deck = run(tmp_path, [{"program": "crystal", "output": "x"}], None)
    assert no_deck.returncode == 2 and b"no deck on stdin" in no_deck.stderr
