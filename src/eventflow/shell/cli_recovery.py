"""``eventflow retry`` and ``eventflow stats recovery``: manual recovery and its record.

``register(sub)`` adds the subcommands to the CLI's parser (hooked in through
``cli._EXTRA_PARSERS``); the handlers register themselves with ``cli.command``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from eventflow.shell.cli import _console, _print_json, _tracker, command


def register(sub: Any) -> None:
    """Add ``retry`` and ``stats`` to the subcommands."""
    p = sub.add_parser("retry", help="run a failed step again (a user event), with changes")
    p.add_argument("material", help="material id")
    p.add_argument("--step", help="the step to run again (default: the latest failed one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an input change for the new attempt, e.g. electrons.mixing_beta=0.2 "
                        "(repeatable)")
    p.add_argument("--fresh", action="store_true",
                   help="drop the corrections of earlier attempts; only --set applies")
    p.add_argument("--reason", default="", help="why (recorded in the log)")

    p = sub.add_parser("stats", help="statistics from the log")
    p.add_argument("what", choices=["recovery"],
                   help="recovery: per error kind and correction, tries and successes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    # `python -m eventflow.shell.cli` runs the CLI as __main__, a second copy of the cli
    # module whose COMMANDS the decorators below never saw: give it the handlers too.
    main = sys.modules.get("__main__")
    commands = getattr(main, "COMMANDS", None)
    if isinstance(commands, dict) and getattr(main, "command", command) is not command:
        commands.update({"retry": cmd_retry, "stats": cmd_stats})


@command("retry")
def cmd_retry(args: argparse.Namespace) -> int:
    from eventflow.core.ids import check_material_id, check_step
    from eventflow.core.recovery.manual import latest_failed_step, parse_sets, retry_request

    mid = check_material_id(args.material)
    with _tracker(args) as tracker:
        state = tracker.state(mid)
        step = check_step(args.step) if args.step else latest_failed_step(state)
        sets = parse_sets(args.set, state.code)
        rules = tracker.policy.recovery
        restart_keys = rules.code(state.code).restart_keys if rules is not None else ()
        event = retry_request(state, step, sets, fresh=args.fresh, reason=args.reason,
                              restart_keys=restart_keys)
        tracker.append(mid, [event], key=f"request:{event.calculation_id}",
                       meta={"actor": "user"})
        held = tracker.state(mid).state == "held"
    changes = ", ".join(f"{k}={v}" for k, v in event.changes.items()) or "no input changes"
    print(f"{mid}: requested {event.calculation_id} ({changes})"
          + (f"; resources {event.resources}" if event.resources else "")
          + ("; the material is held: it runs after `eventflow release`" if held else ""))
    return 0


@command("stats")
def cmd_stats(args: argparse.Namespace) -> int:
    from eventflow.core.recovery.stats import recovery_stats
    from eventflow.shell.projections import fold_log

    with _tracker(args) as tracker:
        states, last = fold_log(tracker.store)
    stages, kinds = recovery_stats(states.values())
    if args.json:
        _print_json({"last_seq": last, "stages": [s.to_dict() for s in stages],
                     "kinds": [{"error_kind": k.error_kind, "failures": k.failures,
                                "escalated": k.escalated, "given_up": k.given_up}
                               for k in kinds]})
        return 0
    from eventflow.shell.tables import Column, fitted

    console = _console()
    columns = [Column("error kind"), Column("stage"), Column("correction", text=True),
               Column("tried"), Column("succeeded"), Column("failed"), Column("pending"),
               Column("success")]
    rows = [[s.error_kind, str(s.stage), s.correction, str(s.tried), str(s.succeeded),
             str(s.failed), str(s.pending),
             "" if s.success_rate is None else f"{100 * s.success_rate:.0f}%"] for s in stages]
    console.print(fitted(f"recovery: tries and outcomes of the next attempt (as of seq {last})",
                         columns, rows, console.width))
    summary = fitted("failures per error kind",
                     [Column("error kind"), Column("failures"), Column("escalated"),
                      Column("given up")],
                     [[k.error_kind, str(k.failures), str(k.escalated), str(k.given_up)]
                      for k in kinds], console.width)
    console.print(summary)
    return 0
