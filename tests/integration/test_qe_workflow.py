"""Quantum ESPRESSO end to end: real pw.x, bands.x and dos.x jobs through the real SLURM cluster.

Tiny cutoffs and k-point grids keep each pw.x run to seconds; the physics still has to come
out right (an LDA gap for Si, BAND and DOS working on SP's charge density).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eventflow.shell.api import Tracker

SI = Path(__file__).resolve().parents[1] / "data" / "structures" / "Si.cif"
FAST = {"ecutwfc": 12, "kpoint_density": 1.5}
pytestmark = [pytest.mark.slurm, pytest.mark.pwx]


def project_at(tmp_path: Path, recovery: str | None = None) -> Path:
    project = tmp_path / "proj"
    Tracker.init(project).close()
    (project / "config" / "cluster.yaml").write_text("executor: slurm\n")
    if recovery is not None:
        (project / "config" / "recovery.yaml").write_text(recovery)
    return project


def watch_until_settled(project: Path, timeout: float = 300) -> None:
    """`eventflow watch --once` in a loop, as cron would, until every material settles."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run([sys.executable, "-m", "eventflow.shell.cli", "--project",
                               str(project), "watch", "--once", "--quiet"],
                              capture_output=True, text=True, timeout=300, env=os.environ)
        assert proc.returncode == 0, proc.stderr
        with Tracker.open(project) as t:
            states = [m["state"] for m in t.materials()]
        if states and all(s in ("completed", "needs_attention", "cancelled") for s in states):
            return
        time.sleep(1)
    raise AssertionError(f"not settled after {timeout} s: {states}")


def test_full_characterization_of_si(tmp_path: Path, need_slurm: None, need_pwx: None) -> None:
    project = project_at(tmp_path)
    with Tracker.open(project) as t:
        t.create_material(SI, material_id="Si", workflow="full_characterization", params=FAST)
    watch_until_settled(project)
    with Tracker.open(project) as t:
        state = t.state("Si")
        assert state.state == "completed", state.reason
        assert [c.step for c in state.calcs.values()][:2] == ["OPT", "SP"]
        assert {c.step for c in state.calcs.values()} == {"OPT", "SP", "BAND", "DOS"}
        props = {(p["calculation_id"], p["name"]): p["value"] for p in t.projections.properties()}
        gap = props[("Si/BAND/1", "band_gap_ev")]
        assert 0.2 < gap < 1.2  # LDA Si: an indirect gap well below the 1.1 eV experiment
        assert props[("Si/SP/1", "total_energy_ev")] < -200
        # BAND and DOS each ran on their own copy of SP's charge density, checksummed.
        prepared = {r.event.calculation_id: r.event
                    for r in t.store.read(stream="Si", types=["InputsPrepared"])}
        for step in ("BAND", "DOS"):
            handed = prepared[f"Si/{step}/1"].handed["out"]
            assert handed["from"] == "Si/SP/1" and len(handed["sha256"]) == 64
        # The optimised structure was handed on to SP and kept in the ASE database.
        from ase.db import connect

        rows = list(connect(str(t.project.structures_db)).select(material_id="Si"))
        assert {r.step for r in rows} >= {"OPT", "SP"}
    # The scratch that no later step reads was removed after success, and it was recorded.
    assert not list((project / "calcs" / "Si" / "OPT" / "1" / "out").glob("*.wfc*"))


def test_a_real_scf_failure_is_fixed_by_the_policy_on_retry(
    tmp_path: Path, need_slurm: None, need_pwx: None
) -> None:
    project = project_at(tmp_path)
    with Tracker.open(project) as t:
        t.create_material(SI, material_id="stubborn", workflow="scf_only",
                          params={**FAST, "kpoint_density": 2.0, "ecutwfc": 14,
                                  "electron_maxstep": 5})
    watch_until_settled(project)
    first = (project / "calcs" / "stubborn" / "SP" / "1" / "pw.out").read_text()
    assert "convergence NOT achieved" in first  # a real pw.x failure, not a made-up one
    with Tracker.open(project) as t:
        state = t.state("stubborn")
        assert state.state == "completed", state.reason
        one, two = state.calcs["stubborn/SP/1"], state.calcs["stubborn/SP/2"]
        assert (one.state, one.error_kind) == ("failed", "scf_not_converged")
        assert one.recovery.action == "resubmit" and one.recovery.stage == 1
        assert two.state == "completed" and two.restart_from == "stubborn/SP/1"
    second = (project / "calcs" / "stubborn" / "SP" / "2" / "pw.in").read_text()
    assert "mixing_beta = 0.3" in second and "startingpot = 'file'" in second


WALLTIME_RULE = """
qe:
  walltime:
    restart: checkpoint
    stages:
      - name: longer walltime
        resources: {time: 2}
        set: {control.max_seconds: 600}
"""


def test_a_real_max_cpu_time_stop_is_restarted(
    tmp_path: Path, need_slurm: None, need_pwx: None
) -> None:
    """max_seconds tiny makes pw.x stop cleanly with 'Maximum CPU time exceeded'. The project's
    rule (a test rule: the default derives max_seconds from the walltime) restarts it."""
    project = project_at(tmp_path, WALLTIME_RULE)
    with Tracker.open(project) as t:
        t.create_material(SI, material_id="slow", workflow="scf_only",
                          params={"ecutwfc": 30, "kpoint_density": 6.0, "max_seconds": 0.01})
    watch_until_settled(project)
    first = (project / "calcs" / "slow" / "SP" / "1" / "pw.out").read_text()
    assert "Maximum CPU time exceeded" in first
    with Tracker.open(project) as t:
        state = t.state("slow")
        one, two = state.calcs["slow/SP/1"], state.calcs["slow/SP/2"]
        assert one.error_kind == "walltime"
        assert two.resources.get("time") and two.restart_from == "slow/SP/1"
        assert state.state == "completed", state.reason
    script = (project / "calcs" / "slow" / "SP" / "2" / "job.sh").read_text()
    first_script = (project / "calcs" / "slow" / "SP" / "1" / "job.sh").read_text()
    assert script != first_script and "--time=" in script
    assert "restart_mode = 'restart'" in (project / "calcs" / "slow" / "SP" / "2" / "pw.in"
                                          ).read_text()
