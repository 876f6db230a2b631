"""The default recovery rules, one table row each, on histories built from the real events.

Expected corrections are the issue's (mixing_beta 0.7 -> 0.3, then local-TF, ...), and
values multiplied by a rule are computed from the defaults they multiply (pw.x's
INPUT_PW defaults as the QE plugin records them, the renderer's degauss and the
CRYSTAL renderer's MAXCYCLE), not copied from the policy's output. Every history is
folded with ``core.state`` and decided with ``core.policy.decide``, as the shell does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eventflow.core import commands as cmd
from eventflow.core import events as ev
from eventflow.core.intents import intent
from eventflow.core.policy import PolicyConfig, decide
from eventflow.core.recovery import (
    RecoveryConfig,
    due,
    load_recovery_text,
    load_recovery_texts,
    recover,
    review,
    units,
)
from eventflow.core.state import MaterialState, apply
from eventflow.core.workflow import BUILTIN, StepDef, Workflow

DEFAULTS_TEXT = (Path(__file__).resolve().parents[2] / "config" / "recovery.yaml").read_text()
T0 = "2024-05-01T10:00:00.000000Z"


def policy(rc: RecoveryConfig | None = None, workflows: dict[str, Workflow] | None = None,
           ) -> PolicyConfig:
    return PolicyConfig(workflows=workflows or dict(BUILTIN),
                        recovery=rc or load_recovery_text(DEFAULTS_TEXT), recover=recover,
                        review=review)


class Material:
    """One material's log, folded as it grows; the policy's commands are recorded as the
    Tracker records them (their intent events, with actor 'policy')."""

    def __init__(self, config: PolicyConfig, code: str = "qe", workflow: str = "single",
                 params: dict[str, Any] | None = None, mid: str = "m1") -> None:
        self.config, self.mid = config, mid
        self.state = MaterialState(mid)
        self.records: list[ev.Recorded] = []
        self.commands: list[cmd.Command] = []
        self.feed(ev.MaterialRegistered(mid, "Si2", workflow, code, params=params or {}),
                  actor="user")

    def now(self) -> str:
        return units.add_seconds(T0, 60 * len(self.records))

    def append(self, event: ev.Event, actor: str, at: str | None = None) -> ev.Recorded:
        n = len(self.records) + 1
        rec = ev.Recorded(n, self.mid, n, event, at or self.now(), {"actor": actor})
        apply(self.state, rec)
        self.records.append(rec)
        return rec

    def record(self, commands: list[cmd.Command], at: str) -> list[cmd.Command]:
        self.commands += commands
        for command in commands:
            found = intent(command)
            if found is not None:
                self.append(found[0], "policy", at)
        return commands

    def feed(self, event: ev.Event, actor: str = "watcher") -> list[cmd.Command]:
        rec = self.append(event, actor)
        return self.record(decide(self.state, rec, self.config), rec.recorded_at)

    def tick(self, now: str) -> list[cmd.Command]:
        return self.record(due(self.state, now, self.config), now)

    def latest(self, step: str = "SP") -> Any:
        return self.state.latest(step)

    def run(self, step: str = "SP") -> str:
        calc = self.latest(step)
        assert calc.state == "requested", calc.state
        self.feed(ev.JobSubmitted(calc.id, str(1000 + len(self.records))))
        self.feed(ev.JobStarted(calc.id, "1", host="node7"))
        return calc.id

    def fail(self, kind: str, step: str = "SP") -> list[cmd.Command]:
        cid = self.run(step)
        return self.feed(ev.CalculationFailed(cid, kind, [{"line": 1, "text": kind}], "test/1"))

    def succeed(self, step: str = "SP", summary: dict[str, Any] | None = None,
                ) -> list[cmd.Command]:
        return self.feed(ev.CalculationSucceeded(self.run(step), "test/1", summary or {}))


def requests(commands: list[cmd.Command]) -> list[cmd.RequestStep]:
    return [c for c in commands if isinstance(c, cmd.RequestStep)]


def fail_until_escalated(m: Material, kind: str, step: str = "SP",
                         limit: int = 30) -> list[cmd.RequestStep]:
    """Fail ``step`` with ``kind`` until the policy stops resubmitting; the resubmissions."""
    made: list[cmd.RequestStep] = []
    for _ in range(limit):
        out = m.fail(kind, step)
        waits = [c for c in out if isinstance(c, cmd.WaitUntil)]
        if waits:
            assert m.tick(units.add_seconds(waits[0].until, -1)) == []  # not before its time
            out = m.tick(waits[0].until)
        new = requests(out)
        if not new:
            return made
        made += new
    raise AssertionError(f"{kind}: still resubmitting after {limit} failures")


def last_escalation(m: Material) -> cmd.Escalate:
    found = [c for c in m.commands if isinstance(c, cmd.Escalate)]
    assert found, "no escalation"
    assert m.state.state == "needs_attention"
    return found[-1]


# Values the rules multiply, from the code plugins' own defaults.
def _qe_defaults() -> tuple[float, int]:
    from eventflow.codes.qe import changes, inputs

    return inputs.DEFAULTS["degauss"], int(changes.QE_DEFAULTS["electrons.electron_maxstep"])


def _crystal_maxcycle() -> int:
    from eventflow.codes.crystal import d12

    return int(d12.DEFAULTS["maxcycle"])


def _crystal_maxtradius() -> float:
    from eventflow.codes.crystal import corrections

    return float(corrections.CRYSTAL_MAXTRADIUS)


# --- Quantum ESPRESSO ------------------------------------------------------------------------


def test_qe_scf_not_converged_mixing_then_local_tf_then_smearing_then_iterations() -> None:
    degauss, maxstep = _qe_defaults()
    m = Material(policy())
    made = fail_until_escalated(m, "scf_not_converged")
    restart = {"electrons.startingpot": "file"}
    step1 = {"electrons.mixing_beta": 0.3}
    step2 = {**step1, "electrons.mixing_mode": "local-TF"}
    step3 = {**step2, "system.degauss": pytest.approx(degauss * 1.5)}
    step4 = {**step3, "electrons.electron_maxstep": maxstep * 2}
    assert [r.changes for r in made] == [{**s, **restart} for s in (step1, step2, step3, step4)]
    # each restarts from the charge density of the attempt that just failed
    assert [r.restart_from for r in made] == [f"m1/SP/{n}" for n in (1, 2, 3, 4)]
    assert [r.attempt for r in made] == [2, 3, 4, 5]
    assert all(r.reason.startswith(f"recovery: scf_not_converged stage {i}")
               for i, r in enumerate(made, 1))
    assert "Check the structure" in last_escalation(m).reason


def test_qe_diagonalization_david_then_ppcg_then_cg() -> None:
    m = Material(policy())
    made = fail_until_escalated(m, "diagonalization_failed")
    assert [r.changes["electrons.diagonalization"] for r in made] == ["ppcg", "cg"]
    assert [r.restart_from for r in made] == [None, None]
    assert "diagonalization" in last_escalation(m).reason


def test_qe_bfgs_failed_smaller_trust_radius_then_damped_dynamics_from_last_structure() -> None:
    m = Material(policy())
    made = fail_until_escalated(m, "bfgs_failed")
    assert made[0].changes["ions.trust_radius_ini"] < 0.5  # pw.x's default trust_radius_ini
    assert made[1].changes["ions.ion_dynamics"] == "damp"
    assert made[1].changes["cell.cell_dynamics"] == "damp-w"
    for r in made:
        assert r.changes["structure"] == "last" and r.restart_from == f"m1/SP/{r.attempt - 1}"
    last_escalation(m)


def test_qe_geometry_not_converged_continues_from_the_last_structure_three_times() -> None:
    m = Material(policy())
    made = fail_until_escalated(m, "geometry_not_converged")
    assert len(made) == 3
    assert all(r.changes == {"structure": "last", "electrons.startingpot": "file"} for r in made)
    assert [r.restart_from for r in made] == ["m1/SP/1", "m1/SP/2", "m1/SP/3"]


def test_qe_walltime_restarts_with_twice_the_walltime() -> None:
    m = Material(policy())
    made = fail_until_escalated(m, "walltime")
    base = units.walltime_seconds(load_recovery_text(DEFAULTS_TEXT).default_resources["time"])
    assert [units.walltime_seconds(r.resources["time"]) for r in made] == [
        base * 2, base * 4, base * 8]
    assert all(r.changes == {"control.restart_mode": "restart"} for r in made)
    assert [r.restart_from for r in made] == ["m1/SP/1", "m1/SP/2", "m1/SP/3"]


def test_walltime_uses_the_workflow_steps_walltime_and_stops_at_the_cap() -> None:
    wf = {"long": Workflow("long", {"SP": StepDef("SP", resources={"time": "20:00:00"})})}
    m = Material(policy(workflows=wf), code="crystal", workflow="long")
    made = fail_until_escalated(m, "walltime")
    assert [r.resources["time"] for r in made] == ["40:00:00", "48:00:00"]  # cap 48 h
    assert all(r.changes == {"GUESSP": True} for r in made)  # the slurm rule, crystal's restart
    assert "already at the cap 48:00:00" in last_escalation(m).reason


@pytest.mark.parametrize("kind", ["charge_wrong", "input_error", "missing_file"])
def test_qe_kinds_that_escalate_at_once(kind: str) -> None:
    m = Material(policy())
    out = m.fail(kind)
    assert requests(out) == []
    record, escalate = out
    assert isinstance(record, cmd.RecordRecovery) and record.action == "escalate"
    assert isinstance(escalate, cmd.Escalate) and escalate.calculation_id == "m1/SP/1"
    rule = load_recovery_text(DEFAULTS_TEXT).codes["qe"].rules[kind]
    assert rule.instructions in escalate.reason
    assert "eventflow retry m1 --step SP" in escalate.reason


# --- CRYSTAL -------------------------------------------------------------------------------------


def test_crystal_scf_maxcycle_then_fmixing_then_levshift_then_anderson_with_guessp() -> None:
    m = Material(policy(), code="crystal")
    made = fail_until_escalated(m, "scf_not_converged")
    maxcycle = _crystal_maxcycle() * 2
    expected = [
        {"MAXCYCLE": maxcycle},
        {"MAXCYCLE": maxcycle, "FMIXING": 50},
        {"MAXCYCLE": maxcycle, "FMIXING": 70},
        {"MAXCYCLE": maxcycle, "FMIXING": 70, "LEVSHIFT": [5, 1]},
        {"MAXCYCLE": maxcycle, "FMIXING": 70, "LEVSHIFT": [5, 1], "ANDERSON": True},
    ]
    assert [r.changes for r in made] == [{**e, "GUESSP": True} for e in expected]
    assert all(r.restart_from == f"m1/SP/{r.attempt - 1}" for r in made)


def test_crystal_scf_uses_the_materials_own_maxcycle() -> None:
    m = Material(policy(), code="crystal", params={"maxcycle": 300})
    assert requests(m.fail("scf_not_converged"))[0].changes["MAXCYCLE"] == 600


def test_crystal_geometry_optgeom_restart_with_ever_smaller_maxtradius() -> None:
    m = Material(policy(), code="crystal", workflow="single")
    made = fail_until_escalated(m, "geometry_not_converged")
    start = _crystal_maxtradius()
    assert [r.changes["MAXTRADIUS"] for r in made] == [start / 2, start / 4, start / 8]
    assert all(r.changes["OPTGEOM_RESTART"] is True for r in made)


def test_crystal_kpoint_mesh_isotropic_then_denser_at_most_three_times() -> None:
    m = Material(policy(), code="crystal")
    made = fail_until_escalated(m, "kpoint_mesh")
    assert [r.changes for r in made] == [{"SHRINK": "isotropic"}, {"SHRINK": "denser"}]
    assert len(made) <= 3


def test_crystal_atoms_too_close_scales_the_cell_once_then_escalates() -> None:
    m = Material(policy(), code="crystal")
    made = fail_until_escalated(m, "atoms_too_close")
    assert [r.changes for r in made] == [{"SCALE_CELL": 1.02}]
    assert "overlapping" in last_escalation(m).reason


@pytest.mark.parametrize("kind", ["basis_linearly_dependent", "disk_full", "input_error"])
def test_crystal_kinds_that_escalate_at_once_with_instructions(kind: str) -> None:
    m = Material(policy(), code="crystal")
    assert requests(m.fail(kind)) == []
    reason = last_escalation(m).reason
    assert load_recovery_text(DEFAULTS_TEXT).codes["crystal"].rules[kind].instructions in reason


# --- SLURM -------------------------------------------------------------------------------------


def test_out_of_memory_one_and_a_half_times_the_memory_each_time() -> None:
    m = Material(policy(), code="crystal")
    made = fail_until_escalated(m, "out_of_memory")
    base = units.memory_mb(load_recovery_text(DEFAULTS_TEXT).default_resources["mem"])
    assert [units.memory_mb(r.resources["mem"]) for r in made] == [
        int(base * 1.5), int(base * 1.5 * 1.5), int(base * 1.5 ** 3)]
    assert all(r.changes == {} and r.restart_from is None for r in made)


def test_out_of_memory_never_above_the_cap() -> None:
    wf = {"big": Workflow("big", {"SP": StepDef("SP", resources={"mem": "40G"})})}
    m = Material(policy(workflows=wf), workflow="big")
    made = fail_until_escalated(m, "out_of_memory")
    assert [r.resources["mem"] for r in made] == ["60G", "64G"]
    assert "already at the cap 64G" in last_escalation(m).reason


def test_node_failure_waits_then_resubmits_once_as_is_elsewhere() -> None:
    m = Material(policy())
    out = m.fail("node_failure")
    record, wait = out
    assert isinstance(record, cmd.RecordRecovery) and record.action == "wait"
    assert isinstance(wait, cmd.WaitUntil)
    failed_at = m.records[-3].recorded_at  # the CalculationFailed, before the two intents
    assert wait.until == units.add_seconds(failed_at, 120)
    assert m.state.state == "waiting"
    assert m.tick(units.add_seconds(wait.until, -1)) == []
    (again,) = m.tick(wait.until)
    assert isinstance(again, cmd.RequestStep)
    assert again.changes == {} and again.resources == {"exclude_host_of": "m1/SP/1"}
    assert again.attempt == 2 and again.restart_from is None
    assert requests(m.fail("node_failure")) == []
    assert "node" in last_escalation(m).reason


def test_cancelled_by_a_user_is_never_resubmitted() -> None:
    m = Material(policy())
    assert requests(m.fail("cancelled")) == []
    assert "cancelled outside eventflow" in last_escalation(m).reason


def test_a_lost_job_is_classified_by_its_scheduler_state() -> None:
    m = Material(policy())
    cid = m.run()
    out = m.feed(ev.JobLost(cid, "7", "TIMEOUT", "no record"))
    (req,) = requests(out)
    assert req.resources["time"] == "02:00:00"
    assert req.changes == {"control.restart_mode": "restart"}


# --- history, not counters ---------------------------------------------------------------


def test_stages_are_counted_per_kind_from_the_history() -> None:
    m = Material(policy())
    first = requests(m.fail("scf_not_converged"))[0]
    wall = requests(m.fail("walltime"))[0]
    second = requests(m.fail("scf_not_converged"))[0]
    assert first.reason.startswith("recovery: scf_not_converged stage 1")
    assert wall.reason.startswith("recovery: walltime stage 1")
    assert second.reason.startswith("recovery: scf_not_converged stage 2")
    # corrections of both kinds carry on; the restart markers belong to one attempt only
    assert second.changes == {"electrons.mixing_beta": 0.3, "electrons.mixing_mode": "local-TF",
                              "electrons.startingpot": "file"}
    assert second.resources == {"time": "02:00:00"}


def test_a_correction_already_in_place_is_skipped() -> None:
    m = Material(policy(), params={"mixing_beta": 0.3})
    first = requests(m.fail("scf_not_converged"))[0]
    assert first.reason.startswith("recovery: scf_not_converged stage 2")


def test_max_recoveries_per_material_is_read_from_the_history() -> None:
    rc = load_recovery_text(DEFAULTS_TEXT.replace("max_recoveries_per_material: 12",
                                                  "max_recoveries_per_material: 2"))
    m = Material(policy(rc))
    assert requests(m.fail("scf_not_converged"))
    assert requests(m.fail("out_of_memory"))
    assert requests(m.fail("walltime")) == []
    assert "max_recoveries_per_material" in last_escalation(m).reason


def test_a_user_retry_is_not_counted_as_an_automatic_recovery() -> None:
    m = Material(policy())
    m.fail("input_error")
    m.feed(ev.SubmissionRequested("m1/SP/2", "SP", 2, changes={"system.ecutwfc": 40},
                                  reason="user retry"), actor="user")
    first = requests(m.fail("scf_not_converged"))[0]
    assert first.changes == {"system.ecutwfc": 40, "electrons.mixing_beta": 0.3,
                             "electrons.startingpot": "file"}


def test_a_retry_out_of_needs_attention_drops_the_old_reason() -> None:
    """Regression: status showed a retried, running material with the failure reason that
    had made it need attention."""
    m = Material(policy())
    m.fail("input_error")
    assert m.state.state == "needs_attention" and m.state.reason
    m.feed(ev.SubmissionRequested("m1/SP/2", "SP", 2, reason="user retry"), actor="user")
    assert (m.state.state, m.state.reason) == ("running", "")


def test_a_request_for_a_held_material_keeps_why_it_is_held() -> None:
    m = Material(policy())
    m.fail("input_error")
    m.feed(ev.MaterialHeld("held by a user for a check"), actor="user")
    m.feed(ev.SubmissionRequested("m1/SP/2", "SP", 2, reason="user retry"), actor="user")
    assert (m.state.state, m.state.reason) == ("held", "held by a user for a check")


def test_a_material_held_while_it_waited_keeps_why_it_is_held_when_the_wait_ends() -> None:
    """eventflow-sim --seed 10887: held during a recovery's wait, the material got the
    wait's resubmission and lost its hold's reason with the wait's."""
    m = Material(policy())
    cid = m.run()
    m.feed(ev.JobLost(cid, "7", "NODE_FAIL", "node_failure"))
    assert m.state.state == "waiting" and m.state.wait_until is not None
    m.feed(ev.MaterialHeld("held by a user"), actor="user")
    m.feed(ev.SubmissionRequested("m1/SP/2", "SP", 2, reason="recovery: node_failure"))
    assert (m.state.state, m.state.reason) == ("held", "held by a user")


