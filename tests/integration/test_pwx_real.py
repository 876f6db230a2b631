"""Real pw.x, bands.x and dos.x runs on inputs rendered by eventflow.codes.qe.inputs.

Silicon with Si.pz-vbc.UPF (gunzipped from the QE examples that Debian's
quantum-espresso-data installs) at a tiny cutoff, so each run takes about a second.
The failures are provoked the way the aiida-quantumespresso fixtures were
(electron_maxstep=2, a tiny max_seconds, a small nstep) or by breaking the input
(missing pseudopotential, missing .save directory, a misspelled variable, two atoms
on top of each other, a run killed mid-SCF); the parser must name each one.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventflow.codes.base import ParseResult
from eventflow.codes.qe import PLUGIN
from eventflow.codes.qe.changes import apply_changes, read_namelists
from eventflow.codes.qe.inputs import structure_to_atoms
from eventflow.codes.qe.parse import parse, sanity_problems
from eventflow.codes.qe.patterns import PATTERNS
from tests.conftest import require
from tests.corpus.conftest import SHARED
from tests.corpus.test_qe_corpus import NO_REAL_TEXT, patterns_hit_by_corpus

pytestmark = pytest.mark.pwx

REPO = Path(__file__).resolve().parents[2]
PSEUDO = "Si.pz-vbc.UPF"
QUICK = {"ecutwfc": 12, "kpoint_density": 2.0, "conv_thr": 1e-8}


def _find_pseudo(name: str, target: Path) -> None:
    """Gunzip Debian's example copy of pseudopotential ``name`` into target, or copy the
    plain one quantum-espresso-data installs beside pw.x (share/espresso/pseudo)."""
    pwx = shutil.which("pw.x")
    require(pwx is not None, "pw.x not installed (apt-get install quantum-espresso)")
    assert pwx is not None
    prefix = Path(pwx).resolve().parents[1]
    examples = prefix / "share" / "doc" / "quantum-espresso" / "examples"
    zipped = sorted(examples.rglob(name + ".gz")) if examples.is_dir() else []
    plain = prefix / "share" / "espresso" / "pseudo" / name
    if zipped:
        (target / name).write_bytes(gzip.decompress(zipped[0].read_bytes()))
    else:
        require(plain.is_file(), f"{name} not found (apt-get install quantum-espresso-data)")
        shutil.copy(plain, target / name)


def _si(a: float = 5.43) -> Any:
    from ase.build import bulk

    return bulk("Si", "diamond", a=a)


class Runner:
    """Renders, runs and parses; every case runs once per module (results are cached)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pseudo_dir = root / "pseudo"
        self.pseudo_dir.mkdir()
        _find_pseudo(PSEUDO, self.pseudo_dir)
        self.table = yaml.safe_load((REPO / "config" / "pseudopotentials.yaml").read_text())
        self.cache: dict[str, dict[str, Any]] = {}
        self.env = dict(os.environ, OMP_NUM_THREADS="1")

    def params(self, outdir: str, **extra: Any) -> dict[str, Any]:
        return {
            "pseudopotentials": self.table,
            "pseudo_dir": str(self.pseudo_dir),
            "outdir": str(self.root / outdir),
            "prefix": "si",
            **QUICK,
            **extra,
        }

    def run(self, name: str, step: str, files: dict[str, str]) -> dict[str, Any]:
        """Run the programs of ``step`` on ``files`` in their own directory."""
        if name in self.cache:
            return self.cache[name]
        work = self.root / name
        work.mkdir()
        for file_name, text in files.items():
            (work / file_name).write_text(text)
        outputs: dict[str, str] = {}
        for executable, input_name, output_name in PLUGIN.run_sequence(step):
            with (work / output_name).open("w") as handle:
                subprocess.run(
                    [executable, "-in", input_name],
                    cwd=work,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    timeout=300,
                    check=False,
                )
            outputs[output_name] = (work / output_name).read_text(errors="replace")
        result = {
            "dir": work,
            "files": files,
            "outputs": outputs,
            "parse": parse(outputs[PLUGIN.main_output(step)]),
        }
        self.cache[name] = result
        return result

    def render_and_run(
        self,
        name: str,
        step: str,
        atoms: Any,
        params: dict[str, Any],
        changes: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if name in self.cache:
            return self.cache[name]
        files = PLUGIN.render_inputs(atoms, step, params)
        if changes:
            files = PLUGIN.apply_changes(files, changes)
        return self.run(name, step, files)

    # the cases --------------------------------------------------------------------------
    def scf(self) -> dict[str, Any]:
        return self.render_and_run("scf", "SP", _si(), self.params("si.out"))

    def band(self) -> dict[str, Any]:
        self.scf()
        return self.render_and_run("band", "BAND", _si(), self.params("si.out", band_npoints=20))

    def dos(self) -> dict[str, Any]:
        self.band()  # the nscf overwrites the wave functions, so run it after BAND
        return self.render_and_run("dos", "DOS", _si(), self.params("si.out"))

    def maxstep(self) -> dict[str, Any]:
        params = self.params("maxstep.out", electron_maxstep=2, conv_thr=1e-12)
        return self.render_and_run("maxstep", "SP", _si(), params)

    def walltime(self) -> dict[str, Any]:
        # pw.x compares max_seconds with the elapsed time at its first check inside the SCF;
        # the set-up alone of a 30 Ry, dense-grid run takes longer than 0.01 s.
        params = self.params("walltime.out", ecutwfc=30, kpoint_density=5.0, max_seconds=0.01)
        return self.render_and_run("walltime", "SP", _si(), params)

    def missing_pseudo(self) -> dict[str, Any]:
        table = yaml.safe_load(yaml.safe_dump(self.table))
        table["families"]["pz"]["Si"]["file"] = "Si.does-not-exist.UPF"
        params = {**self.params("nopp.out"), "pseudopotentials": table}
        return self.render_and_run("nopp", "SP", _si(), params)

    def missing_save(self) -> dict[str, Any]:
        (self.root / "empty.out").mkdir(exist_ok=True)
        return self.render_and_run("nosave", "BAND", _si(), self.params("empty.out"))

    def typo(self) -> dict[str, Any]:
        return self.render_and_run(
            "typo", "SP", _si(), self.params("typo.out"), changes={"system.ecutwfx": 12}
        )

    def overlap(self) -> dict[str, Any]:
        atoms = _si()
        atoms.positions[1] = atoms.positions[0] + [0.001, 0.0, 0.0]
        return self.render_and_run("overlap", "SP", atoms, self.params("overlap.out"))

    def nstep(self) -> dict[str, Any]:
        return self.render_and_run("nstep", "OPT", _si(5.7), self.params("nstep.out", nstep=1))

    def killed(self) -> dict[str, Any]:
        """A longer SCF, killed (SIGKILL, as by a scheduler) once its SCF loop has begun."""
        if "killed" in self.cache:
            return self.cache["killed"]
        files = PLUGIN.render_inputs(
            _si(), "SP", self.params("killed.out", ecutwfc=40, kpoint_density=8.0)
        )
        work = self.root / "killed"
        work.mkdir()
        for file_name, text in files.items():
            (work / file_name).write_text(text)
        out = work / "pw.out"
        with out.open("w") as handle:
            process = subprocess.Popen(
                ["pw.x", "-in", "pw.in"],
                cwd=work,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None:
                if "iteration #  1" in out.read_text(errors="replace"):
                    break
                time.sleep(0.05)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        text = out.read_text(errors="replace")
        self.cache["killed"] = {
            "dir": work,
            "files": files,
            "outputs": {"pw.out": text},
            "parse": parse(text),
        }
        return self.cache["killed"]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    require(
        shutil.which("pw.x") is not None, "pw.x not installed (apt-get install quantum-espresso)"
    )
    return Runner(tmp_path_factory.mktemp("pwx"))


def _last_bang_energy(text: str) -> float:
    energies = re.findall(r"^!\s+total energy\s+=\s+(\S+)\s+Ry", text, flags=re.MULTILINE)
    assert energies, "pw.x printed no '!' line"
    return float(energies[-1])


def test_scf_converges_and_parses(need_pwx: None, runner: Runner) -> None:
    run = runner.scf()
    result: ParseResult = run["parse"]
    text = run["outputs"]["pw.out"]
    assert (result.program or "").startswith("pw.x ")
    assert (result.calculation, result.status, result.error_kind) == ("SCF", "ok", None)
    assert result.energy == _last_bang_energy(text)
    assert result.energy_unit == "Ry"
    # Si, LDA, 4 valence electrons per atom: about -7.9 Ry per atom
    assert -8.5 < result.energy / 2 < -7.5
    assert sanity_problems(result) == []
    props = result.properties
    assert props["n_atoms"] == 2
    assert props["max_force_ev_per_ang"] < 1e-3  # atoms on their ideal diamond sites
    structure = structure_to_atoms(props["structure"])
    assert structure.cell.array == pytest.approx(_si().cell.array, abs=1e-5)
    assert structure.positions == pytest.approx(_si().positions, abs=1e-5)
    assert props["n_scf_iterations"] == len(re.findall(r"iteration #", text))


def test_band_structure_and_bands_x(need_pwx: None, runner: Runner) -> None:
    run = runner.band()
    result: ParseResult = run["parse"]
    assert (result.calculation, result.status) == ("BANDS", "ok")
    bands_x = parse(run["outputs"]["bands.out"])
    assert (bands_x.calculation, bands_x.status) == ("POSTPROC", "ok")
    assert (bands_x.program or "").startswith("bands.x ")
    header = (run["dir"] / "bands.dat").read_text().splitlines()[0]
    nbnd, nks = (int(x) for x in re.findall(r"\d+", header)[:2])
    assert nbnd == read_namelists(run["files"]["pw.in"])["system"]["nbnd"]
    printed = re.search(r"number of k points=\s*(\d+)", run["outputs"]["pw.out"])
    assert printed is not None and nks == int(printed.group(1))


def test_dos_and_dos_x(need_pwx: None, runner: Runner) -> None:
    run = runner.dos()
    result: ParseResult = run["parse"]
    assert (result.calculation, result.status) == ("NSCF", "ok")
    dos_x = parse(run["outputs"]["dos.out"])
    assert (dos_x.calculation, dos_x.status, dos_x.program[:5]) == ("POSTPROC", "ok", "dos.x")
    lines = (run["dir"] / "dos.dat").read_text().splitlines()
    fermi = float(re.search(r"EFermi\s*=\s*(\S+)", lines[0]).group(1))  # type: ignore[union-attr]
    assert result.properties["fermi_energy_ev"] == pytest.approx(fermi, abs=1e-3)
    nbnd = read_namelists(run["files"]["pw.in"])["system"]["nbnd"]
    integrated = float(lines[-1].split()[2])
    assert integrated == pytest.approx(2 * nbnd, abs=1e-2)  # spin-degenerate: 2 states a band


def test_projwfc_output_is_postprocessing(need_pwx: None, runner: Runner) -> None:
    """projwfc.x on the nscf run of the DOS step: read as a finished post-processing run."""
    run = runner.dos()
    (run["dir"] / "projwfc.in").write_text(
        f"&PROJWFC\n   prefix = 'si'\n   outdir = '{runner.root / 'si.out'}'\n/\n"
    )
    with (run["dir"] / "projwfc.out").open("w") as handle:
        subprocess.run(
            ["projwfc.x", "-in", "projwfc.in"],
            cwd=run["dir"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=runner.env,
            timeout=300,
            check=False,
        )
    result = parse((run["dir"] / "projwfc.out").read_text(errors="replace"))
    assert (result.program or "").startswith("projwfc.x ")
    assert (result.calculation, result.status, result.energy) == ("POSTPROC", "ok", None)


def test_iron_is_spin_polarised(need_pwx: None, runner: Runner) -> None:
    """Fe gets nspin=2 and the table's starting magnetisation; bcc Fe ends near 2.2 μB."""
    from ase.build import bulk

    _find_pseudo(runner.table["families"]["pz"]["Fe"]["file"], runner.pseudo_dir)
    params = runner.params("fe.out", ecutwfc=20, kpoint_density=1.5)
    run = runner.render_and_run("iron", "SP", bulk("Fe", "bcc", a=2.87), params)
    assert read_namelists(run["files"]["pw.in"])["system"]["nspin"] == 2
    result: ParseResult = run["parse"]
    assert (result.status, result.calculation) == ("ok", "SCF")
    assert 1.5 < result.properties["total_magnetization"] < 3.0
    assert "fermi_energy_ev" in result.properties


def test_electron_maxstep_gives_scf_not_converged(need_pwx: None, runner: Runner) -> None:
    result: ParseResult = runner.maxstep()["parse"]
    assert (result.status, result.error_kind) == ("error", "scf_not_converged")
    assert "convergence NOT achieved after   2 iterations" in result.errors[0].text
    assert result.energy is None
    assert any("no total energy" in r for r in sanity_problems(result))


def test_policy_change_recovers_the_failed_scf(need_pwx: None, runner: Runner) -> None:
    """apply_changes on the real failed input: more SCF steps, then pw.x converges."""
    failed = runner.maxstep()
    files = apply_changes(
        failed["files"],
        {
            "electrons.electron_maxstep": 100,
            "electrons.conv_thr": 1e-8,
            "control.outdir": str(runner.root / "recover.out"),
        },
    )
    result: ParseResult = runner.run("recovered", "SP", files)["parse"]
    assert (result.status, result.calculation) == ("ok", "SCF")
    assert result.energy == pytest.approx(runner.scf()["parse"].energy, abs=1e-5)


def test_max_seconds_gives_walltime(need_pwx: None, runner: Runner) -> None:
    run = runner.walltime()
    result: ParseResult = run["parse"]
    assert "Maximum CPU time exceeded" in run["outputs"]["pw.out"]
    assert (result.status, result.error_kind) == ("error", "walltime")
    assert result.errors[0].text == "Maximum CPU time exceeded"


def test_restart_from_the_charge_density_needs_fewer_iterations(
    need_pwx: None, runner: Runner
) -> None:
    first = runner.render_and_run("restart_first", "SP", _si(), runner.params("restart.out"))
    again = runner.render_and_run(
        "restart_again",
        "SP",
        _si(),
        runner.params("restart.out", startingpot="file", startingwfc="file"),
    )
    assert first["parse"].status == again["parse"].status == "ok"
    assert "The initial density is read from file" in again["outputs"]["pw.out"]
    assert "Starting wfcs from file" in again["outputs"]["pw.out"]
    assert (
        again["parse"].properties["n_scf_iterations"]
        < first["parse"].properties["n_scf_iterations"]
    )
    assert again["parse"].energy == pytest.approx(first["parse"].energy, abs=1e-6)


def test_missing_pseudopotential(need_pwx: None, runner: Runner) -> None:
    result: ParseResult = runner.missing_pseudo()["parse"]
    assert (result.status, result.error_kind) == ("error", "missing_file")
    assert result.errors[0].pattern == "missing_pseudopotential"
    assert "Si.does-not-exist.UPF" in result.errors[0].text


def test_band_step_without_the_scf_save(need_pwx: None, runner: Runner) -> None:
    result: ParseResult = runner.missing_save()["parse"]
    assert (result.calculation, result.status, result.error_kind) == (
        "BANDS",
        "error",
        "missing_file",
    )
    assert result.errors[0].pattern == "missing_save"


def test_misspelled_variable_is_an_input_error(need_pwx: None, runner: Runner) -> None:
    result: ParseResult = runner.typo()["parse"]
    assert (result.status, result.error_kind) == ("error", "input_error")
    assert "ecutwfx" in result.errors[0].text


def test_atoms_on_top_of_each_other_are_unphysical(need_pwx: None, runner: Runner) -> None:
    """pw.x converges and says JOB DONE, but the energy is positive and the forces
    overflow their Fortran field (printed as asterisks)."""
    run = runner.overlap()
    result: ParseResult = run["parse"]
    assert "JOB DONE." in run["outputs"]["pw.out"]
    assert result.energy == _last_bang_energy(run["outputs"]["pw.out"]) > 0
    assert (result.status, result.error_kind) == ("error", "unphysical_result")
    reasons = sanity_problems(result)
    assert any("exceeds 1000 eV/Å" in r for r in reasons)


def test_optimisation_hands_its_structure_to_the_next_step(need_pwx: None, runner: Runner) -> None:
    """A vc-relax of stretched Si shrinks the cell; an SCF on the handed-over structure
    sees less pressure than one on the starting structure."""
    stretched = _si(5.7)
    opt = runner.render_and_run("opt", "OPT", stretched, runner.params("opt.out"))
    result: ParseResult = opt["parse"]
    assert (result.calculation, result.status) == ("VC-RELAX", "ok")
    assert result.properties["structure_source"] == "final_coordinates"
    relaxed = structure_to_atoms(result.properties["structure"])
    assert relaxed.get_volume() < stretched.get_volume()
    before = runner.render_and_run("p_before", "SP", stretched, runner.params("pb.out"))
    after = runner.render_and_run("p_after", "SP", relaxed, runner.params("pa.out"))
    assert abs(after["parse"].properties["pressure_kbar"]) < abs(
        before["parse"].properties["pressure_kbar"]
    )


def test_nstep_reached_gives_geometry_not_converged(need_pwx: None, runner: Runner) -> None:
    run = runner.nstep()
    assert "The maximum number of steps has been reached." in run["outputs"]["pw.out"]
    result: ParseResult = run["parse"]
    assert (result.calculation, result.error_kind) == ("VC-RELAX", "geometry_not_converged")


def test_killed_run_is_truncated(need_pwx: None, runner: Runner) -> None:
    result: ParseResult = runner.killed()["parse"]
    assert "JOB DONE." not in runner.killed()["outputs"]["pw.out"]
    assert (result.calculation, result.status, result.error_kind) == ("SCF", "error", "truncated")


def test_real_runs_and_corpus_cover_the_whole_table(need_pwx: None, runner: Runner) -> None:
    """Every named pattern matches a real text: a run made here or a corpus file."""
    cases = (
        runner.scf,
        runner.maxstep,
        runner.walltime,
        runner.killed,
        runner.missing_pseudo,
        runner.missing_save,
        runner.typo,
        runner.overlap,
        runner.nstep,
    )
    hit = {f.pattern for case in cases for f in case()["parse"].errors}
    assert hit == {
        "scf_not_converged",
        "walltime",
        "truncated",
        "missing_pseudopotential",
        "missing_save",
        "input_error",
        "unphysical_result",
        "geometry_not_converged",
    }
    if not SHARED.is_dir():
        pytest.skip("charge_wrong's real text is only in the full shared corpus (../shared)")
    names = {p.name for p in PATTERNS}
    assert hit | patterns_hit_by_corpus() | NO_REAL_TEXT == names
