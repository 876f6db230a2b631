"""The pseudopotential table (config/pseudopotentials.yaml), loaded and checked.

No cutoff is ever guessed: every entry needs its ``ecutwfc``, and its ``ecutrho`` unless
the file is norm-conserving (whose density 4 x ecutwfc holds exactly); ``source`` says
where the values come from (the UPF header, or a convergence test in docs/cutoffs.md).
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Pseudo:
    """One pseudopotential file and what the table suggests for it."""

    file: str
    ecutwfc: float
    ecutrho: float
    valence: float | None = None
    type: str | None = None
    source: str | None = None  # where the cutoffs come from (UPF header, convergence test)


@attrs.frozen
class PseudoTable:
    """The loaded config/pseudopotentials.yaml, checked."""

    default_family: str
    families: dict[str, dict[str, Pseudo]]
    magnetic_elements: dict[str, float]
    metallic_elements: frozenset[str]

    def family(self, name: str | None) -> dict[str, Pseudo]:
        chosen = name or self.default_family
        if chosen not in self.families:
            raise ValueError(
                f"pseudopotential family {chosen!r} is not in the table "
                f"(families: {', '.join(sorted(self.families))})"
            )
        return self.families[chosen]


def pseudo_table(data: Any) -> PseudoTable:
    """Check the mapping loaded from config/pseudopotentials.yaml and return it typed."""
    if isinstance(data, PseudoTable):
        return data
    if not isinstance(data, dict) or not isinstance(data.get("families"), dict):
        raise ValueError("pseudopotential table: expected a mapping with a 'families' mapping")
    families: dict[str, dict[str, Pseudo]] = {}
    for family, entries in data["families"].items():
        if not isinstance(entries, dict):
            raise ValueError(f"pseudopotential table: family {family!r} is not a mapping")
        families[family] = {}
        for element, entry in entries.items():
            families[family][element] = _pseudo(family, element, entry)
    default = data.get("default_family") or next(iter(families), "")
    if default not in families:
        raise ValueError(f"pseudopotential table: default_family {default!r} is not a family")
    magnetic = data.get("magnetic_elements") or {}
    if isinstance(magnetic, list):
        magnetic = dict.fromkeys(magnetic, 0.5)
    return PseudoTable(
        default_family=default,
        families=families,
        magnetic_elements={str(k): float(v) for k, v in magnetic.items()},
        metallic_elements=frozenset(data.get("metallic_elements") or ()),
    )


def _pseudo(family: str, element: str, entry: Any) -> Pseudo:
    """One entry of the table. No cutoff is guessed: ecutwfc is required, and so is ecutrho
    except for a norm-conserving file, whose density 4 x ecutwfc holds exactly."""
    where = f"pseudopotential table: {family}/{element}"
    if not isinstance(entry, dict) or "file" not in entry:
        raise ValueError(f"{where} needs file and ecutwfc")
    if entry.get("ecutwfc") is None:
        raise ValueError(
            f"{where} needs file and ecutwfc ({entry['file']} has none): no cutoff is "
            "guessed; take the UPF header's suggestion or run scripts/cutoff-convergence"
        )
    kind = entry.get("type")
    if entry.get("ecutrho") is None and kind != "NC":
        raise ValueError(
            f"{where} needs ecutrho ({entry['file']}): only a norm-conserving file (type: NC) "
            f"may leave it out (4 x ecutwfc); this one is {kind or 'of unknown type'}"
        )
    try:
        ecutwfc = float(entry["ecutwfc"])
        ecutrho = float(entry["ecutrho"]) if entry.get("ecutrho") is not None else 4 * ecutwfc
        valence = float(entry["valence"]) if "valence" in entry else None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cutoffs and valence must be numbers ({exc})") from None
    if ecutwfc <= 0 or ecutrho <= 0:  # the renderer keeps ecutrho >= 4 x ecutwfc
        raise ValueError(f"{where}: ecutwfc and ecutrho must be positive "
                         f"(got {ecutwfc:g} and {ecutrho:g} Ry)")
    source = entry.get("source")
    return Pseudo(file=str(entry["file"]), ecutwfc=ecutwfc, ecutrho=ecutrho, valence=valence,
                  type=kind, source=str(source) if source is not None else None)


# Sources whose cutoffs are known to be converged for the file.
CONVERGED_SOURCES = frozenset({"UPF header", "convergence test"})


def cutoff_notes(pseudos: dict[str, Pseudo], ecutwfc: float | None) -> list[str]:
    """Sentences worth logging about the cutoffs a structure with ``pseudos`` will get.

    ``ecutwfc`` is the value the material or step set (None: the table's). A value below
    a converged table entry, or a table entry nobody has converged, is used as asked but
    said out loud: it is what relaxes cells wrongly (Pulay stress).
    """
    notes = []
    for symbol, ps in sorted(pseudos.items()):
        converged = ps.source in CONVERGED_SOURCES
        if ecutwfc is not None and converged and ecutwfc < ps.ecutwfc:
            notes.append(f"ecutwfc {ecutwfc:g} Ry is below the {ps.ecutwfc:g} Ry that {ps.file} "
                         f"({symbol}) needs ({ps.source}): expect Pulay stress in a vc-relax")
        elif ecutwfc is None and not converged:
            notes.append(f"the cutoffs of {ps.file} ({symbol}), {ps.ecutwfc:g}/{ps.ecutrho:g} "
                         f"Ry, are not known to be converged (source: {ps.source or 'none'}); "
                         "run scripts/cutoff-convergence (docs/cutoffs.md)")
    return notes
