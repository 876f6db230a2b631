"""Material ids become directory names and job names, so they are a safe, small alphabet."""

from __future__ import annotations

import re

from eventflow.errors import InvalidId

_MATERIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")
_STEP = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


def check_material_id(material_id: str) -> str:
    """Return ``material_id`` if safe: letters, digits and ._+=- only, no leading dash, no '..'."""
    if not isinstance(material_id, str) or not _MATERIAL_ID.fullmatch(material_id) or (
        ".." in material_id
    ):
        raise InvalidId(
            f"invalid material id {material_id!r}: use 1-100 letters, digits and . _ + = - "
            "(not starting with - or ., no '..', no slashes or spaces)"
        )
    return material_id


def check_step(step: str) -> str:
    if not isinstance(step, str) or not _STEP.fullmatch(step):
        raise InvalidId(f"invalid step name {step!r}: a letter, then letters, digits or _")
    return step


def material_id_from_name(name: str) -> str:
    """A safe id from a file stem: unsafe characters become '_' (e.g. 'Na Cl(1)' -> 'Na_Cl_1')."""
    cleaned = re.sub(r"[^A-Za-z0-9._+=-]+", "_", name).strip("._-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:100]
    return check_material_id(cleaned or "material")
