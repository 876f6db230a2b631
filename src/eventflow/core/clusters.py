"""Clusters as facts: the fold of ClusterAdded/ClusterRemoved, and the checks on what may reach
a remote shell (names, hosts, folders).

Pure: the shell reads the system stream and hands the events here.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from typing import Any

from eventflow.core import events as ev
from eventflow.errors import EventflowError

LOCAL = "local"  # the cluster this machine submits to directly (today's default)
# Names a local job's JobSubmitted.scheduler already carries: no remote cluster may take them.
RESERVED = frozenset({LOCAL, "slurm", "auto"})

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
# What OpenSSH accepts as a host or user: no leading dash (it would be read as an option),
# no whitespace, quotes or shell syntax.
_HOST = re.compile(r"[A-Za-z0-9_.:\[\]%][A-Za-z0-9_.:\[\]%-]{0,252}")
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ClusterError(EventflowError, ValueError):
    """A cluster definition or a remote path that eventflow refuses."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in RESERVED:
        raise ClusterError(f"cluster name {name!r}: use a letter, then letters, digits, '_' or "
                           f"'-' (at most 40), and not {', '.join(sorted(RESERVED))}")
    return name


def check_host(host: str, what: str = "host") -> str:
    if not isinstance(host, str) or not _HOST.fullmatch(host):
        raise ClusterError(f"{what} {host!r}: not a host name (letters, digits, '.', '-', ':'; "
                           f"no leading '-', spaces or quotes)")
    return host


def check_user(user: str) -> str:
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise ClusterError(f"user {user!r}: not a user name (letters, digits, '.', '_', '-'; "
                           f"no leading '-')")
    return user


def check_workdir(path: str) -> str:
    if (not isinstance(path, str) or not path.startswith("/") or _CONTROL.search(path)
            or posixpath.normpath(path) == "/"):
        raise ClusterError(f"remote work folder {path!r}: must be an absolute path below '/' "
                           f"without control characters")
    return posixpath.normpath(path)


def remote_path(workdir: str, relative: str) -> str:
    """``relative`` (a job folder relative to the project) under the cluster's work folder;
    anything that would leave it (``..``, an absolute path) is refused."""
    base = check_workdir(workdir)
    if (not isinstance(relative, str) or relative.startswith("/") or _CONTROL.search(relative)
            or not relative.strip()):
        raise ClusterError(f"remote path {relative!r}: must be relative to {base}")
    joined = posixpath.normpath(posixpath.join(base, relative))
    if joined != base and not joined.startswith(base + "/"):
        raise ClusterError(f"remote path {relative!r} leaves the work folder {base}")
    return joined


def check_added(event: ev.ClusterAdded) -> ev.ClusterAdded:
    """Every field of a ClusterAdded checked (raises ClusterError naming the bad one)."""
    check_name(event.name)
    check_host(event.host)
    check_workdir(event.workdir)
    if event.user is not None:
        check_user(event.user)
    if event.ssh_config_host is not None:
        check_host(event.ssh_config_host, "ssh config host")
    if event.port is not None and not (0 < int(event.port) < 65536):
        raise ClusterError(f"port {event.port}: must be 1..65535")
    if event.max_jobs is not None and int(event.max_jobs) < 1:
        raise ClusterError(f"max_jobs {event.max_jobs}: must be at least 1")
    for field in ("partition", "qos", "account"):
        value = getattr(event, field)
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", value):
            raise ClusterError(f"{field} {value!r}: letters, digits, '_', '.', '+', '-' only")
    return event


def fold_clusters(events: Iterable[Any]) -> dict[str, ev.ClusterAdded]:
    """The clusters defined now: the last ClusterAdded of each name not removed after it."""
    clusters: dict[str, ev.ClusterAdded] = {}
    for event in events:
        if isinstance(event, ev.ClusterAdded):
            clusters[event.name] = event
        elif isinstance(event, ev.ClusterRemoved):
            clusters.pop(event.name, None)
    return clusters
