"""The Quantum ESPRESSO plugin: reads pw.x and post-processing outputs, writes pw.x inputs.

``PLUGIN`` is registered in the ``eventflow.codes`` entry-point group. Every method is
pure; the shell reads config/pseudopotentials.yaml and passes the loaded mapping in
``params["pseudopotentials"]``.
"""

from __future__ import annotations

import functools
from typing import Any

from eventflow.codes.base import ParseResult
from eventflow.codes.qe import changes, inputs, parse

# The shell reads one output more than once (the verdict, then the next step's starting
# structure); a parse is a pure function of the text, so the few latest are kept.
_parse_remembered = functools.lru_cache(maxsize=16)(parse.parse)


class QEPlugin:
    """Quantum ESPRESSO behind the CodePlugin interface."""

    name = "qe"
    parser_version = parse.PARSER_VERSION

    def detect(self, text: str) -> bool:
        """True if ``text`` looks like a Quantum ESPRESSO output or CRASH file."""
        return parse.detect(text)

    def parse(self, text: str) -> ParseResult:
        """Interpret one output text (the last run, if several are concatenated)."""
        return _parse_remembered(text)

    def render_inputs(self, structure: Any, step: str, params: dict[str, Any]) -> dict[str, str]:
        """pw.x (and bands.x / dos.x) inputs for ``step`` (OPT, SP, BAND, DOS)."""
        return inputs.render_inputs(structure, step, params)

    def input_notes(self, structure: Any, step: str, params: dict[str, Any]) -> list[str]:
        """Sentences the shell logs about the inputs (cutoffs not known to be converged)."""
        return inputs.input_notes(structure, step, params)

    def main_output(self, step: str) -> str:
        """The pw.x output of ``step``: the one whose parse decides the step's status."""
        return inputs.main_output(step)

    def apply_changes(self, inputs_: dict[str, str], changes_: dict[str, Any]) -> dict[str, str]:
        """Inputs with namelist changes such as ``{"electrons.mixing_beta": 0.3}`` applied."""
        return changes.apply_changes(inputs_, changes_)

    def check(self, result: ParseResult, params: dict[str, Any]) -> ParseResult:
        """``result`` judged against the run's parameters (a vc-relax's target pressure)."""
        return parse.check(result, params)

    def sanity_problems(self, result: ParseResult) -> list[str]:
        """Reasons to reject a parse that claims success (see parse.sanity_problems)."""
        return parse.sanity_problems(result)

    def run_sequence(self, step: str) -> list[tuple[str, str, str]]:
        """The programs the job runs for ``step``, in order: (executable, input, output)."""
        return inputs.run_sequence(step)


PLUGIN = QEPlugin()

__all__ = ["PLUGIN", "QEPlugin"]
