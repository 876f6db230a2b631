"""eventflow against the ``eventsourcing`` library (SQLite persistence) on the same workloads.

eventsourcing side: an ``Application`` with ``PERSISTENCE_MODULE=eventsourcing.sqlite``
and one ``Aggregate`` per material (``Material``, created by its first event, then one
``Recorded(kind, data)`` event per eventflow event, carrying the same data dict), saved
with ``Application.save``. Its replays:

* into projection tables, the library's way: a ``Projection`` whose view is a
  ``SQLiteTrackingRecorder`` holding the same four tables; ``process_event`` writes an
  event's rows and its ``Tracking`` record in one transaction, as the library's projections
  do (exactly-once). The library's ``ProjectionRunner`` needs recorder subscriptions, which
  its SQLite recorder does not have, so the loop that feeds ``process_event`` reads and maps
  the notifications here, as its ``ApplicationSubscription`` would;
* in memory, no tables: the recorder read in log order (``select_notifications``, pages of
  1,000), each stored event mapped back to a domain event and ``mutate``d into its
  aggregate (what its ``Repository`` does per aggregate, done for the whole log);
* aggregate by aggregate: ``Application.repository.get``.

eventflow side: ``EventStore.append`` (one event per transaction) / ``append_many``
(a batch per transaction), synchronous=FULL; replay is a full ``Projections.rebuild``
(decode, lifecycle-checked fold, all four tables written), and, in memory, ``fold_log``
(decode + checked fold, the equivalent of rebuilding the aggregates).

Both write to SQLite in WAL mode with the same durability (the synchronous setting
eventsourcing's connections get is printed). The events are the realistic mix of
bench/make_project.py. Usage: ``python bench/bench_eventsourcing.py [--quick]``.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

from common import Result, alternate, parse_args, print_table, remove_db
from make_project import batches, cached_log, generate

from eventflow.core.state import fold
from eventflow.shell.projections import Projections, fold_log
from eventflow.shell.store import EventStore, NewEvent

warnings.filterwarnings("ignore", category=DeprecationWarning)

from eventsourcing.application import Application  # noqa: E402
from eventsourcing.domain import Aggregate, event  # noqa: E402
from eventsourcing.persistence import Tracking  # noqa: E402
from eventsourcing.projection import Projection  # noqa: E402
from eventsourcing.sqlite import (  # noqa: E402
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteDatastore,
    SQLiteTrackingRecorder,
)


class Material(Aggregate):
    """One material's stream, as an eventsourcing aggregate."""

    @event("Registered")
    def __init__(self, kind: str, data: dict[str, Any]) -> None:
        self.state = kind
        self.count = 1

    @event("Recorded")
    def record(self, kind: str, data: dict[str, Any]) -> None:
        self.state = kind
        self.count += 1


class Materials(Application):
    """The eventsourcing application holding the materials."""


def open_app(path: Path) -> Materials:
    remove_db(path)
    return Materials(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                          "SQLITE_DBNAME": str(path), "IS_SNAPSHOTTING_ENABLED": "no"})


class EsWriter:
    """Turns eventflow's NewEvents into aggregate events of the eventsourcing app."""

    def __init__(self, app: Materials) -> None:
        self.app = app
        self.aggregates: dict[str, Material] = {}

    def trigger(self, item: NewEvent) -> Material:
        data = item.event.to_data()
        agg = self.aggregates.get(item.stream)
        if agg is None:
            agg = self.aggregates[item.stream] = Material(kind=item.event.TYPE, data=data)
        else:
            agg.record(kind=item.event.TYPE, data=data)
        return agg

    def save(self, items: list[NewEvent]) -> None:
        touched = {id(a): a for a in (self.trigger(i) for i in items)}
        self.app.save(*touched.values())


def es_replay(app: Materials) -> int:
    recorder, mapper = app.recorder, app.mapper
    aggregates: dict[Any, Any] = {}
    start, n = 1, 0
    while True:
        page = recorder.select_notifications(start, 1000)
        if not page:
            return n
        for notification in page:
            domain_event = mapper.to_domain_event(notification)
            oid = domain_event.originator_id
            aggregates[oid] = domain_event.mutate(aggregates.get(oid))
            n += 1
        start = page[-1].id + 1


