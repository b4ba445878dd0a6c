"""The daemon as a process (`accelmon run`): SIGTERM flushes and exits within 5 s; kill -9 loses
no acknowledged sample and the agents' counters cover the gap; a read-only DuckDB session holds
the catalog the whole time without any effect on ingestion."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import duckdb

from accelmon.store import Store
from accelmon.store.schema import TABLES

from .procs import Agent, BadAgent, Daemon, wait_until

BIOS = "42000000-0000-4000-8000-0000000000a1"


def _cfg(agents: list[str], flush: str) -> dict:
    return {"agents": {"discovery": False, "static": agents, "scrape_interval": "0.5s", "timeout": "3s"},
            "intervals": {"flush": flush}, "report": {"enabled": False}}


def _rows_in_store(data: Path) -> int:
    con = Store(data).connect()
    return sum(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES)


def test_sigterm_flushes_everything_and_exits_within_5s(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "a", bios_uuid=BIOS, gpus=[{"model": "A100-SXM4-40GB", "trace": "constant:40"}]).start()
    hang = BadAgent("hang").start()  # a scrape is in flight when SIGTERM arrives
    data = tmp_path / "data"
    # flush only every 5 minutes: whatever was polled is still in memory at SIGTERM
    d = Daemon(tmp_path, _cfg([agent.url, hang.url], "5m"), data).start()
    try:
        wait_until(lambda: (d.value("accelmon_source_samples_written_total", source="agent", table="gpu_sample")
                            or 0) >= 5, 30, "five polled samples")
        assert _rows_in_store(data) == 0  # nothing flushed yet
        t0 = time.monotonic()
        rc = d.stop(signal.SIGTERM)
        elapsed = time.monotonic() - t0
    finally:
        agent.stop()
        hang.stop()
    assert rc == 0 and elapsed < 5.0, (rc, elapsed)
    log = d.log.read_text()
    m = re.search(r"stopped in [\d.]+ s: (\d+) rows written this run, (\d+) not written", log)
    assert m, log[-2000:]
    written, lost = int(m.group(1)), int(m.group(2))
    assert lost == 0 and written >= 5
    assert _rows_in_store(data) == written  # nothing lost


def test_kill9_loses_no_acknowledged_sample_while_a_reader_holds_the_catalog(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = Store(data)
    assert store.ensure_catalog()
    reader = duckdb.connect(str(store.catalog_path), read_only=True)  # held for the whole test
    agent = Agent(tmp_path, "a", bios_uuid=BIOS, gpus=[{"model": "A100-SXM4-40GB", "trace": "constant:40"}]).start()
    d1 = Daemon(tmp_path, _cfg([agent.url], "1s"), data, name="d1").start()
    d2 = Daemon(tmp_path, _cfg([agent.url], "1s"), data, name="d2")
    try:
        wait_until(lambda: (d1.value("accelmon_store_rows_written_total", table="gpu_sample") or 0) >= 6,
                   30, "six acknowledged samples")
        acked = d1.value("accelmon_store_rows_written_total", table="gpu_sample")
        d1.stop(signal.SIGKILL)  # mid-ingest: polls every 0.5 s, flushes every 1 s
        assert acked is not None and acked >= 6
        before = reader.execute("SELECT count(*) FROM gpu_sample").fetchone()[0]
        assert before >= acked  # every acknowledged sample survived kill -9
        time.sleep(3.0)  # the daemon is down; the agent keeps counting
        d2.start()
        wait_until(lambda: reader.execute("SELECT count(*) FROM gpu_sample").fetchone()[0] >= before + 6, 30,
                   "the restarted daemon to ingest (seen through the held catalog)")
        assert d2.stop(signal.SIGTERM) == 0
    finally:
        d1.stop(signal.SIGKILL)
        d2.stop()
        agent.stop()
    assert "held open by another process" in d2.log.read_text()
    rows = reader.execute(
        "SELECT epoch(ts), busy_ms_total + idle_ms_total FROM gpu_sample ORDER BY ts").fetchall()
    reader.close()
    assert len(rows) == len({t for t, _ in rows})  # no duplicates
    # counters are continuous: never decrease, and the jump across the outage equals its length
    steps = [(t1 - t0, c1 - c0) for (t0, c0), (t1, c1) in zip(rows, rows[1:], strict=False)]
    assert all(dc >= 0 for _, dc in steps)
    dt_gap, dc_gap = max(steps)
    assert dt_gap >= 3.0
    assert abs(dc_gap / 1000.0 - dt_gap) <= 0.15 * dt_gap + 1.0, (dt_gap, dc_gap)
    total_s = rows[-1][0] - rows[0][0]
    assert abs((rows[-1][1] - rows[0][1]) / 1000.0 - total_s) <= 0.1 * total_s + 1.0
