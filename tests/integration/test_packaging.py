"""The defaults in config/, projections/ and slurm/ ship inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_every_default_file(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("eventflow-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("config", "projections", "slurm"):
        for path in (REPO / folder).iterdir():
            assert f"eventflow/_data/{folder}/{path.name}" in names, path
    assert "eventflow/shell/cli.py" in names


def test_defaults_are_found_through_the_package_not_the_source_tree() -> None:
    from eventflow.resources import data_file

    schema = data_file("projections", "schema.sql")
    assert "CREATE TABLE IF NOT EXISTS materials" in schema.read_text()
    assert "eventflow/_data/projections" in str(schema).replace("\\", "/")