def test_give_up_lets_the_after_failed_step_run() -> None:
    text = DEFAULTS_TEXT.replace("  charge_wrong:\n", "  charge_wrong:\n    exhausted: give_up\n")
    wf = {"fb": Workflow("fb", {"SP": StepDef("SP"),
                                "FALLBACK": StepDef("FALLBACK", after_failed=("SP",))})}
    m = Material(policy(load_recovery_text(text), wf), workflow="fb")
    out = m.fail("charge_wrong")
    assert isinstance(out[0], cmd.RecordRecovery) and out[0].action == "give_up"
    assert [(r.step, r.attempt) for r in requests(out)] == [("FALLBACK", 1)]
    assert m.state.state == "running"


def test_give_up_with_nothing_after_escalates() -> None:
    text = DEFAULTS_TEXT.replace("  charge_wrong:\n", "  charge_wrong:\n    exhausted: give_up\n")
    m = Material(policy(load_recovery_text(text)))
    m.fail("charge_wrong")
    assert "given up" in last_escalation(m).reason


def test_unknown_failure_escalates_with_a_reason() -> None:
    m = Material(policy())
    cid = m.run()
    m.feed(ev.JobLost(cid, "7", None, "marked lost by a user"))
    assert "no rule" in last_escalation(m).reason


