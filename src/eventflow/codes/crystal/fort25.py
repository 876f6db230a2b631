"""Band structures and densities of states written by CRYSTAL's properties program.

Two formats, both plain text:

* ``fort.25`` (also saved as ``.f25``): blocks opened by a header
  ``-%-<IHFERM><TYPE><NROW:I5><NCOL:I5><3 x E12.5>``, read by column because
  the integers may touch (``-%-3DOSS    125002`` is 1 row of 25002 points). For ``BAND`` the header
  holds NBAND, NPTS, 0, dk, E_Fermi; the next line the energy range; the next
  the segment ends as six integers (units of the shrinking factor); then
  NBAND x NPTS energies, point by point. For ``DOSS`` it holds 1, NPTS, 0, dE,
  E_Fermi; the next line 0 and the first energy; the next the projection number
  and its number of orbitals; then NPTS densities. IHFERM 2 and 3 mean
  spin-polarised: the second half of the blocks is the beta spin.
  Numbers are E12.5 with no separating blank (``-4.88534E+01-2.03655E+01``), so
  they are read by pattern, not by splitting on spaces.
* ``BAND.DAT`` / ``DOSS.DAT`` (also ``.BAND``/``.DOSS``/``.bnd``/``.dos``):
  xmgrace files, ``#`` headers (``# NKPT n NBND m NSPIN s``, ``# NEPTS n NPROJ m
  NSPIN s``, ``# EFERMI (HARTREE) e``), ``@`` plot commands, one row per point,
  spins separated by a line ``&``.

All energies are Hartree, as written. fort.25 energies are absolute; BAND.DAT and
DOSS.DAT energies are relative to the Fermi level (the top of the valence band
for insulators), whose absolute value is the ``# EFERMI (HARTREE)`` line.
"""

from __future__ import annotations

import re

import attrs
import numpy as np

_HEADER = re.compile(r"^-%-\d[A-Z]{4}[^\n]*", re.M)
_NUMBER = re.compile(r"[-+]?\d+\.\d+E[-+]\d+")
_DAT_NUMBER = re.compile(r"[-+]?\d*\.\d+(?:[EeDd][-+]?\d+)?")


class Fort25Error(ValueError):
    """The text is not a readable fort.25 / BAND.DAT / DOSS.DAT file; the message says why."""


@attrs.frozen(eq=False)
class Bands:
    """A band structure: ``energies[spin, k, band]`` (Hartree) along ``kdist``."""

    efermi_ha: float | None
    energies: np.ndarray
    kdist: np.ndarray
    segments: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()
    labels: tuple[str, ...] = ()
    # Where along ``kdist`` each label sits (BAND.DAT's TICK lines; fort.25 segment ends).
    label_positions: tuple[float, ...] = ()
    # Energies measured from E_F (BAND.DAT says so in its axis label), not absolute.
    relative: bool = False

    @property
    def nspin(self) -> int:
        return int(self.energies.shape[0])

    @property
    def nbands(self) -> int:
        return int(self.energies.shape[2])


@attrs.frozen(eq=False)
class Dos:
    """Densities of states ``dos[spin, projection, point]`` at ``energies`` (Hartree)."""

    efermi_ha: float | None
    energies: np.ndarray
    dos: np.ndarray
    # Energies measured from E_F (DOSS.DAT's axis label 'E-EFERMI'); CRYSTAL14 wrote absolute ones.
    relative: bool = False

    @property
    def nspin(self) -> int:
        return int(self.dos.shape[0])

    @property
    def nproj(self) -> int:
        return int(self.dos.shape[1])


@attrs.frozen
class _Block:
    kind: str
    spin_polarised: bool
    nrow: int
    ncol: int
    floats: tuple[float, float, float]
    second: tuple[float, ...]
    ints: tuple[int, ...]
    values: np.ndarray = attrs.field(eq=False)


