"""A QE band structure as a physicist plots it: labels from the path ASE gave pw.x, zero at VBM/E_F.

Pure: takes the texts of the BAND step's ``pw.in`` (its ``K_POINTS crystal_b`` card, written by
:func:`eventflow.codes.qe.inputs.band_path_card`, and its cell), ``pw.out`` and bands.x's
``bands.dat.gnu``, and optionally dos.x's ``dos.dat``.
"""

from __future__ import annotations

import re

import numpy as np

from eventflow.codes import bandplot
from eventflow.codes.qe import postproc

_FLOAT = r"[-+]?\d*\.?\d+(?:[eEdD][-+]?\d+)?"


class BandPlotError(ValueError):
    """The BAND step's files do not describe a plottable band structure; the message says why."""


def path_points(pw_in: str) -> tuple[np.ndarray, list[int]]:
    """The special points (crystal coordinates) and their point counts from a crystal_b card."""
    m = re.search(r"^K_POINTS\s*\{?crystal_b\}?\s*\n\s*(\d+)\s*\n", pw_in, re.M | re.I)
    if m is None:
        raise BandPlotError("pw.in has no 'K_POINTS crystal_b' card (not a BAND step input)")
    lines = pw_in[m.end():].splitlines()[: int(m.group(1))]
    coords, counts = [], []
    for line in lines:
        parts = line.split()
        coords.append([float(x) for x in parts[:3]])
        counts.append(int(float(parts[3])))
    return np.array(coords), counts


def cell_of(pw_in: str) -> np.ndarray:
    """The cell (Å) of a pw.in with ``CELL_PARAMETERS angstrom``, as eventflow writes it."""
    m = re.search(r"^CELL_PARAMETERS\s*\{?angstrom\}?\s*\n((?:\s*" + _FLOAT + r"){9})", pw_in,
                  re.M | re.I)
    if m is None:
        raise BandPlotError("pw.in has no 'CELL_PARAMETERS angstrom' card")
    return np.array([float(x) for x in m.group(1).split()]).reshape(3, 3)


def label_points(cell: np.ndarray, coords: np.ndarray, tolerance: float = 1e-6) -> list[str]:
    """ASE's name for each point (crystal coordinates) of the cell's lattice; '?' if none."""
    from ase.cell import Cell

    special = Cell(cell).bandpath(npoints=0).special_points
    names = []
    for k in coords:
        found = [n for n, p in special.items() if np.allclose(p, k, atol=tolerance)]
        names.append(found[0] if found else "?")
    return names


def tick_indices(counts: list[int]) -> list[int]:
    """Index of each special point among the k-points pw.x generated from the card."""
    return [sum(counts[:i]) for i in range(len(counts))]


def band_plot(pw_in: str, pw_out: str, bands_gnu: str, *, fermi_ev: float | None = None,
              dos_dat: str | None = None) -> bandplot.BandPlot:
    """The band structure of one BAND step, labelled and referred to its VBM or Fermi level.

    ``fermi_ev`` is the Fermi energy of the SCF the bands continue (a BAND run does not
    print one); without it the one dos.x wrote is used.
    """
    bands = postproc.read_bands_gnu(bands_gnu)
    if not bands:
        raise BandPlotError("bands.dat.gnu holds no bands")
    kdist = np.array([k for k, _ in bands[0]])
    energies = np.array([[e for _, e in b] for b in bands]).T[np.newaxis]  # [spin, k, band]
    coords, counts = path_points(pw_in)
    indices = tick_indices(counts)
    if indices[-1] != len(kdist) - 1:
        raise BandPlotError(f"the crystal_b card makes {indices[-1] + 1} k-points but "
                            f"bands.dat.gnu has {len(kdist)}")
    labels = label_points(cell_of(pw_in), coords)
    ticks = bandplot.ticks([float(kdist[i]) for i in indices], labels)
    nelec, spin = postproc.electrons_and_spin(pw_out)
    metallic = "smearing" in pw_out
    n_occupied = (int(nelec) // 2 if nelec is not None and spin == 1 and not metallic
                  and float(nelec).is_integer() else None)
    dos = None
    if dos_dat is not None:
        points, dos_fermi = postproc.read_dos(dos_dat)
        if fermi_ev is None:
            fermi_ev = dos_fermi
        dos = (np.array([e for e, _ in points]), np.array([[d for _, d in points]]))
    return bandplot.build(kdist, energies, ticks, fermi_ev=fermi_ev, n_occupied=n_occupied,
                          metallic=metallic, dos=dos, dos_labels=("total",) if dos else ())
