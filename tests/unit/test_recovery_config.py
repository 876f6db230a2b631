"""recovery.yaml: the shipped defaults load, bad files are refused with file and line, a
user's file overrides the defaults key by key, and resource units read as sbatch reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventflow.core.kinds import ERROR_KINDS, SCHEDULER_KINDS
from eventflow.core.recovery import (
    load_recovery_text,
    load_recovery_texts,
    merge,
    parse_recovery,
    units,
)
from eventflow.errors import ConfigError

DEFAULTS = Path(__file__).resolve().parents[2] / "config" / "recovery.yaml"
DEFAULT_TEXT = DEFAULTS.read_text()


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line holding the ``occurrence``-th ``needle``."""
    seen = 0
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in the text")


def refused(text: str, source: str = "mine.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        load_recovery_text(text, source)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the shipped defaults -------------------------------------------------------------------


def test_the_shipped_defaults_load_and_cover_the_issue_rules() -> None:
    rc = load_recovery_text(DEFAULT_TEXT, str(DEFAULTS))
    assert set(rc.slurm) == set(SCHEDULER_KINDS)
    qe = {"scf_not_converged", "diagonalization_failed", "bfgs_failed", "geometry_not_converged",
          "walltime", "charge_wrong", "input_error", "missing_file"}
    crystal = {"scf_not_converged", "geometry_not_converged", "kpoint_mesh", "atoms_too_close",
               "basis_linearly_dependent", "disk_full", "input_error", "missing_file"}
    assert qe <= set(rc.codes["qe"].rules)
    assert crystal <= set(rc.codes["crystal"].rules)
    for section in (*rc.codes.values(),):
        assert set(section.rules) <= ERROR_KINDS
    # escalate-at-once kinds have no stages and say what to do
    for code, kinds in (("qe", ("charge_wrong", "input_error", "missing_file")),
                        ("crystal", ("basis_linearly_dependent", "disk_full", "input_error"))):
        for kind in kinds:
            rule = rc.codes[code].rules[kind]
            assert rule.stages == () and len(rule.instructions) > 20
    assert rc.slurm["cancelled"].stages == ()
    assert rc.max_concurrent_recoveries >= 1 and rc.max_recoveries_per_material >= 1


def test_the_shipped_defaults_are_what_a_new_project_gets() -> None:
    from eventflow.resources import data_text

    assert data_text("config", "recovery.yaml") == DEFAULT_TEXT


def test_a_code_rule_overrides_the_scheduler_rule_of_the_same_kind() -> None:
    rc = load_recovery_text(DEFAULT_TEXT)
    assert rc.rule_for("qe", "walltime").section == "qe"
    assert rc.rule_for("crystal", "walltime").section == "slurm"
    assert rc.rule_for("crystal", "out_of_memory").section == "slurm"
    assert rc.rule_for("qe", "unphysical_result") is None
    assert rc.rule_for("some_other_code", "node_failure").section == "slurm"


# --- errors name the file and the line --------------------------------------------------------


def test_unknown_error_kind_names_file_and_line() -> None:
    text = "qe:\n  scf_not_convergd:\n    stages: []\n"
    message = refused(text)
    assert message.startswith("mine.yaml:2:")
    assert "unknown error kind 'scf_not_convergd'" in message


def test_unknown_correction_key_names_the_line() -> None:
    text = ("qe:\n  scf_not_converged:\n    stages:\n      - name: a\n"
            "        multiplyy: {electrons.electron_maxstep: 2}\n")
    message = refused(text)
    assert message.startswith("mine.yaml:5:") and "unknown correction 'multiplyy'" in message


def test_unknown_parameter_is_an_unknown_correction() -> None:
    text = "crystal:\n  scf_not_converged:\n    stages:\n      - set: {FMIXXING: 50}\n"
    message = refused(text)
    assert message.startswith("mine.yaml:4:") and "unknown correction 'FMIXXING'" in message
    text = "qe:\n  scf_not_converged:\n    stages:\n      - set: {mixing_beta: 0.3}\n"
    assert "namelist variable" in refused(text)


@pytest.mark.parametrize("resource", ["mem", "time"])
def test_a_factor_below_one_for_memory_or_walltime_is_refused(resource: str) -> None:
    text = f"slurm:\n  out_of_memory:\n    stages:\n      - resources: {{{resource}: 0.8}}\n"
    message = refused(text)
    assert message.startswith("mine.yaml:4:") and "below 1" in message


def test_fewer_tasks_is_allowed() -> None:
    text = "slurm:\n  out_of_memory:\n    stages:\n      - resources: {ntasks: 0.5, mem: 1.2}\n"
    rule = load_recovery_text(text).slurm["out_of_memory"]
    assert dict(rule.stages[0].resources) == {"ntasks": 0.5, "mem": 1.2}


def test_a_cap_below_the_default_is_refused() -> None:
    text = "default_resources: {mem: 8G}\ncaps:\n  max_memory: 4G\n"
    message = refused(text)
    assert message.startswith(f"mine.yaml:{line_of(text, 'max_memory')}:")
    assert "below the default mem 8G" in message
    text = ("default_resources: {time: '02:00:00'}\nslurm:\n  walltime:\n"
            "    caps: {max_walltime: '01:00:00'}\n")
    assert "below the default time" in refused(text)


def test_other_mistakes_each_name_their_line() -> None:
    cases = {
        "slurm:\n  scf_not_converged: {}\n": (2, "not a scheduler-level kind"),
        "qe:\n  walltime:\n    exhausted: retry\n": (3, "expected one of escalate, give_up"),
        "qe:\n  walltime:\n    restart: nowhere\n": (3, "restart 'nowhere' is not defined"),
        "qe:\n  walltime:\n    delay: soon\n": (3, "duration 'soon'"),
        "limits:\n  max_concurrent_recoveries: 0\n": (2, "expected a whole number >= 1"),
        "bogus: 1\n": (1, "unknown section 'bogus'"),
        "slurm:\n  walltime:\n    stages:\n      - set: {x: 1}\n": (4, "code-specific"),
        "qe:\n  walltime:\n    stages: {a: 1}\n": (3, "expected a list of stages"),
        "caps:\n  max_memory: lots\n": (2, "memory 'lots'"),
    }
    for text, (line, words) in cases.items():
        message = refused(text)
        assert message.startswith(f"mine.yaml:{line}:"), (text, message)
        assert words in message, (text, message)


def test_invalid_yaml_names_the_line() -> None:
    message = refused("qe:\n  walltime: [unclosed\n")
    assert message.startswith("mine.yaml:") and "invalid YAML" in message


def test_without_line_numbers_the_error_still_names_file_and_place() -> None:
    with pytest.raises(ConfigError, match=r"^cfg\.yaml: qe\.walltime\.stages\[0\]\.resources"
                                          r"\.mem: factor 0\.5 is below 1"):
        parse_recovery({"qe": {"walltime": {"stages": [{"resources": {"mem": 0.5}}]}}},
                       "cfg.yaml")


def test_slurm_restart_must_exist_for_every_code() -> None:
    text = "qe:\n  restarts: {special: {control.restart_mode: restart}}\n" \
           "slurm:\n  walltime:\n    restart: special\n"
    assert "not defined in crystal.restarts" in refused(text)


# --- a user's file over the defaults ---------------------------------------------------------


def test_a_user_file_overrides_key_by_key() -> None:
    user = ("qe:\n  scf_not_converged:\n    max_retries: 2\n"
            "limits:\n  max_recoveries_per_material: 3\n")
    rc = load_recovery_texts(DEFAULT_TEXT, user)
    default = load_recovery_text(DEFAULT_TEXT)
    mine = rc.codes["qe"].rules["scf_not_converged"]
    assert mine.max_retries == 2
    assert mine.stages == default.codes["qe"].rules["scf_not_converged"].stages
    assert rc.max_recoveries_per_material == 3
    assert rc.max_concurrent_recoveries == default.max_concurrent_recoveries
    assert rc.codes["crystal"] == default.codes["crystal"]


def test_null_removes_a_code_override_so_the_scheduler_rule_applies() -> None:
    rc = load_recovery_texts(DEFAULT_TEXT, "qe:\n  walltime: null\n")
    assert rc.rule_for("qe", "walltime").section == "slurm"


def test_an_error_in_the_user_file_names_the_user_file_and_line() -> None:
    user = "# mine\nslurm:\n  out_of_memory:\n    stages:\n      - resources: {mem: 0.9}\n"
    with pytest.raises(ConfigError) as info:
        load_recovery_texts(DEFAULT_TEXT, user, user_source="project/config/recovery.yaml")
    assert str(info.value).startswith("project/config/recovery.yaml:5:")


def test_merge_replaces_lists_and_keeps_untouched_keys() -> None:
    defaults = {"a": {"b": 1, "c": [1, 2]}, "d": 4}
    assert merge(defaults, {"a": {"c": [3]}}) == {"a": {"b": 1, "c": [3]}, "d": 4}
    assert merge(defaults, {"a": {"b": None}}) == {"a": {"c": [1, 2]}, "d": 4}
    assert defaults == {"a": {"b": 1, "c": [1, 2]}, "d": 4}


# --- units as sbatch reads them ------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "seconds"), [
    ("01:00:00", 3600), ("48:00:00", 172800), ("90", 5400), (90, 5400), ("10:30", 630),
    ("1-12", 129600), ("2-00:30", 174600), ("1-00:00:01", 86401),
])
def test_walltime_forms_of_sbatch(spec: object, seconds: int) -> None:
    assert units.walltime_seconds(spec) == seconds


