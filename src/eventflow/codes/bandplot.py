"""What a band-structure plot shows, computed without drawing: pure, for QE and CRYSTAL alike.

A physicist reads a band structure against the high-symmetry points of the path (Γ, X, …,
with ``U|K`` where the path jumps) and with energies measured from the Fermi level (metals)
or the valence-band maximum (insulators and semiconductors), the gap marked. This module
turns band energies, the path and a Fermi level into exactly that; the shell only draws it.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

from eventflow.codes.base import HARTREE_EV

__all__ = ["HARTREE_EV", "BandPlot", "Gap", "Tick", "build", "ticks"]

# Points closer than this (in the plot's k units) are one tick: the two ends of a jump.
_SAME_K = 1e-6
GREEK = {"G": "Γ", "GAMMA": "Γ", "Gamma": "Γ", "SIGMA": "Σ", "DELTA": "Δ", "LAMBDA": "Λ"}


@attrs.frozen
class Tick:
    """A labelled high-symmetry point at ``position`` along the k axis."""

    position: float
    label: str


@attrs.frozen
class Gap:
    """The band gap (eV) and where its edges lie, energies relative to the VBM."""

    value_ev: float
    direct: bool
    vbm: tuple[float, float]  # (k position, energy)
    cbm: tuple[float, float]


@attrs.frozen(eq=False)
class BandPlot:
    """Everything a band/DOS figure needs; energies in eV relative to ``reference``.

    ``pieces`` are the continuous parts of the path: (k positions, energies[spin, k, band]);
    the path jumps between pieces. ``dos`` is (energies, densities[curve, point]) or None.
    """

    pieces: tuple[tuple[np.ndarray, np.ndarray], ...]
    ticks: tuple[Tick, ...]
    reference: str  # "E_F" or "VBM"
    reference_ev: float  # the absolute energy of the zero, eV (as the code printed it)
    gap: Gap | None
    dos: tuple[np.ndarray, np.ndarray] | None = None
    dos_labels: tuple[str, ...] = ()

    @property
    def energy_label(self) -> str:
        """The energy axis' title: what the zero is."""
        return "E − E_F (eV)" if self.reference == "E_F" else "E − VBM (eV)"


def pretty_label(label: str) -> str:
    """ASE's 'G' and CRYSTAL's 'GAMMA' as Γ; other names as they are."""
    name = label.strip()
    return GREEK.get(name, name)


def ticks(positions: Sequence[float], labels: Sequence[str]) -> tuple[Tick, ...]:
    """Ticks for consecutive special points; two at one position (a jump) become 'A|B'."""
    out: list[Tick] = []
    for pos, label in zip(positions, labels, strict=True):
        name = pretty_label(label)
        if out and abs(out[-1].position - pos) < _SAME_K:
            if out[-1].label != name:
                out[-1] = Tick(out[-1].position, f"{out[-1].label}|{name}")
            continue
        out.append(Tick(float(pos), name))
    return tuple(out)


def split_at_jumps(kdist: np.ndarray, energies: np.ndarray
                   ) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Cut the path where k does not advance (a jump, drawn as one point twice) into pieces.

    ``energies`` is [spin, k, band]; each piece keeps its own k positions.
    """
    k = np.asarray(kdist, dtype=float)
    cuts = [i for i in range(1, len(k)) if abs(k[i] - k[i - 1]) < _SAME_K]
    bounds = [0, *cuts, len(k)]
    return tuple((k[a:b], energies[:, a:b, :]) for a, b in zip(bounds[:-1], bounds[1:],
                                                                strict=True) if b > a)


def band_edges(kdist: np.ndarray, energies: np.ndarray, n_occupied: int) -> Gap | None:
    """The gap between band ``n_occupied`` and the next (absolute energies), or None if none.

    ``energies`` is [spin, k, band]; with two spins the edges are taken over both.
    """
    if n_occupied <= 0 or n_occupied >= energies.shape[2]:
        return None
    valence = energies[:, :, n_occupied - 1]
    conduction = energies[:, :, n_occupied]
    iv = np.unravel_index(int(np.argmax(valence)), valence.shape)
    ic = np.unravel_index(int(np.argmin(conduction)), conduction.shape)
    vbm, cbm = float(valence[iv]), float(conduction[ic])
    if cbm <= vbm:
        return None
    k = np.asarray(kdist, dtype=float)
    direct = abs(k[iv[1]] - k[ic[1]]) < _SAME_K
    return Gap(cbm - vbm, bool(direct), (float(k[iv[1]]), vbm), (float(k[ic[1]]), cbm))


def occupied_below(energies: np.ndarray, fermi: float, tolerance: float = 1e-4) -> int | None:
    """Bands entirely at or below ``fermi`` when no band crosses it; None for a metal."""
    lowest = energies.min(axis=(0, 1))
    highest = energies.max(axis=(0, 1))
    crossing = (lowest < fermi - tolerance) & (highest > fermi + tolerance)
    if crossing.any():
        return None
    return int((highest <= fermi + tolerance).sum())


def build(kdist: np.ndarray, energies: np.ndarray, ticks_: tuple[Tick, ...], *,
          fermi_ev: float | None, n_occupied: int | None, metallic: bool,
          dos: tuple[np.ndarray, np.ndarray] | None = None,
          dos_labels: tuple[str, ...] = ()) -> BandPlot:
    """A BandPlot from absolute energies (eV) [spin, k, band]: zero at the VBM or at E_F.

    An insulator (``n_occupied`` filled bands with a gap above them, not ``metallic``) is
    measured from its VBM; otherwise from ``fermi_ev``, which a metal must have.
    """
    energies = np.asarray(energies, dtype=float)
    gap = None if metallic or n_occupied is None else band_edges(kdist, energies, n_occupied)
    if gap is not None:
        zero, reference = gap.vbm[1], "VBM"
        gap = Gap(gap.value_ev, gap.direct, (gap.vbm[0], 0.0), (gap.cbm[0], gap.cbm[1] - zero))
    elif fermi_ev is not None:
        zero, reference = float(fermi_ev), "E_F"
    else:
        raise ValueError("a metal (or a band structure without a gap) needs a Fermi energy")
    shifted_dos = None
    if dos is not None:
        shifted_dos = (np.asarray(dos[0], dtype=float) - zero, np.atleast_2d(dos[1]))
    return BandPlot(
        pieces=split_at_jumps(kdist, energies - zero), ticks=ticks_, reference=reference,
        reference_ev=zero, gap=gap, dos=shifted_dos, dos_labels=dos_labels,
    )
