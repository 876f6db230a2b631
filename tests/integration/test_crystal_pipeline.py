"""CRYSTAL through the whole pipeline on the real SLURM cluster, on real CRYSTAL text.

CRYSTAL cannot be installed here, so config/crystal.yaml's ``executables`` point at
tests/standin/crystal, which reads the deck on stdin like the serial programs and
replays a real corpus output chosen by the test's replay table (see its docstring).
Everything else is the real thing: eventflow writes the decks, sbatch runs the job
scripts, the scripts write their completion records, ``eventflow watch --once`` turns
them into events, the CRYSTAL parser reads the outputs, the recovery policy decides,
and the next jobs are written from what the earlier ones left.

Expected values come from TRUTH.tsv (energies, band gaps, error kinds) and from the
corpus files themselves (the optimised geometry, the companion files). The corpus has
no fort.9 (wave functions are binary and were not collected), so the stand-in writes
none, and the tests check that its absence is recorded rather than a copy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from ase.build import bulk
from ase.io import write

from eventflow.codes.crystal import PLUGIN, d12
from eventflow.codes.crystal import deck as deckmod
from eventflow.codes.crystal.corrections import scf_keywords_summary
from tests.corpus.conftest import corpus_path, truth_rows
from tests.integration.helpers import eventflow, slurm_project, unique
from tests.structures import nio_afm

pytestmark = pytest.mark.slurm

STANDIN = Path(__file__).resolve().parents[1] / "standin" / "crystal"
DONE = ("completed", "needs_attention", "cancelled")

MGO_OPT = "crystal/c17_mgo_sto3g_opt_converged.out"
MGO_SP = "crystal/c17_mgo_sto3g_scf_converged.out"
MGO_BAND = "crystal/p17_mgo_band.outp"
MGO_DOSS = "crystal/p17_mgo_newk_doss.outp"
# Companions written by the same real runs (MANIFEST.tsv): the BAND.DAT of the band run
# and the fort.25 of the NEWK + DOSS run.
MGO_BAND_DAT = "crystal/p17_mgo_BAND.DAT"
MGO_DOSS_FORT25 = "crystal/p17_mgo_doss.fort25"
NIO_FAILED = "crystal/c17_nio_afm_scf_TOO_MANY_CYCLES.out"
NIO_RESTART = "crystal/c17_nio_afm_scf_restart_converged.out"


def truth(relative: str) -> dict[str, str]:
    rows = {r["file"]: r for r in truth_rows("crystal")}
    return rows[relative]


def corpus_bytes(relative: str) -> bytes:
    return corpus_path(relative).read_bytes()


def crystal_project(tmp_path: Path, rules: list[dict[str, Any]],
                    launcher: list[str] | None = None) -> Path:
    """A SLURM project whose CRYSTAL programs are the stand-in with this replay table."""
    project = slurm_project(tmp_path)
    table = project / "standin-replay.json"
    table.write_text(json.dumps({"rules": rules}, indent=1))
    config_path = project / "config" / "crystal.yaml"
    config = yaml.safe_load(config_path.read_text())
    standin = [str(STANDIN), "--replay", str(table)]
    config.update(executables={"crystal": standin, "properties": standin},
                  launcher=launcher or [])
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return project


def run_until_done(project: Path, mid: str, timeout: float = 600) -> dict[str, Any]:
    """``eventflow watch --once`` until the material is done; then ``show --json``."""
    deadline = time.monotonic() + timeout
    while True:
        eventflow(project, "watch", "--once", "--quiet")
        shown = json.loads(eventflow(project, "show", mid, "--json").stdout)
        if shown["material"]["state"] in DONE:
            return shown
        if time.monotonic() > deadline:
            raise AssertionError(f"{mid} not done after {timeout} s: {shown['calculations']}")
        time.sleep(1)


def events_of(shown: dict[str, Any], type_: str, calc_id: str | None = None) -> list[dict]:
    return [e["data"] for e in shown["events"] if e["type"] == type_
            and (calc_id is None or e["data"].get("calculation_id") == calc_id)]


def properties_of(shown: dict[str, Any], calc_id: str) -> dict[str, float]:
    return {p["name"]: p["value"] for p in shown["properties"] if p["calculation_id"] == calc_id}


def test_mgo_opt_sp_band_dos_through_slurm(tmp_path: Path, need_slurm: None) -> None:
    """MgO OPT -> SP -> BAND + DOS: four sbatch jobs, each replaying the real MgO output
    of its kind, run under ``srun`` (the launcher from crystal.yaml). The material ends
    completed with TRUTH.tsv's energies and gaps, and each step starts from what the one
    before left: SP's deck carries the optimised cell printed by the OPT output."""
    rules = [
        {"program": "properties", "when": ["BAND"], "output": MGO_BAND,
         "files": {"BAND.DAT": MGO_BAND_DAT}},
        {"program": "properties", "when": ["DOSS"], "output": MGO_DOSS,
         "files": {"fort.25": MGO_DOSS_FORT25}},
        {"program": "crystal", "when": ["OPTGEOM"], "output": MGO_OPT},
        {"program": "crystal", "output": MGO_SP},
    ]
    project = crystal_project(tmp_path, rules, launcher=["srun"])
    structure = tmp_path / "MgO.cif"
    write(structure, bulk("MgO", "rocksalt", a=4.21))
    mid = unique("mgo")
    eventflow(project, "add", str(structure), "--id", mid, "--code", "crystal",
              "--workflow", "full_characterization")
    shown = run_until_done(project, mid)

    assert shown["material"]["state"] == "completed", shown["material"]
    calcs = {c["id"]: c for c in shown["calculations"]}
    ids = {step: f"{mid}/{step}/1" for step in ("OPT", "SP", "BAND", "DOS")}
    assert set(calcs) == set(ids.values())  # one attempt each: nothing failed
    assert all(c["state"] == "completed" for c in calcs.values())

    replayed = {"OPT": MGO_OPT, "SP": MGO_SP, "BAND": MGO_BAND, "DOS": MGO_DOSS}
    for step, relative in replayed.items():
        folder = project / "calcs" / mid / step / "1"
        output = folder / PLUGIN.main_output(step)
        assert output.read_bytes() == corpus_bytes(relative), step  # through the job, intact
        script = (folder / "job.sh").read_text()
        assert f"ef_run srun env OMP_NUM_THREADS=1 {STANDIN} --replay" in script
        assert f"<INPUT >{PLUGIN.main_output(step)}" in script, step
        expected = truth(relative)
        props = properties_of(shown, ids[step])
        assert props["band_gap_ev"] == pytest.approx(float(expected["band_gap_ev"]), abs=1e-4)
        if expected["energy_ev"]:
            assert props["total_energy_ev"] == pytest.approx(float(expected["energy_ev"]),
                                                             rel=1e-6)

    # OPT -> SP: the SP deck is written on the optimised cell the OPT output printed.
    opt_result = PLUGIN.parse(corpus_bytes(MGO_OPT).decode(errors="replace"))
    optimised = d12.atoms_from_geometry(opt_result.properties["final_geometry"])
    sp_deck = (project / "calcs" / mid / "SP" / "1" / "INPUT").read_text()
    sp_atoms = d12.atoms_from_deck(deckmod.validate(sp_deck))
    per_atom = optimised.get_volume() / len(optimised)
    assert sp_atoms.get_volume() / len(sp_atoms) == pytest.approx(per_atom, rel=1e-5)
    assert bulk("MgO", "rocksalt", a=4.21).get_volume() / 2 > 1.2 * per_atom  # it did change

    # SP -> BAND, DOS: the wave function is asked for; the stand-in left none (the corpus
    # has no fort.9), and the log says so instead of recording a copy.
    for step in ("BAND", "DOS"):
        prepared = events_of(shown, "InputsPrepared", ids[step])
        assert prepared[0]["handed"] == {"fort.9": {"from": ids["SP"], "missing": True}}
        assert not (project / "calcs" / mid / step / "1" / "fort.9").exists()
    band_folder = project / "calcs" / mid / "BAND" / "1"
    dos_folder = project / "calcs" / mid / "DOS" / "1"
    assert (band_folder / "BAND.DAT").read_bytes() == corpus_bytes(MGO_BAND_DAT)
    assert (dos_folder / "fort.25").read_bytes() == corpus_bytes(MGO_DOSS_FORT25)
    assert (band_folder / "INPUT").read_text().startswith("BAND\n")
    assert (dos_folder / "INPUT").read_text().startswith("NEWK\n")


