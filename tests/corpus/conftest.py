"""Where the real-output corpus lives, and its expected parses.

The files with a stated licence are bundled under tests/data/corpus (see its
NOTICE), so the corpus tests run on a fresh clone. The full shared corpus beside
the checkout (../shared/corpus) adds the files without a licence; tests on
those run only where it exists.
"""

from __future__ import annotations

import csv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "tests" / "data" / "corpus"
SHARED = REPO.parent / "shared" / "corpus"


def corpus_file(relative: str) -> Path | None:
    """The path of a corpus file, bundled first, else from the shared corpus, else None."""
    for root in (BUNDLED, SHARED):
        candidate = root / relative
        if candidate.is_file():
            return candidate
    return None


def corpus_files(folder: str, suffixes: set[str]) -> list[Path]:
    """Every corpus file in ``folder`` (crystal, qe, slurm) with one of ``suffixes``, bundled
    copies first, each name once."""
    files: dict[str, Path] = {}
    for root in (BUNDLED, SHARED):
        where = root / folder
        if where.is_dir():
            for path in where.iterdir():
                if path.suffix in suffixes:
                    files.setdefault(path.name, path)
    return sorted(files.values())


def corpus_path(relative: str) -> Path:
    """The path of a corpus file a test needs; skips the test (with the file named) where it
    is absent. A skip, not a failure, also in CI: a plain clone has only the bundled files,
    and .ci/run itself fails where the shared corpus should be and is not."""
    import pytest

    path = corpus_file(relative)
    if path is None:
        pytest.skip(f"{relative} is neither bundled nor in the shared corpus (../shared/corpus)")
    return path


def read_corpus(relative: str) -> str:
    """The text of a corpus file; skips the test (with the file named) where it is absent."""
    return corpus_path(relative).read_text(errors="replace")


def assert_parsed_as_truth(result: object, row: dict[str, str]) -> None:
    """The classification of a parse (code, program, calculation, status, error kind) is the
    one its TRUTH.tsv row gives."""
    got = {name: getattr(result, name) for name in
           ("code", "program", "calculation", "status", "error_kind")}
    got["error_kind"] = got["error_kind"] or ""
    assert got == {name: row[name] for name in got}, row["file"]


def truth_rows(code: str | None = None) -> list[dict[str, str]]:
    """TRUTH.tsv rows (union of bundled and shared), optionally only those of ``code``."""
    rows: dict[str, dict[str, str]] = {}
    for root in (BUNDLED, SHARED):
        truth = root / "TRUTH.tsv"
        if not truth.is_file():
            continue
        with truth.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                rows.setdefault(row["file"], row)
    selected = [r for r in rows.values() if code is None or r["code"] == code]
    return sorted(selected, key=lambda r: r["file"])
