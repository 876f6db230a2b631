"""Reading one candidate calculation and interpreting it, in a worker process.

Everything a calculation's events need is worked out here, where the time goes
(reading, checksumming, parsing): the verdict the watcher would have recorded
(the same rules as ``shell.interpret``: the parser's error kind, a scheduler log's
kind for a cut-off output, the plugin's sanity check), the properties with units,
the structure, the formula, and the material and step by the naming rule.
A file that cannot be read, is binary, or is no known program's output comes back
with ``problem`` set, never as an exception.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import attrs

from eventflow.core.naming import NamingRule, hill_formula, name_calculation
from eventflow.shell.import_scan import Candidate
from eventflow.shell.interpret import as_properties
from eventflow.shell.parsing import MAX_BYTES, decode_output, plugins

NOT_DFT = ("slurm", "noop")


@attrs.frozen
class Parsed:
    """One candidate after reading: a verdict, or why it was skipped."""

    path: str
    problem: str | None = None
    pending: bool = False  # input only: attached if its job is still in the queue
    code: str = ""
    material: str = ""
    step: str = ""
    attempt_hint: int | None = None
    sha256: str = ""
    mtime: float = 0.0
    program: str | None = None
    calculation: str | None = None
    outcome: str = ""  # "completed" or "failed" (what the watcher would have concluded)
    error_kind: str | None = None
    evidence: tuple[dict[str, Any], ...] = ()
    rejected: tuple[str, ...] = ()  # sanity-check reasons (ResultRejected)
    parser: str = ""
    properties: dict[str, Any] = attrs.field(factory=dict)
    structure: dict[str, Any] | None = None  # numbers, positions, cell, pbc of the final one
    formula: str = ""
    job_id: str | None = None

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path)


_WORKER: dict[str, Any] = {}


def init_worker(rule: NamingRule, code: str | None) -> None:
    """Set up a worker process (or this one): the naming rule, the code filter, plugins."""
    found = plugins()
    names = [code] if code else [n for n in ("crystal", "qe") if n in found] + sorted(
        n for n in found if n not in ("crystal", "qe", *NOT_DFT))
    _WORKER.update(rule=rule, plugins=found, codes=[n for n in names if n in found])


def parse_candidate(candidate: Candidate) -> Parsed:
    """The verdict on one candidate; any failure becomes ``problem`` (reported, skipped)."""
    try:
        return _parse(candidate)
    except Exception as exc:  # a parser crash on odd text must not stop the import
        first = str(exc).splitlines()[0] if str(exc) else ""
        return Parsed(candidate.path, problem=f"could not be parsed ({type(exc).__name__}: "
                                              f"{first})")


def _read(path: str) -> tuple[bytes, float] | str:
    try:
        st = os.stat(path)
        if st.st_size > MAX_BYTES:
            return f"{st.st_size} bytes is too large to import"
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        return f"cannot read: {exc.strerror or type(exc).__name__}"
    if b"\x00" in raw[:65536]:
        return "binary data, not a program output"
    return raw, st.st_mtime


def _parse(c: Candidate) -> Parsed:
    rule: NamingRule = _WORKER["rule"]
    if c.pending:
        return _pending(c, rule)
    read = _read(c.path)
    if isinstance(read, str):
        return Parsed(c.path, problem=read)
    raw, mtime = read
    text = decode_output(raw)
    code = next((n for n in _WORKER["codes"] if _WORKER["plugins"][n].detect(text)), None)
    if code is None:
        return Parsed(c.path, problem="not an output of a known program")
    plugin = _WORKER["plugins"][code]
    result = plugin.parse(text)
    input_step = _input_step(c.inputs) if result.calculation == "PROPERTIES" else None
    naming = name_calculation(rule, c.folders, c.stem, result.calculation, input_step)
    job_id, log_kind, log_evidence = _job_log(c.job_logs)
    structure, formula = _structure(plugin, result)
    verdict = _verdict(plugin, result, log_kind, log_evidence)
    properties: dict[str, Any] = {}
    if verdict["outcome"] == "completed":
        values = dict(result.properties)
        values.update(_postprocessed(code, naming.step, os.path.dirname(c.path)))
        if result.energy_ev is not None:
            values.setdefault("total_energy_ev", result.energy_ev)
        if result.band_gap_ev is not None:
            values.setdefault("band_gap_ev", result.band_gap_ev)
        properties = as_properties(values)
    return Parsed(
        c.path, code=code, material=naming.material, step=naming.step,
        attempt_hint=naming.attempt, sha256=hashlib.sha256(raw).hexdigest(), mtime=mtime,
        program=result.program, calculation=result.calculation,
        parser=result.parser or getattr(plugin, "parser_version", code),
        properties=properties, structure=structure,
        formula=formula or _input_formula(c.inputs), job_id=job_id, **verdict,
    )


def _pending(c: Candidate, rule: NamingRule) -> Parsed:
    input_step = _input_step(c.inputs)
    naming = name_calculation(rule, c.folders, c.stem, None, input_step)
    job_id, _, _ = _job_log(c.job_logs)
    try:
        mtime = os.stat(c.path).st_mtime
    except OSError as exc:
        return Parsed(c.path, problem=f"cannot read: {exc.strerror}")
    return Parsed(c.path, pending=True, code=c.code or "", material=naming.material,
                  step=naming.step, attempt_hint=naming.attempt, mtime=mtime,
                  formula=_input_formula(c.inputs), job_id=job_id)


def _verdict(plugin: Any, result: Any, log_kind: str | None,
             log_evidence: list[dict[str, Any]]) -> dict[str, Any]:
    kind = result.error_kind
    evidence = [f.to_dict() for f in result.errors]
    if log_kind is not None and (kind == "truncated" or (kind is None and result.status != "ok")):
        kind = log_kind  # the output was cut off; the scheduler's log says why
        evidence.extend(log_evidence)
    if result.status != "ok" or kind is not None:
        return {"outcome": "failed", "error_kind": kind or "truncated",
                "evidence": tuple(evidence)}
    problems = list(getattr(plugin, "sanity_problems", lambda r: [])(result))
    if problems:
        return {"outcome": "failed", "error_kind": "unphysical_result", "rejected": tuple(problems),
                "evidence": tuple({"line": 0, "text": p} for p in problems)}
    return {"outcome": "completed"}


def _job_log(logs: tuple[tuple[str, str], ...]) -> tuple[str | None, str | None, list[dict]]:
    """The newest job's id, and what its log says ended it (kind, evidence)."""
    if not logs:
        return None, None, []
    job_id, path = max(logs, key=lambda jp: (len(jp[0]), jp[0]))
    read = _read(path)
    slurm = _WORKER["plugins"].get("slurm")
    if isinstance(read, str) or slurm is None:
        return job_id, None, []
    result = slurm.parse(decode_output(read[0]))
    name = os.path.basename(path)
    evidence = [{**f.to_dict(), "file": name} for f in result.errors]
    return job_id, result.error_kind, evidence


