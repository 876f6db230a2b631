"""Loading the project's configuration into the pure core's config objects."""

from __future__ import annotations

from eventflow.core.policy import PolicyConfig
from eventflow.core.workflow import BUILTIN, parse_workflows
from eventflow.shell.project import Project


def load_workflows(project: Project) -> dict:
    path = project.config_path("workflows.yaml")
    workflows = dict(BUILTIN)
    if path.is_file():
        workflows.update(parse_workflows(project.config("workflows.yaml"), source=str(path)))
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
    return PolicyConfig(workflows=workflows, recovery=rules, recover=recovery.recover)
