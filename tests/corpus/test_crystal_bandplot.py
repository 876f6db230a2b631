"""CRYSTAL band structures as a physicist plots them, on the bundled BAND.DAT / fort.25 files:
high-symmetry labels where CRYSTAL put them, breaks where the path jumps, zero at the VBM."""

from __future__ import annotations

import numpy as np

from eventflow.codes.crystal import bandplot, fort25
from tests.corpus.conftest import read_corpus


def test_mgo_band_dat_is_measured_from_its_vbm_with_gamma_and_reduced_fractions() -> None:
    plot = bandplot.band_plot(fort25.parse_band_dat(read_corpus("crystal/p17_mgo_BAND.DAT")))
    assert [t.label for t in plot.ticks] == ["Γ", "(1/2,0,1/2)", "(1/2,1/2,1/2)", "Γ",
                                             "(1/2,1/4,3/4)"]
    assert [t.position for t in plot.ticks] == [0.0, 0.78846, 1.47128, 2.1541, 3.03562]
    assert plot.reference == "VBM"
    valence_top = max(float(e[e <= 1e-6].max()) for _, e in plot.pieces)
    assert abs(valence_top) < 1e-9
    # MgO: a direct gap at Γ, 0.26179 Ha in the file.
    assert plot.gap is not None and plot.gap.direct
    assert abs(plot.gap.value_ev - 0.26179 * bandplot.bandplot.HARTREE_EV) < 1e-6
    assert plot.gap.vbm == (0.0, 0.0)


def test_a_broken_fort25_path_gets_one_tick_with_both_ends_and_is_not_drawn_across() -> None:
    bands = fort25.parse_fort25(read_corpus("crystal/p_lif_broken_band_path.fort25")).bands[0]
    plot = bandplot.band_plot(bands)
    labels = [t.label for t in plot.ticks]
    assert labels[0] == "Γ" and "(5,2,5)|(3,3,6)" in labels
    jump = next(t.position for t in plot.ticks if "|" in t.label)
    # no piece runs across the jump: the one that ends there stops, the next starts there
    assert any(abs(k[-1] - jump) < 1e-9 for k, _ in plot.pieces)
    assert any(abs(k[0] - jump) < 1e-9 for k, _ in plot.pieces)
    assert all(not (k[0] < jump - 1e-9 and k[-1] > jump + 1e-9) for k, _ in plot.pieces)
    assert plot.reference == "VBM" and plot.gap is not None
    top = max(float(e[e <= 1e-6].max()) for _, e in plot.pieces)
    assert abs(top) < 1e-9


def test_a_spin_polarised_metal_is_measured_from_its_fermi_level() -> None:
    bands = fort25.parse_fort25(read_corpus("crystal/p_spinpolarized_band.fort25")).bands[0]
    plot = bandplot.band_plot(bands)
    assert plot.reference == "E_F" and plot.gap is None
    assert abs(plot.reference_ev - bands.efermi_ha * bandplot.bandplot.HARTREE_EV) < 1e-9
    energies = np.concatenate([e.ravel() for _, e in plot.pieces])
    assert energies.min() < 0 < energies.max()
    assert all(e.shape[0] == 2 for _, e in plot.pieces)


def test_an_absolute_crystal14_doss_without_fermi_energy_is_left_out_not_misplaced() -> None:
    bands = fort25.parse_band_dat(read_corpus("crystal/p14_nacl_BAND.DAT"))
    dos = fort25.parse_doss_dat(read_corpus("crystal/p14_nacl_DOSS.DAT"))
    assert bands.relative and not dos.relative
    assert bandplot.band_plot(bands, dos).dos is None


def test_a_relative_doss_shares_the_bands_energy_axis() -> None:
    bands = fort25.parse_band_dat(read_corpus("crystal/p17_mgo_BAND.DAT"))
    dos = fort25.parse_doss_dat(read_corpus("crystal/p_cu_DOSS.DAT"))
    plot = bandplot.band_plot(bands, dos)
    assert plot.dos is not None
    energies, curves = plot.dos
    # both files relative to their own E_F: the DOS moves by the same zero as the bands
    expected = (dos.energies + dos.efermi_ha) * bandplot.bandplot.HARTREE_EV - plot.reference_ev
    assert np.allclose(energies, expected)
    assert curves.shape == (dos.nspin * dos.nproj, len(dos.energies))
    assert (curves[dos.nproj:] <= 0).all()  # β spin drawn negative
