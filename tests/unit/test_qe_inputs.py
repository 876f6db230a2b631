"""pw.x / bands.x / dos.x input rendering and the namelist change transform.

Inputs are read back with ASE's own espresso-in reader and Fortran namelist parser,
so the checks do not trust the code under test to judge its own output.
"""

from __future__ import annotations

import difflib
import io
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from eventflow.codes.qe import PLUGIN
from eventflow.codes.qe.changes import apply_changes, read_namelists
from eventflow.codes.qe.inputs import (
    DEFAULTS,
    kpoint_grid,
    pseudo_table,
    render_inputs,
    run_sequence,
    structure_to_atoms,
)

REPO = Path(__file__).resolve().parents[2]
TABLE = yaml.safe_load((REPO / "config" / "pseudopotentials.yaml").read_text())
PZ = TABLE["families"]["pz"]


def _bulk(name: str, *args: Any, **kwargs: Any) -> Any:
    from ase.build import bulk

    return bulk(name, *args, **kwargs)


def _params(**extra: Any) -> dict[str, Any]:
    return {"pseudopotentials": TABLE, **extra}


def _namelists(text: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    from ase.io.espresso import read_fortran_namelist

    sections, cards = read_fortran_namelist(io.StringIO(text))
    return {k: dict(v) for k, v in sections.items()}, cards


cell_parameters = st.tuples(
    st.floats(2.5, 10.0),
    st.floats(2.5, 10.0),
    st.floats(2.5, 10.0),
    st.floats(70.0, 110.0),
    st.floats(70.0, 110.0),
    st.floats(70.0, 110.0),
)


def _cell(par: tuple[float, ...]) -> Any:
    from ase.geometry import cellpar_to_cell

    return cellpar_to_cell(list(par))


def _reasonable(par: tuple[float, ...]) -> bool:
    import numpy as np

    cell = _cell(par)
    volume = abs(np.linalg.det(cell))
    return bool(np.isfinite(cell).all()) and volume > 0.3 * par[0] * par[1] * par[2]


structures = st.builds(
    lambda par, symbols, fractions: (par, symbols, fractions[: len(symbols)]),
    cell_parameters.filter(_reasonable),
    st.lists(st.sampled_from(sorted(PZ)), min_size=1, max_size=4),
    st.lists(st.tuples(*[st.floats(0.0, 0.999)] * 3), min_size=4, max_size=4),
)


@settings(max_examples=40, deadline=None)
@given(structures)
def test_rendered_input_reads_back_as_the_same_structure(structure: Any) -> None:
    from ase import Atoms
    from ase.io import read

    par, symbols, fractions = structure
    atoms = Atoms(symbols=symbols, cell=_cell(par), scaled_positions=fractions, pbc=True)
    text = render_inputs(atoms, "SP", _params())["pw.in"]
    back = read(io.StringIO(text), format="espresso-in")
    assert back.get_chemical_symbols() == atoms.get_chemical_symbols()
    assert back.cell.array == pytest.approx(atoms.cell.array, abs=1e-9)
    assert back.positions == pytest.approx(atoms.positions, abs=1e-8)


@settings(max_examples=60, deadline=None)
@given(cell_parameters.filter(_reasonable), st.floats(1.0, 3.0), st.floats(0.5, 8.0))
def test_kgrid_never_grows_with_the_cell(
    par: tuple[float, ...], scale: float, density: float
) -> None:
    cell = _cell(par)
    small = kpoint_grid(cell, density)
    large = kpoint_grid(cell * scale, density)
    assert all(n_large <= n_small for n_large, n_small in zip(large, small, strict=True))
    assert min(small) >= 1 and min(large) >= 1


def test_supercell_gets_about_half_the_kpoints() -> None:
    si = _bulk("Si", "diamond", a=5.43)
    for density in (2.0, 3.5, 5.0):
        primitive = kpoint_grid(si.cell, density)
        doubled = kpoint_grid((si * (2, 2, 2)).cell, density)
        for n, half in zip(primitive, doubled, strict=True):
            assert 0 <= 2 * half - n <= 1


def test_kgrid_follows_reciprocal_length() -> None:
    """Si (a = 5.43 Å, fcc primitive): |b| = 2π√3/a = 2.004 Å⁻¹, so 3.5/Å⁻¹ gives 8."""
    si = _bulk("Si", "diamond", a=5.43)
    assert kpoint_grid(si.cell, 3.5) == (8, 8, 8)
    assert kpoint_grid(si.cell, 1.0, kspacing=0.5) == (5, 5, 5)
    assert kpoint_grid(si.cell, 3.5, pbc=(True, True, False))[2] == 1


CHANGE_KEYS = [
    ("electrons", "mixing_beta"),
    ("electrons", "mixing_mode"),
    ("electrons", "conv_thr"),
    ("electrons", "electron_maxstep"),
    ("system", "degauss"),
    ("system", "ecutwfc"),
    ("control", "max_seconds"),
    ("control", "restart_mode"),
    ("ions", "ion_dynamics"),
    ("electrons", "startingpot"),
]
values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: x != 0),
    st.integers(-1000, 1000),
    st.booleans(),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=12),
)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["SP", "OPT", "DOS"]), st.sampled_from(CHANGE_KEYS), values)
def test_apply_changes_changes_exactly_the_intended_key(
    step: str, key: tuple[str, str], value: Any
) -> None:
    si = _bulk("Si", "diamond", a=5.43)
    inputs = render_inputs(si, step, _params(kpoint_density=1.0))
    changed = apply_changes(inputs, {f"{key[0]}.{key[1]}": value})
    before, cards_before = _namelists(inputs["pw.in"])
    after, cards_after = _namelists(changed["pw.in"])
    assert cards_after == cards_before
    expected = {name: dict(section) for name, section in before.items()}
    expected.setdefault(key[0], {})[key[1]] = value
    assert after == expected
    assert type(after[key[0]][key[1]]) is type(value)
    diff = [
        d
        for d in difflib.ndiff(inputs["pw.in"].splitlines(), changed["pw.in"].splitlines())
        if d[:1] in "+-"
    ]
    added_namelist = key[0] not in before
    assert len([d for d in diff if d.startswith("+")]) == (3 if added_namelist else 1)
    assert len([d for d in diff if d.startswith("-")]) <= 1
    assert {k: v for k, v in changed.items() if k != "pw.in"} == {
        k: v for k, v in inputs.items() if k != "pw.in"
    }


