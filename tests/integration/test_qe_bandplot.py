"""Band plots of real pw.x + bands.x + dos.x runs through the real SLURM cluster: the k axis
carries the high-symmetry points of the path ASE gave pw.x, and the zero is the VBM of Si (a
semiconductor) and the Fermi level of Pb (a metal). The PNG is drawn as the demo draws it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eventflow.shell.api import Tracker
from eventflow.shell.demo import plots
from tests.integration.helpers import eventflow
from tests.integration.test_qe_workflow import project_at, watch_until_settled

STRUCTURES = Path(__file__).resolve().parents[1] / "data" / "structures"
pytestmark = [pytest.mark.slurm, pytest.mark.pwx]
FCC_PATH = ["Γ", "X", "W", "K", "Γ", "L", "U", "W", "L", "K|U", "X"]


def _band_plot(t: Tracker, material: str):  # noqa: ANN202 - a BandPlot
    from eventflow.codes.qe.bandplot import band_plot

    root = t.project.root
    calcs = {c["step"]: c for c in t.projections.calculations(material)}
    folder = root / calcs["BAND"]["directory"]
    fermi = {(p["calculation_id"], p["name"]): p["value"]
             for p in t.projections.properties(material)}.get(
        (calcs["SP"]["id"], "fermi_energy_ev"))
    return band_plot((folder / "pw.in").read_text(), (folder / "pw.out").read_text(),
                     (folder / "bands.dat.gnu").read_text(), fermi_ev=fermi,
                     dos_dat=(root / calcs["DOS"]["directory"] / "dos.dat").read_text()), fermi


def test_si_and_pb_band_plots_are_labelled_and_zeroed(
    tmp_path: Path, need_slurm: None, need_pwx: None
) -> None:
    project = project_at(tmp_path)
    with Tracker.open(project) as t:
        for mid, ecut in (("Si", 12), ("Pb", 16)):
            t.create_material(STRUCTURES / f"{mid}.cif", material_id=mid,
                              workflow="full_characterization",
                              params={"ecutwfc": ecut, "kpoint_density": 1.5})
    watch_until_settled(project)
    with Tracker.open(project) as t:
        assert [m["state"] for m in t.materials()] == ["completed", "completed"]
        si, _ = _band_plot(t, "Si")
        assert [tick.label for tick in si.ticks] == FCC_PATH
        assert si.reference == "VBM" and si.gap is not None and not si.gap.direct
        valence = np.concatenate([e[0, :, :4].ravel() for _, e in si.pieces])
        assert abs(valence.max()) < 1e-9  # the VBM is the zero
        assert si.gap.vbm == (0.0, 0.0)  # at Γ
        props = {p["name"]: p["value"] for p in t.projections.properties("Si")}
        assert abs(si.gap.value_ev - props["band_gap_ev"]) < 1e-6
        pb, fermi = _band_plot(t, "Pb")
        assert [tick.label for tick in pb.ticks] == FCC_PATH
        assert pb.reference == "E_F" and pb.gap is None
        assert fermi is not None and pb.reference_ev == fermi
        energies = np.concatenate([e.ravel() for _, e in pb.pieces])
        assert energies.min() < 0 < energies.max()  # bands cross the zero: a metal at E_F
        # The jump K|U is a break: no piece runs across it.
        jump = next(tick.position for tick in pb.ticks if tick.label == "K|U")
        assert all(not (k[0] < jump - 1e-9 and k[-1] > jump + 1e-9) for k, _ in pb.pieces)
        written = plots(t, tmp_path / "plots")
        values = {m: [repr(p["value"]) for p in t.projections.properties(m)
                      if isinstance(p["value"], float)] for m in ("Si", "Pb")}
    assert sorted(p.name for p in written) == ["Pb.png", "Si.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
    # The same real project's tables, printed into a pipe at 80 columns: every digit there.
    env = {"COLUMNS": "80"}
    for material in ("Si", "Pb"):
        shown = eventflow(project, "show", material, env=env).stdout
        assert "…" not in shown and values[material]
        assert all(v in shown for v in values[material]), shown
    status = eventflow(project, "status", env=env).stdout
    assert "…" not in status and max(len(line) for line in status.splitlines()) <= 80
