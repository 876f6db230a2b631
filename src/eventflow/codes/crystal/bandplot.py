"""CRYSTAL bands (BAND.DAT or fort.25) and DOS (DOSS.DAT or fort.25) as a physicist plots them.

Pure. CRYSTAL names the path's points by their coordinates in units of the shrinking factor
(``(2,0,2)/4`` in BAND.DAT, bare integers in fort.25) or by the labels the input gave; the origin
is shown as Γ and BAND.DAT's fractions are reduced (``(1/2,0,1/2)``). Whether the bands are
metallic is read off the bands: a band crossing the Fermi level makes a metal (zero at E_F),
otherwise the zero is the valence-band maximum.
"""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np

from eventflow.codes import bandplot
from eventflow.codes.crystal.fort25 import Bands, Dos

_FRACTION_LABEL = re.compile(r"^\((-?\d+),(-?\d+),(-?\d+)\)/(\d+)$")
# Bands within this of E_F (eV) touch it rather than cross it (CRYSTAL puts E_F at the VBM).
_TOUCH_EV = 1e-3


def point_label(label: str) -> str:
    """'(0,0,0)/4' as Γ, '(2,0,2)/4' as '(1/2,0,1/2)'; any other label as it is."""
    m = _FRACTION_LABEL.match(label.strip())
    if m is None:
        return label.strip()
    shrink = int(m.group(4))
    parts = [Fraction(int(m.group(i)), shrink) for i in (1, 2, 3)]
    if not any(parts):
        return "Γ"
    return "(" + ",".join(str(p) for p in parts) + ")"


def band_plot(bands: Bands, dos: Dos | None = None) -> bandplot.BandPlot:
    """Bands (and DOS) with the zero at the VBM of an insulator or the Fermi level of a metal.

    A DOS whose energies cannot be put on the bands' scale (absolute energies, as CRYSTAL14's
    DOSS.DAT has, with no Fermi energy in either file) is left out rather than misplaced.
    """
    # One scale for both: absolute if the bands are (or their E_F is known), else from E_F.
    absolute = not bands.relative or bands.efermi_ha is not None
    efermi = (bands.efermi_ha or 0.0) * bandplot.HARTREE_EV
    energies = bands.energies * bandplot.HARTREE_EV + (efermi if bands.relative else 0.0)
    n_occupied = bandplot.occupied_below(energies, efermi, _TOUCH_EV)
    ticks = bandplot.ticks(bands.label_positions, [point_label(x) for x in bands.labels])
    shifted = None
    labels: tuple[str, ...] = ()
    if dos is not None:
        e = _dos_on_scale(dos, absolute, bands.efermi_ha)
        if e is not None:
            curves, labels = _dos_curves(dos)
            shifted = (e, curves)
    return bandplot.build(bands.kdist, energies, ticks, fermi_ev=efermi, n_occupied=n_occupied,
                          metallic=n_occupied is None, dos=shifted, dos_labels=labels)


def _dos_on_scale(dos: Dos, absolute: bool, band_efermi_ha: float | None) -> np.ndarray | None:
    """The DOS energies (eV) on the bands' scale, or None when no Fermi energy links the two."""
    efermi = dos.efermi_ha if dos.efermi_ha is not None else band_efermi_ha
    e = dos.energies * bandplot.HARTREE_EV
    if dos.relative == (not absolute):
        return e
    if efermi is None:
        return None
    shift = efermi * bandplot.HARTREE_EV
    return e + shift if dos.relative else e - shift


def _dos_curves(dos: Dos) -> tuple[np.ndarray, tuple[str, ...]]:
    """One curve per projection and spin, in states/eV; the β spin negative, as usual.

    (DOSS.DAT already writes β negative, fort.25 positive: both are drawn below zero.)
    """
    curves, labels = [], []
    for spin in range(dos.nspin):
        for proj in range(dos.nproj):
            values = dos.dos[spin, proj] / bandplot.HARTREE_EV
            curves.append(-np.abs(values) if spin == 1 else values)
            labels.append(f"projection {proj + 1}" + (" β" if spin else ""))
    return np.array(curves), tuple(labels)