# -- eventsourcing's own way to replay into projections: a Projection with a tracking view --

_VIEW_TABLES = [
    "CREATE TABLE IF NOT EXISTS materials (id TEXT PRIMARY KEY, formula TEXT, workflow TEXT, "
    "state TEXT, current_step TEXT, attempts INTEGER, reason TEXT, updated_at TEXT)",
    "CREATE TABLE IF NOT EXISTS calculations (id TEXT PRIMARY KEY, material_id TEXT, step TEXT, "
    "attempt INTEGER, state TEXT, job_id TEXT, directory TEXT, error_kind TEXT, "
    "started_at TEXT, finished_at TEXT)",
    "CREATE TABLE IF NOT EXISTS properties (material_id TEXT, name TEXT, value, unit TEXT, "
    "calculation_id TEXT, PRIMARY KEY (material_id, calculation_id, name))",
    "CREATE TABLE IF NOT EXISTS errors (material_id TEXT, calculation_id TEXT, kind TEXT, "
    "evidence TEXT)",
]
_CALC_STATE = {"JobSubmitted": "submitted", "JobStarted": "running", "JobFinished": None,
               "CalculationSucceeded": "completed", "CalculationFailed": "failed",
               "JobLost": "lost", "CalculationCancelled": "cancelled"}
_MATERIAL_STATE = {"MaterialCompleted": "completed", "MaterialHeld": "held",
                   "NeedsAttention": "needs_attention", "MaterialCancelled": "cancelled",
                   "WaitScheduled": "waiting", "CalculationSucceeded": "ready"}


