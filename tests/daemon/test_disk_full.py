"""Disk full on the data dir: ingestion stops with a clear error metric and one log line,
resumes when space returns, nothing buffered is lost, the store is not corrupted.

The data dir is a real 4 MiB tmpfs (mounted when the test runs as root with CAP_SYS_ADMIN,
as in CI). Without that privilege the same scenario runs with RLIMIT_FSIZE lowered, which makes
the kernel fail the writes with EFBIG - the same code path, reported as ``disk_full``."""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accelmon.collector.registry import SourceJob
from accelmon.config import parse
from accelmon.daemon.service import Daemon
from accelmon.exporter.server import MetricsApp
from accelmon.store import Store

from .helpers import CounterSource


def _try_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or os.environ.get("ACCELMON_TEST_NO_TMPFS"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None], Callable[[], None], str]]:
    data = tmp_path / "data"
    data.mkdir()
    if _try_tmpfs(data):
        filler = data / "filler"

        def fill() -> None:
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * (64 << 10))
                        f.flush()
                except OSError:
                    pass

        def free() -> None:
            filler.unlink()

        try:
            yield data, fill, free, "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(data)], check=False)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def fill_rl() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))

    def free_rl() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    try:
        yield data, fill_rl, free_rl, "rlimit"
    finally:
        free_rl()
        signal.signal(signal.SIGXFSZ, old)


def test_disk_full_stops_ingest_visibly_and_resumes_without_loss(
    small_disk: tuple[Path, Callable[[], None], Callable[[], None], str], caplog: pytest.LogCaptureFixture
) -> None:
    data, fill, free, how = small_disk
    caplog.set_level(logging.INFO, logger="accelmon.daemon")
    cfg = parse({"agents": {"discovery": False}, "intervals": {"flush": "0.5s"}, "report": {"enabled": False}},
                "t.toml", env={})
    d = Daemon(cfg, Store(data))
    srcs = [CounterSource(f"http://10.0.0.{i}:9835/metrics", [f"GPU-{i}"]) for i in range(3)]
    for s in srcs:
        d._register(d._runner("agent", s.target, SourceJob("agent", 0.2, s.collect), s))
    app = MetricsApp(d.state, cfg.exporter)
    d.start()
    try:
        time.sleep(1.5)
        assert d.state.store.writable
        fill()
        time.sleep(2.5)
        st = d.state.store
        assert not st.writable, how
        assert st.write_errors_total.get("disk_full", 0) >= 2  # retried every flush...
        full_lines = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(full_lines) == 1, full_lines  # ...but said once
        assert "disk full" in full_lines[0] and str(data) in full_lines[0]
        text = app.render().decode()
        assert "accelmon_store_writable 0.0" in text
        assert 'accelmon_store_write_errors_total{reason="disk_full"}' in text
        polls_during = [s.polls for s in srcs]
        free()
        time.sleep(2.0)
        assert d.state.store.writable
        assert all(s.polls > p for s, p in zip(srcs, polls_during, strict=True))  # sources never stopped
        assert any("writing again" in r.getMessage() for r in caplog.records)
    finally:
        free_ok = True
        try:
            free()
        except OSError:
            free_ok = False
        d.stop()
    del free_ok
    # nothing lost: every row a source produced is in the store exactly once, and the store reads cleanly
    con = Store(data).connect()
    got = dict(con.execute("SELECT gpu_uuid, count(*) FROM gpu_sample GROUP BY 1").fetchall())
    assert got == {f"GPU-{i}": s.polls for i, s in enumerate(srcs)}
    assert con.execute("SELECT count(*) FROM (SELECT gpu_uuid, ts FROM gpu_sample GROUP BY ALL HAVING count(*) > 1)"
                       ).fetchone()[0] == 0
    Store(data).compact()
    assert Store(data).connect().execute("SELECT count(*) FROM gpu_sample").fetchone()[0] == sum(got.values())