def test_a_multiplied_parameter_with_no_known_value_is_left_to_the_plugin() -> None:
    text = DEFAULTS_TEXT.replace("        multiply: {electrons.electron_maxstep: 2}",
                                 "        multiply: {electrons.mixing_ndim: 2}")
    text = text.replace("        set: {electrons.mixing_beta: 0.3}",
                        "        multiply: {electrons.mixing_ndim: 1.5}")
    m = Material(policy(load_recovery_text(text)))
    made = fail_until_escalated(m, "scf_not_converged")
    assert made[0].changes["electrons.mixing_ndim"] == {"multiply": 1.5}
    assert made[-1].changes["electrons.mixing_ndim"] == {"multiply": 3.0}


# --- hands off -------------------------------------------------------------------------------


def test_no_command_for_a_held_material() -> None:
    m = Material(policy())
    cid = m.run()
    m.feed(ev.MaterialHeld("looking"), actor="user")
    assert m.feed(ev.CalculationFailed(cid, "scf_not_converged")) == []
    assert m.tick("2100-01-01T00:00:00.000000Z") == []
    # released: the failure that no decision answered is decided now
    m.feed(ev.MaterialReleased(), actor="user")
    later = m.tick(units.add_seconds(m.now(), 1))
    assert requests(later)[0].reason.startswith("recovery: scf_not_converged stage 1")


