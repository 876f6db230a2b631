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
from pathlib import Path
from typing import Any

from eventflow.core.jobscript import JobSpec, Resources, render_job_script
from eventflow.core.policy import PolicyConfig
from eventflow.core.state import CalcState, MaterialState
from eventflow.errors import EventflowError
from eventflow.resources import data_text
from eventflow.shell.parsing import plugins
from eventflow.shell.project import Project

RECORD = "eventflow-done.json"
# Parameters the shell uses itself; the code plugin never sees them.
SHELL_PARAMS = frozenset({"launcher"})


def job_name(project_id: str, calculation_id: str) -> str:
    """The scheduler job name of a calculation: the project and the request's identity."""
    safe = re.sub(r"[^A-Za-z0-9._-]", lambda m: f"_{ord(m.group()):x}", calculation_id.replace(
        "/", "."))
    return f"ef.{project_id}.{safe}"


def read_completion(path: Path) -> dict[str, Any] | None:
    """The completion record, or None while it is absent or half-written."""
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    except OSError:
        return None
    try:
        record = json.loads(text)
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
        self.cluster = project.config("cluster.yaml")

    def step_order(self, state: MaterialState) -> dict[str, int]:
        workflow = self.policy.workflows.get(state.workflow)
        return {name: i for i, name in enumerate(workflow.order())} if workflow else {}

    def _step(self, state: MaterialState, step: str) -> Any:
        workflow = self.policy.workflows.get(state.workflow)
        return workflow.steps.get(step) if workflow else None

    def params_for(self, state: MaterialState, calc: CalcState) -> dict[str, Any]:
        """Code defaults < step params < material params < this attempt's changes."""
        step = self._step(state, calc.step)
        params: dict[str, Any] = dict(self.code_defaults(state.code))
        params.update(dict(step.params) if step is not None else {})
        params.update(state.params)
        params.update(calc.changes)
        return params

    def code_defaults(self, code: str) -> dict[str, Any]:
        """Per-code parameters from the project's config (QE: the pseudopotential table)."""
        if code not in self._code_defaults:
            defaults: dict[str, Any] = {}
            if code == "qe":
                table = self.project.config("pseudopotentials.yaml")
                defaults["pseudopotentials"] = table
                defaults["pseudo_dir"] = os.path.expandvars(
                    str(table.get("pseudo_dir") or "/usr/share/espresso/pseudo"))
            self._code_defaults[code] = defaults
        return self._code_defaults[code]

    def resources_for(self, state: MaterialState, calc: CalcState) -> Resources:
        """Cluster defaults < the workflow step's resources < this attempt's (a retry's)."""
        step = self._step(state, calc.step)
        base = {k: v for k, v in (self.cluster.get("defaults") or {}).items() if v is not None}
        own = dict(step.resources) if step is not None else {}
        own.update(calc.resources)
        if "mem" in own or "mem_per_cpu" in own:  # one memory form only
            base.pop("mem", None)
            base.pop("mem_per_cpu", None)
        base.update(own)
        source = f"{self.project.config_path('workflows.yaml')}: step {calc.step}"
        return Resources.from_mapping(base, source=source)

    def structure_path(self, state: MaterialState) -> Path:
        folder = self.project.inside(Path("calcs") / state.id)
        for candidate in sorted(folder.glob("structure.*")):
            return candidate
        raise EventflowError(f"{folder}: the material's structure file is missing")

    def write(self, state: MaterialState, calc: CalcState) -> tuple[Path, Any]:
        """Write the job folder of ``calc``; return its job script and the InputsPrepared event."""
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
                launcher=params.get("launcher") or [],
            )
        else:
            files = {}
            commands = plugin.job_commands(calc.step, params)
        if calc.changes and files:
            files = plugin.apply_changes(files, calc.changes)
        for name, text in files.items():
            write_atomic(folder / name, text)
        spec = JobSpec(
            job_dir=str(folder),
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
