"""A code that runs a given command and nothing else: for trying eventflow and for its tests.

A step's ``command`` parameter (an argv list, default ``["true"]``) is the job;
exit 0 means success. ``fail_kind`` says which error kind a non-zero exit is.
"""

from __future__ import annotations

from typing import Any

from eventflow.codes.base import Finding, ParseResult


class NoopPlugin:
    name = "noop"
    parser_version = "noop/1"

    def detect(self, text: str) -> bool:
        return False

    def parse(self, text: str) -> ParseResult:
        return ParseResult(code="noop", program=None, calculation="JOB", status="ok",
                           parser=self.parser_version)

    def render_inputs(self, structure: Any, step: str, params: dict[str, Any]) -> dict[str, str]:
        return {}

    def main_output(self, step: str) -> str:
        return f"{step}.out"

    def job_commands(self, step: str, params: dict[str, Any]) -> list[list[str]]:
        command = params.get("command") or ["true"]
        return [[str(a) for a in command]]

    def apply_changes(self, inputs: dict[str, str], changes: dict[str, Any]) -> dict[str, str]:
        return dict(inputs)

    def interpret(
        self, text: str | None, exit_code: int | None, params: dict[str, Any]
    ) -> ParseResult:
        if exit_code == 0:
            return self.parse(text or "")
        kind = str(params.get("fail_kind", "truncated"))
        return ParseResult(
            code="noop", program=None, calculation="JOB", status="error", error_kind=kind,
            errors=(Finding(kind, 0, f"command exited with {exit_code}"),),
            parser=self.parser_version,
        )


PLUGIN = NoopPlugin()