def _blocks(text: str) -> list[_Block]:
    heads = list(_HEADER.finditer(text))
    if not heads:
        raise Fort25Error("not a fort.25 file: no '-%-' block header")
    blocks = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        line = head.group(0)
        floats = [float(x) for x in _NUMBER.findall(line[18:])]
        try:
            nrow, ncol = int(line[8:13]), int(line[13:18])
        except ValueError as exc:
            raise Fort25Error(f"fort.25 block {i + 1}: bad header {line!r}") from exc
        if len(floats) != 3:
            raise Fort25Error(f"fort.25 block {i + 1}: header needs 3 reals: {line!r}")
        body = text[head.end():end].split("\n")[1:]
        if len(body) < 2:
            raise Fort25Error(f"fort.25 block {i + 1} ({line[4:8]}) is cut short")
        second = tuple(float(x) for x in _NUMBER.findall(body[0]))
        try:
            ints = tuple(int(x) for x in body[1].split())
        except ValueError as exc:
            raise Fort25Error(f"fort.25 block {i + 1}: bad integer line {body[1]!r}") from exc
        values = np.array(_NUMBER.findall("\n".join(body[2:])), dtype=float)
        blocks.append(
            _Block(
                kind=line[4:8],
                spin_polarised=int(line[3]) >= 2,
                nrow=nrow,
                ncol=ncol,
                floats=(floats[0], floats[1], floats[2]),
                second=second,
                ints=ints,
                values=values,
            )
        )
    return blocks


def _by_spin(blocks: list[_Block]) -> list[list[_Block]]:
    if blocks and blocks[0].spin_polarised:
        if len(blocks) % 2:
            raise Fort25Error(
                f"spin-polarised fort.25 with an odd number of blocks ({len(blocks)})"
            )
        half = len(blocks) // 2
        return [blocks[:half], blocks[half:]]
    return [blocks]


def _bands(blocks: list[_Block]) -> Bands:
    spins = _by_spin(blocks)
    nbands = blocks[0].nrow
    per_spin = []
    for spin_blocks in spins:
        chunks = []
        for b in spin_blocks:
            if b.nrow != nbands:
                raise Fort25Error(
                    f"BAND blocks disagree on the number of bands ({b.nrow} vs {nbands})"
                )
            if b.values.size != b.nrow * b.ncol:
                raise Fort25Error(
                    f"BAND block expects {b.nrow} x {b.ncol} energies, found {b.values.size}"
                )
            chunks.append(b.values.reshape(b.ncol, b.nrow))
        per_spin.append(np.concatenate(chunks))
    kdist, offset, positions = [], 0.0, []
    for b in spins[0]:
        dk = b.floats[1]
        kdist.append(offset + dk * np.arange(b.ncol))
        positions += [offset, offset + dk * (b.ncol - 1)]
        offset += dk * (b.ncol - 1)
    segments = tuple((b.ints[:3], b.ints[3:6]) for b in spins[0])
    return Bands(
        efermi_ha=blocks[0].floats[2],
        energies=np.stack(per_spin),
        kdist=np.concatenate(kdist),
        segments=segments,
        labels=tuple(_point_name(end) for seg in segments for end in seg),
        label_positions=tuple(positions),
    )


def _point_name(ints: tuple[int, ...]) -> str:
    """A fort.25 path end (integers in units of the shrinking factor, which fort.25 omits)."""
    return "Γ" if not any(ints) else "(" + ",".join(str(i) for i in ints) + ")"


def _dos(blocks: list[_Block]) -> Dos:
    spins = _by_spin(blocks)
    first = blocks[0]
    npts = first.ncol
    for b in blocks:
        if b.ncol != npts or b.values.size != npts:
            raise Fort25Error(f"DOSS block expects {npts} points, found {b.values.size}")
    e0 = first.second[-1] if first.second else 0.0
    energies = e0 + first.floats[1] * np.arange(npts)
    dos = np.stack([np.stack([b.values for b in spin_blocks]) for spin_blocks in spins])
    return Dos(efermi_ha=first.floats[2], energies=energies, dos=dos)


@attrs.frozen(eq=False)
class Fort25:
    """Everything in one fort.25: band structures and densities of states, in file order."""

    bands: tuple[Bands, ...] = ()
    dos: tuple[Dos, ...] = ()


def _split_repeats(blocks: list[_Block]) -> list[list[_Block]]:
    """Closed-shell BAND blocks of several BAND runs: a new run restarts the first segment."""
    if not blocks or blocks[0].spin_polarised:
        return [blocks] if blocks else []
    first = blocks[0].ints
    sets: list[list[_Block]] = []
    for b in blocks:
        if not sets or (b.ints == first and sets[-1]):
            sets.append([])
        sets[-1].append(b)
    return sets


