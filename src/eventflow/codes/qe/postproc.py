"""bands.x and dos.x results: band energies along the path, the DOS, and the gap from them.

Pure: functions take the texts of ``bands.dat.gnu`` and ``dos.dat`` and return numbers.
"""

from __future__ import annotations

import re
from typing import Any

OUTPUTS = {"BAND": ("bands.dat.gnu", "pw.out"), "DOS": ("dos.dat",)}


def read_bands_gnu(text: str) -> list[list[tuple[float, float]]]:
    """Bands from bands.x's gnuplot file: blank lines separate bands of (k distance, E eV)."""
    bands: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            if current:
                bands.append(current)
                current = []
            continue
        current.append((float(parts[0]), float(parts[1])))
    if current:
        bands.append(current)
    return bands


def read_dos(text: str) -> tuple[list[tuple[float, float]], float | None]:
    """(E eV, DOS) pairs and the Fermi energy from dos.x's output file."""
    points = []
    fermi = None
    for line in text.splitlines():
        if line.startswith("#"):
            match = re.search(r"EFermi\s*=\s*([-\d.]+)", line)
            if match:
                fermi = float(match.group(1))
            continue
        parts = line.split()
        if len(parts) >= 2:
            points.append((float(parts[0]), float(parts[1])))
    return points, fermi


def electrons_and_spin(pw_out: str) -> tuple[float | None, int]:
    """Number of electrons and of spin channels, from a pw.x output header."""
    nelec = None
    spin = 1
    for line in pw_out.splitlines():
        if "number of electrons" in line:
            nelec = float(line.split("=")[1].split()[0])
        elif "Starting magnetic structure" in line or "LSDA" in line:
            spin = 2
    return nelec, spin


def band_gap(bands: list[list[tuple[float, float]]], n_occupied: int) -> dict[str, float]:
    """Indirect and direct gap (eV) with ``n_occupied`` filled bands; empty for a metal."""
    if n_occupied <= 0 or n_occupied >= len(bands):
        return {}
    valence, conduction = bands[n_occupied - 1], bands[n_occupied]
    vbm = max(e for _, e in valence)
    cbm = min(e for _, e in conduction)
    if cbm <= vbm:
        return {}
    direct = min(c - v for (_, v), (_, c) in zip(valence, conduction, strict=False))
    return {"band_gap_ev": cbm - vbm, "direct_gap_ev": direct, "vbm_ev": vbm, "cbm_ev": cbm}


def extract(step: str, texts: dict[str, str]) -> dict[str, Any]:
    """Properties from a step's post-processing files (name -> text)."""
    out: dict[str, Any] = {}
    if step == "BAND" and "bands.dat.gnu" in texts and "pw.out" in texts:
        nelec, spin = electrons_and_spin(texts["pw.out"])
        metallic = "smearing" in texts["pw.out"] or "Fermi energy" in texts["pw.out"]
        if nelec is not None and spin == 1 and not metallic and float(nelec).is_integer():
            out.update(band_gap(read_bands_gnu(texts["bands.dat.gnu"]), int(nelec) // 2))
    if step == "DOS" and "dos.dat" in texts:
        _, fermi = read_dos(texts["dos.dat"])
        if fermi is not None:
            out["dos_fermi_energy_ev"] = fermi
    return out
