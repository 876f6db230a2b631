"""Getting results out: the properties with their provenance, the final structures.

``eventflow properties`` joins the projections' properties, calculations and materials
tables, and adds from the log the program that wrote each output (the summary of its
CalculationSucceeded) and the parser that read it (its PropertiesExtracted), so every
number says where it came from. ``eventflow export-structures`` writes the final
structures kept in the ASE database (``project.structures_db``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from eventflow.errors import EventflowError

PROPERTY_COLUMNS = (
    "material_id", "formula", "calculation_id", "step", "attempt", "name", "value", "unit",
    "source_seq", "code", "program", "parser",
)
PROPERTY_FORMATS = ("csv", "json", "parquet")
STRUCTURE_FORMATS = ("extxyz", "cif")

_PROPERTIES_SQL = """
SELECT p.material_id, m.formula, p.calculation_id, c.step, c.attempt, p.name, p.value, p.unit,
       p.source_seq, m.code
FROM properties p
JOIN calculations c ON c.id = p.calculation_id
JOIN materials m ON m.id = p.material_id
"""


def _where(column: str, values: Sequence[str] | None, args: list[Any]) -> str | None:
    if not values:
        return None
    args.extend(values)
    return f"{column} IN ({','.join('?' * len(values))})"


def property_rows(tracker: Any, materials: Sequence[str] | None = None,
                  names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One dict per property value (columns PROPERTY_COLUMNS), in material, step, attempt
    and name order."""
    tracker.projections.catch_up(tracker.store)
    args: list[Any] = []
    where = [w for w in (_where("p.material_id", materials, args), _where("p.name", names, args))
             if w]
    sql = _PROPERTIES_SQL + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY p.material_id, c.step, c.attempt, p.name"
    rows = tracker.projections.db.execute(sql, args).fetchall()
    programs, parsers = _provenance(tracker.store, sorted({r[0] for r in rows})
                                    if materials else None)
    out = []
    for row in rows:
        record = dict(zip(PROPERTY_COLUMNS[:10], row, strict=True))
        record["program"] = programs.get(record["calculation_id"])
        record["parser"] = parsers.get(record["source_seq"])
        out.append(record)
    return out


def _provenance(store: Any, streams: Sequence[str] | None) -> tuple[dict[str, str], dict[int, str]]:
    """calculation id -> program (from CalculationSucceeded); event seq -> parser."""
    programs: dict[str, str] = {}
    parsers: dict[int, str] = {}
    types = ("CalculationSucceeded", "PropertiesExtracted")
    sources = [store.read_raw(types=types)] if streams is None else [
        store.read_raw(stream=s, types=types) for s in streams]
    for rows in sources:
        for seq, _stream, _v, type_, _sv, data, *_ in rows:
            body = orjson.loads(data)
            if type_ == "PropertiesExtracted":
                parsers[seq] = body.get("parser") or ""
            else:
                program = (body.get("summary") or {}).get("program")
                programs[body["calculation_id"]] = program or body.get("parser") or ""
    return programs, parsers


def write_properties(rows: list[dict[str, Any]], fmt: str, output: Path | None,
                     stdout: IO[str] | None = None) -> None:
    """Write ``rows`` as csv, json or parquet to ``output`` (None: standard output)."""
    if fmt not in PROPERTY_FORMATS:
        raise EventflowError(f"unknown format {fmt!r}; use one of {', '.join(PROPERTY_FORMATS)}")
    stdout = stdout or sys.stdout
    if fmt == "parquet":
        _write_parquet(rows, output)
        return
    if fmt == "json":
        text = json.dumps(rows, indent=1, ensure_ascii=False) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=PROPERTY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    if output is None:
        stdout.write(text)
    else:
        _write_file(output, text.encode("utf-8"))


def _write_parquet(rows: list[dict[str, Any]], output: Path | None) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise EventflowError("parquet needs pyarrow, which is not installed: "
                             "pip install pyarrow (or use --format csv|json)") from None
    if output is None:
        raise EventflowError("parquet is a binary format: pass --output FILE")
    columns = {name: [r.get(name) for r in rows] for name in PROPERTY_COLUMNS}
    columns["value"] = [None if v is None else float(v) for v in columns["value"]]
    tmp = output.with_name(output.name + ".partial")
    pq.write_table(pa.table(columns), str(tmp))
    tmp.replace(output)


def _write_file(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise EventflowError(f"{path}: cannot write: {exc.strerror}") from exc


# --- structures ------------------------------------------------------------------------------


def structure_rows(project: Any, step: str | None = None, materials: Sequence[str] | None = None,
                   all_attempts: bool = False) -> list[Any]:
    """The ASE database rows of final structures: the latest attempt of each material and
    step (every attempt with ``all_attempts``), in material and step order."""
    if not project.structures_db.is_file():
        raise EventflowError(f"{project.structures_db}: no structures recorded yet (they are "
                             "kept when a calculation succeeds)")
    from ase.db import connect

    query: dict[str, Any] = {"kind": "final"}
    if step:
        query["step"] = step
    with connect(str(project.structures_db)) as db:
        rows = [r for r in db.select(**query) if not materials or r.material_id in materials]
    if not all_attempts:
        latest: dict[tuple[str, str], Any] = {}
        for r in rows:
            key = (r.material_id, r.step)
            if key not in latest or int(r.attempt) > int(latest[key].attempt):
                latest[key] = r
        rows = list(latest.values())
    return sorted(rows, key=lambda r: (r.material_id, r.step, int(r.attempt)))


def _render(images: list[Any], fmt: str) -> bytes:
    from ase.io import write

    if fmt == "cif":  # ASE's CIF writer writes bytes
        binary = io.BytesIO()
        write(binary, images, format="cif")
        return binary.getvalue()
    text = io.StringIO()
    write(text, images, format=fmt)
    return text.getvalue().encode("utf-8")


def write_structures(rows: list[Any], fmt: str, output: str | Path | None,
                     stdout: IO[str] | None = None) -> tuple[list[Path], list[str]]:
    """Write the structures: one file for all (``output`` a file, or standard output), or a
    file per structure when ``output`` is a folder (an existing one, or a name ending in
    a slash). Returns (files written, calculations
    left out: a CIF describes a periodic crystal, so molecules, slabs and polymers go to
    extxyz only)."""
    if fmt not in STRUCTURE_FORMATS:
        raise EventflowError(f"unknown format {fmt!r}; use one of "
                             f"{', '.join(STRUCTURE_FORMATS)}")
    images, left_out = [], []
    for r in rows:
        atoms = r.toatoms()
        if fmt == "cif" and not all(atoms.pbc):
            left_out.append(r.calculation_id)
            continue
        atoms.info.update(material_id=r.material_id, step=r.step, attempt=int(r.attempt),
                          calculation_id=r.calculation_id)
        images.append(atoms)
    if output is None:
        if images:
            data = _render(images, fmt)
            out = stdout or sys.stdout
            out.write(data.decode("utf-8"))
        return [], left_out
    folder = Path(output)
    if folder.is_dir() or str(output).endswith(("/", os.sep)):
        written = []
        for atoms in images:
            path = folder / f"{atoms.info['calculation_id'].replace('/', '_')}.{fmt}"
            _write_file(path, _render([atoms], fmt))
            written.append(path)
        return written, left_out
    _write_file(folder, _render(images, fmt) if images else b"")
    return [folder], left_out