def test_apply_changes_multiply_uses_the_value_or_the_pwx_default() -> None:
    si = _bulk("Si", "diamond", a=5.43)
    inputs = render_inputs(si, "SP", _params())
    halved = apply_changes(inputs, {"electrons.mixing_beta": {"multiply": 0.5}})
    assert read_namelists(halved["pw.in"])["electrons"]["mixing_beta"] == pytest.approx(0.35)
    set_first = apply_changes(inputs, {"electrons.mixing_beta": 0.4})
    again = apply_changes(set_first, {"electrons.mixing_beta": {"multiply": 0.5}})
    assert read_namelists(again["pw.in"])["electrons"]["mixing_beta"] == pytest.approx(0.2)
    doubled = apply_changes(inputs, {"electrons.electron_maxstep": {"multiply": 2}})
    assert read_namelists(doubled["pw.in"])["electrons"]["electron_maxstep"] == 200


def test_apply_changes_policy_examples_and_removal() -> None:
    al = _bulk("Al", "fcc", a=4.05)
    inputs = render_inputs(al, "SP", _params())
    changed = apply_changes(
        inputs,
        {
            "electrons.mixing_mode": "local-TF",
            "system.degauss": 0.03,
            "control.tstress": {"remove": True},
        },
    )
    namelists, _ = _namelists(changed["pw.in"])
    assert namelists["electrons"]["mixing_mode"] == "local-TF"
    assert namelists["system"]["degauss"] == 0.03
    assert "tstress" not in namelists["control"]
    assert namelists["control"]["tprnfor"] is True


def test_apply_changes_reaches_postprocessing_inputs() -> None:
    si = _bulk("Si", "diamond", a=5.43)
    inputs = render_inputs(si, "DOS", _params(kpoint_density=1.0))
    changed = apply_changes(inputs, {"dos.DeltaE": 0.01})
    assert read_namelists(changed["dos.in"])["dos"]["deltae"] == 0.01
    assert changed["pw.in"] == inputs["pw.in"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mixing_beta": 0.3}, "namelist.variable"),
        ({"bands.lsym": True}, "no input file has a &BANDS"),
        ({"electrons.diago_thr_init": {"multiply": 2}}, "cannot multiply"),
        ({"electrons.mixing_beta": {"double": True}}, "expected a value"),
    ],
)
def test_apply_changes_rejects_bad_changes(changes: dict[str, Any], message: str) -> None:
    inputs = render_inputs(_bulk("Si", "diamond", a=5.43), "SP", _params())
    with pytest.raises(ValueError, match=message):
        apply_changes(inputs, changes)


