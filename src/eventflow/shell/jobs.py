"""Writing a calculation's job folder: inputs, handed-on files, and the job script.

The folder is ``calcs/<material>/<step>/<attempt>/``, unique by construction.
Writing it is idempotent (the same request always writes the same files), so
a retry after a crash simply writes it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

from eventflow.core.jobscript import JobSpec, Resources, render_job_script
from eventflow.core.policy import PolicyConfig
from eventflow.core.state import CalcState, MaterialState
from eventflow.errors import EventflowError
from eventflow.resources import data_text
from eventflow.shell.config import pseudo_dir
from eventflow.shell.parsing import plugins
from eventflow.shell.project import Project

RECORD = "eventflow-done.json"
STARTED = "eventflow-started"  # the job's id, written at its start (core.jobscript)
# Parameters the shell uses itself (how to run the programs); the code plugin never sees them.
SHELL_PARAMS = frozenset({"launcher", "executables", "cluster"})
# Changes that tell the runner what to do rather than what to write into the input:
# "structure": "last" = start from the final structure of the attempt being restarted.
RUNNER_MARKERS = frozenset({"structure"})
# Resource keys that are decisions for the runner, not sbatch options.
RUNNER_RESOURCES = frozenset({"exclude_host_of"})
# Settings of a code's config file that are job resources, not input parameters.
CODE_RESOURCES = ("modules", "scratch_root")
# The config file whose settings are a code's default parameters (besides QE's table).
CODE_CONFIG = {"crystal": "crystal.yaml"}


def job_name(project_id: str, calculation_id: str) -> str:
    """The scheduler job name of a calculation: the project and the request's identity."""
    safe = re.sub(r"[^A-Za-z0-9._-]", lambda m: f"_{ord(m.group()):x}", calculation_id.replace(
        "/", "."))
    return f"ef.{project_id}.{safe}"


MAX_RECORD_BYTES = 1 << 20  # a record is a few hundred bytes; anything bigger is not one


def open_nonblocking(path: str, flags: int) -> int:
    """An ``opener`` for open(): a FIFO in place of a file must not block the watcher."""
    return os.open(path, flags | os.O_NONBLOCK)


