"""What a newcomer trips over in the first hour: a subcommand's --help that does not say what
it does, a filter that silently matches nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

from eventflow.shell.api import Tracker
from eventflow.shell.cli import build_parser
from tests.integration.helpers import CLI, eventflow


def test_every_subcommand_help_opens_with_what_it_does() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert len(sub.choices) >= 20
    for name, child in sub.choices.items():
        assert child.description, f"`eventflow {name} --help` does not say what it does"
    out = subprocess.run([*CLI, "status", "--help"], capture_output=True, text=True).stdout
    assert "Where every material stands." in out


def test_an_unknown_state_material_or_property_is_said_not_silently_empty(tmp_path: Path) -> None:
    project = tmp_path / "p"
    Tracker.init(project).close()
    proc = eventflow(project, "status", "--state", "done", check=False)
    assert proc.returncode == 2 and "invalid choice: 'done'" in proc.stderr
    assert "needs_attention" in proc.stderr  # the states it could have been
    proc = eventflow(project, "properties", "--material", "Nope", check=False)
    assert proc.returncode == 1 and "no material 'Nope'" in proc.stderr
    proc = eventflow(project, "properties", "--property", "gap", check=False)
    assert proc.returncode == 0 and "no values of gap" in proc.stderr