def test_namelist_keys_in_params_are_written_and_runner_markers_skipped() -> None:
    """The runner merges step params and recovery changes ('namelist.variable' keys,
    and its own 'structure' marker) into the params it renders with."""
    from eventflow.codes.qe.changes import RUNNER_MARKERS
    from eventflow.core.recovery.parse import SHELL_MARKERS

    assert RUNNER_MARKERS == SHELL_MARKERS
    si = _bulk("Si", "diamond", a=5.43)
    params = _params(**{"system.nbnd": 12, "electrons.startingpot": "file", "structure": "last"})
    files = render_inputs(si, "SP", params)
    namelists = read_namelists(files["pw.in"])
    assert namelists["system"]["nbnd"] == 12
    assert namelists["electrons"]["startingpot"] == "file"
    changes = {"electrons.startingpot": "file", "structure": "last"}
    assert apply_changes(files, changes) == files  # already there; the marker is skipped


def test_cutoffs_come_from_the_table_unless_given() -> None:
    from ase import Atoms

    sio = Atoms(
        "SiO2", cell=[4, 4, 4], scaled_positions=[[0, 0, 0], [0.3, 0, 0], [0, 0.3, 0]], pbc=True
    )
    system = read_namelists(render_inputs(sio, "SP", _params())["pw.in"])["system"]
    ecutwfc = max(PZ["Si"]["ecutwfc"], PZ["O"]["ecutwfc"])
    dual = max(PZ[s]["ecutrho"] / PZ[s]["ecutwfc"] for s in ("Si", "O"))
    assert system["ecutwfc"] == ecutwfc
    assert system["ecutrho"] == pytest.approx(ecutwfc * dual)
    given_ = read_namelists(render_inputs(sio, "SP", _params(ecutwfc=50))["pw.in"])["system"]
    assert (given_["ecutwfc"], given_["ecutrho"]) == (50, pytest.approx(50 * dual))


def test_spin_and_smearing() -> None:
    fe = _bulk("Fe", "bcc", a=2.87) * (1, 1, 2)
    fe.set_initial_magnetic_moments([2.0, -2.0])
    system = read_namelists(render_inputs(fe, "SP", _params())["pw.in"])["system"]
    start = TABLE["magnetic_elements"]["Fe"]
    assert system["nspin"] == 2
    assert sorted([system["starting_magnetization(1)"], system["starting_magnetization(2)"]]) == [
        -start,
        start,
    ]
    assert system["occupations"] == "smearing"
    al = read_namelists(render_inputs(_bulk("Al", "fcc", a=4.05), "SP", _params())["pw.in"])
    assert al["system"]["occupations"] == "smearing" and "nspin" not in al["system"]
    si = read_namelists(render_inputs(_bulk("Si", "diamond", a=5.43), "SP", _params())["pw.in"])
    assert "occupations" not in si["system"] and "nspin" not in si["system"]
    forced = render_inputs(_bulk("Si", "diamond", a=5.43), "SP", _params(metal=True, degauss=0.01))
    assert read_namelists(forced["pw.in"])["system"]["degauss"] == 0.01


def test_steps_control_options() -> None:
    si = _bulk("Si", "diamond", a=5.43)
    params = _params(
        walltime_seconds=3600,
        nosym=True,
        restart_mode="restart",
        startingpot="file",
        startingwfc="file",
        mixing_beta=0.3,
        diagonalization="cg",
        electron_maxstep=80,
    )
    sp = read_namelists(render_inputs(si, "SP", params)["pw.in"])
    assert sp["control"]["calculation"] == "scf"
    assert sp["control"]["max_seconds"] == pytest.approx(0.95 * 3600)
    assert sp["control"]["tprnfor"] is True and sp["control"]["tstress"] is True
    assert sp["control"]["restart_mode"] == "restart"
    assert sp["system"]["nosym"] is True
    assert sp["electrons"] == {
        "conv_thr": 1e-8,
        "mixing_beta": 0.3,
        "diagonalization": "cg",
        "electron_maxstep": 80,
        "startingpot": "file",
        "startingwfc": "file",
    }
    opt = read_namelists(render_inputs(si, "OPT", _params(nstep=7))["pw.in"])
    assert opt["control"]["calculation"] == "vc-relax" and opt["control"]["nstep"] == 7
    assert opt["ions"]["ion_dynamics"] == "bfgs" and opt["cell"]["cell_dynamics"] == "bfgs"


