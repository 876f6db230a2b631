"""``eventflow cluster add | list | check | remove``: remote SLURM clusters reached over SSH."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

from eventflow.shell.cli import _print_json, _tracker, command


def register(sub: Any) -> None:
    p = sub.add_parser("cluster", help="remote SLURM clusters reached over SSH")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", help="add | list | check | remove")
    verbs.required = True
    a = verbs.add_parser("add", help="define a cluster (an event in the log)")
    a.add_argument("name", help="the cluster's name in this project")
    a.add_argument("--host", required=True, help="host name (or the alias's HostName)")
    a.add_argument("--user", help="remote user (default: ssh's)")
    a.add_argument("--port", type=int, help="ssh port (default: ssh's)")
    a.add_argument("--ssh-config-host", help="a Host alias of ~/.ssh/config to connect through")
    a.add_argument("--workdir", required=True, help="absolute remote folder for job folders")
    a.add_argument("--partition", help="sbatch --partition for its jobs")
    a.add_argument("--qos", help="sbatch --qos for its jobs")
    a.add_argument("--account", help="sbatch --account for its jobs")
    a.add_argument("--max-jobs", type=int, help="at most N jobs there at once")
    ls = verbs.add_parser("list", help="the clusters defined now")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    c = verbs.add_parser("check", help="connect, ask SLURM, test the work folder, time it")
    c.add_argument("name", help="the cluster to check")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    r = verbs.add_parser("remove", help="forget a cluster (refused while it has active jobs)")
    r.add_argument("name", help="the cluster to forget")
    r.add_argument("--reason", default="", help="why (recorded in the log)")
    main = sys.modules.get("__main__")
    commands = getattr(main, "COMMANDS", None)
    if isinstance(commands, dict) and getattr(main, "command", command) is not command:
        commands.update({"cluster": cmd_cluster})


@command("cluster")
def cmd_cluster(args: argparse.Namespace) -> int:
    from eventflow.shell import clusters

    with _tracker(args) as tracker:
        if args.verb == "add":
            from eventflow.core import events as ev

            clusters.add(tracker, ev.ClusterAdded(
                name=args.name, host=args.host, workdir=args.workdir, user=args.user,
                port=args.port, ssh_config_host=args.ssh_config_host,
                partition=args.partition, qos=args.qos, account=args.account,
                max_jobs=args.max_jobs))
            print(f"cluster {args.name}: added ({args.host}, {args.workdir})")
        elif args.verb == "list":
            defined = clusters.defined(tracker.store)
            if args.json:
                import attrs

                _print_json({"clusters": [attrs.asdict(c) for c in defined.values()]})
            else:
                for c in defined.values():
                    where = c.ssh_config_host or c.host
                    print(f"{c.name}\t{where}\t{c.workdir}\t{c.partition or ''}")
        elif args.verb == "remove":
            clusters.remove(tracker, args.name, args.reason)
            print(f"cluster {args.name}: removed")
        else:
            return _check(tracker, args)
    return 0


def _check(tracker: Any, args: argparse.Namespace) -> int:
    """Connect, ask SLURM, write and remove a file in the work folder; say how long each took."""
    from eventflow.core.clusters import ClusterError, check_workdir
    from eventflow.shell.clusters import defined
    from eventflow.shell.remote import RemoteScheduler
    from eventflow.shell.scheduler import SchedulerError

    cluster = defined(tracker.store).get(args.name)
    if cluster is None:
        raise ClusterError(f"no cluster {args.name!r}")
    with tempfile.TemporaryDirectory() as control:
        from pathlib import Path

        remote = RemoteScheduler(cluster, tracker.project.root, Path(control), timeout=30)
        results: dict[str, Any] = {}
        workdir = check_workdir(cluster.workdir)
        probe = f"{workdir}/.eventflow-check"
        checks = [
            ("connect", ["true"]),
            ("sbatch", ["sbatch", "--version"]),
            ("squeue", ["squeue", "--noheader", "--me"]),
            ("workdir", ["sh", "-c", 'mkdir -p -- "$1" && touch -- "$2" && rm -f -- "$2"',
                         "check", workdir, probe]),
        ]
        ok = True
        try:
            for label, argv in checks:
                start = time.monotonic()
                try:
                    done = remote.ssh.run(argv, 30)
                    good, text = done.returncode == 0, (done.stdout or done.stderr).strip()
                except SchedulerError as exc:
                    good, text = False, str(exc)
                results[label] = {"ok": good, "seconds": round(time.monotonic() - start, 3),
                                  "output": text.splitlines()[0][:200] if text else ""}
                ok = ok and good
                if not good and label == "connect":
                    break
        finally:
            remote.close()
    if args.json:
        _print_json({"cluster": cluster.name, "ok": ok, "checks": results})
    else:
        for label, r in results.items():
            print(f"{label:8} {'ok ' if r['ok'] else 'FAIL'} {r['seconds']:.3f} s  {r['output']}")
    return 0 if ok else 1