def read_completion(path: Path) -> dict[str, Any] | None:
    """The completion record, or None while it is absent or half-written, or when something
    else is in its place (a folder, a FIFO, a huge file): the watcher must go on."""
    try:
        with open(path, "rb", opener=open_nonblocking) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD_BYTES:
                return None
            data = handle.read(MAX_RECORD_BYTES + 1)
    except OSError:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class JobWriter:
    def __init__(self, project: Project, policy: PolicyConfig) -> None:
        self.project = project
        self.policy = policy
        self.template = data_text("slurm", "job.sh.tmpl")
        self._plugins = plugins()
        self._code_defaults: dict[str, dict[str, Any]] = {}
        self._code_resources: dict[str, dict[str, Any]] = {}
        self.cluster = project.config("cluster.yaml")

    def step_order(self, state: MaterialState) -> dict[str, int]:
        workflow = self.policy.workflows.get(state.workflow)
        return {name: i for i, name in enumerate(workflow.order())} if workflow else {}

    def _step(self, state: MaterialState, step: str) -> Any:
        workflow = self.policy.workflows.get(state.workflow)
        return workflow.steps.get(step) if workflow else None

    def params_for(self, state: MaterialState, calc: CalcState) -> dict[str, Any]:
        """Code defaults < step params < material params. An attempt's changes (recovery
        corrections) are applied to the rendered input by the plugin's apply_changes."""
        step = self._step(state, calc.step)
        params: dict[str, Any] = dict(self.code_defaults(state.code))
        params.update(dict(step.params) if step is not None else {})
        params.update(state.params)
        return params

    def code_defaults(self, code: str) -> dict[str, Any]:
        """Per-code parameters from the project's config (QE: the pseudopotential table;
        CRYSTAL: config/crystal.yaml, whose executables and launcher say how to run it)."""
        if code not in self._code_defaults:
            defaults: dict[str, Any] = {}
            resources: dict[str, Any] = {}
            if code == "qe":
                table = self.project.config("pseudopotentials.yaml")
                defaults["pseudopotentials"] = table
                defaults["pseudo_dir"] = pseudo_dir(table)
            if code in CODE_CONFIG:
                for key, value in self.project.config(CODE_CONFIG[code]).items():
                    if key not in CODE_RESOURCES:
                        defaults[key] = value
                    elif value:
                        resources[key] = value
            self._code_defaults[code] = defaults
            self._code_resources[code] = resources
        return self._code_defaults[code]

    def code_resources(self, code: str) -> dict[str, Any]:
        """Job resources a code's config sets for all its steps (modules, scratch_root)."""
        self.code_defaults(code)
        return self._code_resources[code]

    def resources_for(self, state: MaterialState, calc: CalcState) -> Resources:
        """Cluster defaults < the code's config (modules, scratch_root) < the workflow step's
        resources < this attempt's (a retry's)."""
        step = self._step(state, calc.step)
        base = {k: v for k, v in (self.cluster.get("defaults") or {}).items() if v is not None}
        base.update(self.code_resources(state.code))
        own = dict(step.resources) if step is not None else {}
        own.update({k: v for k, v in calc.resources.items() if k not in RUNNER_RESOURCES})
        if "mem" in own or "mem_per_cpu" in own:  # one memory form only
            base.pop("mem", None)
            base.pop("mem_per_cpu", None)
        base.update(own)
        source = f"{self.project.config_path('workflows.yaml')}: step {calc.step}"
        if self.code_resources(state.code) and state.code in CODE_CONFIG:
            source += f" (with {self.project.config_path(CODE_CONFIG[state.code])})"
        return Resources.from_mapping(base, source=source)

    def structure_path(self, state: MaterialState) -> Path:
        folder = self.project.inside(Path("calcs") / state.id)
        for candidate in sorted(folder.glob("structure.*")):
            return candidate
        raise EventflowError(f"{folder}: the material's structure file is missing")

    def write(self, state: MaterialState, calc: CalcState,
              job_dir: str | None = None) -> tuple[Path, Any]:
        """Write the job folder of ``calc``; return its job script and the InputsPrepared event.
        ``job_dir``: where the job will run when that is not this folder (a remote cluster's
        copy of it)."""
        from eventflow.shell.handoff import inputs_event, prepare_inputs

        plugin = self._plugins.get(state.code)
        if plugin is None:
            raise EventflowError(f"no plugin for code {state.code!r}")
        folder = self.project.inside(calc.directory)
        folder.mkdir(parents=True, exist_ok=True)
        params = self.params_for(state, calc)
        resources = self.resources_for(state, calc)
        handed: dict[str, Any] = {}
        if hasattr(plugin, "run_sequence"):
            code_params = {k: v for k, v in params.items() if k not in SHELL_PARAMS}
            files, commands, handed = prepare_inputs(
                self.project, plugin, state, calc, code_params, folder,
                self._step(state, calc.step), resources, self.structure_path(state),
                launcher=params.get("launcher"), executables=params.get("executables"),
            )
        else:
            files = {}
            commands = plugin.job_commands(calc.step, params)
        changes = {k: v for k, v in calc.changes.items() if k not in RUNNER_MARKERS}
        if changes and files:
            try:
                files = plugin.apply_changes(files, changes)
            except ValueError as exc:
                raise EventflowError(f"{calc.id}: cannot apply {changes}: {exc}") from exc
        for name, text in files.items():
            write_atomic(folder / name, text)
        spec = JobSpec(
            job_dir=job_dir or str(folder),
            idempotency_key=job_name(self.project.project_id, calc.id),
            commands=commands,
            resources=resources,
        )
        script = folder / "job.sh"
        write_atomic(script, render_job_script(self.template, spec))
        script.chmod(0o755)
        return script, inputs_event(calc, files, handed)


def copy_tree(src: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True)
