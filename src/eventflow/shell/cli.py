"""The ``eventflow`` command line: the only place errors become messages and exit codes.

Exit 0 on success, 1 on an error reported in one line, 2 on wrong usage.
Heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eventflow import __version__
from eventflow.core.lifecycle import MATERIAL_STATES
from eventflow.errors import EventflowError

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _tracker(args: argparse.Namespace) -> Any:
    from eventflow.shell.api import Tracker

    return Tracker.open(args.project)


def _console() -> Any:
    from rich.console import Console

    return Console()


# --- init / status / show ---------------------------------------------------------------------


@command("init")
def cmd_init(args: argparse.Namespace) -> int:
    from eventflow.shell.api import Tracker

    with Tracker.init(args.directory, store=args.store) as tracker:
        print(f"initialised eventflow project in {tracker.project.root}")
        print(f"  event log:     {tracker.store.path}")
        print(f"  configuration: {tracker.project.root / 'config'}/")
    return 0


def _status_table(rows: list[dict[str, Any]], title: str, width: int) -> Any:
    from eventflow.shell.tables import Column, fitted

    columns = [Column("material"), Column("formula", optional=True), Column("state"),
               Column("step"), Column("cluster", optional=True),
               Column("attempts"), Column("reason", text=True),
               Column("workflow", optional=True), Column("updated", optional=True)]
    cells = [[r["id"], r["formula"] or "", r["state"], r["current_step"] or "",
              r.get("cluster") or "", str(r["attempts"]), r["reason"] or "",
              r["workflow"] or "", (r["updated_at"] or "")[:19]] for r in rows]
    return fitted(title, columns, cells, width)


@command("status")
def cmd_status(args: argparse.Namespace) -> int:
    from eventflow.shell.clusters import with_outages

    with _tracker(args) as tracker:
        tracker.projections.catch_up(tracker.store)
        if args.live:
            return _status_live(tracker, args)
        if args.json:
            rows = with_outages(tracker.store, tracker.projections.materials(args.state))
            _print_json({"materials": rows, "counts": tracker.projections.state_counts(),
                         "last_seq": tracker.projections.last_seq()})
            return 0
        counts = tracker.projections.state_counts()
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no materials"
        limit = None if args.all else args.limit
        rows = with_outages(tracker.store, tracker.projections.materials(args.state,
                                                                         limit=limit))
        console = _console()
        console.print(_status_table(rows, f"eventflow status: {summary}", console.width))
        shown = counts.get(args.state, 0) if args.state else sum(counts.values())
        if limit is not None and shown > len(rows):
            print(f"... and {shown - len(rows)} more (the first {limit} shown, those that want a "
                  "look first; --all for every one, --state S to filter)")
    return 0


def _status_live(tracker: Any, args: argparse.Namespace) -> int:
    from eventflow.shell.clusters import with_outages
    from eventflow.shell.tables import live

    seen = -1
    console = _console()
    try:
        with live(console, "", auto_refresh=False) as display:
            while True:
                tracker.projections.catch_up(tracker.store)
                last = tracker.projections.last_seq()
                if last != seen:
                    seen = last
                    rows = with_outages(tracker.store, tracker.projections.materials(
                        args.state, limit=args.limit))
                    display.update(_status_table(rows, f"eventflow status (live, seq {last})",
                                                 console.width), refresh=True)
                time.sleep(0.3)
    except KeyboardInterrupt:
        return 0


@command("show")
def cmd_show(args: argparse.Namespace) -> int:
    from eventflow.core.ids import check_material_id
    from eventflow.shell.clusters import with_outages

    mid = check_material_id(args.material)
    with _tracker(args) as tracker:
        tracker.projections.catch_up(tracker.store)
        material = tracker.projections.material(mid)
        if material is None:
            raise EventflowError(f"no material {mid!r} in {tracker.store.path}")
        (material,) = with_outages(tracker.store, [material])  # as status says it
        calcs = tracker.projections.calculations(mid)
        props = tracker.projections.properties(mid)
        errors = tracker.projections.errors(mid)
        history = [_event_dict(r) for r in tracker.store.read(stream=mid)]
        # The cluster each job ran on, as its submission recorded it.
        cluster = {h["data"].get("calculation_id"): h["data"].get("scheduler") or ""
                   for h in history if h["type"] == "JobSubmitted"}
        calcs = [{**c, "cluster": cluster.get(c["id"], "")} for c in calcs]
        if args.json:
            _print_json({"material": material, "calculations": calcs, "properties": props,
                         "errors": errors, "events": history})
            return 0
        console = _console()
        console.print(f"[bold]{mid}[/bold] {material['formula']}  workflow={material['workflow']}"
                      f"  state=[bold]{material['state']}[/bold]"
                      + (f"  ({material['reason']})" if material["reason"] else ""))
        console.print(_calculations_table(calcs, console.width))
        if props:
            console.print(_properties_table(props, console.width))
        warned = [(h["data"].get("calculation_id", ""), w) for h in history
                  if h["type"] == "CalculationSucceeded"
                  for w in (h["data"].get("summary") or {}).get("warnings", [])]
        if warned:  # whole sentences (a low-cutoff vc-relax says to raise ecutwfc), never cut
            console.print("[bold]warnings[/bold] in the outputs of succeeded calculations")
            for cid, warning in warned:
                print(f"  {cid}: {warning}")
        console.print("[bold]history[/bold]")
        for h in history:
            print(_event_line(h))
    return 0


def _calculations_table(calcs: list[dict[str, Any]], width: int) -> Any:
    from eventflow.shell.tables import Column, fitted

    columns = [Column("calculation"), Column("state"), Column("cluster"), Column("job"),
               Column("error", text=True), Column("finished"),
               Column("requested", optional=True)]
    cells = [[c["id"], c["state"], c.get("cluster") or "", c["job_id"] or "",
              c["error_kind"] or "",
              (c["finished_at"] or "")[:19], (c["requested_at"] or "")[:19]] for c in calcs]
    return fitted("calculations", columns, cells, width)


def _properties_table(props: list[dict[str, Any]], width: int) -> Any:
    from eventflow.shell.tables import Column, fitted

    columns = [Column("name"), Column("value"), Column("unit"), Column("calculation")]
    cells = [[p["name"], _fmt(p["value"]), p["unit"] or "", p["calculation_id"]] for p in props]
    return fitted("properties", columns, cells, width)


def _fmt(value: Any) -> str:
    """Every digit the log holds: the shortest text that reads back as the same float."""
    return repr(value) if isinstance(value, float) else str(value)


# --- tail -------------------------------------------------------------------------------------


def _event_dict(rec: Any) -> dict[str, Any]:
    return {
        "seq": rec.seq, "stream": rec.stream, "version": rec.version, "type": rec.type,
        "schema_version": rec.event.VERSION, "recorded_at": rec.recorded_at,
        "data": rec.event.to_data(), "meta": rec.meta, "idempotency_key": rec.idempotency_key,
    }


def _event_line(d: dict[str, Any]) -> str:
    data = d["data"]
    brief = " ".join(
        f"{k}={v}" for k, v in data.items() if v not in ("", None, {}, []) and k != "evidence"
    )
    return f"{d['seq']:>7} {d['recorded_at'][:23]} {d['stream']:<20} {d['type']:<22} {brief[:160]}"


@command("tail")
def cmd_tail(args: argparse.Namespace) -> int:
    with _tracker(args) as tracker:
        from eventflow.shell.follow import follow

        store = tracker.store
        types = [args.type] if args.type else None
        head = store.last_seq()  # followed from here: see shell.follow
        last = max(0, head - 10 * args.n) if args.n else 0
        recent = list(store.read(after=last, until_seq=head, stream=args.material,
                                 types=types))[-args.n:] if args.n else []
        emit = (lambda d: print(json.dumps(d, sort_keys=True, default=str), flush=True)) \
            if args.json else (lambda d: print(_event_line(d), flush=True))
        if args.n and len(recent) < args.n and last > 0:
            recent = list(store.read(until_seq=head, stream=args.material,
                                     types=types))[-args.n:]
        for rec in recent:
            emit(_event_dict(rec))
        if not args.follow:
            return 0
        def lost(exc: Exception | None, wait: float) -> None:  # a log server restarting
            print(f"eventflow: waiting for the log's server (retrying in {wait:g} s): {exc}"
                  if exc is not None else "eventflow: the log's server answers again",
                  file=sys.stderr, flush=True)

        try:
            for rec in follow(store, head, stream=args.material, types=types, lost=lost):
                emit(_event_dict(rec))
        except KeyboardInterrupt:
            return 0


# --- replay / verify / backup / restore -------------------------------------------------------


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _until(value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    if value.isdigit():
        return {"until_seq": int(value)}
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise EventflowError(f"--until {value!r}: not a seq number or an ISO-8601 time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return {"until_time": moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}


@command("replay")
def cmd_replay(args: argparse.Namespace) -> int:
    from eventflow.shell.project import Project
    from eventflow.shell.projections import Projections, fold_log, open_projections, rows_of
    from eventflow.shell.store import open_store

    project = Project.at(args.project)
    if args.what_if:
        from eventflow.shell.whatif import run_what_if

        return run_what_if(project, args)
    until = _until(args.until)
    with open_store(project.store) as store:
        if not until and not args.output:
            started = time.perf_counter()
            live = open_projections(project, create=True)
            last = live.rebuild(store, jobs=args.workers)
            n = sum(live.state_counts().values())
            live.close()
            if args.json:
                _print_json({"last_seq": last, "materials": n})
            else:
                print(f"rebuilt {live.name} from {last} events "
                      f"({n} materials) in {time.perf_counter() - started:.2f} s")
            return 0
        if args.output:
            out = Path(args.output).resolve()
            if out in (project.projections_path.resolve(), project.log_path.resolve()):
                raise EventflowError(f"{out}: refusing to overwrite the live log or projections")
            if out.exists():
                out.unlink()
            target = Projections(out, create=True)
            last = target.rebuild(store, jobs=args.workers, **until)
            target.close()
            print(f"wrote projections as of seq {last} to {out}")
            return 0
        states, last = fold_log(store, **until)
        rows = rows_of(states.values())
        materials = [
            {"id": r[0], "formula": r[1], "workflow": r[2], "code": r[3], "state": r[4],
             "current_step": r[5], "attempts": r[6], "reason": r[7], "updated_at": r[8],
             "cluster": r[10]}
            for r in sorted(rows["materials"])
        ]
        if args.json:
            _print_json({"last_seq": last, "materials": materials})
        else:
            console = _console()
            console.print(_status_table(materials, f"as of seq {last}", console.width))
    return 0


@command("verify")
def cmd_verify(args: argparse.Namespace) -> int:
    from eventflow.shell.project import Project
    from eventflow.shell.projections import fold_log, open_projections, rows_of
    from eventflow.shell.store import open_store
    from eventflow.shell.store_pg import is_postgres

    project = Project.at(args.project)
    with open_store(project.store) as store:
        count, problems = store.verify_chain()
        if not problems and (is_postgres(project.store) or project.projections_path.exists()):
            stored = open_projections(project)
            at = stored.last_seq()
            mine = stored.dump()
            stored.close()
            states, _ = fold_log(store, until_seq=at)
            fresh = {t: sorted(r, key=repr) for t, r in rows_of(states.values()).items()}
            for table, rows in fresh.items():
                if [tuple(r) for r in rows] != [tuple(r) for r in mine[table]]:
                    problems.append(f"projection table {table!r} differs from a fresh replay "
                                    f"(as of seq {at}): run `eventflow replay`")
    if problems:
        for p in problems:
            print(f"{store.path}: {p}", file=sys.stderr)
        return 1
    print(f"ok: {count} events, hash chain intact, projections match a fresh replay")
    return 0


@command("backup")
def cmd_backup(args: argparse.Namespace) -> int:
    from eventflow.shell.project import Project
    from eventflow.shell.store import open_store

    project = Project.at(args.project)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / f"events-{time.strftime('%Y%m%dT%H%M%S')}.db"
    with open_store(project.store) as store:
        store.backup(dest)
        print(f"backed up {store.last_seq()} events to {dest}")
    return 0


@command("restore")
def cmd_restore(args: argparse.Namespace) -> int:
    from eventflow.shell.project import Project
    from eventflow.shell.projections import Projections
    from eventflow.shell.store import EventStore

    project = Project.at(args.project)
    if project.store != str(project.log_path):
        raise EventflowError(f"{project.store}: restore a PostgreSQL log with the server's tools "
                             "(pg_restore, or point-in-time recovery from its WAL archive)")
    src = Path(args.src)
    with EventStore(src) as backup:
        count, problems = backup.verify_chain()
        if problems:
            raise EventflowError(f"{src}: backup fails verification: {problems[0]}")
        theirs = backup.last_seq()
        if project.log_path.exists() and not args.force:
            with EventStore(project.log_path) as current:
                mine = current.last_seq()
            if mine > theirs:
                raise EventflowError(
                    f"{project.log_path} has {mine} events, the backup {theirs}: refusing to "
                    "overwrite a newer log (use --force)"
                )
        tmp = project.log_path.with_name("events.db.restoring")
        backup.backup(tmp)
    for suffix in ("-wal", "-shm"):
        Path(str(project.log_path) + suffix).unlink(missing_ok=True)
    os.replace(tmp, project.log_path)
    with EventStore(project.log_path) as store:
        proj = Projections(project.projections_path, create=True)
        proj.rebuild(store)
        proj.close()
    print(f"restored {count} events from {src}; projections rebuilt")
    return 0


# --- manual control ---------------------------------------------------------------------------


@command("hold")
def cmd_hold(args: argparse.Namespace) -> int:
    with _tracker(args) as tracker:
        tracker.hold(args.material, args.reason)
    print(f"{args.material}: held")
    return 0


@command("release")
def cmd_release(args: argparse.Namespace) -> int:
    with _tracker(args) as tracker:
        tracker.release(args.material, args.reason)
    print(f"{args.material}: released")
    return 0


@command("cancel")
def cmd_cancel(args: argparse.Namespace) -> int:
    with _tracker(args) as tracker:
        jobs = tracker.cancel(args.material, args.reason)
        if jobs:
            from eventflow.shell.routing import cancel_jobs

            cancel_jobs(tracker, jobs, args.material)
    print(f"{args.material}: cancelled" + (f" (jobs {', '.join(jobs)})" if jobs else ""))
    return 0


# --- parse ------------------------------------------------------------------------------------


@command("parse")
def cmd_parse(args: argparse.Namespace) -> int:
    from eventflow.shell.parsing import parse_file

    result = parse_file(Path(args.file), code=args.code)
    if args.json:
        _print_json(result.to_dict())
        return 0
    d = result.to_dict()
    print(f"{args.file}: {d['code']} {d['program'] or '?'} {d['calculation'] or '?'} "
          f"status={d['status']}" + (f" error={d['error_kind']}" if d["error_kind"] else ""))
    if d["energy_ev"] is not None:
        print(f"  energy: {d['energy_ev']:.6f} eV")
    if d["band_gap_ev"] is not None:
        print(f"  band gap: {d['band_gap_ev']:.4f} eV")
    for e in d["errors"]:
        print(f"  line {e['line']}: [{e['kind']}] {e['text']}")
    return 0


# --- adding work, watching ------------------------------------------------------------------


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EventflowError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value) if value else ""
    return out


@command("add")
def cmd_add(args: argparse.Namespace) -> int:
    params = _parse_sets(args.set)
    with _tracker(args) as tracker:
        if args.cluster and args.cluster != "local":
            from eventflow.shell.clusters import defined

            if args.cluster not in defined(tracker.store):
                raise EventflowError(f"no cluster {args.cluster!r} (eventflow cluster list)")
        if args.cluster:
            params["cluster"] = args.cluster
        for structure in args.structures:
            before = tracker.store.last_seq()
            mid = tracker.create_material(structure, source="file", workflow=args.workflow,
                                          code=args.code, material_id=args.id, params=params)
            new = tracker.store.last_seq() > before
            print(f"{mid}: {'registered' if new else 'already registered (same structure)'}"
                  f" ({args.workflow}, {args.code})")
    return 0


@command("watch")
def cmd_watch(args: argparse.Namespace) -> int:
    from eventflow.shell.watcher import Watcher, run_once, setup_logging

    with _tracker(args) as tracker:
        setup_logging(tracker.project.state_dir / "watcher.log", as_json=args.log_json,
                      echo=not args.quiet)
        if args.once:
            report = run_once(tracker, clusters=args.cluster)
            if not args.quiet:
                print(f"once: {report}")
            return 0
        return Watcher(tracker, poll=args.poll, reconcile=args.reconcile,
                       remote_poll=args.remote_poll, clusters=args.cluster).run()


@command("doctor")
def cmd_doctor(args: argparse.Namespace) -> int:
    from eventflow.shell.doctor import run_doctor

    return run_doctor(args.project)


# --- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventflow",
        description="Event-sourced workflow manager for DFT calculations on SLURM clusters.",
    )
    parser.add_argument("--version", action="version", version=f"eventflow {__version__}")
    parser.add_argument("--project", metavar="DIR", default=None,
                        help="project folder (default: search upward from here, or "
                             "$EVENTFLOW_PROJECT)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("init", help="make a folder an eventflow project")
    p.add_argument("directory", nargs="?", default=".", help="folder (default: here)")
    p.add_argument("--store", metavar="URL",
                   help="keep the log on a PostgreSQL server (postgresql://user@host/db; the "
                        "password comes from ~/.pgpass, PGPASSWORD or a service file)")

    p = sub.add_parser("status", help="where every material stands")
    p.add_argument("--state", choices=MATERIAL_STATES, metavar="STATE",
                   help="only materials in this state: " + ", ".join(MATERIAL_STATES))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--live", action="store_true", help="redraw as events arrive (Ctrl-C quits)")
    p.add_argument("--limit", type=int, default=100, help="rows in the table (default 100)")
    p.add_argument("--all", action="store_true", help="every material in the table")

    p = sub.add_parser("show", help="one material's whole story")
    p.add_argument("material", help="material id")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("tail", help="the log, as a structured tail (-f follows)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("-n", type=int, default=20, help="print the last N events first (default 20)")
    p.add_argument("--material", help="only this material's events")
    p.add_argument("--type", help="only events of this type")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = sub.add_parser("replay", help="rebuild projections from the log (or as of a past point)")
    p.add_argument("--until", metavar="SEQ|ISO-TIME", help="stop at this seq or time")
    p.add_argument("--output", metavar="FILE", help="write projections to FILE, not the live ones")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="processes folding the log (default: one per core, up to 4, for "
                        "logs of 200,000 events or more; 1 below that)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--policy", metavar="YAML", help="with --what-if: the other recovery policy")
    p.add_argument("--what-if", action="store_true",
                   help="replay another policy over the history; write nothing")

    sub.add_parser("verify", help="check the hash chain and the projections against a replay")

    p = sub.add_parser("backup", help="consistent online copy of the log")
    p.add_argument("dest", help="file or folder")

    p = sub.add_parser("restore", help="restore the log from a backup and rebuild projections")
    p.add_argument("src", help="backup file")
    p.add_argument("--force", action="store_true", help="overwrite a log with more events")

    for name, text in (("hold", "stop submitting for a material"),
                       ("release", "let a held material go on"),
                       ("cancel", "cancel a material and its jobs")):
        p = sub.add_parser(name, help=text)
        p.add_argument("material", help="material id")
        p.add_argument("--reason", default="", help="why (recorded in the log)")

    p = sub.add_parser("parse", help="classify one output file (no project needed)")
    p.add_argument("file", help="output file of pw.x, CRYSTAL, or a scheduler log")
    p.add_argument("--code", choices=["qe", "crystal", "slurm"], help="skip detection")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("add", help="register structures and start their workflow")
    p.add_argument("structures", nargs="+", help="CIF or any file ASE reads")
    p.add_argument("--workflow", default="full_characterization", help="workflow name")
    p.add_argument("--code", default="qe", choices=["qe", "crystal", "noop"], help="DFT code")
    p.add_argument("--id", default=None, help="material id (default: from the file name)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="parameter override for this material (repeatable)")
    p.add_argument("--cluster", help="run its steps on this cluster (eventflow cluster add)")

    p = sub.add_parser("watch", help="follow jobs, parse outputs, submit what comes next")
    p.add_argument("--once", action="store_true", help="process everything pending, then exit")
    p.add_argument("--poll", type=float, metavar="SECONDS", default=None,
                   help="poll the file system (NFS/Lustre) instead of inotify")
    p.add_argument("--reconcile", type=float, default=30.0, metavar="SECONDS",
                   help="ask the scheduler about our jobs this often (default 30)")
    p.add_argument("--remote-poll", type=float, default=None, metavar="SECONDS",
                   help="ask remote clusters which of our jobs finished this often (default: "
                        "cluster.yaml remote: poll_s, else 5)")
    p.add_argument("--log-json", action="store_true", help="operational log as JSON lines")
    p.add_argument("--quiet", action="store_true", help="log to the file only")
    p.add_argument("--cluster", action="append", metavar="NAME", default=None,
                   help="act only for this cluster (repeatable; default: every cluster)")

    sub.add_parser("doctor", help="check the set-up and say how to fix what is wrong")

    from eventflow.shell import cli_recovery  # registers its handlers with `command`

    cli_recovery.register(sub)
    from eventflow.shell import cli_io  # import, properties, export-structures

    cli_io.register(sub)
    from eventflow.shell import cli_plot  # plot

    cli_plot.register(sub)
    from eventflow.shell import cli_cluster  # cluster add/list/check/remove

    cli_cluster.register(sub)
    from eventflow.shell import cli_store  # migrate-store

    cli_store.register(sub)
    _describe_subcommands(sub)
    return parser


def _describe_subcommands(sub: Any) -> None:
    """`eventflow X --help` opens with what X does (the line `eventflow --help` lists for it).

    argparse shows a subcommand's ``help`` only in the parent's list; a newcomer typing
    `eventflow status --help` saw options and no word of what the command is for.
    """
    for action in sub._choices_actions:  # the (name, help) pairs argparse keeps for the list
        parser = sub.choices[action.dest]
        if parser.description is None and action.help:
            parser.description = action.help[0].upper() + action.help[1:] + "."


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EventflowError as exc:
        print(f"eventflow: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    # Run as a script, this file is "__main__"; the command handlers register themselves on
    # the module "eventflow.shell.cli", so dispatch through that one.
    from eventflow.shell.cli import main as _main

    sys.exit(_main())
