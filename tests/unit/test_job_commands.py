"""How a code plugin's programs become job commands, and what steps hand to each other.

The contract is in eventflow.shell.handoff's docstring: QE's ``(program, input, output)``
entries keep running as ``program -in input > output``; CRYSTAL's mapping entries read the
deck on stdin; ``executables`` (config/crystal.yaml) names the real programs and
``launcher`` goes in front. No scheduler is needed: the job scripts are only written.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ase.build import bulk
from ase.io import write

from eventflow.codes.crystal import PLUGIN as CRYSTAL
from eventflow.codes.crystal import d12
from eventflow.codes.crystal import deck as deckmod
from eventflow.codes.crystal.corrections import scf_keywords_summary
from eventflow.codes.qe import PLUGIN as QE
from eventflow.core.jobscript import Command
from eventflow.errors import EventflowError
from eventflow.shell import jobs
from eventflow.shell.api import Tracker
from eventflow.shell.handoff import (
    checkpoints_of,
    handoff_of,
    job_commands,
    structure_of,
)
from tests.corpus.conftest import corpus_path
from tests.structures import nio_afm

OMP = ("env", "OMP_NUM_THREADS=1")


def test_qe_programs_still_run_with_dash_in_and_stdout() -> None:
    assert job_commands(QE, "BAND") == [
        Command(argv=(*OMP, "pw.x", "-in", "pw.in"), stdout="pw.out"),
        Command(argv=(*OMP, "bands.x", "-in", "bands.in"), stdout="bands.out"),
    ]


def test_crystal_reads_its_deck_on_stdin_under_the_launcher() -> None:
    """``srun Pcrystal < INPUT > crystal.out``: Pcrystal reads INPUT from the folder, the
    serial program from stdin; the same command serves both."""
    (command,) = job_commands(CRYSTAL, "OPT", {"crystal": "Pcrystal"}, ["srun"])
    assert command == Command(argv=("srun", *OMP, "Pcrystal"), stdin="INPUT",
                              stdout="crystal.out")
    assert command.render() == "ef_run srun env OMP_NUM_THREADS=1 Pcrystal <INPUT >crystal.out"


def test_properties_steps_run_the_properties_program() -> None:
    for step in ("BAND", "DOS"):
        (command,) = job_commands(CRYSTAL, step, {"properties": "/opt/crystal23/Pproperties"})
        assert command.argv == (*OMP, "/opt/crystal23/Pproperties")
        assert (command.stdin, command.stdout) == ("INPUT", "properties.out")


def test_without_configuration_the_program_name_is_run() -> None:
    (command,) = job_commands(CRYSTAL, "SP")
    assert command.argv == (*OMP, "crystal")


def test_an_executable_may_be_an_argv_list_and_a_launcher_a_command_line() -> None:
    container = ["apptainer", "exec", "crystal23.sif", "MPPcrystal"]
    (command,) = job_commands(CRYSTAL, "SP", {"crystal": container}, "mpirun -np 8")
    assert command.argv == ("mpirun", "-np", "8", *OMP, *container)


@pytest.mark.parametrize(("executables", "launcher", "message"), [
    ({"crystal": 7}, None, "executables.crystal: expected a program"),
    ({"crystal": ""}, None, "executables.crystal: expected a program"),
    (["crystal"], None, "executables: expected a mapping"),
    (None, {"srun": 1}, "launcher: expected an argv list"),
    (None, "srun 'unclosed", "launcher \"srun 'unclosed\""),
])
def test_bad_run_settings_are_one_line_errors(executables: object, launcher: object,
                                              message: str) -> None:
    with pytest.raises(EventflowError, match=message):
        job_commands(CRYSTAL, "SP", executables, launcher)  # type: ignore[arg-type]


def test_what_steps_hand_on() -> None:
    assert handoff_of(QE, "BAND") == [("out", "out", True)]
    assert checkpoints_of(QE, "SP") == [("out", "out")]
    assert handoff_of(CRYSTAL, "SP") == []  # its geometry comes from the OPT output
    assert handoff_of(CRYSTAL, "DOS") == [("fort.9", "fort.9", False)]
    assert checkpoints_of(CRYSTAL, "SP") == [("fort.9", "fort.20")]
    assert ("OPTINFO.DAT", "OPTINFO.DAT") in checkpoints_of(CRYSTAL, "OPT")


def test_a_handed_file_must_stay_in_the_job_folder() -> None:
    class Escaping:
        name = "escaping"

        def handoff(self, step: str) -> list[tuple[str, str]]:
            return [("../../etc/passwd", "x")]

    with pytest.raises(EventflowError, match="must stay inside the job folder"):
        handoff_of(Escaping(), "SP")


def test_recovery_changes_are_not_writer_parameters() -> None:
    """Upper-case keys (the recovery policy's MAXCYCLE, GUESSP) leave the rendered deck
    alone; apply_changes makes exactly those changes afterwards."""
    mgo = bulk("MgO", "rocksalt", a=4.21)
    plain = CRYSTAL.render_inputs(mgo, "SP", {"maxcycle": 10})
    with_changes = CRYSTAL.render_inputs(mgo, "SP", {"maxcycle": 10, "MAXCYCLE": 20,
                                                     "GUESSP": True})
    assert with_changes == plain
    changed = CRYSTAL.apply_changes(plain, {"MAXCYCLE": 20, "GUESSP": True})["INPUT"]
    summary = scf_keywords_summary(deckmod.parse_deck(changed))
    assert summary["MAXCYCLE"] == [[20]] and "GUESSP" in summary


def test_run_settings_are_the_shells_not_the_deck_writers() -> None:
    assert jobs.SHELL_PARAMS | set(jobs.CODE_RESOURCES) == d12.RUN_SETTINGS


def test_sp_after_opt_gets_the_optimised_cell_and_keeps_the_spins(tmp_path: Path) -> None:
    """The real NiO AFM optimisation (c17_nio_afm_opt_resubmit_converged.out) prints its
    final cell but no spins; the SP deck gets that cell and the initial ATOMSPIN."""
    real = corpus_path("crystal/c17_nio_afm_opt_resubmit_converged.out")
    folder = tmp_path / "calcs" / "nio" / "OPT" / "1"
    folder.mkdir(parents=True)
    (folder / "crystal.out").write_bytes(real.read_bytes())
    initial = tmp_path / "structure.xyz"
    write(initial, nio_afm(), format="extxyz")
    opt = SimpleNamespace(directory="calcs/nio/OPT/1", step="OPT")
    project = SimpleNamespace(root=tmp_path)
    atoms = structure_of(project, CRYSTAL, None, opt, initial)  # type: ignore[arg-type]
    final = CRYSTAL.parse(real.read_text(errors="replace")).properties["final_geometry"]
    assert atoms.cell.cellpar()[:3] == pytest.approx(
        [final["lattice"][k] for k in ("a", "b", "c")], abs=1e-6)
    assert list(atoms.get_initial_magnetic_moments()) == [1, -1, 0, 0]
    deck = CRYSTAL.render_inputs(atoms, "SP", {})["INPUT"]
    assert scf_keywords_summary(deckmod.parse_deck(deck))["ATOMSPIN"] == [[2], [1, 1, 2, -1]]


def test_crystal_yaml_run_settings_reach_the_job_script(tmp_path: Path) -> None:
    """executables, launcher and modules from the project's crystal.yaml; the deck
    writer sees none of them (it would refuse an unknown parameter)."""
    with Tracker.init(tmp_path / "proj") as tracker:
        config = tracker.project.root / "config" / "crystal.yaml"
        settings = yaml.safe_load(config.read_text())
        settings.update(executables={"crystal": "/opt/crystal23/bin/Pcrystal"},
                        launcher=["srun", "--mpi=pmix"], modules=["CRYSTAL/23"])
        config.write_text(yaml.safe_dump(settings))
        structure = tmp_path / "MgO.cif"
        write(structure, bulk("MgO", "rocksalt", a=4.21))
        mid = tracker.create_material(structure, material_id="mgo", workflow="scf_only",
                                      code="crystal")
        state = tracker.state(mid)
        writer = jobs.JobWriter(tracker.project, tracker.policy)
        script, prepared = writer.write(state, state.calcs[f"{mid}/SP/1"])
    text = script.read_text()
    assert "module load CRYSTAL/23 " in text
    assert ("ef_run srun --mpi=pmix env OMP_NUM_THREADS=1 /opt/crystal23/bin/Pcrystal "
            "<INPUT >crystal.out") in text
    deck = (script.parent / "INPUT").read_text()
    assert deckmod.parse_deck(deck).geometry.kind == "CRYSTAL"
    assert set(prepared.files) == {"INPUT"} and prepared.handed == {}


def test_a_restart_copies_the_wave_function_to_fort20_with_its_checksum(tmp_path: Path) -> None:
    """The failed SP's fort.9 becomes the next attempt's fort.20 (what GUESSP reads). The
    corpus has no real fort.9 (binary, never collected), so a few bytes stand for one:
    this is about the copy and its record, not about the file's content."""
    from eventflow.core import events as ev
    from eventflow.shell.handoff import tree_checksum

    with Tracker.init(tmp_path / "proj") as tracker:
        structure = tmp_path / "NiO.xyz"
        write(structure, nio_afm(), format="extxyz")
        mid = tracker.create_material(structure, material_id="nio", workflow="scf_only",
                                      code="crystal", params={"maxcycle": 10})
        writer = jobs.JobWriter(tracker.project, tracker.policy)
        first = tracker.state(mid).calcs[f"{mid}/SP/1"]
        writer.write(tracker.state(mid), first)
        wavefunction = tracker.project.root / first.directory / "fort.9"
        wavefunction.write_bytes(b"stands for the binary wave function of SP/1\n")
        tracker.append(mid, [ev.JobSubmitted(first.id, "1"), ev.JobFinished(first.id, "1", 0),
                             ev.CalculationFailed(first.id, "scf_not_converged", [],
                                                  "crystal/1")])
        state = tracker.state(mid)
        second = state.calcs[f"{mid}/SP/2"]  # the recovery policy asked for it
        script, prepared = writer.write(state, second)
    copied = script.parent / "fort.20"
    assert copied.read_bytes() == wavefunction.read_bytes()
    assert prepared.handed == {"fort.20": {"from": first.id, "source": "fort.9",
                                           "sha256": tree_checksum(copied)}}
    assert "GUESSP" in scf_keywords_summary(deckmod.parse_deck(
        (script.parent / "INPUT").read_text()))
