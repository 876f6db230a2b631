"""Properties of the recovery policy over random configurations and random failure histories.

Every example builds a valid recovery.yaml (as a mapping, through ``parse_recovery``),
then drives a material through a cycled sequence of outcomes (error kinds, unknown
failures, successes) exactly as the shell would: fold, decide, record the intents,
and end waits with ``due``.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventflow.core import commands as cmd
from eventflow.core import events as ev
from eventflow.core.kinds import ERROR_KINDS, SCHEDULER_KINDS
from eventflow.core.policy import PolicyConfig, decide
from eventflow.core.recovery import RecoveryConfig, due, parse_recovery, recover, units
from eventflow.core.recovery.plan import effective_resources
from eventflow.core.state import MaterialState, fold
from eventflow.core.workflow import BUILTIN, StepDef, Workflow
from tests.unit.test_recovery_policy import Material

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

QE_SET = {
    "electrons.mixing_beta": st.sampled_from([0.1, 0.2, 0.3, 0.7]),
    "electrons.mixing_mode": st.sampled_from(["plain", "local-TF", "TF"]),
    "electrons.diagonalization": st.sampled_from(["david", "ppcg", "cg"]),
    "ions.ion_dynamics": st.just("damp"),
}
QE_MULTIPLY = ["electrons.electron_maxstep", "system.degauss", "electrons.mixing_beta",
               "electrons.mixing_ndim"]
CRYSTAL_SET = {
    "FMIXING": st.integers(10, 90),
    "LEVSHIFT": st.lists(st.integers(0, 10), min_size=2, max_size=2),
    "ANDERSON": st.booleans(),
    "SHRINK": st.sampled_from(["isotropic", "denser"]),
}
CRYSTAL_MULTIPLY = ["MAXCYCLE", "MAXTRADIUS", "FMIXING"]
RESTARTS = {
    "qe": {"checkpoint": {"control.restart_mode": "restart"},
           "charge_density": {"electrons.startingpot": "file"}},
    "crystal": {"checkpoint": {"GUESSP": True}, "geometry": {"OPTGEOM_RESTART": True}},
}
PARAMETERS = {"qe": {"electrons.electron_maxstep": 100, "system.degauss": 0.02},
              "crystal": {"MAXCYCLE": 100, "MAXTRADIUS": 4.0}}


@st.composite
def stages(draw: Any, code: str | None) -> dict[str, Any]:
    stage: dict[str, Any] = {"max_retries": draw(st.integers(0, 3))}
    if code is not None and draw(st.booleans()):
        table = QE_SET if code == "qe" else CRYSTAL_SET
        keys = draw(st.lists(st.sampled_from(sorted(table)), max_size=2, unique=True))
        stage["set"] = {k: draw(table[k]) for k in keys}
    if code is not None and draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(QE_MULTIPLY if code == "qe" else CRYSTAL_MULTIPLY),
                             max_size=2, unique=True))
        stage["multiply"] = {k: draw(st.sampled_from([0.5, 0.8, 1.5, 2.0])) for k in keys}
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(["mem", "time", "ntasks"]), max_size=3, unique=True))
        stage["resources"] = {
            n: draw(st.sampled_from([1.0, 1.25, 1.5, 2.0, 3.0] if n != "ntasks"
                                    else [0.25, 0.5, 1.0, 2.0, 4.0])) for n in names}
    if draw(st.integers(0, 4)) == 0:
        stage["delay"] = draw(st.sampled_from([30, "2m", "01:00:00"]))
    if draw(st.booleans()):
        stage["exclude_failed_node"] = True
    return stage


@st.composite
def rules(draw: Any, code: str | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"stages": draw(st.lists(stages(code), max_size=4)),
                            "exhausted": draw(st.sampled_from(["escalate", "give_up"]))}
    if draw(st.booleans()):
        rule["max_retries"] = draw(st.integers(0, 6))
    restarts = ["none", *(RESTARTS[code] if code else ["checkpoint"])]
    rule["restart"] = draw(st.sampled_from(sorted(restarts)))
    if draw(st.integers(0, 3)) == 0:
        rule["delay"] = draw(st.sampled_from([0, 60, "5m"]))
    if draw(st.booleans()):
        rule["instructions"] = draw(st.sampled_from(["Look at the output.", ""]))
    return rule


@st.composite
def configs(draw: Any) -> RecoveryConfig:
    mem = draw(st.integers(256, 8192))
    minutes = draw(st.integers(1, 600))
    ntasks = draw(st.integers(1, 16))
    doc: dict[str, Any] = {
        "limits": {"max_recoveries_per_material": draw(st.integers(0, 8)),
                   "max_concurrent_recoveries": draw(st.integers(1, 5))},
        "default_resources": {"mem": f"{mem}M", "time": minutes, "ntasks": ntasks},
        "caps": {"max_memory": f"{mem * draw(st.integers(1, 4))}M",
                 "max_walltime": units.format_walltime(60 * minutes * draw(st.integers(1, 8))),
                 "max_cores": ntasks * draw(st.integers(1, 8))},
        "slurm": {k: draw(rules(None)) for k in draw(st.lists(
            st.sampled_from(sorted(SCHEDULER_KINDS)), max_size=4, unique=True))},
    }
    for code in ("qe", "crystal"):
        section: dict[str, Any] = {"restarts": RESTARTS[code], "parameters": PARAMETERS[code]}
        for kind in draw(st.lists(st.sampled_from(sorted(ERROR_KINDS)), max_size=6, unique=True)):
            section[kind] = draw(rules(code))
        doc[code] = section
    return parse_recovery(doc, "generated.yaml")


def workflows(draw_resources: dict[str, Any]) -> dict[str, Workflow]:
    out = dict(BUILTIN)
    out["res"] = Workflow("res", {"SP": StepDef("SP", resources=draw_resources),
                                  "AFTER": StepDef("AFTER", after_failed=("SP",))})
    return out


step_resources = st.fixed_dictionaries({}, optional={
    "mem": st.sampled_from(["512M", "2G", "100G"]),
    "time": st.sampled_from(["00:10:00", "02:00:00", "100:00:00"]),
    "ntasks": st.integers(1, 64),
})
outcomes = st.lists(st.sampled_from([*sorted(ERROR_KINDS), "ok", "weird failure"]),
                    min_size=1, max_size=6)


def drive(m: Material, sequence: list[str], limit: int = 400, prefix: bool = False) -> int:
    """Run the material: each requested attempt gets the next outcome (cycled). Returns the
    number of attempts run; fails if the policy would go on forever (unless ``prefix``: stop
    after ``limit`` attempts, a history still in progress)."""
    for i in range(limit):
        active = [c for c in m.state.calcs.values() if c.state == "requested"]
        if not active:
            waiting = m.state.state == "waiting" and m.state.wait_until
            if waiting and m.tick(m.state.wait_until):
                continue
            return i
        calc = active[0]
        outcome = sequence[i % len(sequence)]
        if outcome == "ok":
            m.succeed(calc.step)
        elif outcome == "weird failure":
            cid = m.run(calc.step)
            m.feed(ev.JobLost(cid, "1", "PREEMPTED", "the scheduler preempted it"))
        else:
            m.fail(outcome, calc.step)
    if prefix:
        return limit
    raise AssertionError(f"still running after {limit} attempts: retries are not bounded")


def rule_bound(rc: RecoveryConfig, code: str, kind: str) -> int:
    rule = rc.rule_for(code, kind)
    if rule is None:
        return 0
    total = sum(s.max_retries for s in rule.stages)
    return total if rule.max_retries is None else min(total, rule.max_retries)


def recoveries(m: Material) -> list[cmd.RecordRecovery]:
    return [c for c in m.commands if isinstance(c, cmd.RecordRecovery)]


@SETTINGS
@given(rc=configs(), code=st.sampled_from(["qe", "crystal"]),
       workflow=st.sampled_from(["single", "test", "res"]), res=step_resources, seq=outcomes)
def test_retries_are_bounded_and_escalations_have_reasons(
        rc: RecoveryConfig, code: str, workflow: str, res: dict[str, Any],
        seq: list[str]) -> None:
    config = PolicyConfig(workflows=workflows(res), recovery=rc, recover=recover)
    m = Material(config, code=code, workflow=workflow)
    drive(m, seq)
    resubmitted = [r for r in recoveries(m) if r.action in ("resubmit", "wait")]
    assert len(resubmitted) <= rc.max_recoveries_per_material
    per_kind = Counter((r.calculation_id.split("/")[1], r.error_kind) for r in resubmitted)
    for (_step, kind), n in per_kind.items():
        assert n <= rule_bound(rc, code, kind)
    for c in m.commands:
        if isinstance(c, cmd.Escalate):
            assert c.reason.strip() and "eventflow retry" in c.reason
        if isinstance(c, cmd.RecordRecovery):
            assert c.reason.strip()
    # a material never ends up with nothing to do and nobody told
    assert m.state.state in ("completed", "needs_attention", "ready", "running", "waiting")
    if m.state.state == "ready":
        assert not any(c.state == "requested" for c in m.state.calcs.values())


@SETTINGS
@given(rc=configs(), code=st.sampled_from(["qe", "crystal"]), res=step_resources, seq=outcomes)
def test_resources_stay_under_caps_and_never_shrink(rc: RecoveryConfig, code: str,
                                                    res: dict[str, Any], seq: list[str]) -> None:
    wfs = workflows(res)
    config = PolicyConfig(workflows=wfs, recovery=rc, recover=recover)
    m = Material(config, code=code, workflow="res")
    drive(m, seq)
    attempts = sorted(m.state.attempts("SP"), key=lambda c: c.attempt)
    previous = None
    for calc in attempts:
        eff = effective_resources(m.state, calc, rc, wfs)
        mem, time = units.memory_mb(eff["mem"]), units.walltime_seconds(eff["time"])
        if previous is not None:
            decided = previous[2].recovery
            rule = rc.rule_for(code, decided.error_kind)
            caps = rule.caps
            # memory and walltime never go down from one attempt to the next
            assert mem >= previous[0] and time >= previous[1]
            # and never above the cap, unless the step asked for more than the cap itself
            if caps.max_memory_mb is not None:
                assert mem <= max(caps.max_memory_mb, previous[0])
            if caps.max_walltime_s is not None:
                assert time <= max(caps.max_walltime_s, previous[1])
            if caps.max_cores is not None:
                assert int(eff["ntasks"]) <= max(caps.max_cores, int(previous[3]))
        previous = (mem, time, calc, eff["ntasks"])


@SETTINGS
@given(rc=configs(), code=st.sampled_from(["qe", "crystal"]), seq=outcomes,
       cut=st.integers(1, 40), what=st.sampled_from(["hold", "cancel", "complete"]),
       kind=st.sampled_from(sorted(ERROR_KINDS)))
def test_no_command_for_held_cancelled_or_done_materials(
        rc: RecoveryConfig, code: str, seq: list[str], cut: int, what: str, kind: str) -> None:
    config = PolicyConfig(workflows=dict(BUILTIN), recovery=rc, recover=recover)
    m = Material(config, code=code, workflow="single")
    drive(m, seq, limit=cut, prefix=True)
    if what == "complete" or m.state.state in ("completed", "cancelled"):
        m = Material(config, code=code, workflow="single")
        m.succeed()
        assert m.state.state == "completed"
    elif what == "hold":
        m.feed(ev.MaterialHeld("a human looks"), actor="user")
    else:
        for c in m.state.active_calcs():
            m.feed(ev.CalculationCancelled(c.id, "user"), actor="user")
        m.feed(ev.MaterialCancelled("user"), actor="user")
    assert m.state.state in ("held", "cancelled", "completed")
    latest = m.state.latest("SP")
    failure = ev.Recorded(9999, m.mid, m.state.version + 1,
                          ev.CalculationFailed(latest.id, kind), m.now(), {})
    assert decide(m.state, failure, config) == []
    assert recover(m.state, latest, failure, config) == []
    assert due(m.state, "2999-01-01T00:00:00.000000Z", config) == []


@SETTINGS
@given(rc=configs(), code=st.sampled_from(["qe", "crystal"]), seq=outcomes,
       kind=st.sampled_from(sorted(ERROR_KINDS)))
def test_decide_is_deterministic(rc: RecoveryConfig, code: str, seq: list[str],
                                 kind: str) -> None:
    config = PolicyConfig(workflows=dict(BUILTIN), recovery=rc, recover=recover)
    m = Material(config, code=code, workflow="single")
    drive(m, seq, limit=3, prefix=True)
    latest = m.state.latest("SP")
    if latest.state not in ("submitted", "running", "requested"):
        return
    rec = m.append(ev.CalculationFailed(latest.id, kind), "watcher")
    first = decide(m.state, rec, config)
    assert decide(m.state, rec, config) == first
    assert decide(fold(m.mid, m.records), rec, config) == first
    later = units.add_seconds(rec.recorded_at, 10**6)
    assert due(m.state, later, config) == due(fold(m.mid, m.records), later, config)


def _snapshot(state: MaterialState) -> dict[str, Any]:
    """Everything a folded state holds, copied out (states have no __eq__)."""
    values = {name: copy.deepcopy(getattr(state, name)) for name in MaterialState.__slots__
              if name != "calcs"}
    values["calcs"] = {cid: copy.deepcopy((c.as_dict(), c.recovery))
                       for cid, c in state.calcs.items()}
    return values


@SETTINGS
@given(rc=configs(), code=st.sampled_from(["qe", "crystal"]), seq=outcomes,
       cut=st.integers(0, 400))
def test_folding_on_from_a_kept_state_equals_folding_from_the_start(
        rc: RecoveryConfig, code: str, seq: list[str], cut: int) -> None:
    """Tracker.state folds on from a kept state: that must give the full fold, and leave
    the kept state as it was (it is folded on again later)."""
    config = PolicyConfig(workflows=dict(BUILTIN), recovery=rc, recover=recover)
    m = Material(config, code=code, workflow="test")  # two steps, A then B
    drive(m, seq, limit=12, prefix=True)
    assert len(m.records) > 2  # the policy ran: attempts were requested and folded
    for calc in [c for c in m.state.calcs.values() if c.state == "completed"]:
        m.append(ev.PropertiesExtracted(calc.id, {"energy": {"value": -1.0, "unit": "Ry"}}),
                 "watcher")
    cut = cut % (len(m.records) + 1)
    kept = fold(m.mid, m.records[:cut])
    before = _snapshot(kept)
    on = fold(m.mid, m.records[cut:], kept)
    assert _snapshot(on) == _snapshot(fold(m.mid, m.records))
    assert _snapshot(kept) == before