def test_nio_scf_too_many_cycles_is_recovered_with_more_cycles_and_guessp(
    tmp_path: Path, need_slurm: None
) -> None:
    """NiO AFM SP with MAXCYCLE 10 (as in the real run) replays the real "SCF ENDED - TOO
    MANY CYCLES" output: scf_not_converged. The recovery policy (config/recovery.yaml)
    resubmits; the second deck is the first with exactly the decided changes (MAXCYCLE
    raised, GUESSP), and the second job replays the real GUESSP restart, which converges."""
    rules = [
        {"program": "crystal", "when": ["GUESSP"], "output": NIO_RESTART},
        {"program": "crystal", "output": NIO_FAILED},
    ]
    project = crystal_project(tmp_path, rules)
    structure = tmp_path / "NiO.xyz"
    write(structure, nio_afm(), format="extxyz")
    mid = unique("nio")
    eventflow(project, "add", str(structure), "--id", mid, "--code", "crystal",
              "--workflow", "scf_only", "--set", "maxcycle=10")
    shown = run_until_done(project, mid)

    first, second = f"{mid}/SP/1", f"{mid}/SP/2"
    calcs = {c["id"]: c for c in shown["calculations"]}
    assert shown["material"]["state"] == "completed", shown["material"]
    failed = truth(NIO_FAILED)
    assert (calcs[first]["state"], calcs[first]["error_kind"]) == ("failed",
                                                                   failed["error_kind"])
    assert calcs[second]["state"] == "completed"
    evidence = events_of(shown, "CalculationFailed", first)[0]["evidence"]
    assert any(failed["evidence"].strip() in e["text"] for e in evidence), evidence

    decision = events_of(shown, "RecoveryDecided", first)[0]
    assert (decision["error_kind"], decision["action"]) == ("scf_not_converged", "resubmit")
    assert decision["changes"]["MAXCYCLE"] > 10 and decision["changes"]["GUESSP"] is True
    request = events_of(shown, "SubmissionRequested", second)[0]
    assert request["restart_from"] == first and request["changes"] == decision["changes"]

    folder1 = project / "calcs" / mid / "SP" / "1"
    folder2 = project / "calcs" / mid / "SP" / "2"
    deck1, deck2 = (folder1 / "INPUT").read_text(), (folder2 / "INPUT").read_text()
    inputs1 = {"INPUT": deck1, "fort.34": (folder1 / "fort.34").read_text()}
    assert deck2 == PLUGIN.apply_changes(inputs1, decision["changes"])["INPUT"]
    assert (folder2 / "fort.34").read_text() == inputs1["fort.34"]  # same AFM geometry
    before = scf_keywords_summary(deckmod.parse_deck(deck1))
    after = scf_keywords_summary(deckmod.parse_deck(deck2))
    assert before["MAXCYCLE"] == [[10]] and after["MAXCYCLE"] == [[decision["changes"]
                                                                     ["MAXCYCLE"]]]
    assert "GUESSP" not in before and "GUESSP" in after
    assert {k: v for k, v in after.items() if k not in ("MAXCYCLE", "GUESSP")} == \
        {k: v for k, v in before.items() if k != "MAXCYCLE"}
    assert after["ATOMSPIN"] == [[2], [1, 1, 2, -1]]  # the AFM order is kept

    # GUESSP reads fort.20, copied from the failed attempt's fort.9 when there is one; the
    # corpus has no fort.9, so the stand-in wrote none and the log records it missing.
    prepared = events_of(shown, "InputsPrepared", second)[0]
    assert prepared["handed"] == {"fort.20": {"from": first, "source": "fort.9",
                                              "missing": True}}
    assert not (folder2 / "fort.20").exists()

    assert (folder2 / "crystal.out").read_bytes() == corpus_bytes(NIO_RESTART)
    props = properties_of(shown, second)
    assert props["total_energy_ev"] == pytest.approx(float(truth(NIO_RESTART)["energy_ev"]),
                                                     rel=1e-6)
    assert properties_of(shown, first) == {}

    # `eventflow show` tells it in order: failure, decision, the second job, success.
    lines = eventflow(project, "show", mid).stdout.splitlines()
    chapters = [("CalculationFailed", f"calculation_id={first} error_kind=scf_not_converged"),
                ("RecoveryDecided", "action=resubmit"),
                ("RecoveryDecided", f"'MAXCYCLE': {decision['changes']['MAXCYCLE']}"),
                ("JobSubmitted", f"calculation_id={second}"),
                ("CalculationSucceeded", f"calculation_id={second}"),
                ("MaterialCompleted", "")]
    found = [next((i for i, line in enumerate(lines) if kind in line and text in line), -1)
             for kind, text in chapters]
    assert -1 not in found and found == sorted(found), list(zip(chapters, found, strict=True))
