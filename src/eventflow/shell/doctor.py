"""``eventflow doctor``: check the set-up and say what is wrong and how to fix it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph",
              "fuse.sshfs", "panfs", "9p"}


def filesystem_type(path: Path) -> str:
    """The type of the mount holding ``path`` (from /proc/mounts; '?' when unknown)."""
    best, kind = "", "?"
    target = str(path.resolve())
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
            best
        ):
            best, kind = mount, parts[2]
    return kind


def _check(results: list[tuple[str, bool | None, str]], name: str, ok: bool | None,
           detail: str) -> None:
    """ok: True fine, False a problem (exit 1), None a warning (worth knowing, not fatal)."""
    results.append((name, ok, detail))


def run_doctor(project_dir: Any) -> int:
    from eventflow.errors import EventflowError
    from eventflow.shell.config import load_policy, load_workflows, pseudo_dir, scheduler_for
    from eventflow.shell.project import CONFIG_FILES, Project

    results: list[tuple[str, bool | None, str]] = []
    try:
        project = Project.at(project_dir)
    except EventflowError as exc:
        print(f"FAIL project: {exc}")
        return 1
    for name in CONFIG_FILES:
        path = project.config_path(name)
        try:
            doc = project.config(name)
            if name == "workflows.yaml" and doc:
                load_workflows(project)
            if name == "recovery.yaml" and doc:
                load_policy(project)
            _check(results, f"config {name}", True, str(path))
        except (EventflowError, ImportError) as exc:
            _check(results, f"config {name}", False, f"{exc} (fix the file)")
    try:
        scheduler, why = scheduler_for(project)
        answers = scheduler.ping()
        _check(results, "executor", answers,
               why if answers else f"{why}; it does not answer (start SLURM: "
               "slurm/local-cluster start, or set executor: local)")
    except EventflowError as exc:
        _check(results, "executor", False, str(exc))
    for program in ("pw.x", "bands.x", "dos.x"):
        found = shutil.which(program)
        _check(results, f"program {program}", found is not None,
               found or "not found (apt-get install quantum-espresso, or load its module)")
    pseudo = pseudo_dir(project.config("pseudopotentials.yaml"))
    ok = Path(pseudo).expanduser().is_dir()
    _check(results, "pseudopotentials", ok, pseudo + ("" if ok else " is not a folder (set "
                                                      "pseudo_dir in pseudopotentials.yaml)"))
    for name, program in (project.config("crystal.yaml").get("executables") or {}).items():
        argv = program if isinstance(program, list) else [program]
        found = shutil.which(str(argv[0])) if argv else None
        _check(results, f"program CRYSTAL {name}", True if found else None,
               found or f"{argv[0]} not found (set executables/modules in crystal.yaml; the "
               "modules are loaded only inside jobs, so this may be fine on a login node)")
    for label, path in (("project disk", project.root), ("state disk", project.state_dir)):
        free = shutil.disk_usage(path).free / 2**30
        _check(results, label, free > 5, f"{free:.1f} GiB free in {path}")
    kind = filesystem_type(project.log_path.parent)
    on_network = kind in NETWORK_FS
    _check(results, "log filesystem", not on_network,
           f"{project.log_path} is on {kind}" + (
               ": SQLite must not live on a network filesystem; set state_dir in "
               "config/project.yaml to a local disk of the login node" if on_network else ""))
    width = max(len(r[0]) for r in results)
    for name, ok, detail in results:
        label = {True: "ok  ", False: "FAIL", None: "warn"}[ok]
        print(f"{label} {name:<{width}}  {detail}")
    return 1 if any(ok is False for _, ok, _ in results) else 0
