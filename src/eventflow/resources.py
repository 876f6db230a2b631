"""Files shipped inside the package (the top-level config/, projections/, slurm/ folders).

They are found through the package, never through the source tree, so a user
who installs the wheel gets them too.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable


def data_file(*parts: str) -> Traversable:
    node = resources.files("eventflow") / "_data"
    for part in parts:
        node = node / part
    return node


def data_text(*parts: str) -> str:
    return data_file(*parts).read_text(encoding="utf-8")
