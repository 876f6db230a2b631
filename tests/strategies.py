"""Shared hypothesis strategies."""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from eventflow.core import events as ev
from eventflow.core.kinds import ERROR_KINDS

material_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_+=-]{0,20}", fullmatch=True)
text = st.text(max_size=40)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False), text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=10,
)

_BY_TYPE = {
    str: text,
    int: st.integers(0, 10_000),
    bool: st.booleans(),
}


def _field_strategy(field: attrs.Attribute) -> st.SearchStrategy:
    t = str(field.type)
    if field.name == "error_kind":
        return st.sampled_from(sorted(ERROR_KINDS))
    if t.startswith("dict"):
        return st.dictionaries(text, json_values, max_size=3)
    if t.startswith("list"):
        return st.lists(st.dictionaries(text, json_scalars, max_size=3), max_size=3)
    if "None" in t:
        base = "int" if "int" in t else "str"
        return st.none() | _BY_TYPE[int if base == "int" else str]
    for name, strat in (("int", _BY_TYPE[int]), ("bool", _BY_TYPE[bool]), ("str", text)):
        if t == name:
            return strat
    return text


def event_of(cls: type[ev.Event]) -> st.SearchStrategy[ev.Event]:
    return st.builds(cls, **{f.name: _field_strategy(f) for f in attrs.fields(cls)})


any_event = st.sampled_from(sorted(ev.EVENT_TYPES)).flatmap(
    lambda name: event_of(ev.EVENT_TYPES[name])
)
