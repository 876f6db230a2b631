"""YAML text to data plus the line of every key, so config errors can name file and line.

``yaml.safe_load`` forgets where things were; ``yaml.compose`` keeps a start mark on
every node. Both run on the same text (pure: text in, data out) and the marks are
indexed by the path of keys and list indices that leads to each value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from eventflow.errors import ConfigError

Path = tuple[Any, ...]
# libyaml's parser when PyYAML was built with it (the same safe constructor, ~10x faster).
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# path -> (source, 1-based line)
Lines = dict[Path, tuple[str, int]]


def load_with_lines(text: str, source: str) -> tuple[Any, Lines]:
    """The data in ``text`` and the line of each key and list item in it."""
    try:
        loader = _SafeLoader(text)
        try:  # one parse: the node tree (with marks) and the data constructed from it
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}{where}: invalid YAML: {problem}") from None
    lines: Lines = {}
    if node is not None:
        _walk(node, (), source, lines)
    return data, lines


def _walk(node: yaml.Node, path: Path, source: str, lines: Lines) -> None:
    lines.setdefault(path, (source, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            lines[(*path, key)] = (source, key_node.start_mark.line + 1)
            _walk(value_node, (*path, key), source, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = (source, item.start_mark.line + 1)
            _walk(item, (*path, index), source, lines)


def _scalar(node: yaml.Node) -> Any:
    """A mapping key as safe_load builds it (``2`` is an int key, ``a`` a string)."""
    if isinstance(node, yaml.ScalarNode):
        return SafeConstructor().construct_object(node)
    return repr(node)


def merge(defaults: Any, user: Any) -> Any:
    """``user`` over ``defaults``, key by key in nested mappings.

    A value that is not a mapping (a list of stages, a number) replaces the default
    whole; ``null`` removes the key (e.g. drop a code's override of a scheduler rule).
    """
    if not isinstance(defaults, Mapping) or not isinstance(user, Mapping):
        return user
    out = dict(defaults)
    for key, value in user.items():
        if value is None:
            out.pop(key, None)
        elif key in out:
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_lines(defaults: Lines, user: Lines, user_doc: Any) -> Lines:
    """Line marks after :func:`merge`: every path the user's file set points into that file."""
    out = dict(defaults)
    for path in list(out):
        if _set_by(user_doc, path):
            del out[path]
    out.update(user)
    return out


def _set_by(doc: Any, path: Path) -> bool:
    """True if ``doc`` replaces the value at ``path`` (or a non-mapping value above it)."""
    node = doc
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
        if not isinstance(node, Mapping):
            return True
    return True