@pytest.mark.parametrize(("spec", "mb"), [
    ("2G", 2048), ("1500M", 1500), (1500, 1500), ("1.5G", 1536), ("1T", 1048576), ("4GB", 4096),
])
def test_memory_forms_of_sbatch(spec: object, mb: int) -> None:
    assert units.memory_mb(spec) == mb


def test_formats_read_back() -> None:
    for seconds in (60, 3600, 7261, 172800):
        assert units.walltime_seconds(units.format_walltime(seconds)) == seconds
    for mb in (1024, 1536, 65536, 1000):
        assert units.memory_mb(units.format_memory(mb)) == mb


@pytest.mark.parametrize("bad", ["", "abc", "1:2:3:4", "-5", "0", True])
def test_bad_walltimes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        units.walltime_seconds(bad)


def test_durations() -> None:
    assert [units.duration_seconds(v) for v in (0, 90, "90s", "10m", "2h", "1d", "00:02:00")] == [
        0, 90, 90, 600, 7200, 86400, 120]
    assert units.add_seconds("2024-05-01T23:59:00.000000Z", 120) == "2024-05-02T00:01:00.000000Z"


def test_a_default_made_invalid_by_the_user_names_the_default_line() -> None:
    """The user raised the default memory above the shipped cap: the cap is where it breaks."""
    with pytest.raises(ConfigError) as info:
        load_recovery_texts(DEFAULT_TEXT, "default_resources:\n  mem: 100G\n",
                            default_source="defaults.yaml", user_source="mine.yaml")
    assert str(info.value).startswith(f"defaults.yaml:{line_of(DEFAULT_TEXT, 'max_memory:')}:")
    assert "below the default mem 100G" in str(info.value)
