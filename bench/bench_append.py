"""Appending to the event log, against raw sqlite3 doing the same work with the same schema.

* durable append: one event per transaction, synchronous=FULL (an fsync per event).
  eventflow: ``EventStore.append(stream, [event], expected_version=...)``; raw: the same
  INSERT of the same JSON (and chained hash) in its own BEGIN IMMEDIATE / COMMIT.
* batched append: 1,000 events per transaction. eventflow: ``append_many`` of 1,000
  ``NewEvent`` (events are attrs objects, serialised to canonical JSON, hash-chained, the
  stream versions read from the log). raw (same work): the events' data as plain dicts,
  canonical JSON and the same sha256 chain, ``executemany``. Also shown: raw inserting
  rows serialised beforehand (the floor: SQLite alone).

Events are the realistic mix of bench/make_project.py. Usage:
``python bench/bench_append.py [--quick]``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from common import RawLog, Result, alternate, median, meta_json, parse_args, print_table, remove_db
from make_project import batches, generate

from eventflow.shell.store import EventStore, NewEvent, utc_now


def durable(items: list[NewEvent], folder: Path, rounds: int) -> Result:
    ef_path, raw_path = folder / "durable-eventflow.db", folder / "durable-raw.db"
    remove_db(ef_path)
    store = EventStore(ef_path, create=True, synchronous="FULL")
    raw = RawLog(raw_path, synchronous="FULL")
    meta = meta_json()
    plain = [(i.stream, i.event.TYPE, i.event.VERSION, i.event.to_data()) for i in items]
    per_round = len(items) // rounds
    versions: dict[str, int] = {}
    pos = {"ef": 0, "raw": 0}

    def run_eventflow() -> None:
        start = pos["ef"]
        for item in items[start : start + per_round]:
            expected = versions.get(item.stream, 0)
            store.append(item.stream, [item.event], expected_version=expected, meta=item.meta)
            versions[item.stream] = expected + 1
        pos["ef"] = start + per_round

    def run_raw() -> None:
        start = pos["raw"]
        for stream, type_, sv, data in plain[start : start + per_round]:
            raw.insert([raw.row(stream, type_, sv, data, meta, utc_now())])
        pos["raw"] = start + per_round

    t_ef, t_raw = alternate([run_eventflow, run_raw], rounds)
    n = per_round * rounds
    assert store.last_seq() == n and store.verify_chain()[1] == []
    store.close()
    raw.close()
    ef_rate, raw_rate = n / sum(t_ef), n / sum(t_raw)
    return Result(f"durable append, 1 event/transaction, synchronous=FULL ({n:,} events)",
                  ef_rate, raw_rate, "raw sqlite3", ">= 0.8x raw", ef_rate / raw_rate >= 0.8)


def batched(items: list[NewEvent], folder: Path, size: int) -> list[Result]:
    paths = [folder / f"batched-{name}.db" for name in ("eventflow", "raw", "raw-insert")]
    remove_db(paths[0])
    store = EventStore(paths[0], create=True, synchronous="FULL")
    raw, floor = RawLog(paths[1]), RawLog(paths[2])
    meta = meta_json()
    groups = list(batches(iter(items), size))
    plain = [[(i.stream, i.event.TYPE, i.event.VERSION, i.event.to_data()) for i in g]
             for g in groups]
    now = utc_now()
    prebuilt = [[floor.row(s, t, v, d, meta, now) for s, t, v, d in g] for g in plain]
    it: dict[str, int] = {"ef": 0, "raw": 0, "floor": 0}

    def step(name: str, fn: Callable[[int], None]) -> Callable[[], None]:
        def run() -> None:
            fn(it[name])
            it[name] += 1
        return run

    def ef(i: int) -> None:
        store.append_many(groups[i])

    def rw(i: int) -> None:
        at = utc_now()
        raw.insert([raw.row(s, t, v, d, meta, at) for s, t, v, d in plain[i]])

    def fl(i: int) -> None:
        floor.insert(prebuilt[i])

    t_ef, t_raw, t_floor = alternate(
        [step("ef", ef), step("raw", rw), step("floor", fl)], len(groups))
    n = len(items)
    assert store.last_seq() == n and store.verify_chain()[1] == []
    for db in (store, raw, floor):
        db.close()
    ef_rate, raw_rate, floor_rate = n / sum(t_ef), n / sum(t_raw), n / sum(t_floor)
    batch_ms = median(t_ef) * 1000
    return [
        Result(f"batched append, {size:,}/transaction, hashing + JSON ({n:,} events)", ef_rate,
               raw_rate, "raw sqlite3, same work", ">= 0.5x raw and >= 30,000/s",
               ef_rate / raw_rate >= 0.5 and ef_rate >= 30_000,
               note=f"median {batch_ms:.1f} ms per batch"),
        Result("batched append vs raw INSERT of pre-serialised rows (SQLite alone)", ef_rate,
               floor_rate, "raw executemany only", "(information)", None),
    ]


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0])
    n_durable, n_batched = (200, 5_000) if args.quick else (3_000, 100_000)
    items = list(generate(max(2, n_batched // 10), n_batched))
    with tempfile.TemporaryDirectory(prefix="eventflow-bench-append-") as tmp:
        folder = Path(tmp)
        results = [durable(items[:n_durable], folder, rounds=10)]
        results += batched(items, folder, 1000)
    print_table("Append (bench/bench_append.py)", results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
