"""Parsing CRYSTAL outputs: the largest real output of the corpus, then the whole corpus.

1. The largest CRYSTAL output found (bundled corpus, then the shared corpus beside the
   checkout): ``eventflow.codes.crystal.parse.parse_output`` on its text, against
   reading the file and splitting it into lines (``path.read_text().splitlines()``),
   the least any line reader does. Both in the same process, alternating, best of
   ``--rounds``. Goal: under 0.2 s.
2. Every CRYSTAL output of TRUTH.tsv that is present: total parse time (text already
   read), against the total read + splitlines. Goal: under 5 s.

Usage: ``python bench/bench_parse_crystal.py [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from common import alternate, best_of

from eventflow.codes.crystal.parse import parse_output

REPO = Path(__file__).resolve().parents[1]
ROOTS = (REPO / "tests" / "data" / "corpus", REPO.parent / "shared" / "corpus")


def crystal_outputs() -> list[Path]:
    """The files of every TRUTH.tsv row with code 'crystal' that exists locally."""
    found: dict[str, Path] = {}
    for root in ROOTS:
        truth = root / "TRUTH.tsv"
        if not truth.is_file():
            continue
        with truth.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                path = root / row["file"]
                if row["code"] == "crystal" and path.is_file():
                    found.setdefault(row["file"], path)
    return sorted(found.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run with small sizes (numbers not meaningful)")
    parser.add_argument("--rounds", type=int, help="rounds, alternating (default 7)")
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 7)
    files = crystal_outputs()
    if not files:
        raise SystemExit("no CRYSTAL corpus file found (tests/data/corpus or ../shared/corpus)")

    largest = max(files, key=lambda p: p.stat().st_size)
    text = largest.read_text(errors="replace")
    result = parse_output(text)

    def baseline() -> None:
        largest.read_text(errors="replace").splitlines()

    def eventflow() -> None:
        parse_output(text)

    parse_times, base_times = alternate([eventflow, baseline], args.rounds)
    parse_s, base_s = min(parse_times), min(base_times)
    print(f"largest output: {largest.name} ({len(text) / 1e6:.2f} MB, "
          f"{text.count(chr(10))} lines) -> {result.program} {result.calculation} "
          f"{result.status}")
    print(f"  parse (eventflow.codes.crystal): {parse_s * 1e3:8.2f} ms  "
          f"({len(text) / parse_s / 1e6:.1f} MB/s)  goal < 200 ms: "
          f"{'met' if parse_s < 0.2 else 'NOT MET'}")
    print(f"  read + splitlines (baseline):    {base_s * 1e3:8.2f} ms")
    print(f"  ratio parse / baseline:          {parse_s / base_s:8.1f}x")

    texts = [p.read_text(errors="replace") for p in files]
    total_bytes = sum(len(t) for t in texts)

    def parse_all() -> None:
        for t in texts:
            parse_output(t)

    def read_all() -> None:
        for p in files:
            p.read_text(errors="replace").splitlines()

    corpus_parse = best_of(parse_all, max(1, args.rounds // 2))
    corpus_read = best_of(read_all, max(1, args.rounds // 2))
    print(f"whole corpus: {len(files)} outputs, {total_bytes / 1e6:.2f} MB")
    print(f"  parse total:                     {corpus_parse * 1e3:8.1f} ms  goal < 5 s: "
          f"{'met' if corpus_parse < 5 else 'NOT MET'}")
    print(f"  read + splitlines total:         {corpus_read * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