def test_no_command_for_a_cancelled_or_completed_material() -> None:
    m = Material(policy())
    cid = m.run()
    m.feed(ev.CalculationCancelled(cid, "x"), actor="user")
    m.feed(ev.MaterialCancelled("x"), actor="user")
    assert m.tick("2100-01-01T00:00:00.000000Z") == []
    done = Material(policy())
    done.succeed()
    assert done.state.state == "completed"
    assert done.tick("2100-01-01T00:00:00.000000Z") == []


def test_a_wait_is_not_ended_for_a_held_material() -> None:
    m = Material(policy())
    wait = [c for c in m.fail("node_failure") if isinstance(c, cmd.WaitUntil)][0]
    m.feed(ev.MaterialHeld("hands off"), actor="user")
    assert m.tick(wait.until) == []
    m.feed(ev.MaterialReleased(), actor="user")
    assert [r.attempt for r in requests(m.tick(wait.until))] == [2]


def test_decide_is_deterministic_and_the_fold_gives_the_same_answer() -> None:
    from eventflow.core.state import fold

    m = Material(policy())
    m.fail("scf_not_converged")
    m.fail("out_of_memory")
    cid = m.run()
    rec = m.append(ev.CalculationFailed(cid, "walltime"), "watcher")
    first = decide(m.state, rec, m.config)
    again = decide(fold("m1", m.records), rec, m.config)
    assert first == again and first


