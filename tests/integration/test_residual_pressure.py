"""A vc-relax at too low a cutoff, end to end: real pw.x jobs (local executor), the log,
the warning on the result, and the recovery policy rerunning the OPT at a higher cutoff
when config/recovery.yaml switches that on (the normal RecoveryDecided / request path).

Diamond at 30 Ry (the demo's old setting) relaxes to a final SCF pressure near -149 kbar.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eventflow.codes.qe.changes import read_namelists
from eventflow.shell.api import Tracker
from tests.integration.helpers import eventflow, make_project, wait_for

pytestmark = pytest.mark.pwx
DIAMOND = Path(__file__).resolve().parents[2] / "examples" / "materials" / "C.cif"
RELAX = "workflows:\n  relax:\n    steps:\n      OPT: {}\n"
RAISE_CUTOFF = """
qe:
  residual_pressure:
    stages:
      - name: raise the cutoff
        multiply: {system.ecutwfc: 1.5, system.ecutrho: 1.5}
        max_retries: 2
"""


def _relax(tmp_path: Path, recovery: str | None) -> tuple[Path, list[dict]]:
    project = make_project(tmp_path, "local")
    (project / "config" / "workflows.yaml").write_text(RELAX)
    if recovery is not None:
        (project / "config" / "recovery.yaml").write_text(recovery)
    with Tracker.open(project) as t:
        t.create_material(DIAMOND, material_id="C", workflow="relax",
                          params={"ecutwfc": 30, "kpoint_density": 1.5})

    def settled() -> bool:
        eventflow(project, "watch", "--once", "--quiet")
        with Tracker.open(project) as t:
            return t.state("C").state in ("completed", "needs_attention")

    wait_for(settled, "the relaxation to settle", timeout=600, every=1.0)
    shown = json.loads(eventflow(project, "show", "C", "--json").stdout)
    return project, shown["events"]


def _succeeded(events: list[dict]) -> list[dict]:
    return [e["data"] for e in events if e["type"] == "CalculationSucceeded"]


def test_the_low_cutoff_result_carries_the_warning(tmp_path: Path, need_pwx: None) -> None:
    project, events = _relax(tmp_path, None)
    with Tracker.open(project) as t:
        assert t.state("C").state == "completed"  # off by default: the result stands
        props = {p["name"]: p["value"] for p in t.projections.properties("C")}
    (summary,) = [s["summary"] for s in _succeeded(events)]
    assert summary["residual_pressure_kbar"] == pytest.approx(-149.2, abs=1.0)
    assert any("raise ecutwfc" in w for w in summary["warnings"])
    assert props["final_scf_pressure_kbar"] == pytest.approx(-149.2, abs=1.0)
    assert props["residual_pressure_kbar"] == props["final_scf_pressure_kbar"]
    assert not [e for e in events if e["type"] == "RecoveryDecided"]
    shown = eventflow(project, "show", "C").stdout
    assert "C/OPT/1: final SCF pressure -149.23 kbar" in shown and "raise ecutwfc" in shown


def test_switched_on_the_policy_reruns_the_opt_at_a_higher_cutoff(tmp_path: Path,
                                                                  need_pwx: None) -> None:
    project, events = _relax(tmp_path, RAISE_CUTOFF)
    with Tracker.open(project) as t:
        state = t.state("C")
        assert state.state == "completed", state.reason
        attempts = state.attempts("OPT")
    decisions = [e["data"] for e in events if e["type"] == "RecoveryDecided"]
    assert decisions and {d["error_kind"] for d in decisions} == {"residual_pressure"}
    cutoffs = [read_namelists((project / c.directory / "pw.in").read_text())["system"]["ecutwfc"]
               for c in attempts]
    assert cutoffs[:2] == [30, 45] and cutoffs == sorted(cutoffs)
    assert len(attempts) == len(decisions) + 1
    pressures = [s["summary"].get("residual_pressure_kbar", 0.0) for s in _succeeded(events)]
    print(f"OPT cutoffs {cutoffs} Ry, final-SCF residual pressures {pressures} kbar")
    assert abs(pressures[-1]) < abs(pressures[0])
