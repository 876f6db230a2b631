"""Draw a BandPlot (codes/bandplot.py) with matplotlib: bands beside the DOS on one energy axis.

All the physics (labels, jumps, the zero, the gap) is decided in the pure layer; this module
only draws it into a PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eventflow.codes.bandplot import BandPlot
from eventflow.errors import EventflowError

# Energies shown around the zero (eV): the valence bands and the bottom of the conduction bands.
WINDOW = (-12.0, 8.0)


def draw(plot: BandPlot, title: str, path: Path, window: tuple[float, float] = WINDOW) -> Path:
    """Write the figure to ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_dos = plot.dos is not None
    fig, axes = plt.subplots(1, 2 if has_dos else 1, figsize=(9 if has_dos else 6.5, 4.8),
                             sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1] if has_dos else [1]})
    ax = axes[0][0]
    colors = ("tab:blue", "tab:orange")
    for n, (k, energies) in enumerate(plot.pieces):
        for spin in range(energies.shape[0]):
            lines = ax.plot(k, energies[spin], color=colors[spin % 2], lw=0.9,
                            ls="-" if spin == 0 else "--")
            if n == 0 and energies.shape[0] == 2:
                lines[0].set_label("spin α" if spin == 0 else "spin β")
    if plot.pieces[0][1].shape[0] == 2:
        ax.legend(fontsize=8, loc="upper right")
    first = plot.pieces[0][0][0]
    last = plot.pieces[-1][0][-1]
    ax.set_xlim(first, last)
    long_labels = any(len(t.label) > 3 for t in plot.ticks)
    ax.set_xticks([t.position for t in plot.ticks], [t.label for t in plot.ticks],
                  rotation=30 if long_labels else 0, ha="right" if long_labels else "center")
    for t in plot.ticks:
        ax.axvline(t.position, color="0.6", lw=0.6)
    ax.axhline(0.0, color="tab:red", ls="--", lw=0.8)
    ax.set_ylabel(plot.energy_label)
    ax.set_ylim(*window)
    if plot.gap is not None:
        (kv, ev), (kc, ec) = plot.gap.vbm, plot.gap.cbm
        ax.plot([kv], [ev], "o", color="tab:green", ms=5)
        ax.plot([kc], [ec], "o", color="tab:purple", ms=5)
        ax.annotate("", xy=(kc, ec), xytext=(kv, ev),
                    arrowprops={"arrowstyle": "->", "color": "tab:green", "lw": 1.0})
        kind = "direct" if plot.gap.direct else "indirect"
        ax.text(0.02, 0.97, f"E_g = {plot.gap.value_ev:.3f} eV ({kind})",
                transform=ax.transAxes, va="top", fontsize=9,
                bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9})
    else:
        ax.text(0.02, 0.97, "metal: zero at the Fermi level", transform=ax.transAxes,
                va="top", fontsize=9,
                bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9})
    if has_dos:
        assert plot.dos is not None
        dax = axes[0][1]
        energies, curves = plot.dos
        for i, curve in enumerate(curves):
            label = plot.dos_labels[i] if i < len(plot.dos_labels) else None
            dax.plot(curve, energies, lw=0.8, label=label,
                     color="k" if len(curves) == 1 else None)
        dax.axhline(0.0, color="tab:red", ls="--", lw=0.8)
        dax.axvline(0.0, color="0.6", lw=0.5)
        shown = (energies >= window[0]) & (energies <= window[1])
        if shown.any():
            low, high = float(curves[:, shown].min()), float(curves[:, shown].max())
            dax.set_xlim(min(0.0, low) * 1.05, max(high, 1e-9) * 1.05)
        dax.set_xlabel("DOS (states/eV)")
        if len(curves) > 1:
            dax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def material_figure(tracker: Any, material_id: str, out: Path,
                    window: tuple[float, float] = WINDOW) -> Path | None:
    """``out/<material>.png`` from the material's completed QE BAND (and DOS) step, if any."""
    from eventflow.codes.qe.bandplot import BandPlotError, band_plot

    calcs = {c["step"]: c for c in tracker.projections.calculations(material_id)
             if c["state"] == "completed"}
    band, dos, sp = calcs.get("BAND"), calcs.get("DOS"), calcs.get("SP")
    if band is None:
        return None
    root = tracker.project.root
    folder = root / band["directory"]
    fermi = next((p["value"] for p in tracker.projections.properties(material_id)
                  if sp is not None and p["calculation_id"] == sp["id"]
                  and p["name"] == "fermi_energy_ev"), None)
    try:
        dos_text = (root / dos["directory"] / "dos.dat").read_text() if dos else None
        plot = band_plot((folder / "pw.in").read_text(), (folder / "pw.out").read_text(),
                         (folder / "bands.dat.gnu").read_text(), fermi_ev=fermi,
                         dos_dat=dos_text)
    except (OSError, BandPlotError, ValueError) as exc:
        raise EventflowError(f"{folder}: cannot plot the bands of {material_id}: {exc}") from exc
    material = tracker.projections.material(material_id) or {}
    title = f"{material_id} ({material.get('formula') or '?'}): bands and DOS, pw.x"
    return draw(plot, title, out / f"{material_id}.png", window)
