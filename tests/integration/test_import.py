"""``eventflow import`` on real outputs arranged as a user's tree, and the exports.

The corpus (bundled copies plus ../shared/corpus) is laid out the way a group keeps its
runs: one folder per job with NAME.out (or .outp/.o/.log as the file was named) and,
where the corpus has it, NAME.d12/.d3/.in beside it. Expectations come from TRUTH.tsv.
The corrupted files are made here (binary junk, a folder named like an output, symlink
loops) and say so. The running-job test submits a real job to SLURM; the round trip runs
real pw.x.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from eventflow.shell.api import Tracker
from eventflow.shell.import_plan import iso
from eventflow.shell.importer import ImportOptions, run_import
from tests.conftest import require
from tests.corpus.conftest import corpus_file, corpus_path, truth_rows

SI = Path(__file__).resolve().parents[1] / "data" / "structures" / "Si.cif"
CODES = ("crystal", "qe")


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "eventflow.shell.cli", *args],
                          capture_output=True, text=True, timeout=600, env=os.environ)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def arrange(tree: Path) -> dict[str, dict[str, str]]:
    """One job folder per TRUTH row (crystal and qe, files that exist): its output under
    its own name, and its inputs of the same name when the corpus has them. Returns the
    TRUTH row of each output path."""
    placed = {}
    for row in truth_rows():
        if row["code"] not in CODES:
            continue
        source = corpus_file(row["file"])
        if source is None:
            continue
        stem = source.name.split(".")[0]
        folder = tree / row["code"] / stem
        folder.mkdir(parents=True)
        shutil.copy2(source, folder / source.name)
        for suffix in (".d12", ".d3", ".in"):
            given = corpus_file(f"{row['code']}/{stem}{suffix}")
            if given is not None:
                shutil.copy2(given, folder / given.name)
        placed[str(folder / source.name)] = row
    return placed


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    root = tmp_path / "old_runs"
    placed = arrange(root)
    if len(placed) < 20:
        pytest.skip("the corpus has too few crystal and qe outputs here")
    return root, placed


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    t = Tracker.init(tmp_path / "proj")
    yield t
    t.close()


def imported(tracker: Tracker) -> dict[str, dict]:
    """Each imported calculation by its source path: its projection row."""
    calcs = {c["id"]: c for c in tracker.projections.calculations()}
    out = {}
    for rec in tracker.store.read(types=["SubmissionRequested"]):
        assert rec.meta["actor"] == "import"
        out[rec.meta["source"]] = calcs[rec.event.calculation_id]
    return out


def test_the_corpus_imports_as_truth_says(tree, tracker: Tracker) -> None:
    root, placed = tree
    report = run_import(tracker, ImportOptions(root, workers=2, min_parallel=0))
    assert report.skipped == [] and report.ignored == []
    calcs = imported(tracker)
    assert set(calcs) == set(placed)
    status = {"completed": "ok", "failed": "error"}
    expected_states = Counter(r["status"] for r in placed.values())
    expected_kinds = Counter(r["error_kind"] for r in placed.values() if r["error_kind"])
    assert Counter(status[c["state"]] for c in calcs.values()) == expected_states
    assert Counter(c["error_kind"] for c in calcs.values() if c["error_kind"]) == expected_kinds
    for path, row in placed.items():  # and file by file
        assert (status[calcs[path]["state"]], calcs[path]["error_kind"] or "") == (
            row["status"], row["error_kind"]), path
        # the file's own time, not the import's
        assert calcs[path]["finished_at"] == iso(os.stat(path).st_mtime)
    # every material's events passed the lifecycle, and a fresh replay agrees
    assert tracker.store.verify_chain()[1] == []
    assert cli("--project", str(tracker.project.root), "verify").returncode == 0


def test_energies_and_programs_come_out_with_provenance(tree, tracker: Tracker) -> None:
    root, placed = tree
    run_import(tracker, ImportOptions(root))
    calcs = imported(tracker)
    out = cli("--project", str(tracker.project.root), "properties", "--property",
              "total_energy_ev").stdout
    rows = {r["calculation_id"]: r for r in csv.DictReader(io.StringIO(out))}
    checked = 0
    for path, truth in placed.items():
        calc = calcs[path]
        if truth["status"] != "ok":  # a failure's numbers are no properties
            assert calc["id"] not in rows
            continue
        if not truth["energy_ev"]:
            continue
        row = rows[calc["id"]]
        assert float(row["value"]) == pytest.approx(float(truth["energy_ev"]), abs=2e-6)
        assert row["program"] == truth["program"]
        assert (row["step"], row["attempt"], row["unit"]) == (calc["step"], str(calc["attempt"]),
                                                              "eV")
        assert row["code"] == truth["code"] and int(row["source_seq"]) > 0
        checked += 1
    assert checked >= 20
    as_json = json.loads(cli("--project", str(tracker.project.root), "properties", "--format",
                             "json", "--material", rows[next(iter(rows))]["material_id"]).stdout)
    assert as_json and all(r["material_id"] == as_json[0]["material_id"] for r in as_json)


def test_parquet_needs_pyarrow_or_writes_the_same_rows(tree, tracker: Tracker,
                                                       tmp_path: Path) -> None:
    root, _ = tree
    run_import(tracker, ImportOptions(root, code="qe"))
    target = tmp_path / "props.parquet"
    proc = cli("--project", str(tracker.project.root), "properties", "--format", "parquet",
               "--output", str(target), check=False)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and "pip install pyarrow" in proc.stderr
        assert not target.exists()
        return
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(target).to_pylist()
    assert len(table) == sum(1 for _ in tracker.projections.properties())


def test_importing_twice_adds_nothing(tree, tracker: Tracker) -> None:
    root, placed = tree
    first = run_import(tracker, ImportOptions(root))
    last = tracker.store.last_seq()
    again = run_import(tracker, ImportOptions(root))
    assert tracker.store.last_seq() == last
    assert (again.events, len(again.calculations), again.unchanged) == (0, 0, len(placed))
    assert first.events == last


def test_a_changed_output_becomes_a_new_attempt(tree, tracker: Tracker) -> None:
    """The SCF that did not converge was run again in the same folder and converged: the
    copy of another real converged SCF output replaces it (a change made here)."""
    root, placed = tree
    failed = next(p for p, r in placed.items() if r["file"].endswith(
        "pw66_scf_convergence_NOT_achieved.out"))
    good = corpus_path("qe/pw66_si_scf_converged.out")
    run_import(tracker, ImportOptions(root))
    before = imported(tracker)[failed]
    last = tracker.store.last_seq()
    shutil.copy(good, failed)
    report = run_import(tracker, ImportOptions(root))
    assert [c.calculation_id for c in report.calculations] == [
        f"{before['material_id']}/{before['step']}/{before['attempt'] + 1}"]
    new = [r for r in tracker.store.read(after=last)]
    assert {r.stream for r in new} == {before["material_id"]}
    assert [r.type for r in new] == ["SubmissionRequested", "JobSubmitted", "JobFinished",
                                     "PropertiesExtracted", "CalculationSucceeded"]
    state = tracker.state(before["material_id"])
    assert state.calcs[before["id"]].state == "failed"  # history is kept
    assert state.latest(before["step"]).state == "completed"


def test_corrupted_files_are_reported_and_skipped(tmp_path: Path, tracker: Tracker) -> None:
    """Made here: binary junk under an output's name, a folder named like an output beside
    its input, a symlink loop of two output names, and a folder link back to the root."""
    root = tmp_path / "messy"
    good = root / "Si_sp"
    good.mkdir(parents=True)
    shutil.copy(corpus_path("qe/pw66_si_scf_converged.out"), good / "Si_sp.out")
    junk = root / "junk_sp"
    junk.mkdir()
    (junk / "junk_sp.out").write_bytes(b"\x7fELF\x02\x01\x01\x00" + os.urandom(4096))
    folder = root / "dir_opt"
    (folder / "dir_opt.out").mkdir(parents=True)
    (folder / "dir_opt.d12").write_text("not read\n")
    loops = root / "loops"
    loops.mkdir()
    (loops / "a_sp.out").symlink_to(loops / "b_sp.out")
    (loops / "b_sp.out").symlink_to(loops / "a_sp.out")
    (root / "again").symlink_to(root, target_is_directory=True)
    notes = root / "notes.log"
    notes.write_text("meeting notes, not an output\n")

    report = run_import(tracker, ImportOptions(root, follow_links=True))
    reasons = {Path(s.path).relative_to(root).as_posix(): s.reason for s in report.skipped}
    assert reasons["junk_sp/junk_sp.out"] == "binary data, not a program output"
    assert reasons["dir_opt/dir_opt.out"] == "a folder named like an output, not a file"
    assert "symbolic links" in reasons["loops/a_sp.out"]
    assert "symbolic links" in reasons["loops/b_sp.out"]
    assert "loop" in reasons["again"]
    assert report.ignored == [str(notes)]
    assert [c.calculation_id for c in report.calculations] == ["Si/SP/1"]
    assert [m["id"] for m in tracker.materials()] == ["Si"]
    # without --follow-links the folder link is reported, not entered
    report = run_import(tracker, ImportOptions(root, dry_run=True))
    assert any(s.path == str(root / "again") and "not followed" in s.reason
               for s in report.skipped)


def test_a_copy_of_an_output_is_imported_once(tmp_path: Path, tracker: Tracker) -> None:
    """The same run kept twice (a backup folder beside the original): one calculation."""
    root = tmp_path / "runs"
    for folder in (root / "Si_sp", root / "backup" / "Si_sp"):
        folder.mkdir(parents=True)
        shutil.copy(corpus_path("qe/pw66_si_scf_converged.out"), folder / "Si_sp.out")
    report = run_import(tracker, ImportOptions(root))
    assert [c.calculation_id for c in report.calculations] == ["Si/SP/1"]
    assert report.unchanged == 1


UNREADABLE = """
import json, sys
from eventflow.shell.api import Tracker
from eventflow.shell.importer import ImportOptions, run_import
tracker = Tracker.init(sys.argv[1])
report = run_import(tracker, ImportOptions(__import__("pathlib").Path(sys.argv[2])))
print(json.dumps([(s.path, s.reason) for s in report.skipped]))
"""


def test_unreadable_files_are_reported(tmp_path: Path) -> None:
    """A file the importing user may not read. Root reads everything, so as root the import
    runs as the unprivileged user `nobody` (setpriv) in a world-writable folder."""
    import subprocess
    import sys
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="ef-perm-"))
    work.chmod(0o777)
    try:
        root = work / "locked"
        root.mkdir()
        root.chmod(0o755)
        out = root / "Si_sp.out"
        shutil.copy(corpus_path("qe/pw66_si_scf_converged.out"), out)
        out.chmod(0)
        argv = [sys.executable, "-c", UNREADABLE, str(work / "proj"), str(root)]
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            require(setpriv is not None, "setpriv (util-linux) is needed to drop root")
            argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
               "HOME": str(work)}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        skipped = json.loads(proc.stdout.strip().splitlines()[-1])
        assert skipped == [[str(out), "cannot read: Permission denied"]]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_dry_run_prints_and_records_nothing(tree, tracker: Tracker) -> None:
    root, placed = tree
    proj = str(tracker.project.root)
    data = json.loads(cli("--project", proj, "import", str(root), "--dry-run", "--json").stdout)
    assert data["dry_run"] and len(data["calculations"]) == len(placed)
    assert data["by_state"] == {"completed": sum(r["status"] == "ok" for r in placed.values()),
                                "failed": sum(r["status"] == "error" for r in placed.values())}
    assert tracker.store.last_seq() == 0
    text = cli("--project", proj, "import", str(root), "--dry-run", "--code", "crystal").stdout
    assert "would record" in text and "would import" in text
    crystal = sum(r["code"] == "crystal" for r in placed.values())
    assert f"would import {crystal} calculations" in text
    assert tracker.store.last_seq() == 0


def test_unknown_workflow_and_missing_folder_are_one_line_errors(tmp_path: Path,
                                                                 tracker: Tracker) -> None:
    proj = str(tracker.project.root)
    proc = cli("--project", proj, "import", str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "no such folder" in proc.stderr
    proc = cli("--project", proj, "import", str(tmp_path), "--workflow", "nope", check=False)
    assert proc.returncode == 1 and "unknown workflow 'nope'" in proc.stderr


def test_with_a_workflow_the_next_step_is_requested(tmp_path: Path, tracker: Tracker) -> None:
    """A relaxation that converged (a real pw.x output), named as OPT of 'Si': imported with
    --workflow full_characterization, SP is requested, from the relaxed structure."""
    root = tmp_path / "runs" / "Si_opt"
    root.mkdir(parents=True)
    shutil.copy2(corpus_path("qe/pw66_relax_converged.out"), root / "Si_opt.out")
    report = run_import(tracker, ImportOptions(root.parent, workflow="full_characterization"))
    assert report.requested == ["Si/SP/1"]
    state = tracker.state("Si")
    assert (state.workflow, state.state) == ("full_characterization", "running")
    assert state.calcs["Si/OPT/1"].state == "completed"
    assert (tracker.project.calcs / "Si" / "structure.extxyz").is_file()
    from ase.io import read

    structure = read(tracker.project.calcs / "Si" / "structure.extxyz")
    rows = {r["name"]: r["value"] for r in tracker.projections.properties("Si")}
    assert len(structure) == rows["n_atoms"]


def test_export_structures(tree, tracker: Tracker, tmp_path: Path) -> None:
    root, placed = tree
    run_import(tracker, ImportOptions(root, code="qe"))
    proj = str(tracker.project.root)
    si = next(c for p, c in imported(tracker).items() if p.endswith("pw66_si_scf_converged.out"))
    text = cli("--project", proj, "export-structures", "--material", si["material_id"]).stdout
    from ase.io import read

    frames = read(io.StringIO(text), index=":", format="extxyz")
    assert len(frames) == 1 and frames[0].get_chemical_formula() == "Si2"
    assert frames[0].info["calculation_id"] == si["id"]
    # a folder: one CIF per structure, named after the calculation
    out = tmp_path / "cifs"
    cli("--project", proj, "export-structures", "--format", "cif", "--output", f"{out}/",
        "--step", "SP")
    written = sorted(p.name for p in out.iterdir())
    assert f"{si['id'].replace('/', '_')}.cif" in written
    assert all(name.endswith("_SP_1.cif") or "_SP_" in name for name in written)


def test_a_running_job_is_attached_and_followed(tmp_path: Path, tracker: Tracker,
                                               need_slurm: None) -> None:
    """A real SLURM job (sleep) running in a folder that looks like a pw.x run: its input
    and an output that ends mid-SCF (a real one), and the job's slurm-<id>.out."""
    folder = tmp_path / "running" / "NaCl_sp"
    folder.mkdir(parents=True)
    shutil.copy(corpus_path("qe/pw74_nacl_scf_truncated_mid_scf.out"), folder / "pw.out")
    job = subprocess.run(["sbatch", "--parsable", f"--chdir={folder}", "--output=slurm-%j.out",
                          "--job-name=eventflow-import-test", "--wrap", "sleep 300"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while not (folder / f"slurm-{job}.out").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        report = run_import(tracker, ImportOptions(folder.parent))
        assert [(c.calculation_id, c.state, c.job_id) for c in report.calculations] == [
            ("NaCl/SP/1", "submitted", job)]
        calc = tracker.state("NaCl").calcs["NaCl/SP/1"]
        assert (calc.state, calc.job_id, calc.scheduler) == ("submitted", job, "slurm")
        # importing again while it runs adds nothing
        assert run_import(tracker, ImportOptions(folder.parent)).events == 0
        subprocess.run(["scancel", job], check=True)
        from eventflow.shell.scheduler import SlurmScheduler
        from eventflow.shell.watcher import run_once

        deadline = time.monotonic() + 60
        while tracker.state("NaCl").calcs["NaCl/SP/1"].state in ("submitted", "running"):
            assert time.monotonic() < deadline, "the watcher never saw the job leave"
            run_once(tracker, scheduler=SlurmScheduler())
            time.sleep(1)
        calc = tracker.state("NaCl").calcs["NaCl/SP/1"]
        assert (calc.state, calc.error_kind) == ("lost", "cancelled")
    finally:
        subprocess.run(["scancel", job], check=False)


def test_round_trip_through_real_pwx(tmp_path: Path, need_pwx: None) -> None:
    """Run scf_only on Si with real pw.x (local executor), export the properties, import
    the project's calcs/ into a fresh project: the same properties come out."""
    first = tmp_path / "first"
    Tracker.init(first).close()
    (first / "config" / "cluster.yaml").write_text("executor: local\n")
    with Tracker.open(first) as t:
        t.create_material(SI, material_id="Si", workflow="scf_only",
                          params={"ecutwfc": 12, "kpoint_density": 1.5})
    deadline = time.monotonic() + 300
    while True:
        cli("--project", str(first), "watch", "--once", "--quiet")
        with Tracker.open(first) as t:
            state = t.state("Si").state
        if state in ("completed", "needs_attention"):
            break
        assert time.monotonic() < deadline, f"Si still {state}"
        time.sleep(1)
    assert state == "completed"
    exported = list(csv.DictReader(io.StringIO(cli("--project", str(first), "properties").stdout)))
    second = tmp_path / "second"
    Tracker.init(second).close()
    report = json.loads(cli("--project", str(second), "import", str(first / "calcs"),
                            "--json").stdout)
    assert [c["calculation_id"] for c in report["calculations"]] == ["Si/SP/1"]
    again = list(csv.DictReader(io.StringIO(cli("--project", str(second), "properties").stdout)))

    def values(rows: list[dict]) -> dict:
        return {(r["calculation_id"], r["name"]): (r["value"], r["unit"], r["program"])
                for r in rows}

    assert values(again) == values(exported)
    energy = values(again)[("Si/SP/1", "total_energy_ev")]
    assert float(energy[0]) < -200 and energy[2].startswith("pw.x")
