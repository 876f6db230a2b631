"""`eventflow plot` on CRYSTAL's own files, as a process (no project needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.corpus.conftest import corpus_file
from tests.integration.helpers import CLI


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_plot_writes_a_png_of_crystal_bands_and_dos(tmp_path: Path) -> None:
    band, dos = corpus_file("crystal/p17_mgo_BAND.DAT"), corpus_file("crystal/p_cu_DOSS.DAT")
    assert band is not None and dos is not None  # both bundled
    proc = run("plot", "--band", str(band), "--dos", str(dos), "--output", "mgo.png",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "plot: mgo.png"
    assert (tmp_path / "mgo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_names_the_file_it_cannot_read_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "BAND.DAT").write_text("# NKPT 3 NBND 2 NSPIN 1\n  0.0 -1.0 1.0\n")
    proc = run("plot", "--band", "BAND.DAT", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("eventflow: error: BAND.DAT: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "BAND.png").exists()
    proc = run("plot", "--dos", "DOSS.DAT", cwd=tmp_path)
    assert proc.returncode == 1 and "--dos goes with --band" in proc.stderr
