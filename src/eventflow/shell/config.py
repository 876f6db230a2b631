"""Loading the project's configuration into the pure core's config objects."""

from __future__ import annotations

from typing import Any

from eventflow.core.policy import PolicyConfig
from eventflow.core.workflow import BUILTIN, parse_workflows
from eventflow.shell.project import Project

# Where Debian's quantum-espresso-data puts its pseudopotentials: the default pseudo_dir.
DEFAULT_PSEUDO_DIR = "/usr/share/espresso/pseudo"


def pseudo_dir(table: dict[str, Any]) -> str:
    """The folder of the pseudopotential files: pseudopotentials.yaml's pseudo_dir or Debian's."""
    import os

    return os.path.expandvars(str(table.get("pseudo_dir") or DEFAULT_PSEUDO_DIR))


def load_workflows(project: Project) -> dict:
    from eventflow.core.yamltext import load_with_lines

    path = project.config_path("workflows.yaml")
    workflows = dict(BUILTIN)
    if path.is_file():
        doc, lines = load_with_lines(path.read_text(encoding="utf-8"), str(path))
        workflows.update(parse_workflows(doc or {}, source=str(path), lines=lines))
    return workflows


def load_policy(project: Project) -> PolicyConfig:
    workflows = load_workflows(project)
    try:
        from eventflow.core import recovery
    except ImportError:  # the recovery policy is optional until configured
        return PolicyConfig(workflows=workflows)
    from eventflow.resources import data_text

    own = project.root / "config" / "recovery.yaml"
    user_text = own.read_text(encoding="utf-8") if own.is_file() else None
    rules = recovery.load_recovery_texts(data_text("config", "recovery.yaml"), user_text,
                                         user_source=str(own))
    return PolicyConfig(workflows=workflows, recovery=rules, recover=recovery.recover,
                        review=recovery.review)


def scheduler_for(project: Project) -> tuple[Any, str]:
    """The project's scheduler (cluster.yaml `executor`, else project.yaml's, else auto) and a
    sentence saying which was chosen and why."""
    from eventflow.shell.scheduler import choose_scheduler

    cluster = project.config("cluster.yaml")
    executor = str(cluster.get("executor") or project.config("project.yaml").get("executor")
                   or "auto")
    settings = cluster.get("scheduler") or {}
    return choose_scheduler(executor, project.state_dir,
                            timeout=float(settings.get("command_timeout_s", 30)),
                            kill_wait=float(settings.get("local_kill_wait_s", 5)))