# --- real outputs: parse -> classify -> decide -> the corrected input ---------------------------
#
# Each row is a real output of the corpus (TRUTH.tsv gives its error kind). The parse's
# verdict is recorded as the CalculationFailed the watcher would append, the policy
# decides, and the first resubmission's changes are applied by the code plugin to
# inputs it rendered for a real structure: the test reads the exact change back.

STRUCTURES = Path(__file__).resolve().parents[1] / "data" / "structures"

REAL_CASES = [
    # (corpus file, parser, material code, step, expected first changes or None = escalate)
    ("qe/pw66_scf_convergence_NOT_achieved.out", "qe", "qe", "SP",
     {"electrons.mixing_beta": 0.3, "electrons.startingpot": "file"}),
    ("qe/pw66_relax_scf_NOT_converged.out", "qe", "qe", "OPT",
     {"electrons.mixing_beta": 0.3, "electrons.startingpot": "file"}),
    ("qe/pw61_vcrelax_bfgs_history_reset_failure.out", "qe", "qe", "OPT",
     {"ions.trust_radius_ini": 0.1, "ions.trust_radius_min": 0.0001, "structure": "last",
      "electrons.startingpot": "file"}),
    ("qe/pw66_relax_max_steps_reached.out", "qe", "qe", "OPT",
     {"structure": "last", "electrons.startingpot": "file"}),
    ("qe/pw66_vcrelax_max_steps_reached.out", "qe", "qe", "OPT",
     {"structure": "last", "electrons.startingpot": "file"}),
    ("qe/pw66_max_cpu_time_exceeded.out", "qe", "qe", "OPT", {"control.restart_mode": "restart"}),
    ("qe/pw73_wse2_charge_is_wrong.out", "qe", "qe", "SP", None),
    ("qe/pw74_input_error_atomic_species.out", "qe", "qe", "SP", None),
    ("qe/pw70_graphene_bands_FAILED_missing_save.out", "qe", "qe", "SP", None),
    ("crystal/c17_nio_afm_scf_TOO_MANY_CYCLES.out", "crystal", "crystal", "SP",
     {"MAXCYCLE": 200, "GUESSP": True}),
    ("crystal/c14_bcc_iron_opt_SCF_FAILED_optgeom_stop.out", "crystal", "crystal", "OPT",
     {"MAXCYCLE": 200, "GUESSP": True}),
    ("crystal/c17_mackinawite_opt_FAILED_100points.out", "crystal", "crystal", "OPT",
     {"MAXTRADIUS": 2.0, "OPTGEOM_RESTART": True}),
    ("crystal/c17_nio_afm_opt_killed_walltime_SIGTERM.out", "crystal", "crystal", "OPT",
     {"GUESSP": True}),
    ("crystal/c09_fe50_opt_then_properties_ERROR_wavefunction_not_found.out", "crystal",
     "crystal", "SP", None),
    ("slurm/slurm_stderr_time_limit_tqdm.e", "slurm", "qe", "SP",
     {"control.restart_mode": "restart"}),
    ("slurm/slurm_stderr_user_cancelled.e", "slurm", "qe", "SP", None),
    ("slurm/slurm_err_multi_job_cancelled.err", "slurm", "crystal", "SP", None),
]


