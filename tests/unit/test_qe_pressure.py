"""The final-SCF pressure check of a vc-relax, on real pw.x outputs.

The low-cutoff diamond is a real run of Debian's pw.x (tests/data/qe/README.md says how it
was made); the converged vc-relaxes are the bundled corpus's (aiida-quantumespresso, MIT).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eventflow.codes.qe import PLUGIN
from eventflow.codes.qe.changes import read_namelists
from eventflow.codes.qe.parse import PRESSURE_WARNING, check, parse

DATA = Path(__file__).resolve().parents[1] / "data"
LOW_CUTOFF = DATA / "qe" / "c_diamond_vcrelax_ecutwfc30.out"


def _pressure_warnings(result) -> list[str]:
    return [w for w in result.warnings if w.startswith(PRESSURE_WARNING)]


def test_the_final_scf_pressure_is_read_apart_from_the_relaxation() -> None:
    result = parse(LOW_CUTOFF.read_text())
    assert result.status == "ok" and result.calculation == "VC-RELAX"
    assert result.properties["relaxed_pressure_kbar"] == pytest.approx(0.32)
    assert result.properties["final_scf_pressure_kbar"] == pytest.approx(-149.23)
    # the relaxed cell is the squeezed one the issue reports (primitive 2.40 Å)
    assert result.properties["a_ang"] == pytest.approx(2.4017, abs=1e-3)


def test_a_low_cutoff_vc_relax_is_flagged_with_the_advice_to_raise_ecutwfc() -> None:
    result = parse(LOW_CUTOFF.read_text())
    (warning,) = _pressure_warnings(result)
    assert "-149.23 kbar" in warning and "0.32 kbar" in warning
    assert "raise ecutwfc" in warning
    assert result.properties["residual_pressure_kbar"] == pytest.approx(-149.23)
    assert result.error_kind is None  # a warning on the result, not a failure


@pytest.mark.parametrize(("name", "final"), [
    ("pw66_vcrelax_converged.out", -0.16),
    ("pw66_vcrelax_final_scf_pressure.out", 0.63),
])
def test_a_converged_vc_relax_is_not_flagged(name: str, final: float) -> None:
    result = parse((DATA / "corpus" / "qe" / name).read_text())
    assert result.properties["final_scf_pressure_kbar"] == pytest.approx(final)
    assert _pressure_warnings(result) == []
    assert "residual_pressure_kbar" not in result.properties


def test_an_scf_has_no_final_scf_pressure() -> None:
    result = parse((DATA / "corpus" / "qe" / "pw66_si_scf_converged.out").read_text())
    assert "final_scf_pressure_kbar" not in result.properties
    assert _pressure_warnings(result) == []


def test_the_check_uses_the_runs_target_and_tolerance() -> None:
    result = parse(LOW_CUTOFF.read_text())
    assert _pressure_warnings(check(result, {"pressure_tolerance_kbar": 200})) == []
    assert _pressure_warnings(check(result, {"press": -145.0})) == []  # 4.23 kbar off
    flagged = check(result, {"cell.press": -100.0, "pressure_tolerance_kbar": 10})
    (warning,) = _pressure_warnings(flagged)
    assert "target -100 kbar" in warning
    assert flagged.properties["residual_pressure_kbar"] == pytest.approx(-49.23)
    # the other warnings stay, once each
    assert [w for w in flagged.warnings if w not in _pressure_warnings(flagged)] == [
        w for w in result.warnings if w not in _pressure_warnings(result)]
    cleared = check(flagged, {"pressure_tolerance_kbar": 1000})
    assert "residual_pressure_kbar" not in cleared.properties
    assert PLUGIN.check(result, {}).warnings == result.warnings


@pytest.mark.parametrize("params", [{"pressure_tolerance_kbar": "a lot"},
                                    {"pressure_tolerance_kbar": -1}, {"press": [1, 2]}])
def test_a_bad_target_or_tolerance_is_a_clear_error(params: dict) -> None:
    with pytest.raises(ValueError, match="press"):
        check(parse(LOW_CUTOFF.read_text()), params)


def test_the_target_pressure_reaches_the_pw_input() -> None:
    import yaml
    from ase.build import bulk

    table = yaml.safe_load((DATA.parents[1] / "config" / "pseudopotentials.yaml").read_text())
    files = PLUGIN.render_inputs(bulk("Si", "diamond", a=5.431), "OPT",
                                 {"pseudopotentials": table, "press": 15})
    assert read_namelists(files["pw.in"])["cell"]["press"] == 15.0
    plain = PLUGIN.render_inputs(bulk("Si", "diamond", a=5.431), "OPT", {"pseudopotentials": table})
    assert "press" not in read_namelists(plain["pw.in"])["cell"]


@pytest.mark.parametrize("params", [{"press": "high"}, {"pressure_tolerance_kbar": -5}])
def test_a_bad_pressure_setting_is_refused_before_any_job_runs(params: dict) -> None:
    import yaml
    from ase.build import bulk

    table = yaml.safe_load((DATA.parents[1] / "config" / "pseudopotentials.yaml").read_text())
    with pytest.raises(ValueError, match="press"):
        PLUGIN.render_inputs(bulk("Si", "diamond", a=5.431), "OPT",
                             {"pseudopotentials": table, **params})
