"""Draw the lifecycles (docs/lifecycle.md) with transitions' own diagram support (mermaid)."""

from __future__ import annotations

import sys

from transitions.extensions import GraphMachine

from eventflow.core import lifecycle


def mermaid(states: tuple[str, ...], transitions: tuple[dict, ...]) -> str:
    class Model:
        pass

    model = Model()
    GraphMachine(model=model, states=["new", *states], transitions=[dict(t) for t in transitions],
                 initial="new", auto_transitions=False, graph_engine="mermaid",
                 show_conditions=True)
    return model.get_graph().draw(None)


def main() -> int:
    out = ["# Lifecycles", "",
           "Drawn from the tables in `src/eventflow/core/lifecycle.py` by",
           "`python -m eventflow.shell.diagram > docs/lifecycle.md`. Triggers are event types.", ""]
    for title, states, table in (
        ("Material", lifecycle.MATERIAL_STATES, lifecycle.MATERIAL_TRANSITIONS),
        ("Calculation attempt", lifecycle.CALCULATION_STATES, lifecycle.CALCULATION_TRANSITIONS),
    ):
        out += [f"## {title}", "", "```mermaid", mermaid(states, table).strip(), "```", ""]
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
