"""CRYSTAL (crystal and properties programs): parser, error table, input writers, corrections.

CRYSTAL is proprietary, so its support is proven on the real outputs of the
corpus (TRUTH.tsv rows with code ``crystal``). Everything here is pure.

Files of a run: the deck is ``INPUT`` (what Pcrystal/Pproperties read; the serial
programs read it on stdin), an EXTERNAL geometry is ``fort.34``; the main output
is ``crystal.out`` for SP/OPT/FREQ and ``properties.out`` for BAND/DOS. A
properties run also needs the SCF wave function (``fort.9``) of the SP step.

How a job runs (see eventflow.shell.handoff for the contract): ``crystal < INPUT >
crystal.out`` or ``properties < INPUT > properties.out``, where ``crystal`` and
``properties`` are names that config/crystal.yaml ``executables`` maps to the real
programs (``Pcrystal`` / ``MPPcrystal`` / ``Pproperties`` under ``launcher: [srun]``
read INPUT from the working folder; the redirection does them no harm).
"""

from __future__ import annotations

import functools
from typing import Any

from eventflow.codes.base import ParseResult
from eventflow.codes.crystal import corrections, d3, d12, parse

CRYSTAL_OUTPUT = "crystal.out"
PROPERTIES_OUTPUT = "properties.out"
DECK = "INPUT"
STEPS = (*d12.CRYSTAL_STEPS, "BAND", "DOS")
# Parameters the shell adds for every code that a CRYSTAL deck has no use for.
SHELL_SUPPLIED = frozenset({"walltime_seconds"})
# What the properties program reads from the SP step: its wave function. Optional for the
# shell: when it is missing, properties says so ("Wavefunction file can not be found",
# a missing_file failure) rather than the job never being written.
WAVEFUNCTION = "fort.9"
# A restart's files from the attempt it continues: the wave function as GUESSP's starting
# density matrix (fort.9 -> fort.20), and an optimisation's history for OPTGEOM RESTART.
RESTART_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "SP": (("fort.9", "fort.20"),),
    "FREQ": (("fort.9", "fort.20"),),
    "OPT": (("fort.9", "fort.20"), ("OPTINFO.DAT", "OPTINFO.DAT")),
}


# The shell reads one output more than once (the verdict, then the next step's starting
# structure); a parse is a pure function of the text, so the few latest are kept.
_parse_remembered = functools.lru_cache(maxsize=16)(parse.parse_output)


class CrystalPlugin:
    """The CodePlugin for CRYSTAL23 (and the older versions of the corpus)."""

    name = "crystal"
    parser_version = parse.PARSER_VERSION

    def detect(self, text: str) -> bool:
        return parse.detect(text)

    def parse(self, text: str) -> ParseResult:
        return _parse_remembered(text)

    def render_inputs(self, structure: Any, step: str, params: dict[str, Any]) -> dict[str, str]:
        """The deck (``INPUT``, plus ``fort.34`` for EXTERNAL) for ``step``.

        Upper-case keys (MAXCYCLE, GUESSP, ... as the recovery policy names them) are changes
        to the written deck, applied afterwards by :meth:`apply_changes`; the writers'
        own parameters are lower-case (config/crystal.yaml). ``walltime_seconds``, which
        the shell gives every code (pw.x stops itself with it), has no deck keyword.
        """
        own = {k: v for k, v in params.items()
               if not _is_deck_change(k) and k not in SHELL_SUPPLIED}
        if step in d12.CRYSTAL_STEPS:
            return d12.render_d12(structure, step, own)
        if step in d3.PROPERTIES_STEPS:
            return d3.render_d3(structure, step, own)
        raise ValueError(f"CRYSTAL has no step {step!r}; steps: {', '.join(STEPS)}")

    def main_output(self, step: str) -> str:
        if step in d12.CRYSTAL_STEPS:
            return CRYSTAL_OUTPUT
        if step in d3.PROPERTIES_STEPS:
            return PROPERTIES_OUTPUT
        raise ValueError(f"CRYSTAL has no step {step!r}; steps: {', '.join(STEPS)}")

    def apply_changes(self, inputs: dict[str, str], changes: dict[str, Any]) -> dict[str, str]:
        return corrections.apply_changes(inputs, changes)

    def run_sequence(self, step: str) -> list[dict[str, str]]:
        """The program of ``step``, reading the deck on stdin: ``crystal`` or ``properties``."""
        program = "properties" if step in d3.PROPERTIES_STEPS else "crystal"
        return [{"program": program, "stdin": DECK, "stdout": self.main_output(step)}]

    def handoff(self, step: str) -> list[tuple[str, str, bool]]:
        """What ``step`` copies from its prerequisite: BAND and DOS take the SP wave function.

        SP after OPT takes nothing: its geometry is the optimised one read from the OPT
        output (:meth:`final_structure`), written into its own deck (or fort.34).
        """
        if step in d3.PROPERTIES_STEPS:
            return [(WAVEFUNCTION, WAVEFUNCTION, False)]
        return []

    def checkpoint_files(self, step: str) -> list[tuple[str, str]]:
        """What a restart of ``step`` copies from the attempt it continues (when there)."""
        return list(RESTART_FILES.get(step, ()))

    def final_structure(self, result: ParseResult) -> Any:
        """The structure a run leaves for the next step: the optimised geometry after OPT,
        else the geometry the run used; None when the output prints none (properties)."""
        geometry = result.properties.get("final_geometry") or result.properties.get(
            "initial_geometry")
        if not geometry:
            return None
        return d12.atoms_from_geometry(geometry)


def _is_deck_change(key: str) -> bool:
    return key.isupper()


PLUGIN = CrystalPlugin()

__all__ = ["PLUGIN", "CrystalPlugin"]