def _truth_kind(relative: str) -> str:
    from tests.corpus.conftest import truth_rows

    rows = {r["file"]: r for r in truth_rows()}
    return rows[relative]["error_kind"]


def _parsed(relative: str, parser: str) -> Any:
    from tests.corpus.conftest import corpus_path

    path = corpus_path(relative)
    try:
        from eventflow.shell.parsing import parse_text, plugins
    except ImportError:
        pytest.skip("eventflow.shell.parsing is not available")
    if parser not in plugins():
        pytest.skip(f"the {parser} plugin is not installed yet")
    return parse_text(path.read_text(errors="replace"), parser, source=relative)


def _rendered(code: str, step: str) -> dict[str, str]:
    """Inputs the code plugin writes for silicon (the real renderer, real defaults)."""
    import yaml
    from ase.io import read

    from eventflow.shell.parsing import plugins

    atoms = read(str(STRUCTURES / "Si.cif"))
    params: dict[str, Any] = {}
    if code == "qe":
        table = Path(__file__).resolve().parents[2] / "config" / "pseudopotentials.yaml"
        params["pseudopotentials"] = yaml.safe_load(table.read_text())
    return plugins()[code].render_inputs(atoms, step, params)


@pytest.mark.parametrize(("relative", "parser", "code", "step", "expected"), REAL_CASES,
                         ids=[c[0] for c in REAL_CASES])
def test_real_failure_parse_classify_decide(relative: str, parser: str, code: str, step: str,
                                            expected: dict[str, Any] | None) -> None:
    result = _parsed(relative, parser)
    assert result.error_kind == _truth_kind(relative)
    workflow = {"w": Workflow("w", {step: StepDef(step)})}
    m = Material(policy(workflows=workflow), code=code, workflow="w")
    cid = m.run(step)
    evidence = [f.to_dict() for f in result.errors]
    out = m.feed(ev.CalculationFailed(cid, result.error_kind, evidence, result.parser))
    made = requests(out)
    if expected is None:
        assert made == []
        assert last_escalation(m).reason
        return
    assert made[0].changes == expected
    assert made[0].attempt == 2


def _apply(code: str, step: str, changes: dict[str, Any]) -> dict[str, str]:
    from eventflow.core.recovery.parse import SHELL_MARKERS
    from eventflow.shell.parsing import plugins

    if code not in plugins() or not hasattr(plugins()[code], "apply_changes"):
        pytest.skip(f"the {code} plugin has no apply_changes yet")
    # The runner takes the shell markers ("structure": "last") before the plugin sees them.
    plugin_changes = {k: v for k, v in changes.items() if k not in SHELL_MARKERS}
    return plugins()[code].apply_changes(_rendered(code, step), plugin_changes)


@pytest.mark.parametrize("relative", [c[0] for c in REAL_CASES if c[2] == "qe" and c[4]])
def test_real_qe_failure_gives_the_corrected_pw_input(relative: str) -> None:
    from eventflow.codes.qe.changes import read_namelists

    case = next(c for c in REAL_CASES if c[0] == relative)
    _parsed(relative, case[1])
    files = _apply("qe", case[3], case[4])
    namelists = read_namelists(files["pw.in"] if "pw.in" in files else next(iter(files.values())))
    for key, value in case[4].items():
        if key == "structure":
            continue
        namelist, variable = key.split(".")
        assert namelists[namelist][variable] == value, key


@pytest.mark.parametrize("relative", [c[0] for c in REAL_CASES if c[2] == "crystal" and c[4]])
def test_real_crystal_failure_gives_the_corrected_deck(relative: str) -> None:
    from eventflow.codes.crystal import deck as deckmod

    case = next(c for c in REAL_CASES if c[0] == relative)
    _parsed(relative, case[1])
    changes = dict(sorted(case[4].items()))  # the order the log gives them back in
    deck = deckmod.parse_deck(_apply("crystal", case[3], changes)["INPUT"])
    scf = {e.name: e.records for e in deck.scf_keywords}
    for key, value in case[4].items():
        if key == "MAXCYCLE":
            assert scf["MAXCYCLE"] == ((value,),)
        elif key == "GUESSP":
            assert "GUESSP" in scf
        elif key == "MAXTRADIUS":
            assert deck.optgeom.child("MAXTRADIUS").records == ((value,),)
        elif key == "OPTGEOM_RESTART":
            assert deck.optgeom.child("RESTART") is not None


