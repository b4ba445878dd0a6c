"""The per-source job wrapper: success/duration bookkeeping, backoff, log once per state change,
isolation, gaps for agent outages."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from accelmon.daemon.buffer import WriteBuffer
from accelmon.daemon.runner import SourceRunner
from accelmon.daemon.state import DaemonState
from accelmon.store import Store

from .helpers import CounterSource


def _runner(tmp_path: Path, src: CounterSource, interval: float = 0.05) -> tuple[SourceRunner, WriteBuffer]:
    state = DaemonState()
    buf = WriteBuffer(Store(tmp_path / "d"))
    r = SourceRunner(kind="agent", target=src.target, interval_s=interval, collect=src.collect, sink=buf,
                     state=state, max_backoff_s=0.4)
    return r, buf


def test_success_updates_health_and_state(tmp_path: Path) -> None:
    src = CounterSource("http://a:1/metrics", ["GPU-1", "GPU-2"])
    r, buf = _runner(tmp_path, src)
    assert r() is True
    h = r.health
    assert h.success is True and h.polls_total == 1 and h.errors_total == 0 and h.last_success_ts > 0
    assert r.state.snapshot().gpus.keys() == {"GPU-1", "GPU-2"}
    assert buf.rows_buffered == 2 and buf.flush() == 2


def test_failures_back_off_log_once_and_recover_with_a_gap_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="accelmon.daemon")
    src = CounterSource("http://a:1/metrics", ["GPU-1"])
    r, buf = _runner(tmp_path, src, interval=0.05)
    assert r() is True
    src.fail = ConnectionError("connection refused")
    results = []
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:  # the scheduler would call every 50 ms
        results.append(r())
        time.sleep(0.05)
    attempts = results.count(False)
    skipped = results.count(None)
    # backoff 50, 100, 200, 400, 400… ms: far fewer attempts than calls
    assert 3 <= attempts <= 7 and skipped > attempts
    assert r.health.errors_total == attempts and r.health.success is False
    failed_lines = [m for m in caplog.messages if "poll failed" in m]
    assert len(failed_lines) == 1 and "connection refused" in failed_lines[0]
    # a different kind of error is a state change: logged once more
    src.fail = TimeoutError("read timed out")
    time.sleep(0.45)
    assert r() is False
    time.sleep(0.45)
    r()
    assert len([m for m in caplog.messages if "poll failed" in m]) == 2
    src.fail = None
    time.sleep(0.45)
    assert r() is True
    assert r.health.consecutive_failures == 0 and r.health.success is True
    assert [m for m in caplog.messages if "recovered" in m]
    buf.flush()
    gaps = buf.store.connect().execute("SELECT source, target, reason FROM collection_gap").fetchall()
    assert gaps == [("agent", "http://a:1/metrics", "TimeoutError: read timed out")]


def test_a_raising_source_never_escapes_the_job(tmp_path: Path) -> None:
    src = CounterSource("http://a:1/metrics", ["GPU-1"])
    src.fail = RuntimeError("boom\nsecond line")
    r, _ = _runner(tmp_path, src)
    assert r() is False
    assert r.health.last_error == "RuntimeError: boom"
