"""Every table eventflow prints keeps every value whole at 80 columns (and narrower): rich would
otherwise cut cells with '…'. Rendered as a file or pipe renders them, with no terminal."""

from __future__ import annotations

import io
from typing import Any

import pytest

from eventflow.shell import cli, demo
from eventflow.shell.tables import Column, fitted, with_unit

LONG_REASON = ("SCF not converged after 5 iterations: mixing_beta lowered to 0.3 and "
               "electron_maxstep raised to 200 for attempt 2")


def render(renderable: Any, width: int) -> str:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue()


def assert_whole(text: str, values: list[str], prose: list[str] = ()) -> None:
    assert "…" not in text
    lines = text.splitlines()
    for value in values:
        assert any(value in line for line in lines), f"{value!r} is not whole in:\n{text}"
    for sentence in prose:  # prose may fold onto more lines of its cell, but all of it is there
        wanted = "".join(ch for ch in sentence if ch.isalnum())
        assert any(wanted in column for column in columns(text)), f"{sentence!r} cut:\n{text}"


def columns(text: str) -> list[str]:
    """The text of each table column, its folded lines joined (letters and digits only)."""
    cells: dict[int, str] = {}
    for line in text.splitlines():
        for i, cell in enumerate(line.split("│")[1:-1]):
            cells[i] = cells.get(i, "") + "".join(ch for ch in cell if ch.isalnum())
    return list(cells.values())


MATERIALS = [
    {"id": "C-diamond-relaxed", "formula": "C2", "workflow": "full_characterization",
     "state": "needs_attention", "current_step": "BAND", "attempts": 12,
     "updated_at": "2026-12-05T10:12:25.123456", "reason": LONG_REASON},
    {"id": "Si-stubborn", "formula": "Si2", "workflow": "scf_only", "state": "completed",
     "current_step": "SP", "attempts": 3, "updated_at": "2026-12-05T10:13:01", "reason": None},
]


@pytest.mark.parametrize("width", [80, 60])
def test_status_table_keeps_ids_states_and_numbers_whole(width: int) -> None:
    text = render(cli._status_table(MATERIALS, "eventflow status", width), width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert_whole(text, ["C-diamond-relaxed", "needs_attention", "Si-stubborn", "12"],
                 [LONG_REASON])


def test_status_table_says_which_columns_it_left_out_at_80() -> None:
    text = render(cli._status_table(MATERIALS, "eventflow status", 80), 80)
    assert "left out at this width: formula, cluster, workflow, updated" in text
    placed = [{**m, "cluster": "national-hpc"} for m in MATERIALS]
    wide = render(cli._status_table(placed, "eventflow status", 200), 200)
    assert_whole(wide, ["full_characterization", "2026-12-05T10:12:25", "Si2", "national-hpc"])


CALCS = [{"id": "C-diamond-relaxed/BAND/12", "state": "failed", "job_id": "1234567",
          "error_kind": "scf_not_converged", "requested_at": "2026-12-05T10:12:02",
          "finished_at": "2026-12-05T10:12:25.5"}]
PROPS = [{"name": "total_energy_ev", "value": -30912.123456789012, "unit": "eV",
          "calculation_id": "C-diamond-relaxed/SP/1"},
         {"name": "volume_ang3", "value": 11.233333333333333, "unit": "Å^3",
          "calculation_id": "C-diamond-relaxed/OPT/1"},
         {"name": "max_force_ev_per_ang", "value": 1.0e-05, "unit": "eV/Å",
          "calculation_id": "C-diamond-relaxed/OPT/1"}]


@pytest.mark.parametrize("width", [80, 50])
def test_show_tables_keep_every_digit(width: int) -> None:
    calcs = render(cli._calculations_table(CALCS, width), width)
    assert_whole(calcs, ["C-diamond-relaxed/BAND/12", "1234567", "2026-12-05T10:12:25"],
                 ["scf_not_converged"])
    props = render(cli._properties_table(PROPS, width), width)
    assert_whole(props, [repr(p["value"]) for p in PROPS]
                 + ["C-diamond-relaxed/OPT/1", "max_force_ev_per_ang"])
    shown = {float(line.split("│")[2]) for line in props.splitlines()
             if line.count("│") == 5 and "value" not in line}
    assert shown == {p["value"] for p in PROPS} or width < 80  # every digit: reads back equal


def test_demo_properties_have_units_in_the_names_and_every_shown_digit() -> None:
    latest = {"Si": {"total_energy_ev": -215.27261234, "a_ang": 3.79043973},
              "C-diamond": {"total_energy_ev": -309.1234567, "band_gap_ev": 4.123456},
              "Pb": {"total_energy_ev": -1639.04408446, "fermi_energy_ev": 11.9656},
              "Si-stubborn": {}}
    text = render(demo.properties_rows(latest, 80), 80)
    assert_whole(text, ["total energy (eV)", "a (Å)", "-215.2726", "-309.1235", "-1639.0441",
                        "4.1235", "3.7904", "11.9656", "Si-stubborn", "C-diamond"])


def test_the_progress_rows_fold_text_and_keep_ids() -> None:
    columns = [Column("material"), Column("state"), Column("OPT", text=True),
               Column("note", text=True, optional=True)]
    rows = [["C-diamond", "needs_attention", "failed(scf_not_converged) completed",
             LONG_REASON]]
    text = render(fitted("main job", columns, rows, 80), 80)
    assert_whole(text, ["C-diamond", "needs_attention"],
                 ["failed(scf_not_converged) completed", LONG_REASON])


def test_units_go_into_the_header() -> None:
    assert with_unit("total_energy_ev") == "total energy (eV)"
    assert with_unit("volume_ang3") == "volume (Å³)"
    assert with_unit("n_atoms") == "n atoms"


def test_a_live_display_ends_its_line_in_a_pipe() -> None:
    from rich.console import Console

    from eventflow.shell.tables import live

    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    with live(console, render_table("frame"), auto_refresh=False) as display:
        display.update(render_table("frame"), refresh=True)
    console.print(render_table("next"))
    lines = out.getvalue().splitlines()
    assert any(line.strip() == "next" for line in lines), out.getvalue()


def render_table(title: str) -> Any:
    return fitted(title, [Column("a")], [["1"]], 80)


def test_show_table_names_the_cluster_each_job_ran_on() -> None:
    calcs = [{**CALCS[0], "cluster": "hpc-west"}]
    text = render(cli._calculations_table(calcs, 80), 80)
    assert "cluster" in text and "hpc-west" in text
    assert "hpc-west" not in render(cli._calculations_table(CALCS, 80), 80)