def test_band_step_follows_the_ase_band_path() -> None:
    import numpy as np

    si = _bulk("Si", "diamond", a=5.43)
    files = render_inputs(si, "BAND", _params(band_npoints=40))
    assert set(files) == {"pw.in", "bands.in"}
    namelists, cards = _namelists(files["pw.in"])
    assert namelists["control"]["calculation"] == "bands"
    start = cards.index("K_POINTS crystal_b")
    count = int(cards[start + 1])
    rows = [line.split() for line in cards[start + 2 : start + 2 + count]]
    path = si.cell.bandpath()
    labels = [label for part in path.path.split(",") for label in _labels(part)]
    assert count == len(labels)
    for row, label in zip(rows, labels, strict=True):
        assert [float(x) for x in row[:3]] == pytest.approx(list(path.special_points[label]))
    assert sum(int(row[3]) for row in rows[:-1]) == pytest.approx(40, abs=len(rows))
    assert np.all([int(row[3]) >= 1 for row in rows])
    assert read_namelists(files["bands.in"])["bands"]["prefix"] == namelists["control"]["prefix"]


def _labels(part: str) -> list[str]:
    import re

    return re.findall(r"[A-Z][a-z0-9']*", part)


def test_dos_step_uses_a_denser_grid_and_tetrahedra() -> None:
    si = _bulk("Si", "diamond", a=5.43)
    sp = _namelists(render_inputs(si, "SP", _params())["pw.in"])[1]
    dos_files = render_inputs(si, "DOS", _params())
    namelists, cards = _namelists(dos_files["pw.in"])
    assert namelists["control"]["calculation"] == "nscf"
    assert namelists["system"]["occupations"] == "tetrahedra"
    grid_sp = [int(x) for x in sp[sp.index("K_POINTS automatic") + 1].split()[:3]]
    grid_dos = [int(x) for x in cards[cards.index("K_POINTS automatic") + 1].split()[:3]]
    assert all(d >= 2 * s - 1 for d, s in zip(grid_dos, grid_sp, strict=True))
    explicit = _namelists(render_inputs(si, "DOS", _params(kpts=(3, 4, 5)))["pw.in"])[1]
    assert explicit[explicit.index("K_POINTS automatic") + 1].split()[:3] == ["6", "8", "10"]
    # 8 valence electrons -> 4 occupied bands; the DOS needs empty ones too
    assert namelists["system"]["nbnd"] > 4
    assert read_namelists(dos_files["dos.in"])["dos"]["fildos"] == "dos.dat"


@pytest.mark.parametrize(
    ("step", "params", "message"),
    [
        ("FREQ", {}, "unknown step"),
        ("SP", {"ecutwf": 30}, "unknown Quantum ESPRESSO parameter"),
        ("SP", {"pseudopotentials": None}, "pseudopotentials"),
        ("SP", {"pseudo_family": "hse"}, "family 'hse'"),
        ("SP", {"ecutwfc": 30, "ecutrho": 60}, "below 4 x ecutwfc"),
    ],
)
def test_bad_requests_give_one_line_errors(step: str, params: dict[str, Any], message: str) -> None:
    si = _bulk("Si", "diamond", a=5.43)
    with pytest.raises(ValueError, match=message):
        render_inputs(si, step, {"pseudopotentials": TABLE, **params})


def test_missing_element_and_missing_cell() -> None:
    from ase import Atoms

    with pytest.raises(ValueError, match="no pseudopotential for Co"):
        render_inputs(_bulk("Co", "hcp", a=2.5, c=4.07), "SP", _params())
    with pytest.raises(ValueError, match="no 3D cell"):
        render_inputs(Atoms("Si2", positions=[[0, 0, 0], [1, 1, 1]]), "SP", _params())
    co = render_inputs(_bulk("Co", "hcp", a=2.5, c=4.07), "SP", _params(pseudo_family="pbesol"))
    assert "Co.pbesol-spn-rrkjus_psl.0.3.1.UPF" in co["pw.in"]


def test_pseudo_table_validation() -> None:
    with pytest.raises(ValueError, match="families"):
        pseudo_table({"default_family": "pz"})
    with pytest.raises(ValueError, match="pz/Si needs file and ecutwfc"):
        pseudo_table({"families": {"pz": {"Si": {"file": "Si.UPF"}}}})
    table = pseudo_table(TABLE)
    assert table.default_family in table.families
    entries = [p for family in table.families.values() for p in family.values()]
    assert all(p.type in {"NC", "US", "PAW"} and p.ecutwfc > 0 for p in entries)
    assert all(p.ecutrho == 4 * p.ecutwfc for p in entries if p.type == "NC")
    assert all(p.file.lower().endswith(".upf") and p.valence for p in entries)


