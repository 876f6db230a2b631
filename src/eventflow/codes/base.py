"""What every code plugin returns and provides.

A parse is an *interpretation* of an output text: it carries the version of the
parser that made it, so the log can tell which parser concluded what, and a
better parser can add a new interpretation later without rewriting history.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import attrs

HARTREE_EV = 27.211386245988
RYDBERG_EV = 13.605693122994
BOHR_ANGSTROM = 0.529177210903


@attrs.frozen
class Finding:
    """One matched error pattern: which kind, the 1-based line number, the line's text."""

    kind: str
    line: int
    text: str
    pattern: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "line": self.line, "text": self.text, "pattern": self.pattern}


@attrs.frozen
class ParseResult:
    """The interpretation of one output file.

    ``calculation`` uses the corpus vocabulary: SCF, RELAX, VC-RELAX, MD, BANDS, NSCF,
    POSTPROC for QE; SP, OPT, FREQ, ELASTIC, PROPERTIES for CRYSTAL; JOB for scheduler logs.
    ``status`` is ``ok`` or ``error``; ``error_kind`` is the root cause (one of
    ``eventflow.core.kinds``) and ``errors`` every finding that led to it.
    """

    code: str
    program: str | None
    calculation: str | None
    status: str
    error_kind: str | None = None
    errors: tuple[Finding, ...] = ()
    energy: float | None = None  # as printed, in energy_unit
    energy_unit: str | None = None  # "Ha" or "Ry"
    energy_ev: float | None = None
    band_gap_ev: float | None = None
    warnings: tuple[str, ...] = ()
    properties: dict[str, Any] = attrs.field(factory=dict)
    parser: str = ""  # name and version of the parser, e.g. "qe/1"

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "program": self.program,
            "calculation": self.calculation,
            "status": self.status,
            "error_kind": self.error_kind,
            "errors": [f.to_dict() for f in self.errors],
            "energy": self.energy,
            "energy_unit": self.energy_unit,
            "energy_ev": self.energy_ev,
            "band_gap_ev": self.band_gap_ev,
            "warnings": list(self.warnings),
            "properties": dict(self.properties),
            "parser": self.parser,
        }


@runtime_checkable
class CodePlugin(Protocol):
    """One DFT code behind one interface (registered in the ``eventflow.codes`` entry-point group).

    All methods are pure: they take text or data and return text or data.
    """

    name: str
    parser_version: str

    def detect(self, text: str) -> bool:
        """True if ``text`` looks like an output of this code."""

    def parse(self, text: str) -> ParseResult:
        """Interpret one main output text."""

    def render_inputs(self, structure: Any, step: str, params: dict[str, Any]) -> dict[str, str]:
        """Input files (name → text) for ``step`` of ``structure`` (an ``ase.Atoms``)."""

    def main_output(self, step: str) -> str:
        """The file name of the main output that ``parse`` reads for ``step``."""

    def apply_changes(self, inputs: dict[str, str], changes: dict[str, Any]) -> dict[str, str]:
        """Return the input files with ``changes`` (parameter → value) applied."""
