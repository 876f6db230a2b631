"""The naming rule that groups imported job folders into materials and steps.

Names come from real conventions: ``mat_1_dia_opt_BULK_OPTGEOM``, ``Te2W_BULK_OPTGEOM_TZ``
and ``test3-RCSR-ums_BULK_OPTGEOM_TZ_symm_CRYSTAL_OPT_symm_PBE-D3_POB-TZVP-REV2`` are job
names of a CRYSTAL group's SLURM scripts and material-id tests in public repositories;
``NAME_sp``/``NAME_band``/``NAME_doss`` are that workflow's later steps; ``calcs/<material>/
<STEP>/<attempt>/pw.out`` is eventflow's own layout; the corpus file names are real too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eventflow.core.naming import (
    NamingRule,
    hill_formula,
    input_of,
    job_log,
    name_calculation,
    output_stem,
    rule_from_config,
    split_name,
)
from eventflow.errors import ConfigError

DEFAULT = Path(__file__).resolve().parents[2] / "config" / "naming.yaml"


@pytest.fixture(scope="module")
def rule() -> NamingRule:
    return rule_from_config(yaml.safe_load(DEFAULT.read_text()), str(DEFAULT))


@pytest.mark.parametrize(("name", "material", "step"), [
    ("mat_1_dia_opt_BULK_OPTGEOM", "mat_1_dia", "OPT"),
    ("1_dia_opt_BULK_OPTGEOM", "1_dia", "OPT"),
    ("Te2W_BULK_OPTGEOM_TZ", "Te2W", "OPT"),
    ("test3-RCSR-ums_BULK_OPTGEOM_TZ_symm_CRYSTAL_OPT_symm_PBE-D3_POB-TZVP-REV2",
     "test3-RCSR-ums", "OPT"),
    ("NaCl_sp", "NaCl", "SP"),
    ("NaCl_band", "NaCl", "BAND"),
    ("NaCl_doss", "NaCl", "DOS"),
    ("NaCl_SP", "NaCl", "SP"),
    ("c17_nio_afm_scf_TOO_MANY_CYCLES", "c17_nio_afm", "SP"),
    ("p14_tis2_band.prop", "p14_tis2", "BAND"),
    ("pw66_vcrelax_converged", "pw66", "OPT"),
])
def test_calculation_type_suffixes_are_stripped(rule: NamingRule, name: str, material: str,
                                                step: str) -> None:
    assert split_name(rule, name) == (material, step)


def test_a_name_without_a_step_is_the_material(rule: NamingRule) -> None:
    assert split_name(rule, "c14_mgo_elastcon") == ("c14_mgo_elastcon", None)
    # The first token is never a suffix: a material may be called "band".
    assert split_name(rule, "band") == ("band", None)
    assert split_name(rule, "sp_opt") == ("sp", "OPT")


def test_the_step_comes_from_the_name_then_the_input_then_the_parser(rule: NamingRule) -> None:
    assert name_calculation(rule, (), "NaCl_sp", "OPT", "BAND").step == "SP"
    assert name_calculation(rule, (), "p17_mgo_newk", "PROPERTIES", "DOS").step == "DOS"
    assert name_calculation(rule, (), "p22_boltztra_transport", "PROPERTIES").step == "PROPERTIES"
    assert name_calculation(rule, (), "pw73_tio2_relaxed", "VC-RELAX").step == "OPT"
    assert name_calculation(rule, (), "pw53_si_md", "MD").step == "MD"
    assert name_calculation(rule, (), "x", None).step == "CALC"


def test_eventflow_own_layout(rule: NamingRule) -> None:
    found = name_calculation(rule, ("proj", "calcs", "Si", "SP", "2"), "pw", "SCF")
    assert (found.material, found.step, found.attempt) == ("Si", "SP", 2)
    found = name_calculation(rule, ("calcs", "MgO", "BAND", "1"), "properties", "PROPERTIES")
    assert (found.material, found.step, found.attempt) == ("MgO", "BAND", 1)


def test_generic_file_names_take_the_folder_name(rule: NamingRule) -> None:
    found = name_calculation(rule, ("runs", "NaCl_opt"), "pw", "RELAX")
    assert (found.material, found.step, found.attempt) == ("NaCl", "OPT", None)
    found = name_calculation(rule, ("runs", "GaAs", "run"), "INPUT", "SCF")
    assert (found.material, found.step) == ("GaAs", "SP")


def test_material_ids_are_made_safe(rule: NamingRule) -> None:
    assert name_calculation(rule, (), "Na Cl(1)_opt", "OPT").material == "Na_Cl_1"


def test_files(rule: NamingRule) -> None:
    assert job_log(rule, "slurm-4242.out") == ("4242", None)
    assert job_log(rule, "slurm-4242.err") == ("4242", None)
    assert job_log(rule, "3_dia3_opt_BULK_OPTGEOM-4567.o") == ("4567", "3_dia3_opt_BULK_OPTGEOM")
    assert job_log(rule, "c14_hfs2_supercell_forces.o") is None
    assert output_stem(rule, "c14_hfs2_supercell_forces.o") == "c14_hfs2_supercell_forces"
    assert output_stem(rule, "p17_mgo_band.outp") == "p17_mgo_band"
    assert output_stem(rule, "NaCl.d12") is None
    assert input_of(rule, "NaCl_opt.d12") == ("crystal", "NaCl_opt")
    assert input_of(rule, "NaCl_band.d3") == ("crystal", "NaCl_band")
    assert input_of(rule, "INPUT") == ("crystal", "INPUT")
    assert input_of(rule, "pw.in") == ("qe", "pw")
    assert input_of(rule, "pw.out") is None


@pytest.mark.parametrize(("symbols", "formula"), [
    (["Si", "Si"], "Si2"),
    (["Na", "Cl"], "ClNa"),
    (["H", "O", "H"], "H2O"),
    (["O", "C", "H", "H", "H", "H"], "CH4O"),  # methanol: C, then H, then the rest
    (["O", "O", "C"], "CO2"),
])
def test_hill_formula(symbols: list[str], formula: str) -> None:
    assert hill_formula(symbols) == formula


@pytest.mark.parametrize(("doc", "message"), [
    ({"files": {"job_logs": ["slurm-(\\d+"]}}, "not a regular expression"),
    ({"files": {"job_logs": ["slurm-\\d+\\.out"]}}, "(?P<job>...)"),
    ({"naming": {"layouts": ["{material}/{kind}"]}}, "each part must be one of"),
    ({"naming": {"layouts": ["{step}/{attempt}"]}}, "has no {material}"),
    ({"naming": {"step_tokens": {"opt": "2OPT"}}}, "is not a step name"),
    ({"naming": {"stop_tokens": "bulk"}}, "expected a list"),
])
def test_bad_configuration_is_one_clear_error(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="my-naming.yaml") as info:
        rule_from_config(doc, "my-naming.yaml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_user_rule_is_honoured() -> None:
    rule = rule_from_config({"naming": {"separators": "-", "step_tokens": {"relax": "OPT"}}})
    assert split_name(rule, "GaAs-relax-final") == ("GaAs", "OPT")
    assert split_name(rule, "GaAs_relax") == ("GaAs_relax", None)
