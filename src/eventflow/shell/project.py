"""Where a project's files are, and its configuration.

A project is a folder with ``.eventflow/`` in it. The log and projections live
in the state folder, ``.eventflow/`` by default; on a cluster it can be moved to
the login node's local disk (``state_dir`` in config/project.yaml or
``EVENTFLOW_STATE_DIR``), because SQLite must not live on NFS/Lustre.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import attrs
import yaml

from eventflow.errors import ConfigError, EventflowError, ProjectNotFound
from eventflow.resources import data_file

MARKER = ".eventflow"
CONFIG_FILES = (
    "project.yaml",
    "cluster.yaml",
    "workflows.yaml",
    "recovery.yaml",
    "pseudopotentials.yaml",
    "crystal.yaml",
    "naming.yaml",
)


def find_root(start: Path | str | None = None) -> Path:
    """The project folder: ``start`` (or $EVENTFLOW_PROJECT, or the cwd) or its nearest parent
    holding ``.eventflow/``."""
    if start is None:
        start = os.environ.get("EVENTFLOW_PROJECT") or Path.cwd()
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / MARKER).is_dir():
            return folder
    raise ProjectNotFound(
        f"{here}: not inside an eventflow project (no {MARKER}/ here or above); "
        "run `eventflow init` or pass --project DIR"
    )


# libyaml's parser when PyYAML was built with it: the same safe constructor, ~10x faster.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The watcher reads its config files every cycle (so a user's edit takes effect without a
# restart); parsing them again each time was a fifth of a cycle's CPU. Keyed on the file's
# identity and mtime, so an edited (or replaced) file is read afresh.
_parsed: dict[str, tuple[tuple[int, int, int], Any]] = {}


def load_yaml(path: Path) -> Any:
    """The YAML document at ``path`` (a private copy: callers may change it)."""
    try:
        info = path.stat()
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        cached = _parsed.get(str(path))
        if cached is not None and cached[0] == stamp:
            return copy.deepcopy(cached[1])
        with path.open(encoding="utf-8") as handle:
            doc = yaml.load(handle, Loader=_SafeLoader)
        _parsed[str(path)] = (stamp, doc)
        return copy.deepcopy(doc)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


_project_ids: dict[tuple[str, int, int, int], str] = {}


@attrs.frozen
class Project:
    root: Path
    state_dir: Path

    @classmethod
    def at(cls, start: Path | str | None = None) -> Project:
        root = find_root(start)
        return cls(root, _state_dir(root))

    @property
    def log_path(self) -> Path:
        return self.state_dir / "events.db"

    @property
    def store(self) -> str:
        """Where the log is: ``$EVENTFLOW_STORE``, else ``store:`` in config/project.yaml (a
        ``postgresql://`` URL), else the SQLite file in the state folder."""
        return _store(self.root) or str(self.log_path)

    @property
    def projections_path(self) -> Path:
        return self.state_dir / "projections.db"

    @property
    def structures_db(self) -> Path:
        return self.state_dir / "structures.db"

    @property
    def calcs(self) -> Path:
        return self.root / "calcs"

    @property
    def lock_path(self) -> Path:
        # Beside the marker, not in state_dir: it must be shared by every login node.
        return self.root / MARKER / "watcher.lock"

    @property
    def project_id(self) -> str:
        """A short random id made at init: job names carry it, so two projects (or a project
        deleted and made again in the same place) never mistake each other's jobs."""
        path = self.root / MARKER / "project-id"
        try:
            # Asked for on every submit and reconcile: read once per file (a project made
            # again in the same place has a new file, hence a new stamp).
            info = path.stat()
            stamp = (str(path), info.st_ino, info.st_mtime_ns, info.st_size)
            if stamp not in _project_ids:
                _project_ids[stamp] = path.read_text().strip()
            return _project_ids[stamp]
        except FileNotFoundError:
            pass
        import secrets

        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(4) + "\n")
        return path.read_text().strip()

    def config_path(self, name: str) -> Path:
        """The project's copy of a config file, else the default shipped in the package."""
        own = self.root / "config" / name
        if own.is_file():
            return own
        return Path(str(data_file("config", name)))

    def config(self, name: str) -> dict[str, Any]:
        path = self.config_path(name)
        if not path.is_file():
            return {}
        doc = load_yaml(path)
        if doc is None:
            return {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return doc

    def inside(self, relative: str | Path) -> Path:
        """``root / relative``, refusing anything that would escape the project folder."""
        path = (self.root / relative).resolve()
        if path != self.root.resolve() and self.root.resolve() not in path.parents:
            raise EventflowError(f"{relative}: path escapes the project folder {self.root}")
        return path


def _state_dir(root: Path) -> Path:
    env = os.environ.get("EVENTFLOW_STATE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    project_yaml = root / "config" / "project.yaml"
    if project_yaml.is_file():
        doc = load_yaml(project_yaml) or {}
        if isinstance(doc, dict) and doc.get("state_dir"):
            path = Path(str(doc["state_dir"])).expanduser()
            return (path if path.is_absolute() else root / path).resolve()
    return root / MARKER


def _store(root: Path) -> str | None:
    env = os.environ.get("EVENTFLOW_STORE")
    if env:
        return check_store_url(env, "EVENTFLOW_STORE")
    project_yaml = root / "config" / "project.yaml"
    if project_yaml.is_file():
        doc = load_yaml(project_yaml) or {}
        if isinstance(doc, dict) and doc.get("store"):
            return check_store_url(str(doc["store"]), str(project_yaml))
    return None


def check_store_url(url: str, where: str) -> str:
    """``url`` if it is a PostgreSQL URL without a password; the password belongs in libpq's
    own places (~/.pgpass, PGPASSWORD, a service file), never in eventflow's files."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"{where}: store {url!r} is not a postgresql:// URL")
    if parts.password is not None or "password" in parse_qs(parts.query):
        raise ConfigError(f"{where}: the store URL holds a password; put it in ~/.pgpass, "
                          "PGPASSWORD or a service file instead")
    return url


def set_store(project: Project, url: str) -> None:
    """Record ``store: url`` in the project's config/project.yaml (kept as the user wrote it
    otherwise: one line added or replaced)."""
    check_store_url(url, "--store")
    path = project.root / "config" / "project.yaml"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    lines = [line for line in lines if not line.startswith("store:")]
    lines.append(f"store: {yaml.safe_dump(url, default_style=chr(34)).strip()}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def initialise(directory: Path | str) -> Project:
    """Make ``directory`` a project (idempotent); copy the editable defaults into config/."""
    root = Path(directory).resolve()
    (root / MARKER).mkdir(parents=True, exist_ok=True)
    config_dir = root / "config"
    config_dir.mkdir(exist_ok=True)
    for name in CONFIG_FILES:
        target = config_dir / name
        source = data_file("config", name)
        if not target.exists() and source.is_file():
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
            os.replace(tmp, target)
    project = Project(root, _state_dir(root))
    project.state_dir.mkdir(parents=True, exist_ok=True)
    project.project_id  # noqa: B018 - made now, at init, so it exists before any job
    return project
