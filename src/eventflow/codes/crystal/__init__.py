"""CRYSTAL (crystal and properties programs): parser, error table, input writers, corrections.

CRYSTAL is proprietary, so its support is proven on the real outputs of the
corpus (TRUTH.tsv rows with code ``crystal``). Everything here is pure.

Files of a run: the deck is ``INPUT`` (what Pcrystal/Pproperties read; the serial
programs read it on stdin), an EXTERNAL geometry is ``fort.34``; the main output
is ``crystal.out`` for SP/OPT/FREQ and ``properties.out`` for BAND/DOS. A
properties run also needs the SCF wave function (``fort.9``) of the SP step.
"""

from __future__ import annotations

from typing import Any

from eventflow.codes.base import ParseResult
from eventflow.codes.crystal import corrections, d3, d12, parse

CRYSTAL_OUTPUT = "crystal.out"
PROPERTIES_OUTPUT = "properties.out"
STEPS = (*d12.CRYSTAL_STEPS, "BAND", "DOS")


class CrystalPlugin:
    """The CodePlugin for CRYSTAL23 (and the older versions of the corpus)."""

    name = "crystal"
    parser_version = parse.PARSER_VERSION

    def detect(self, text: str) -> bool:
        return parse.detect(text)

    def parse(self, text: str) -> ParseResult:
        return parse.parse_output(text)

    def render_inputs(self, structure: Any, step: str, params: dict[str, Any]) -> dict[str, str]:
        if step in d12.CRYSTAL_STEPS:
            return d12.render_d12(structure, step, params)
        if step in d3.PROPERTIES_STEPS:
            return d3.render_d3(structure, step, params)
        raise ValueError(f"CRYSTAL has no step {step!r}; steps: {', '.join(STEPS)}")

    def main_output(self, step: str) -> str:
        if step in d12.CRYSTAL_STEPS:
            return CRYSTAL_OUTPUT
        if step in d3.PROPERTIES_STEPS:
            return PROPERTIES_OUTPUT
        raise ValueError(f"CRYSTAL has no step {step!r}; steps: {', '.join(STEPS)}")

    def apply_changes(self, inputs: dict[str, str], changes: dict[str, Any]) -> dict[str, str]:
        return corrections.apply_changes(inputs, changes)


PLUGIN = CrystalPlugin()

__all__ = ["PLUGIN", "CrystalPlugin"]