def _structure(plugin: Any, result: Any) -> tuple[dict[str, Any] | None, str]:
    from eventflow.shell.handoff import final_structure

    try:
        atoms = final_structure(plugin, result)
    except (KeyError, ValueError, TypeError, IndexError):
        return None, ""
    if atoms is None or len(atoms) == 0:
        return None, ""
    return ({"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
             "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()},
            hill_formula(atoms.get_chemical_symbols()))


def _postprocessed(code: str, step: str, folder: str) -> dict[str, Any]:
    """bands.x / dos.x results beside pw.x's output (eventflow's QE BAND and DOS steps)."""
    if code != "qe":
        return {}
    from eventflow.codes.qe import postproc

    texts = {}
    for name in postproc.OUTPUTS.get(step, ()):
        read = _read(os.path.join(folder, name))
        if not isinstance(read, str):
            texts[name] = decode_output(read[0])
    if not texts:
        return {}
    try:
        return postproc.extract(step, texts)
    except (ValueError, IndexError):
        return {}


def _input_step(inputs: tuple[str, ...]) -> str | None:
    """BAND or DOS from a CRYSTAL .d3 beside a properties output."""
    from eventflow.codes.crystal.d3 import parse_d3

    for path in inputs:
        if not path.lower().endswith(".d3"):
            continue
        read = _read(path)
        if isinstance(read, str):
            continue
        try:
            names = {e.name for e in parse_d3(decode_output(read[0]))}
        except ValueError:
            continue
        for keyword, step in (("BAND", "BAND"), ("DOSS", "DOS")):
            if keyword in names:
                return step
    return None


def _input_formula(inputs: tuple[str, ...]) -> str:
    """The formula an input describes (a .d12 deck, a pw.x input), or ''."""
    for path in inputs:
        suffix = Path(path).suffix.lower()
        read = _read(path)
        if isinstance(read, str):
            continue
        text = decode_output(read[0])
        try:
            if suffix == ".d12":
                from eventflow.codes.crystal import d12, deck

                atoms = d12.atoms_from_deck(deck.parse_deck(text))
            elif suffix in (".in", ".pwi"):
                import io

                from ase.io import read as ase_read

                atoms = ase_read(io.StringIO(text), format="espresso-in")
            else:
                continue
        except Exception:  # an input that does not describe a structure: no formula from it
            continue
        if len(atoms):
            return hill_formula(atoms.get_chemical_symbols())
    return ""
