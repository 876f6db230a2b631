"""The functional core does no I/O: a test, not a convention."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "eventflow"
PURE = sorted([*(SRC / "core").rglob("*.py"), *(SRC / "codes").rglob("*.py")])
FORBIDDEN_MODULES = {"sqlite3", "subprocess", "watchdog", "sqlite_utils", "shutil", "socket",
                     "eventflow.shell", "requests", "urllib"}
# Method names that only file objects and paths have (str.replace or list.remove are fine).
FORBIDDEN_CALLS = {"open", "popen", "unlink", "makedirs", "mkdir", "listdir", "scandir",
                   "iterdir", "read_text", "write_text", "read_bytes", "write_bytes"}


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(SRC)))
def test_pure_module_imports_and_calls_nothing_that_does_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        for name in names:
            assert not any(name == m or name.startswith(m + ".") for m in FORBIDDEN_MODULES), (
                f"{path.name} imports {name}"
            )
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else None
            )
            assert called not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno} calls {called}()"
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                assert func.value.id not in {"os", "shutil", "pathlib"}, (
                    f"{path.name}:{node.lineno} calls {func.value.id}.{func.attr}()"
                )


def test_the_purity_check_sees_the_core() -> None:
    names = {p.name for p in PURE}
    assert {"events.py", "lifecycle.py", "state.py", "policy.py", "workflow.py"} <= names