class MaterialsView(SQLiteTrackingRecorder):
    """The four projection tables, written with the tracking record in one transaction."""

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *_VIEW_TABLES]

    def apply(self, statements: list[tuple[str, tuple[Any, ...]]], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            for sql, args in statements:
                c.execute(sql, args)
            self._insert_tracking(c, tracking)


def _view_statements(mid: str, kind: str, data: dict[str, Any], at: str
                     ) -> list[tuple[str, tuple[Any, ...]]]:
    """What each event does to the tables (no lifecycle checks: that favours eventsourcing)."""
    cid = data.get("calculation_id")
    out: list[tuple[str, tuple[Any, ...]]] = []
    if kind == "MaterialRegistered":
        out.append(("INSERT INTO materials VALUES (?,?,?,'registered',NULL,0,'',?)",
                    (mid, data["formula"], data["workflow"], at)))
    elif kind == "SubmissionRequested":
        out.append(("INSERT INTO calculations VALUES (?,?,?,?,'requested',NULL,?,NULL,NULL,NULL)",
                    (cid, mid, data["step"], data["attempt"], data["directory"])))
        out.append(("UPDATE materials SET state = 'running', current_step = ?, "
                    "attempts = attempts + 1, updated_at = ? WHERE id = ?",
                    (data["step"], at, mid)))
    if kind in _CALC_STATE:
        out.append(("UPDATE calculations SET state = coalesce(?, state), "
                    "job_id = coalesce(?, job_id), error_kind = ?, "
                    "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ?",
                    (_CALC_STATE[kind], data.get("job_id"), data.get("error_kind"),
                     kind not in ("JobSubmitted", "JobStarted"), at, cid)))
    if kind == "CalculationFailed":
        text = "; ".join(str(x.get("text", "")) for x in data["evidence"])[:500]
        out.append(("INSERT INTO errors VALUES (?,?,?,?)", (mid, cid, data["error_kind"], text)))
    elif kind == "PropertiesExtracted":
        out.extend(("INSERT OR REPLACE INTO properties VALUES (?,?,?,?,?)",
                    (mid, name, p.get("value"), p.get("unit", ""), cid))
                   for name, p in data["properties"].items())
    if kind in _MATERIAL_STATE:
        out.append(("UPDATE materials SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                    (_MATERIAL_STATE[kind], data.get("reason", ""), at, mid)))
    elif kind != "MaterialRegistered":
        out.append(("UPDATE materials SET updated_at = ? WHERE id = ?", (at, mid)))
    return out


class MaterialsProjection(Projection[MaterialsView]):
    """eventsourcing's projection of the materials: one process_event per stored event."""

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.apply(_view_statements(str(domain_event.originator_id), domain_event.kind,
                                         domain_event.data, str(domain_event.timestamp)),
                        tracking)


class NormalSyncPool(SQLiteConnectionPool):
    """Connections with synchronous=NORMAL, as eventflow's projections.db (no fsync per commit
    in WAL mode); the library's default is FULL."""

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        connection._sqlite_conn.execute("PRAGMA synchronous = NORMAL")  # noqa: SLF001
        return connection


def es_projection_replay(app: Materials, view_path: Path, limit: int, synchronous: str) -> int:
    """Replay the application's first ``limit`` events into the view, as the library's
    ProjectionRunner would: its SQLite recorder has no subscriptions, so the notifications are
    read and mapped here exactly as its ApplicationSubscription does, then handed to
    ``process_event`` with their Tracking."""
    remove_db(view_path)
    datastore = SQLiteDatastore(str(view_path))
    if synchronous == "NORMAL":
        datastore.pool = NormalSyncPool(db_name=str(view_path))
    view = MaterialsView(datastore)
    view.create_table()
    projection = MaterialsProjection(view)
    recorder, mapper = app.recorder, app.mapper
    start, n = 1, 0
    while n < limit:
        page = recorder.select_notifications(start, min(1000, limit - n))
        if not page:
            break
        for notification in page:
            projection.process_event(mapper.to_domain_event(notification),
                                     Tracking(app.name, notification.id))
            n += 1
        start = page[-1].id + 1
    assert view.max_tracking_id(app.name) == n
    with datastore.transaction(commit=False) as c:
        c.execute("PRAGMA synchronous")
        assert c.fetchone()[0] == (1 if synchronous == "NORMAL" else 2)
    datastore.close()
    return n


def appends(items: list[NewEvent], folder: Path, per_save: int, rounds: int
            ) -> tuple[float, float]:
    """(eventflow, eventsourcing) events/s, ``per_save`` events per transaction."""
    ef_path = folder / f"ef-{per_save}.db"
    remove_db(ef_path)
    store = EventStore(ef_path, create=True, synchronous="FULL")
    writer = EsWriter(open_app(folder / f"es-{per_save}.db"))
    groups = list(batches(iter(items), per_save))
    per_round = len(groups) // rounds
    pos = {"ef": 0, "es": 0}

    def run_ef() -> None:
        for group in groups[pos["ef"] : pos["ef"] + per_round]:
            if len(group) == 1:
                store.append(group[0].stream, [group[0].event], meta=group[0].meta)
            else:
                store.append_many(group)
        pos["ef"] += per_round

    def run_es() -> None:
        for group in groups[pos["es"] : pos["es"] + per_round]:
            writer.save(group)
        pos["es"] += per_round

    t_ef, t_es = alternate([run_ef, run_es], rounds)
    n = per_round * rounds * per_save
    assert store.last_seq() == n
    assert writer.app.recorder.max_notification_id() == n
    store.close()
    return n / sum(t_ef), n / sum(t_es)


def replays(n_materials: int, n_events: int, folder: Path, rounds: int, projected: int
            ) -> dict[str, float]:
    """events/s of each replay, eventflow and eventsourcing, on the same events (its
    projection replays the first ``projected``: one commit per event makes it slow)."""
    log = cached_log(n_materials, n_events)
    app = open_app(folder / "es-replay.db")
    writer = EsWriter(app)
    for group in batches(generate(n_materials, n_events), 100):
        writer.save(group)
    es_ids = [agg.id for agg in writer.aggregates.values()]
    del writer
    store = EventStore(log)
    material_ids = store.streams()

    def run_fold() -> None:
        states, last = fold_log(store)
        assert last == n_events and len(states) == n_materials

    def run_rebuild() -> None:
        remove_db(folder / "projections.db")
        views = Projections(folder / "projections.db", create=True)
        views.rebuild(store)
        views.close()

    def run_es() -> None:
        assert es_replay(app) == n_events

    def run_ef_each() -> None:
        assert sum(fold(mid, store.read(stream=mid)).version for mid in material_ids) == n_events

    def run_es_each() -> None:
        get = app.repository.get
        assert sum(get(aid).version for aid in es_ids) == n_events

    def run_es_projection() -> None:
        view = folder / "es-view.db"
        assert es_projection_replay(app, view, projected, "NORMAL") == projected

    def run_es_projection_full() -> None:
        view = folder / "es-view-full.db"
        assert es_projection_replay(app, view, projected // 4, "FULL") == projected // 4

    times = alternate([run_fold, run_rebuild, run_es, run_ef_each, run_es_each,
                       run_es_projection, run_es_projection_full], rounds)
    store.close()
    names = ("fold", "rebuild", "es", "ef_each", "es_each")
    rates = {name: n_events / min(t) for name, t in zip(names, times[:5], strict=True)}
    rates["es_projection"] = projected / min(times[5])
    rates["es_projection_full"] = projected // 4 / min(times[6])
    return rates


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0])
    quick = args.quick
    n_one, n_hundred, n_replay = (100, 2_000, 5_000) if quick else (2_000, 20_000, 100_000)
    items = list(generate(max(2, n_hundred // 10), max(n_hundred, 1_000 + n_hundred // 10)))
    with tempfile.TemporaryDirectory(prefix="eventflow-bench-es-") as tmp:
        folder = Path(tmp)
        one = appends(items[:n_one], folder, 1, rounds=4)
        hundred = appends(items[:n_hundred], folder, 100, rounds=4)
        thousand = appends(items[:n_hundred], folder, 1000, rounds=2)
        n_projected = 2_000 if quick else 10_000
        replay = replays(max(2, n_replay // 10), n_replay, folder, rounds=1 if quick else 3,
                         projected=n_projected)
        probe = open_app(folder / "probe.db")
        probe.save(Material(kind="x", data={}))
        sync = sqlite3.connect(folder / "probe.db").execute("PRAGMA synchronous").fetchone()[0]
        del probe
    results = [
        Result(f"append, 1 event per save/transaction ({n_one:,} events)", one[0], one[1],
               "eventsourcing", "(reference: es ~1,900/s)", None),
        Result(f"append, 100 events per save/transaction ({n_hundred:,} events)", hundred[0],
               hundred[1], "eventsourcing", ">= 2x", hundred[0] / hundred[1] >= 2),
        Result("append, eventflow 1,000 per transaction vs eventsourcing 100 per save",
               thousand[0], hundred[1], "eventsourcing", ">= 2x", thousand[0] / hundred[1] >= 2),
        Result(f"replay into the projection tables ({n_replay:,} events; eventflow "
               f"Projections.rebuild vs eventsourcing Projection.process_event over its first "
               f"{n_projected:,}, both synchronous=NORMAL)", replay["rebuild"],
               replay["es_projection"], "eventsourcing", ">= 6x",
               replay["rebuild"] / replay["es_projection"] >= 6),
        Result(f"  the same, eventsourcing's view at its default synchronous=FULL (its first "
               f"{n_projected // 4:,})", replay["rebuild"], replay["es_projection_full"],
               "eventsourcing", "(information)", None),
        Result(f"replay {n_replay:,} events, whole log in order, in memory: eventflow decode + "
               "checked fold vs eventsourcing mapper + mutate (no tables)", replay["fold"],
               replay["es"], "eventsourcing", "(information)", None),
        Result(f"replay {n_replay:,} events: eventflow full rebuild (tables) vs eventsourcing "
               "mapper + mutate in memory (no tables)", replay["rebuild"], replay["es"],
               "eventsourcing", "(information)", None),
        Result(f"replay {n_replay:,} events aggregate by aggregate (eventflow fold(stream) vs "
               "eventsourcing repository.get)", replay["ef_each"], replay["es_each"],
               "eventsourcing", "(reference: es ~16,000/s)", None),
    ]
    print_table("eventflow vs the eventsourcing library (bench/bench_eventsourcing.py)", results,
                args.json)
    print(f"eventsourcing's SQLite connections: PRAGMA synchronous = {sync} "
          "(2 = FULL, as eventflow's log); journal_mode WAL for both.")
    print(f"eventsourcing {version('eventsourcing')}, {time.strftime('%Y-%m-%d %H:%M')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
