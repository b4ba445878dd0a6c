"""Helper processes for the multi-process store tests (run as scripts, not collected)."""

from __future__ import annotations

import sys
import time

import duckdb
import pyarrow as pa


def writer(data_dir: str, batches: int, rows: int, compact_every: int) -> None:
    """Append batches; print 'ack <batch>' only after append() returned."""
    from accelmon.store import Store

    store = Store(data_dir, gc_grace_seconds=60)
    start = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    for b in range(start, start + batches):
        now_ms = int(time.time() * 1000)
        t = pa.table({
            "ts": pa.array([now_ms + i for i in range(rows)], pa.timestamp("ms", tz="UTC")),
            "gpu_uuid": [f"GPU-{i % 7}" for i in range(rows)],
            "source": ["test"] * rows,
            "busy_ms_total": [b * 1_000_000 + i for i in range(rows)],  # unique key per row
        })
        store.append("gpu_sample", t)
        print(f"ack {b}", flush=True)
        if compact_every and b % compact_every == compact_every - 1:
            store.compact(["gpu_sample"])
            store.gc()


def reader(catalog: str, seconds: float, stop_file: str | None) -> None:
    """Hold the catalog open read-only until ``stop_file`` exists (or ``seconds`` pass);
    re-query all the time; report counts, duplicates and counts going back."""
    import os

    con = duckdb.connect(catalog, read_only=True)
    print("open", flush=True)
    end = time.time() + seconds
    last = -1
    while time.time() < end and not (stop_file and os.path.exists(stop_file)):
        try:
            n, distinct = con.execute("SELECT count(*), count(DISTINCT busy_ms_total) FROM gpu_sample").fetchone()
        except duckdb.IOException as e:
            # a query that listed files just before a compaction swap: documented, re-run (docs/store.md)
            if "No such file" not in str(e):
                raise
            print("retry", flush=True)
            continue
        if n != distinct:
            print(f"DUPLICATES {n} {distinct}", flush=True)
        if n < last:
            print(f"WENT_BACK {last} {n}", flush=True)
        last = n
        print(f"count {n}", flush=True)
        time.sleep(0.05)
    n = con.execute("SELECT count(*) FROM gpu_sample").fetchone()[0]
    print(f"count {n}", flush=True)
    con.close()


def shard_reader(catalog: str, stop_file: str) -> None:
    """Hold the catalog open read-only and query every shard until ``stop_file`` exists; print one
    JSON line per query ({shard: [rows, distinct (gpu, source, ts)]}), "retry" for the documented
    compaction race, "ERROR …" for anything else (and go on)."""
    import json
    import os

    con = duckdb.connect(catalog, read_only=True)
    print("open", flush=True)
    while not os.path.exists(stop_file):
        try:
            rows = con.execute("SELECT shard, count(*), count(DISTINCT (gpu_uuid, source, ts)) FROM gpu_sample "
                               "WHERE date > DATE '1970-01-01' GROUP BY shard").fetchall()
        except duckdb.IOException as e:
            if "No such file" not in str(e):  # a query planned just before a compaction swap (docs/store.md)
                print("ERROR " + " ".join(str(e).split()), flush=True)
            else:
                print("retry", flush=True)
            continue
        except duckdb.Error as e:
            print("ERROR " + " ".join(str(e).split()), flush=True)
            continue
        print(json.dumps({s: [n, d] for s, n, d in rows}), flush=True)
        time.sleep(0.2)
    con.close()


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        writer(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif sys.argv[1] == "shard_reader":
        shard_reader(sys.argv[2], sys.argv[3])
    else:
        reader(sys.argv[2], float(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