# --- the numbers the shell's throttle uses ------------------------------------------------------


def test_recovery_slots_count_running_recovery_attempts_only() -> None:
    from eventflow.core.recovery import is_recovery_attempt, recovery_slots

    recovering = Material(policy(), mid="r1")
    recovering.fail("out_of_memory")
    recovering.run()  # attempt 2, the recovery, is now running
    plain = Material(policy(), mid="p1")
    plain.run()  # attempt 1 running: not a recovery
    retried = Material(policy(), mid="u1")
    retried.fail("input_error")
    retried.feed(ev.SubmissionRequested("u1/SP/2", "SP", 2, reason="user retry"), actor="user")
    retried.run()  # a user's retry after an escalation: not an automatic recovery
    states = [recovering.state, plain.state, retried.state]
    assert [is_recovery_attempt(s, s.latest("SP")) for s in states] == [True, False, False]
    assert recovery_slots(states, 3) == 2
    assert recovery_slots(states, 1) == 0
    assert recovery_slots(states, 0) == 0


# --- a vc-relax that succeeded off the target pressure (qe.residual_pressure) -----------------

RELAX_THEN_SCF = {"relax": Workflow("relax", {"OPT": StepDef("OPT"),
                                              "SP": StepDef("SP", after_ok=("OPT",))})}
RAISE_CUTOFF = """
qe:
  residual_pressure:
    stages:
      - name: raise the cutoff
        multiply: {system.ecutwfc: 1.5, system.ecutrho: 1.5}
        max_retries: 2
"""


def _low_cutoff_summary() -> dict[str, Any]:
    """What the shell records for the real diamond vc-relax at 30 Ry (tests/data/qe)."""
    from eventflow.codes.qe.parse import check, parse

    text = (Path(__file__).resolve().parents[1] / "data" / "qe"
            / "c_diamond_vcrelax_ecutwfc30.out").read_text()
    result = check(parse(text), {"ecutwfc": 30})
    return {"warnings": list(result.warnings),
            "residual_pressure_kbar": result.properties["residual_pressure_kbar"]}


def test_residual_pressure_by_default_keeps_the_result_and_goes_on() -> None:
    m = Material(policy(workflows=RELAX_THEN_SCF), workflow="relax", params={"ecutwfc": 30})
    out = m.succeed("OPT", _low_cutoff_summary())
    assert [(r.step, r.attempt) for r in requests(out)] == [("SP", 1)]
    assert m.latest("OPT").recovery is None


def test_residual_pressure_reruns_the_opt_at_a_higher_cutoff_when_switched_on() -> None:
    rc = load_recovery_texts(DEFAULTS_TEXT, RAISE_CUTOFF)
    m = Material(policy(rc, RELAX_THEN_SCF), workflow="relax", params={"ecutwfc": 30})
    made = requests(m.succeed("OPT", _low_cutoff_summary()))
    assert [(r.step, r.attempt) for r in made] == [("OPT", 2)]
    # the material's 30 Ry x 1.5; ecutrho (from the table) multiplied in the rendered input
    assert made[0].changes == {"system.ecutwfc": 45, "system.ecutrho": {"multiply": 1.5}}
    decision = m.state.calcs[f"{m.mid}/OPT/1"].recovery
    assert decision.error_kind == "residual_pressure" and decision.action == "resubmit"
    assert "-149.23 kbar off the target" in decision.reason
    made = requests(m.succeed("OPT", _low_cutoff_summary()))
    assert made[0].changes["system.ecutwfc"] == 68  # 45 x 1.5, rounded up
    assert made[0].changes["system.ecutrho"] == {"multiply": 2.25}
    # max_retries 2 used: the third result stands with its warning and the workflow goes on
    assert [(r.step, r.attempt) for r in requests(m.succeed("OPT", _low_cutoff_summary()))] \
        == [("SP", 1)]


def test_residual_pressure_reruns_at_once_even_with_a_delay() -> None:
    delayed = RAISE_CUTOFF.replace("    stages:", "    delay: 10m\n    stages:")
    rc = load_recovery_texts(DEFAULTS_TEXT, delayed)
    m = Material(policy(rc, RELAX_THEN_SCF), workflow="relax")
    out = m.succeed("OPT", _low_cutoff_summary())
    assert not [c for c in out if isinstance(c, cmd.WaitUntil)]
    assert [(r.step, r.attempt) for r in requests(out)] == [("OPT", 2)]


def test_a_vc_relax_at_the_target_pressure_goes_on_with_the_rule_switched_on() -> None:
    rc = load_recovery_texts(DEFAULTS_TEXT, RAISE_CUTOFF)
    m = Material(policy(rc, RELAX_THEN_SCF), workflow="relax")
    assert [(r.step, r.attempt) for r in requests(m.succeed("OPT", {"warnings": []}))] \
        == [("SP", 1)]


