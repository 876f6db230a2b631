"""The job script renderer: validation, quoting, and what the rendered script does when run.

The rendered scripts are run here with plain bash (no SLURM): ``$EVENTFLOW_LOCAL_JOB_ID``
stands in for ``$SLURM_JOB_ID``, and signals are sent by hand the way slurmstepd sends them.
Hostile names are either rejected or reach the program byte for byte; each run checks that
no payload had a side effect.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from eventflow.core.jobscript import (
    RECORD_NAME,
    Command,
    InvalidJobSpec,
    JobSpec,
    Resources,
    read_directives,
    render_job_script,
    sbatch_directives,
    signal_warning_seconds,
    walltime_seconds,
)
from tests.jobfolders import TEMPLATE, read_record, write_job_script

REPO = Path(__file__).resolve().parents[2]

HOSTILE = [
    "; rm -rf ~",
    "$(touch PWNED_subst)",
    "`touch PWNED_backtick`",
    "a\ntouch PWNED_newline",
    "../../etc/passwd",
    "-rf",
    "--help",
    "it's \"quoted\" \\ here",
    "${IFS}touch${IFS}PWNED_ifs",
    "*",
    "~",
]


# --- walltime and resources ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        # The forms of sbatch --time (sbatch(1)): minutes, minutes:seconds, hours:minutes:seconds,
        # days-hours, days-hours:minutes, days-hours:minutes:seconds.
        ("90", 90 * 60),
        ("1:30", 60 + 30),
        ("02:00:00", 2 * 3600),
        ("1-12", 36 * 3600),
        ("1-00:30", 24 * 3600 + 30 * 60),
        ("2-01:02:03", 2 * 86400 + 3600 + 2 * 60 + 3),
    ],
)
def test_walltime_seconds_reads_every_sbatch_form(text: str, seconds: int) -> None:
    assert walltime_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "1h", "-5", "1:2:3:4", "0", "00:00:00", "1-", "UNLIMITED",
                                  "1:30; reboot"])
def test_walltime_seconds_rejects_other_text(text: str) -> None:
    with pytest.raises(InvalidJobSpec, match="walltime"):
        walltime_seconds(text)


@pytest.mark.parametrize("field", ["partition", "account", "qos"])
@pytest.mark.parametrize("value", [*HOSTILE, "", "a b", "-p"])
def test_hostile_scheduler_names_are_rejected(field: str, value: str) -> None:
    with pytest.raises(InvalidJobSpec, match=field):
        Resources(**{field: value})


def test_site_names_are_accepted() -> None:
    r = Resources(partition="standard,highmem", account="e89-ic_m", qos="short.q", mem="2G")
    lines = sbatch_directives(r)
    assert "#SBATCH --partition=standard,highmem" in lines
    assert "#SBATCH --account=e89-ic_m" in lines
    assert "#SBATCH --qos=short.q" in lines
    assert "#SBATCH --mem=2G" in lines


@pytest.mark.parametrize("mem", ["2GB", "-1", "2 G", "0", "1.5G", "2G; reboot", "$(reboot)"])
def test_bad_memory_is_rejected(mem: str) -> None:
    with pytest.raises(InvalidJobSpec, match="mem"):
        Resources(mem=mem)


def test_mem_and_mem_per_cpu_exclude_each_other() -> None:
    with pytest.raises(InvalidJobSpec, match="not both"):
        Resources(mem="2G", mem_per_cpu="500M")
    assert "#SBATCH --mem-per-cpu=500M" in sbatch_directives(Resources(mem_per_cpu="500M"))


@pytest.mark.parametrize("count", [0, -1, 1.5, "2", True])
def test_counts_must_be_positive_integers(count: object) -> None:
    with pytest.raises(InvalidJobSpec, match="cpus_per_task"):
        Resources(cpus_per_task=count)  # type: ignore[arg-type]


@pytest.mark.parametrize("module", ["../../etc", "; reboot", "$(reboot)", "-x", "a b", "a\nb"])
def test_hostile_module_names_are_rejected(module: str) -> None:
    with pytest.raises(InvalidJobSpec, match="module"):
        Resources(modules=(module,))


@pytest.mark.parametrize("root", ["relative/scratch", "/scratch/$(reboot)", "/scratch/$PATH",
                                  "/scratch/`reboot`", "/scratch/../etc", "/scratch\n/x"])
def test_hostile_scratch_roots_are_rejected(root: str) -> None:
    with pytest.raises(InvalidJobSpec, match="scratch_root"):
        Resources(scratch_root=root)


def test_from_mapping_names_the_source_and_the_unknown_key() -> None:
    with pytest.raises(InvalidJobSpec, match=r"cluster\.yaml: unknown resource\(s\) walltime"):
        Resources.from_mapping({"walltime": "1:00:00"}, source="cluster.yaml")
    with pytest.raises(InvalidJobSpec, match=r"cluster\.yaml: mem"):
        Resources.from_mapping({"mem": "lots"}, source="cluster.yaml")
    r = Resources.from_mapping({"time": 30, "modules": ["QuantumESPRESSO/7.2-foss-2022a"]})
    assert r.time == "30" and r.modules == ("QuantumESPRESSO/7.2-foss-2022a",)
    assert r.merged({"time": "02:00:00"}).time == "02:00:00"


def test_the_shipped_cluster_defaults_are_valid() -> None:
    config = yaml.safe_load((REPO / "config" / "cluster.yaml").read_text())
    defaults = Resources.from_mapping(config["defaults"], source="config/cluster.yaml")
    assert walltime_seconds(defaults.time) > defaults.effective_signal_seconds


def test_the_time_limit_warning_comes_at_most_half_way() -> None:
    assert Resources(time="1", signal_seconds=300).effective_signal_seconds == 30
    assert Resources(time="10:00:00", signal_seconds=300).effective_signal_seconds == 300


# --- the job spec and rendering --------------------------------------------------------------


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_idempotency_keys_are_rejected(key: str) -> None:
    with pytest.raises(InvalidJobSpec, match="idempotency key"):
        JobSpec(job_dir="/tmp/x", idempotency_key=key, commands=[["true"]])


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "a\nb", ""])
def test_file_names_must_stay_in_the_job_folder(name: str) -> None:
    with pytest.raises(InvalidJobSpec):
        JobSpec(job_dir="/tmp/x", idempotency_key="k", commands=[["true"]], inputs=(name,))
    with pytest.raises(InvalidJobSpec):
        Command(argv=("true",), stdout=name)


def test_job_dir_must_be_absolute_and_one_line() -> None:
    for job_dir in ("relative", "/tmp/a\nb", ""):
        with pytest.raises(InvalidJobSpec, match="job folder"):
            JobSpec(job_dir=job_dir, idempotency_key="k", commands=[["true"]])


def test_a_command_must_be_an_argv_list_not_a_string() -> None:
    with pytest.raises(InvalidJobSpec, match="argv list"):
        JobSpec(job_dir="/tmp/x", idempotency_key="k", commands=["pw.x -in scf.in"])
    with pytest.raises(InvalidJobSpec, match="at least one command"):
        JobSpec(job_dir="/tmp/x", idempotency_key="k", commands=[])


def test_rendered_command_lines_give_back_the_exact_argv() -> None:
    argv = ("pw.x", *HOSTILE)
    line = Command(argv=argv, stdin="scf.in", stdout="scf out.txt").render()
    words = shlex.split(line)
    assert words[0] == "ef_run"
    assert tuple(words[1:1 + len(argv)]) == argv
    assert words[-2:] == ["<scf.in", ">scf out.txt"]


def test_directives_come_before_the_first_command_and_are_read_back() -> None:
    spec = JobSpec(job_dir="/tmp/x", idempotency_key="calc-1:scf:1", commands=[["true"]],
                   resources=Resources(partition="debug", time="0:30", mem="1G",
                                       signal_seconds=10))
    script = render_job_script(TEMPLATE, spec)
    directives = read_directives(script)
    assert directives["partition"] == "debug"
    assert directives["time"] == "0:30"
    assert directives["output"] == "slurm-%j.out"
    assert signal_warning_seconds(directives["signal"]) == 10
    assert "{{" not in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_template_and_renderer_must_agree() -> None:
    spec = JobSpec(job_dir="/tmp/x", idempotency_key="k", commands=[["true"]])
    with pytest.raises(InvalidJobSpec, match="unknown placeholder"):
        render_job_script(TEMPLATE + "{{surprise}}", spec)
    with pytest.raises(InvalidJobSpec, match="missing placeholder"):
        render_job_script(TEMPLATE.replace("{{commands}}", ""), spec)


# --- running the rendered script with bash -------------------------------------------------


def _environment(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "sentinel").write_text("still here")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(HOME=str(home), EVENTFLOW_LOCAL_JOB_ID="local-77")
    return env


def _run(tmp_path: Path, spec: JobSpec) -> subprocess.CompletedProcess[str]:
    script = write_job_script(tmp_path, spec)
    return subprocess.run(["bash", str(script)], cwd=tmp_path, env=_environment(tmp_path),
                          capture_output=True, text=True, timeout=60, check=False)


def _no_side_effects(tmp_path: Path) -> None:
    assert (tmp_path / "home" / "sentinel").read_text() == "still here"
    assert not [p for p in tmp_path.rglob("PWNED*")], "a payload ran"


def _job_dir(tmp_path: Path, name: str = "job") -> Path:
    job = tmp_path / name
    job.mkdir()
    return job


def test_a_successful_job_leaves_a_complete_record(tmp_path: Path) -> None:
    job = _job_dir(tmp_path)
    spec = JobSpec(job_dir=str(job), idempotency_key="calc-1:scf:attempt-1",
                   commands=[["bash", "-c", "echo hello > greeting.txt"]])
    done = _run(tmp_path, spec)
    assert done.returncode == 0, done.stderr
    assert (job / "greeting.txt").read_text() == "hello\n"
    record = read_record(job)
    assert record["exit_code"] == 0
    assert record["signal"] is None
    assert record["reason"] == "completed"
    assert record["job_id"] == "local-77"
    assert record["idempotency_key"] == "calc-1:scf:attempt-1"
    assert record["host"]
    started = datetime.strptime(record["started_at"], "%Y-%m-%dT%H:%M:%SZ")
    finished = datetime.strptime(record["finished_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert started <= finished
    assert not list(job.glob(".*tmp")), "the temporary record was left behind"


def test_the_first_failing_command_ends_the_job_with_its_exit_code(tmp_path: Path) -> None:
    job = _job_dir(tmp_path)
    spec = JobSpec(job_dir=str(job), idempotency_key="k",
                   commands=[["true"], ["bash", "-c", "exit 3"], ["touch", "not-reached"]])
    done = _run(tmp_path, spec)
    assert done.returncode == 3
    record = read_record(job)
    assert record["exit_code"] == 3
    assert record["reason"] == "command_failed"
    assert record["command_index"] == 2
    assert not (job / "not-reached").exists()


def test_hostile_arguments_reach_the_program_unchanged(tmp_path: Path) -> None:
    job = _job_dir(tmp_path)
    collect = ["bash", "-c", 'printf "%s\\0" "$@" > args.bin', "collect", *HOSTILE]
    spec = JobSpec(job_dir=str(job), idempotency_key="k", commands=[collect],
                   inputs=())
    done = _run(tmp_path, spec)
    assert done.returncode == 0, done.stderr
    received = (job / "args.bin").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in received] == HOSTILE
    _no_side_effects(tmp_path)


@pytest.mark.parametrize("folder", ["a; touch PWNED_dir", "$(touch PWNED_dir)", "`touch PWNED_d`",
                                    "-rf", "it's here", "~"])
def test_hostile_job_folder_names_are_harmless(tmp_path: Path, folder: str) -> None:
    job = _job_dir(tmp_path, folder)
    spec = JobSpec(job_dir=str(job), idempotency_key="k",
                   commands=[Command(argv=("cat",), stdin="-rf input", stdout="; out $(x)")])
    (job / "-rf input").write_text("payload-free\n")
    done = _run(tmp_path, spec)
    assert done.returncode == 0, done.stderr
    assert (job / "; out $(x)").read_text() == "payload-free\n"
    assert read_record(job)["exit_code"] == 0
    _no_side_effects(tmp_path)


def test_scratch_copies_inputs_there_and_results_back(tmp_path: Path) -> None:
    job = _job_dir(tmp_path)
    scratch = tmp_path / "scratch"
    (job / "--help").write_text("input\n")
    (job / "unlisted.txt").write_text("stays behind\n")
    spec = JobSpec(
        job_dir=str(job), idempotency_key="k",
        commands=[["bash", "-c",
                   'printf "%s\\n" * > seen.txt; pwd > where.txt; cat -- --help > out.txt']],
        resources=Resources(scratch_root=str(scratch)), inputs=("--help",))
    done = _run(tmp_path, spec)
    assert done.returncode == 0, done.stderr
    record = read_record(job)
    assert record["copied_back"] is True
    assert record["scratch_dir"].startswith(str(scratch) + "/eventflow-local-77.")
    assert (job / "where.txt").read_text().strip() == record["scratch_dir"]
    assert (job / "seen.txt").read_text().split() == ["--help"]
    assert (job / "out.txt").read_text() == "input\n"
    assert not Path(record["scratch_dir"]).exists(), "scratch copy not removed after copy-back"


def test_scratch_root_may_name_user_variables(tmp_path: Path) -> None:
    job = _job_dir(tmp_path)
    spec = JobSpec(job_dir=str(job), idempotency_key="k", commands=[["true"]],
                   resources=Resources(scratch_root="$HOME/scratch"))
    done = _run(tmp_path, spec)
    assert done.returncode == 0, done.stderr
    assert read_record(job)["scratch_dir"].startswith(str(tmp_path / "home" / "scratch") + "/")


def test_modules_are_loaded_before_the_commands(tmp_path: Path) -> None:
    job = _job_dir(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "module"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(tmp_path / "modules.log"))}\n')
    fake.chmod(0o755)
    spec = JobSpec(job_dir=str(job), idempotency_key="k", commands=[["true"]],
                   resources=Resources(modules=("QuantumESPRESSO/7.2-foss-2022a", "crystal23")))
    script = write_job_script(tmp_path, spec)
    env = _environment(tmp_path)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "modules.log").read_text().splitlines() == [
        "load QuantumESPRESSO/7.2-foss-2022a", "load crystal23"]


def test_a_module_that_fails_to_load_is_a_setup_failure(tmp_path: Path) -> None:
    job = _job_dir(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "module").write_text("#!/bin/sh\necho 'Lmod has detected the following error' >&2\n"
                                    "exit 1\n")
    (bin_dir / "module").chmod(0o755)
    spec = JobSpec(job_dir=str(job), idempotency_key="k", commands=[["touch", "ran"]],
                   resources=Resources(modules=("nonexistent/1.0",)))
    script = write_job_script(tmp_path, spec)
    env = _environment(tmp_path)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert read_record(job)["reason"] == "setup_failed"
    assert not (job / "ran").exists()


def _start_and_wait_for(tmp_path: Path, spec: JobSpec,
                        started: Callable[[], bool]) -> subprocess.Popen[str]:
    """Run the job script in its own session until ``started()`` says its command runs."""
    script = write_job_script(tmp_path, spec)
    process = subprocess.Popen(["bash", str(script)], env=_environment(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 30
    while not started():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    return process


def test_termination_leaves_a_record_and_stops_the_program(tmp_path: Path) -> None:
    """scancel (and the time limit itself) send SIGTERM to the job's processes."""
    job = _job_dir(tmp_path)
    spec = JobSpec(job_dir=str(job), idempotency_key="k",
                   commands=[["bash", "-c", "touch started; sleep 600"], ["touch", "not-reached"]])
    process = _start_and_wait_for(tmp_path, spec, (job / "started").exists)
    os.killpg(process.pid, signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    record = read_record(job)
    assert record["signal"] == signal.SIGTERM
    assert record["exit_code"] == 128 + signal.SIGTERM
    assert record["reason"] == "terminated"
    assert not (job / "not-reached").exists()


def test_the_time_limit_warning_writes_the_record_and_copies_back(tmp_path: Path) -> None:
    """SLURM sends USR1 to the batch shell only (--signal=B:USR1@N), later TERM at the limit."""
    job = _job_dir(tmp_path)
    spec = JobSpec(job_dir=str(job), idempotency_key="k",
                   commands=[["bash", "-c", "echo partial > partial.out; touch started; "
                                            "sleep 600"]],
                   resources=Resources(scratch_root=str(tmp_path / "scratch"), time="10"))
    process = _start_and_wait_for(
        tmp_path, spec, lambda: any((tmp_path / "scratch").glob("eventflow-*/started")))
    process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while not (job / RECORD_NAME).exists() or read_record(job)["copied_back"] is not True:
        assert time.monotonic() < deadline, "no record after USR1"
        time.sleep(0.05)
    assert process.poll() is None, "the script must wait for the scheduler to end the job"
    os.killpg(process.pid, signal.SIGTERM)  # the limit itself
    process.communicate(timeout=60)
    record = read_record(job)
    assert record["reason"] == "time_limit"
    assert record["signal"] == signal.SIGUSR1
    assert record["exit_code"] == 128 + signal.SIGUSR1
    assert (job / "partial.out").read_text() == "partial\n"
