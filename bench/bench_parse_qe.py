"""Parsing a ~1 MB pw.x output, against merely splitting it into lines.

The text is built from the largest real relax output in the bundled corpus
(tests/data/corpus/qe/pw73_tio2_relax_converged.out, a vc-relax of TiO2, 208 kB):
its header, then its BFGS step blocks (each from one 'NEW-OLD atomic charge density'
line to the next, i.e. a whole SCF, forces, stress and new coordinates) repeated in
order until the text reaches the target size, then its real ending (bfgs converged,
final coordinates, final scf, JOB DONE). So it reads like a long optimisation.

Baseline: ``for line in text.splitlines(): pass`` — the least any line reader does.
Both are timed in the same process, alternating, best of ``--rounds``.
Usage: ``python bench/bench_parse_qe.py [--size-mb 1.0] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import alternate

from eventflow.codes.qe.parse import parse

SOURCE = (
    Path(__file__).resolve().parents[1]
    / "tests"
    / "data"
    / "corpus"
    / "qe"
    / "pw73_tio2_relax_converged.out"
)
STEP_MARK = "NEW-OLD atomic charge density"
END_MARK = "bfgs converged"


def build_text(size_bytes: int) -> tuple[str, int]:
    """A long relax output from the real file's blocks; returns (text, repeated blocks)."""
    lines = SOURCE.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if STEP_MARK in line]
    end = next(i for i, line in enumerate(lines) if END_MARK in line)
    header, tail = "".join(lines[: starts[0]]), "".join(lines[end:])
    bounds = [*starts, end]
    blocks = ["".join(lines[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    body: list[str] = []
    size = len(header) + len(tail)
    while size < size_bytes:
        block = blocks[len(body) % len(blocks)]
        body.append(block)
        size += len(block)
    return header + "".join(body) + tail, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run with small sizes (numbers not meaningful)")
    parser.add_argument("--size-mb", type=float, help="size of the built output (default 1)")
    parser.add_argument("--rounds", type=int, help="rounds, alternating (default 7)")
    args = parser.parse_args()
    args.size_mb = args.size_mb or (0.2 if args.quick else 1.0)
    args.rounds = args.rounds or (2 if args.quick else 7)
    text, repeats = build_text(int(args.size_mb * 1_000_000))
    result = parse(text)
    if (result.calculation, result.status) != ("VC-RELAX", "ok"):
        raise SystemExit(f"built text parses as {result.calculation}/{result.status}")

    def baseline() -> None:
        for _line in text.splitlines():
            pass

    def eventflow() -> None:
        parse(text)

    parse_times, base_times = alternate([eventflow, baseline], args.rounds)
    parse_s, base_s = min(parse_times), min(base_times)
    n_lines = text.count("\n")
    print(
        f"text: {len(text) / 1e6:.2f} MB, {n_lines} lines "
        f"({repeats} real BFGS step blocks between the real header and ending)"
    )
    print(
        f"parse (eventflow.codes.qe):  {parse_s * 1e3:8.2f} ms  "
        f"({len(text) / parse_s / 1e6:.1f} MB/s)"
    )
    print(f"splitlines loop (baseline):  {base_s * 1e3:8.2f} ms")
    print(f"ratio parse / baseline:      {parse_s / base_s:8.1f}x")


if __name__ == "__main__":
    main()
