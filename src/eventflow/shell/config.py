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
    path = project.config_path("recovery.yaml")
    if not path.is_file():
        return PolicyConfig(workflows=workflows)
    rules = recovery.parse_recovery(project.config("recovery.yaml"), source=str(path))
    return PolicyConfig(workflows=workflows, recovery=rules, recover=recovery.recover)