def test_plugin_surface() -> None:
    assert PLUGIN.name == "qe"
    assert PLUGIN.main_output("SP") == "pw.out"
    assert run_sequence("BAND") == [
        ("pw.x", "pw.in", "pw.out"),
        ("bands.x", "bands.in", "bands.out"),
    ]
    assert run_sequence("DOS")[-1] == ("dos.x", "dos.in", "dos.out")
    assert set(DEFAULTS) >= {"ecutwfc", "kspacing", "mixing_beta", "walltime_seconds"}


def test_parsed_structure_hands_over_to_the_next_step() -> None:
    """The final structure of the real vc-relax output becomes the next step's input."""
    from eventflow.codes.qe.parse import parse

    text = (REPO / "tests" / "data" / "corpus" / "qe" / "pw66_vcrelax_converged.out").read_text()
    atoms = structure_to_atoms(parse(text).properties["structure"])
    assert atoms.get_volume() == pytest.approx(44.22863, abs=1e-4)
    rendered = render_inputs(atoms, "SP", _params())["pw.in"]
    assert "2.80688422600000" in rendered
    assert math.isclose(atoms.cell.lengths()[0], math.sqrt(2) * 2.806884226)


def test_no_cutoff_is_guessed() -> None:
    with pytest.raises(ValueError, match="pz/Pb needs ecutrho.*this one is US"):
        pseudo_table({"families": {"pz": {"Pb": {"file": "Pb.UPF", "ecutwfc": 30, "type": "US"}}}})
    with pytest.raises(ValueError, match="pz/X needs ecutrho.*of unknown type"):
        pseudo_table({"families": {"pz": {"X": {"file": "X.UPF", "ecutwfc": 30}}}})
    with pytest.raises(ValueError, match="must be positive"):
        pseudo_table({"families": {"pz": {"Si": {"file": "Si.UPF", "ecutwfc": -30,
                                                 "type": "NC"}}}})
    nc = pseudo_table({"families": {"pz": {"Si": {"file": "Si.UPF", "ecutwfc": 30,
                                                  "type": "NC"}}}})
    assert nc.families["pz"]["Si"].ecutrho == 120  # exact for a norm-conserving file


def test_every_shipped_cutoff_says_where_it_comes_from() -> None:
    entries = [p for family in pseudo_table(TABLE).families.values() for p in family.values()]
    assert all(p.source for p in entries)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cutoffs.md").read_text()
    for p in entries:
        if p.source == "convergence test":  # its figures and command are in docs/cutoffs.md
            assert f"`{p.file}`: ecutwfc {p.ecutwfc:g} Ry, ecutrho {p.ecutrho:g} Ry" in doc


def test_upf_header_cutoffs_are_the_headers_own() -> None:
    """Every entry whose source is the UPF header has the header's suggested cutoffs."""
    import re

    from eventflow.shell.config import DEFAULT_PSEUDO_DIR
    from tests.conftest import require

    folder = Path(DEFAULT_PSEUDO_DIR)  # Debian's quantum-espresso-data
    require(folder.is_dir(), "quantum-espresso-data is not installed")
    table = pseudo_table(TABLE)
    checked = 0
    for family in table.families.values():
        for p in family.values():
            head = (folder / p.file).read_text(errors="replace")[:20000]
            wfc = re.search(r"Suggested minimum cutoff for wavefunctions:\s*([\d.]+)", head)
            rho = re.search(r"Suggested minimum cutoff for charge density:\s*([\d.]+)", head)
            suggested = (float(wfc.group(1)), float(rho.group(1))) if wfc and rho else (0, 0)
            if p.source == "UPF header":
                assert (p.ecutwfc, p.ecutrho) == suggested, p.file
                checked += 1
            else:  # the header suggests nothing, which is why another source was needed
                assert suggested == (0, 0), p.file
    assert checked >= 15


def test_a_cutoff_below_the_converged_one_or_not_converged_is_said() -> None:
    si = _bulk("Si", "diamond", a=5.431)
    assert PLUGIN.input_notes(si, "OPT", _params()) == []  # the table's converged 40 Ry
    assert PLUGIN.input_notes(si, "OPT", _params(ecutwfc=60)) == []
    (low,) = PLUGIN.input_notes(si, "OPT", _params(ecutwfc=14))
    assert "14 Ry is below the 40 Ry that Si.pz-vbc.UPF (Si) needs" in low
    from ase import Atoms

    oxygen = Atoms("O", cell=[4.0, 4.0, 4.0], pbc=True)
    (untested,) = PLUGIN.input_notes(oxygen, "SP", _params())
    assert "O.pz-rrkjus.UPF" in untested and "not known to be converged" in untested
    assert PLUGIN.input_notes(_bulk("Au", "fcc", a=4.08), "SP", _params()) == []  # UPF header