def parse_fort25(text: str) -> Fort25:
    """The band structures and DOS in a fort.25 text.

    Several BAND runs in one file (a path that starts again at its first segment)
    give several band structures; spin-polarised files give one with two spins.
    """
    blocks = _blocks(text)
    band_blocks = [b for b in blocks if b.kind == "BAND"]
    dos_blocks = [b for b in blocks if b.kind == "DOSS"]
    if not band_blocks and not dos_blocks:
        kinds = sorted({b.kind for b in blocks})
        raise Fort25Error(f"fort.25 holds no BAND or DOSS block (found {', '.join(kinds)})")
    bands = tuple(_bands(group) for group in _split_repeats(band_blocks))
    dos = (_dos(dos_blocks),) if dos_blocks else ()
    return Fort25(bands=bands, dos=dos)


def _dat_header(text: str, key: str) -> int:
    m = re.search(rf"{key}\s+(\d+)", text)
    if m is None:
        raise Fort25Error(f"not a CRYSTAL .DAT file: no '{key}' in the '#' header")
    return int(m.group(1))


def _dat_rows(text: str) -> list[list[list[float]]]:
    """Numeric rows, split into spin blocks at each '&' line."""
    blocks: list[list[list[float]]] = [[]]
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#@":
            continue
        if stripped == "&":
            blocks.append([])
            continue
        blocks[-1].append([float(x.replace("D", "E").replace("d", "e"))
                           for x in _DAT_NUMBER.findall(stripped)])
    return [b for b in blocks if b]


def _dat_efermi(text: str) -> float | None:
    m = re.search(r"#\s*EFERMI\s*\(HARTREE\)\s*([-+0-9.Ee]+)", text)
    return float(m.group(1)) if m else None


def _dat_spin_arrays(text: str, what: str, nspin: int, rows: int, columns: int
                     ) -> list[np.ndarray]:
    """One ``rows`` x ``columns`` array per spin block, as the header says, or Fort25Error."""
    blocks = _dat_rows(text)
    if len(blocks) != nspin:
        raise Fort25Error(f"{what} says NSPIN {nspin} but holds {len(blocks)} spin blocks")
    arrays = [np.array(block, dtype=float) for block in blocks]
    for arr in arrays:
        if arr.shape != (rows, columns):
            raise Fort25Error(f"{what} expects {rows} rows of {columns} numbers, got {arr.shape}")
    return arrays


def parse_band_dat(text: str) -> Bands:
    """A BAND.DAT text: ``# NKPT n NBND m NSPIN s`` then rows of k-distance and m energies."""
    nk, nb, nspin = (_dat_header(text, k) for k in ("NKPT", "NBND", "NSPIN"))
    arrays = _dat_spin_arrays(text, "BAND.DAT", nspin, nk, nb + 1)
    labels = tuple(m.group(1).strip() for m in re.finditer(r'TICKLABEL\s+\d+,"([^"]*)"', text))
    positions = tuple(float(m.group(1)) for m in
                      re.finditer(r"^@\s*XAXIS\s+TICK\s+\d+,\s*(" + _DAT_NUMBER.pattern + ")",
                                  text, re.M))
    return Bands(
        efermi_ha=_dat_efermi(text),
        energies=np.stack([a[:, 1:] for a in arrays]),
        kdist=arrays[0][:, 0],
        labels=labels,
        label_positions=positions if len(positions) == len(labels) else (),
        relative="E-EFERMI" in text,
    )


def parse_doss_dat(text: str) -> Dos:
    """A DOSS.DAT text: ``# NEPTS n NPROJ m NSPIN s`` then rows of energy and m densities."""
    npts, nproj, nspin = (_dat_header(text, k) for k in ("NEPTS", "NPROJ", "NSPIN"))
    arrays = _dat_spin_arrays(text, "DOSS.DAT", nspin, npts, nproj + 1)
    return Dos(
        efermi_ha=_dat_efermi(text),
        energies=arrays[0][:, 0],
        dos=np.stack([a[:, 1:].T for a in arrays]),
        relative="E-EFERMI" in text,
    )
