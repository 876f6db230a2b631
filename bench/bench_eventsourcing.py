"""eventflow against the ``eventsourcing`` library (SQLite persistence) on the same workloads.

eventsourcing side: an ``Application`` with ``PERSISTENCE_MODULE=eventsourcing.sqlite``
and one ``Aggregate`` per material (``Material``, created by its first event, then one
``Recorded(kind, data)`` event per eventflow event, carrying the same data dict), saved
with ``Application.save``. Replay reads the application's recorder in log order
(``recorder.select_notifications`` in pages of 1,000), turns each stored event back into
a domain event with the application's mapper and ``mutate``s it into its aggregate —
what its ``Repository`` does per aggregate, done for the whole log.

eventflow side: ``EventStore.append`` (one event per transaction) / ``append_many``
(a batch per transaction), synchronous=FULL; replay is ``fold_log`` (decode + lifecycle-
checked fold, the equivalent of rebuilding the aggregates) and, separately, a full
``Projections.rebuild`` (fold + writing all the tables).

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


def replays(n_materials: int, n_events: int, folder: Path, rounds: int) -> dict[str, float]:
    """events/s of each replay, eventflow and eventsourcing, on the same events."""
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

    times = alternate([run_fold, run_rebuild, run_es, run_ef_each, run_es_each], rounds)
    store.close()
    names = ("fold", "rebuild", "es", "ef_each", "es_each")
    return {name: n_events / min(t) for name, t in zip(names, times, strict=True)}


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
        replay = replays(max(2, n_replay // 10), n_replay, folder, rounds=1 if quick else 3)
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
        Result(f"replay {n_replay:,} events, whole log in order: decode + fold", replay["fold"],
               replay["es"], "eventsourcing", ">= 6x", replay["fold"] / replay["es"] >= 6),
        Result(f"replay {n_replay:,} events, whole log: full projection rebuild (fold + tables)",
               replay["rebuild"], replay["es"], "eventsourcing", "(information)", None),
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
