"""One watcher per cluster across hosts: the watcher's lock in a PostgreSQL log's database.

When the log is on PostgreSQL, project folders on several hosts may point at it, each with its
own file lock; the file lock would let them all act. So the lock lives where the log is: a
session-level advisory lock per cluster, held by a connection of the watcher's own (not the
store's, whose reconnects must not drop it). Keys are derived on the server from the log's
schema and the cluster name, so two logs in one database never share a lock.

- A watcher for given clusters (``watch --cluster A --cluster B``) takes the "whole log" key
  shared and each cluster's key exclusively: watchers for different clusters run side by side,
  two for one cluster exclude each other.
- A watcher for every cluster (the default) takes the "whole log" key exclusively, so it
  excludes every other watcher of the log.

Who holds a lock is told by the holder's session itself: its ``application_name`` names the
role, host and pid, and ``pg_stat_activity`` its start. When the lock's connection dies (a
server restart, a network cut) the server has released the lock and another watcher may take
it: ``fence`` (checked right before every sbatch) then raises LockLost, so this watcher acts no
more until it holds the lock again (``regain``, which fails while another holds it).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from typing import Any

from eventflow.errors import LogUnavailableError
from eventflow.shell.lock import LockLost

ALL = "*"  # the key of "every cluster of this log"
_APP = "eventflow-watcher"


def _split(key: int) -> tuple[int, int]:
    """A bigint advisory key as pg_locks shows it: (classid, objid), both unsigned 32 bits."""
    return (key >> 32) & 0xFFFF_FFFF, key & 0xFFFF_FFFF


class PgWatcherLock:
    """The watcher lock of the log at ``url`` for ``clusters`` (None: every cluster)."""

    def __init__(self, url: str, clusters: Iterable[str] | None, *, where: str = "") -> None:
        self.url = url
        self.clusters = None if clusters is None else sorted(set(clusters))
        self.where = where  # how messages name the log (the URL without a password)
        self.held = False
        self.role = "once"
        self._conn: Any = None
        self._holder: dict[str, Any] | None = None
        self._count = 0  # advisory locks this session holds when all is well

    def describe(self) -> str:
        return "every cluster" if self.clusters is None else (
            "cluster " + ", ".join(self.clusters))

    # -- taking and letting go -------------------------------------------------------------
    def try_acquire(self, role: str = "once") -> bool:
        """Take the lock if nobody holds it; False (and ``holder()`` says who) if someone does.
        A server that cannot be reached raises LogUnavailableError."""
        import psycopg

        self.role = role
        name = f"{_APP} {role} {os.getpid()} {socket.gethostname()}"[:63]
        try:
            conn = psycopg.connect(self.url, autocommit=True, application_name=name)
        except psycopg.OperationalError as exc:
            raise LogUnavailableError(f"{self.where}: cannot reach the log's server for the "
                                      f"watcher lock: {str(exc).strip().splitlines()[0]}"
                                      ) from None
        try:
            taken = self._take(conn)
        except psycopg.OperationalError as exc:
            conn.close()
            raise LogUnavailableError(f"{self.where}: lost the log's server while taking the "
                                      f"watcher lock: {str(exc).strip().splitlines()[0]}"
                                      ) from None
        if not taken:
            conn.close()
            return False
        self._conn, self.held, self._holder = conn, True, None
        return True

    def _take(self, conn: Any) -> bool:
        keys = self._keys(conn)
        wanted: list[tuple[int, bool]] = []  # (key, exclusive)
        if self.clusters is None:
            wanted.append((keys[ALL], True))
        else:
            wanted.append((keys[ALL], False))
            wanted += [(keys[c], True) for c in self.clusters]
        got: list[tuple[int, bool]] = []
        for key, exclusive in wanted:
            fn = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
            if conn.execute(f"SELECT {fn}(%s)", (key,)).fetchone()[0]:
                got.append((key, exclusive))
                continue
            self._holder = self._who_holds(conn, key)
            for k, ex in got:
                unlock = "pg_advisory_unlock" if ex else "pg_advisory_unlock_shared"
                conn.execute(f"SELECT {unlock}(%s)", (k,))
            return False
        self._count = len(got)
        return True

    def _keys(self, conn: Any) -> dict[str, int]:
        names = [ALL, *(self.clusters or [])]
        rows = conn.execute(
            "SELECT n, hashtextextended('eventflow watcher ' || current_schema() || ' ' || n, 0)"
            " FROM unnest(%s::text[]) AS n", (names,)).fetchall()
        return dict(rows)

    @staticmethod
    def _who_holds(conn: Any, key: int) -> dict[str, Any]:
        classid, objid = _split(key)
        row = conn.execute(
            "SELECT a.application_name, a.backend_start FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s "
            "AND l.objsubid = 1 AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.pid <> pg_backend_pid() ORDER BY a.backend_start LIMIT 1",
            (classid, objid)).fetchone()
        if row is None:  # let go just now, or a session we may not see
            return {}
        parts = (row[0] or "").split(" ", 3)
        if len(parts) == 4 and parts[0] == _APP:
            return {"role": parts[1], "pid": parts[2], "host": parts[3],
                    "since": row[1].strftime("%Y-%m-%dT%H:%M:%S%z") if row[1] else None}
        return {"host": "?", "pid": "?", "since": None}

    def holder(self) -> dict[str, Any] | None:
        """Who held the lock when ``try_acquire`` last failed."""
        return self._holder

    def release(self) -> None:
        if self._conn is not None:
            # Closing the session lets go of every advisory lock it holds.
            with contextlib.suppress(Exception):  # a dead connection holds nothing anyway
                self._conn.close()
        self._conn, self.held = None, False

    # -- while holding it ------------------------------------------------------------------
    def alive(self) -> bool:
        """Whether this session still holds its locks (one round trip); False when the
        connection died, which released them on the server."""
        if not self.held or self._conn is None:
            return False
        import psycopg

        try:
            n = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid() AND granted").fetchone()[0]
        except psycopg.Error:
            n = -1
        if n != self._count:
            self.release()
            return False
        return True

    def fence(self) -> None:
        """Raise LockLost unless this watcher still holds its lock: right before sbatch. The
        lock's session died (the server restarted, the network cut it): another watcher may
        hold the lock now and may already have submitted what this one is about to."""
        if not self.alive():
            raise LockLost(f"{self.where}: the watcher lock for {self.describe()} was lost "
                           "(its connection to the log's server ended); this watcher submits "
                           "nothing until it holds the lock again")

    def regain(self) -> bool:
        """At the start of a cycle: hold the lock again if its session died (True when it
        did). LockLost when another watcher took it meanwhile; LogUnavailableError while the
        server is away."""
        if self.alive():
            return False
        if not self.try_acquire(self.role):
            holder = self._holder or {}
            raise LockLost(f"{self.where}: another eventflow watcher holds the lock for "
                           f"{self.describe()} now: host {holder.get('host')}, pid "
                           f"{holder.get('pid')}; this one stops")
        return True

    def heartbeat(self) -> None:
        """Nothing to refresh: the server knows the session is alive."""

    def __enter__(self) -> PgWatcherLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def watcher_lock(tracker: Any, clusters: Iterable[str] | None) -> Any:
    """The lock a watcher of ``tracker``'s project takes: the database's when the log is on
    PostgreSQL, else the file lock beside the project marker (every cluster, as before)."""
    from eventflow.shell.lock import ProjectLock
    from eventflow.shell.store_pg import is_postgres, redacted

    location = tracker.project.store
    if is_postgres(location):
        return PgWatcherLock(location, clusters, where=redacted(location))
    return ProjectLock(tracker.project.lock_path)


__all__ = ["ALL", "PgWatcherLock", "watcher_lock"]
