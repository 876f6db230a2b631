"""One OpenSSH connection per cluster, shared by every command through a control socket.

System OpenSSH rather than a Python SSH library: it is what users already configured
(``~/.ssh/config`` with ProxyJump, agents, certificates, Kerberos, two-factor log-ins), and
ControlMaster/ControlPersist keeps one authenticated connection open, so a centre that asks
for a one-time code asks once. rsync rides on the same socket (``-e``), with checksums.

A remote command is an argv list; it reaches the remote shell only as ``shlex.join(argv)``,
so every word is one literal word there (spaces, quotes, ``;``, ``$()`` stay inert). The host
and user are checked before they are placed on ssh's own command line (no leading dash).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from eventflow.core import events as ev
from eventflow.core.clusters import check_host, check_user
from eventflow.shell.scheduler import CommandResult, SchedulerError

SSH_CONFIG_ENV = "EVENTFLOW_SSH_CONFIG"  # an ssh config file used instead of ~/.ssh/config
CONNECT_TIMEOUT_S = 10
PERSIST_S = 600
UNREACHABLE = 255  # ssh's own exit status when the connection failed


class Unreachable(SchedulerError):
    """ssh could not reach the cluster (not: the remote command failed)."""


class SshConnection:
    """``run(argv)`` on one cluster over a shared ControlMaster connection."""

    def __init__(self, cluster: ev.ClusterAdded, control_dir: Path) -> None:
        self.cluster = cluster
        if cluster.ssh_config_host:
            self.destination = check_host(cluster.ssh_config_host, "ssh config host")
        else:
            self.destination = check_host(cluster.host)
        # A socket path must stay short (108 bytes, and ssh adds a random suffix while it
        # binds): a folder of this user's under the temporary folder, the socket named by a
        # hash of the project's own place for it and the cluster's definition.
        short = Path(tempfile.gettempdir()) / f"eventflow-ssh-{os.getuid()}"
        short.mkdir(mode=0o700, exist_ok=True)
        if short.stat().st_uid != os.getuid() or short.is_symlink():
            raise SchedulerError(f"{short}: not this user's own folder; refusing its sockets")
        tag = hashlib.sha256(repr((str(control_dir), attrs_tuple(cluster))).encode())
        self.control_path = str(short / f"{tag.hexdigest()[:20]}.sock")
        self.round_trips = 0  # every ssh or rsync started: the benchmark counts them
        self.failure: str | None = None  # why the last command could not reach the cluster

    def ssh_options(self) -> list[str]:
        options = []
        config = os.environ.get(SSH_CONFIG_ENV)
        if config:
            options += ["-F", config]
        options += [
            "-o", "BatchMode=yes",  # never prompt inside the watcher: the master asks first
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self.control_path}",
            "-o", f"ControlPersist={PERSIST_S}",
            "-o", "ServerAliveInterval=15",
        ]
        if self.cluster.user and not self.cluster.ssh_config_host:
            options += ["-l", check_user(self.cluster.user)]
        if self.cluster.port and not self.cluster.ssh_config_host:
            options += ["-p", str(int(self.cluster.port))]
        return options

    def command(self, argv: Sequence[str]) -> list[str]:
        """The local argv that runs ``argv`` on the cluster (each word quoted for its shell)."""
        if not argv:
            raise ValueError("no remote command")
        return ["ssh", *self.ssh_options(), "--", self.destination, shlex.join(argv)]

    def run(self, argv: Sequence[str], timeout: float, stdin: bytes | None = None
            ) -> CommandResult:
        """Run ``argv`` remotely (``stdin``: bytes for its standard input); ssh's own failure
        to connect raises Unreachable."""
        self.round_trips += 1
        extra = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
        try:
            done = subprocess.run(self.command(argv), capture_output=True, timeout=timeout,
                                  check=False, **extra)  # type: ignore[call-overload]
        except subprocess.TimeoutExpired as exc:
            raise self._unreachable(f"no answer within {timeout:g} s") from exc
        out = done.stdout.decode(errors="replace")
        err = done.stderr.decode(errors="replace")
        if done.returncode == UNREACHABLE and _is_ssh_failure(err):
            raise self._unreachable(" ".join(err.split())[:300])
        if done.returncode == UNREACHABLE and not err.strip():
            # A command on a shared (ControlMaster) connection whose server died under it:
            # ssh exits 255 and says nothing. Not the command's own failure.
            raise self._unreachable("the connection was lost during the command (ssh exited "
                                    "255 without a message)")
        self.failure = None
        return CommandResult(done.returncode, out, err)

    def _unreachable(self, why: str) -> Unreachable:
        self.failure = why
        return Unreachable(f"{self.cluster.name}: {why}")

    def rsync(self, sources: Sequence[str], dest: str, timeout: float,
              extra: Sequence[str] = ()) -> None:
        """rsync with checksums over the shared connection; remote paths are ``:path`` words
        (``--protect-args``: the remote side takes them literally, no shell)."""
        self.round_trips += 1
        argv = ["rsync", "-rlt", "--checksum", "--protect-args", "--mkpath", *extra,
                "-e", shlex.join(["ssh", *self.ssh_options()]), "--", *sources, dest]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise self._unreachable(f"rsync did not finish in {timeout:g} s") from exc
        if done.returncode != 0:
            message = " ".join(done.stderr.split())[:300]
            if done.returncode in (12, 255) or _is_ssh_failure(done.stderr):
                raise self._unreachable(f"rsync: {message}")
            raise SchedulerError(f"{self.cluster.name}: rsync: {message}")
        self.failure = None

    def remote(self, path: str) -> str:
        """``path`` as an rsync remote argument on this cluster."""
        if path.startswith("-"):
            raise ValueError(f"remote path {path!r} starts with '-'")
        return f"{self.destination}:{path}"

    def close(self) -> None:
        """Stop the master connection (if one runs)."""
        subprocess.run(["ssh", *self.ssh_options(), "-O", "exit", "--", self.destination],
                       capture_output=True, timeout=CONNECT_TIMEOUT_S, check=False,
                       stdin=subprocess.DEVNULL)


def attrs_tuple(cluster: ev.ClusterAdded) -> tuple:
    import attrs

    return attrs.astuple(cluster)


def _is_ssh_failure(stderr: str) -> bool:
    words = ("ssh:", "Connection refused", "Connection closed", "Connection reset",
             "Could not resolve", "timed out", "Permission denied", "Host key verification",
             "kex_exchange", "Broken pipe", "mux_client", "Control socket")
    return any(w in stderr for w in words)
