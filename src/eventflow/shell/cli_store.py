"""``eventflow migrate-store``: copy a SQLite log, row for row, into a PostgreSQL one."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from eventflow.errors import EventflowError
from eventflow.shell.store import _ROW_COLUMNS, LogBase

BATCH = 10_000


def copy_log(source: LogBase, target: LogBase) -> int:
    """Every row of ``source`` (seq, idempotency key, hash as stored) into the empty ``target``,
    in one transaction: the copy is whole or absent. Returns the number of rows."""
    count = 0
    target._begin()
    try:
        if target.last_seq() != 0:
            raise EventflowError(f"{target.path}: the target log is not empty "
                                 f"({target.last_seq()} events); refusing to write into it")
        rows = source.query(f"SELECT {_ROW_COLUMNS}, hash FROM events ORDER BY seq")
        while batch := rows.fetchmany(BATCH):
            target._insert_rows([tuple(r) for r in batch])
            count += len(batch)
        target._commit()
    except BaseException:
        target._rollback()
        raise
    return count


def check_copy(source: LogBase, target: LogBase) -> int:
    """The copy's chain verifies, and its last row is the source's, hash and all."""
    count, problems = target.verify_chain()
    if problems:
        raise EventflowError(f"{target.path}: the copy fails verification: {problems[0]}")
    last = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
    if source.query(last).fetchone() != target.query(last).fetchone():
        raise EventflowError(f"{target.path}: the copy's last row differs from the source's")
    return count


def cmd_migrate_store(args: argparse.Namespace) -> int:
    from eventflow.shell.project import Project, check_store_url, set_store
    from eventflow.shell.store import EventStore, open_store

    project = Project.at(args.project)
    url = check_store_url(args.to, "--to")
    source_path = Path(args.source) if args.source else project.log_path
    with EventStore(source_path) as source, open_store(url, create=True) as target:
        count = copy_log(source, target)
        verified = check_copy(source, target)
        print(f"copied {count} events from {source_path} to {target.path}; "
              f"verified {verified} events, hash chain intact")
    if not args.keep_config:
        set_store(project, url)
        print(f"config/project.yaml now names the store {target.path}")
    return 0


def register(sub: Any) -> None:
    from eventflow.shell.cli import command

    command("migrate-store")(cmd_migrate_store)
    p = sub.add_parser("migrate-store",
                       help="copy the SQLite log into an empty PostgreSQL database and use it")
    p.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host/db")
    p.add_argument("--from", dest="source", metavar="FILE",
                   help="the SQLite log to copy (default: the project's)")
    p.add_argument("--keep-config", action="store_true",
                   help="copy only; leave config/project.yaml naming the SQLite log")