def test_the_raised_cutoff_reaches_the_pw_input() -> None:
    from eventflow.codes.qe.changes import read_namelists

    files = _apply("qe", "OPT", {"system.ecutwfc": 45, "system.ecutrho": {"multiply": 1.5}})
    system = read_namelists(files["pw.in"])["system"]
    plain = read_namelists(_rendered("qe", "OPT")["pw.in"])["system"]
    assert system["ecutwfc"] == 45
    assert system["ecutrho"] == pytest.approx(plain["ecutrho"] * 1.5)

# --- found by the simulator (eventflow-sim) -------------------------------------------------


def test_resubmit_decided_but_never_requested_is_requested_by_the_tick() -> None:
    """eventflow-sim --seed 1: the runner died between appending RecoveryDecided (resubmit)
    and the SubmissionRequested it implies; the material sat in ``ready`` for ever."""
    m = Material(policy())
    m.run()
    cid = m.latest().id
    rec = m.append(ev.CalculationFailed(cid, "scf_not_converged", [], "test/1"), "watcher")
    decided = decide(m.state, rec, m.config)
    assert [type(c) for c in decided] == [cmd.RecordRecovery, cmd.RequestStep]
    m.record(decided[:1], rec.recorded_at)  # the decision only: the process died here
    assert m.latest().id == cid
    assert m.state.state == "ready"
    out = m.tick(m.now())
    assert requests(out) == [decided[1]]
    assert m.latest().attempt == 2
    assert m.tick(m.now()) == []  # requested once


def test_escalation_decided_but_never_recorded_is_recorded_by_the_tick() -> None:
    """eventflow-sim --seed 6: the runner died between RecoveryDecided (escalate) and
    NeedsAttention; the material sat in ``ready`` with nobody told."""
    m = Material(policy())
    m.run()
    cid = m.latest().id
    rec = m.append(ev.CalculationFailed(cid, "truncated", [], "test/1"), "watcher")
    decided = decide(m.state, rec, m.config)
    assert [type(c) for c in decided] == [cmd.RecordRecovery, cmd.Escalate]
    m.record(decided[:1], rec.recorded_at)
    assert m.state.state == "ready"
    (again,) = m.tick(m.now())
    assert isinstance(again, cmd.Escalate)
    assert (again.reason, again.calculation_id) == (decided[1].reason, cid)
    assert m.state.state == "needs_attention"
    assert m.tick(m.now()) == []


def test_a_hold_and_release_does_not_forget_an_escalation() -> None:
    """eventflow-sim --seed 2407: a user held a material that needed attention and released
    it; it went to ``ready`` with nothing to do, and the escalation made again was swallowed
    by the first NeedsAttention's idempotency key."""
    m = Material(policy())
    escalated = m.fail("truncated")
    first = [c for c in escalated if isinstance(c, cmd.Escalate)][0]
    assert m.state.state == "needs_attention"
    m.feed(ev.MaterialHeld("a look"), actor="user")
    m.feed(ev.MaterialReleased("done looking"), actor="user")
    assert m.state.state == "ready"
    (again,) = m.tick(m.now())
    assert isinstance(again, cmd.Escalate) and again.reason == first.reason
    assert intent(again)[1] != intent(first)[1]  # a key of its own: it is recorded
    assert m.state.state == "needs_attention"
    assert m.tick(m.now()) == []


def test_success_whose_next_steps_were_never_requested_goes_on_at_the_tick() -> None:
    """A crash between CalculationSucceeded and the next step's SubmissionRequested."""
    m = Material(policy(), workflow="test")
    cid = m.run("A")
    rec = m.append(ev.CalculationSucceeded(cid, "test/1"), "watcher")
    follow = decide(m.state, rec, m.config)
    assert [c.step for c in requests(follow)] == ["B"]
    assert m.state.state == "ready"
    assert requests(m.tick(m.now())) == follow
    assert m.latest("B").state == "requested"
    assert m.tick(m.now()) == []


def test_a_give_up_whose_escalation_was_never_recorded_is_escalated_with_the_retry_hint() -> None:
    """Found by the property test (a rare configuration): a step given up with nothing after
    it, the runner dying before NeedsAttention; the tick made the escalation again from the
    decision's reason alone, which told the user neither that nothing follows nor how to
    retry. It now says what the first escalation said."""
    text = DEFAULTS_TEXT.replace("  charge_wrong:\n", "  charge_wrong:\n    exhausted: give_up\n")
    m = Material(policy(load_recovery_text(text)))
    m.run()
    cid = m.latest().id
    rec = m.append(ev.CalculationFailed(cid, "charge_wrong", [], "test/1"), "watcher")
    decided = decide(m.state, rec, m.config)
    assert [type(c) for c in decided] == [cmd.RecordRecovery, cmd.Escalate]
    m.record(decided[:1], rec.recorded_at)
    (again,) = m.tick(m.now())
    assert isinstance(again, cmd.Escalate)
    assert again.reason == decided[1].reason
    assert "eventflow retry" in again.reason and "Nothing in the workflow runs" in again.reason
