"""The two store requirements of the foundation issue, as real multi-process tests."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from accelmon.store import Store

PROCS = str(Path(__file__).with_name("_procs.py"))


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, PROCS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _drain(p: subprocess.Popen[str], lines: list[str]) -> None:
    assert p.stdout is not None
    lines.extend(iter(p.stdout.readline, ""))


def _keys(data_dir: Path) -> list[int]:
    con = Store(data_dir).connect()
    return [r[0] for r in con.execute("SELECT busy_ms_total FROM gpu_sample").fetchall()]


def test_reader_holding_catalog_never_blocks_ingestion(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.ensure_catalog()
    stop = tmp_path / "stop-reader"
    reader = _spawn("reader", str(store.catalog_path), "120", str(stop))
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "open"
    # while the reader holds the catalog: a separate writer process ingests and compacts
    w = subprocess.run([sys.executable, PROCS, "writer", str(tmp_path), "40", "50", "10"],
                       capture_output=True, text=True, timeout=120)
    assert w.returncode == 0, w.stderr
    assert w.stdout.count("ack") == 40
    assert reader.poll() is None, f"reader died: {reader.communicate()[1][-600:]}"
    # the daemon's catalog refresh must not fail either: it is skipped while the user holds the file
    assert subprocess.run([sys.executable, "-c", f"from accelmon.store import Store; "
                           f"import sys; sys.exit(0 if Store({str(tmp_path)!r}).ensure_catalog() is False else 3)"],
                          timeout=60).returncode == 0
    assert reader.poll() is None, f"the reader held the catalog for the whole test: {reader.communicate()}"
    stop.touch()
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    counts = [int(line.split()[1]) for line in out.splitlines() if line.startswith("count")]
    assert "DUPLICATES" not in out and "WENT_BACK" not in out
    assert counts[-1] == 40 * 50, "reader sees all new data after re-querying"
    keys = _keys(tmp_path)
    assert len(keys) == len(set(keys)) == 2000


def test_kill9_loses_no_acknowledged_sample(tmp_path: Path) -> None:
    rng = random.Random(1234)
    acked: set[int] = set()
    start = 0
    for _round in range(4):
        reader = _spawn("reader", str(Store(tmp_path).catalog_path), "1.5") if _round == 0 else None
        if reader is not None:
            Store(tmp_path).ensure_catalog()
        w = _spawn("writer", str(tmp_path), "100000", "40", "7", str(start))
        lines: list[str] = []
        t = threading.Thread(target=_drain, args=(w, lines), daemon=True)
        t.start()
        t_end = time.time() + 60
        while not lines and time.time() < t_end:  # start-up (imports) takes a while on a busy machine
            time.sleep(0.02)
        time.sleep(rng.uniform(0.1, 2.0))  # then kill at a random moment of the ingest/compaction loop
        os.kill(w.pid, signal.SIGKILL)
        w.wait()
        t.join(5)
        buf = "".join(lines)
        got = [int(line.split()[1]) for line in buf.splitlines() if line.startswith("ack ")]
        assert got, "writer made progress before the kill"
        acked.update(got)
        start = max(got) + 2  # the batch in flight may or may not have landed
        if reader is not None:
            out, _ = reader.communicate(timeout=30)
            assert "DUPLICATES" not in out and "WENT_BACK" not in out
        # restart: the store opens without repair, every visible file is a complete Parquet file
        store = Store(tmp_path, gc_grace_seconds=0)
        for f in store.files("gpu_sample"):
            assert pq.ParquetFile(f).metadata is not None  # raises on a partial file
        keys = _keys(tmp_path)
        assert len(keys) == len(set(keys)), "no duplicates after a crash during compaction"
        batches = {k // 1_000_000 for k in keys}
        assert acked <= batches, f"lost acknowledged batches: {sorted(acked - batches)[:5]}"
        store.compact(["gpu_sample"])
        store.gc()
        assert sorted(_keys(tmp_path)) == sorted(keys)
    # no temp file survives a gc after restart
    assert not list(tmp_path.rglob(".tmp-*"))


def test_catalog_views_work_from_the_duckdb_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_catalog()
    con = duckdb.connect(str(store.catalog_path), read_only=True)
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"gpu_sample", "gpu_samples", "gpu_utilization_daily", "vm_gpu", "hosts", "vms"} <= names
    for n in names:
        con.execute(f"SELECT * FROM {n} LIMIT 1").fetchall()  # every view resolves on an empty store


def test_append_list_of_dicts_keeps_keys_of_later_rows(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append("vmotion", [
        {"ended_at": 1_700_000_000.0, "vcenter_uuid": "vc", "vm_moref": "vm-1", "succeeded": True},
        {"ended_at": 1_700_000_100.0, "vcenter_uuid": "vc", "vm_moref": "vm-2", "succeeded": False,
         "failure_reason": "maxSwitchoverTimeExceeded"},
    ])
    rows = store.connect().execute("SELECT vm_moref, failure_reason, epoch(ended_at) FROM vmotion ORDER BY 1").fetchall()
    assert rows == [("vm-1", None, 1_700_000_000.0), ("vm-2", "maxSwitchoverTimeExceeded", 1_700_000_100.0)]
