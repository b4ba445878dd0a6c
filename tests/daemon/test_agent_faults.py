"""Agent faults against the real agent (`accelmon agent --simulate`) and broken endpoints:
away, back with counters reset, garbage, hang, a 2 GB body. Each is handled and logged once;
the healthy agent is unaffected; nothing of a bad scrape is stored."""

from __future__ import annotations

import logging
import resource
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from accelmon.config import parse
from accelmon.daemon.service import Daemon
from accelmon.demo.prometheus import free_port
from accelmon.exporter.server import MetricsApp
from accelmon.store import Store

from .procs import Agent, BadAgent, wait_until

TOKEN = "agent-token-Zq81xx"
GOOD_BIOS = "42000000-0000-4000-8000-000000000001"
FLAKY_BIOS = "42000000-0000-4000-8000-000000000002"


def test_agent_faults_are_isolated_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    good = Agent(tmp_path, "good", bios_uuid=GOOD_BIOS, token=TOKEN,
                 gpus=[{"model": "A100-SXM4-40GB", "trace": "constant:40"}]).start()
    flaky = Agent(tmp_path, "flaky", bios_uuid=FLAKY_BIOS, token=TOKEN,
                  gpus=[{"model": "L4", "trace": "constant:100"}]).start()
    bad = {m: BadAgent(m).start() for m in ("garbage", "hang", "huge")}
    away = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens there
    urls = [good.url, flaky.url, *(b.url for b in bad.values()), away]
    cfg = parse({
        "agents": {"discovery": False, "static": urls, "scrape_interval": "0.5s", "timeout": "2s",
                   "max_body_bytes": 1 << 20, "token": TOKEN},
        "intervals": {"flush": "1s"}, "report": {"enabled": False},
    }, "test.toml", env={})
    d = Daemon(cfg, Store(tmp_path / "data"))
    d.prepare()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    d.start()
    try:
        h = lambda u: d.state.source_health("agent", u)  # noqa: E731
        wait_until(lambda: all(h(b.url) and h(b.url).errors_total >= 2 for b in bad.values()), 60,
                   "each broken endpoint to fail twice")
        flaky.stop(signal.SIGKILL)  # away...
        wait_until(lambda: h(flaky.url).errors_total >= 2, 30, "the killed agent to be noticed")
        time.sleep(2.0)
        flaky.start()  # ...and back, its counters restarted from zero
        wait_until(lambda: h(flaky.url).success, 60, "the restarted agent to be scraped again")
        time.sleep(2.0)
        text = MetricsApp(d.state, cfg.exporter).render().decode()
    finally:
        d.stop()
        good.stop()
        flaky.stop()
        for b in bad.values():
            b.stop()
    # the healthy agent never missed a beat
    hg = d.state.source_health("agent", good.url)
    assert hg.errors_total == 0 and hg.success
    # each broken endpoint: failing, counted, logged exactly once
    fails = Counter(r.getMessage().split(": poll failed")[0].split(" ", 1)[1]
                    for r in caplog.records if "poll failed" in r.getMessage())
    for u in (*(b.url for b in bad.values()), away):
        assert fails[u] == 1, (u, fails)
        assert d.state.source_health("agent", u).success is False
    assert fails[flaky.url] == 1  # the outage, once
    assert fails[good.url] == 0
    assert any("recovered" in r.getMessage() and flaky.url in r.getMessage() for r in caplog.records)
    # the hang cost at most the timeout, the 2 GB body was cut at the size limit, not buffered
    assert d.state.source_health("agent", bad["hang"].url).last_duration_s < 3.5
    assert "size" in d.state.source_health("agent", bad["huge"].url).last_error.lower() or \
        "limit" in d.state.source_health("agent", bad["huge"].url).last_error.lower()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mb < 200, grown_mb
    # self-metrics show it
    assert f'accelmon_source_success{{source="agent",target="{bad["garbage"].url}"}} 0.0' in text
    assert f'accelmon_source_success{{source="agent",target="{good.url}"}} 1.0' in text
    # store: only the real agents' GPUs; the reset is visible as a counter decrease; the outage is a gap
    con = Store(tmp_path / "data").connect()
    per_bios = dict(con.execute("SELECT vm_bios_uuid, count(*) FROM gpu_sample GROUP BY 1").fetchall())
    assert set(per_bios) == {GOOD_BIOS, FLAKY_BIOS}
    resets = con.execute(
        "SELECT count(*) FROM (SELECT busy_ms_total < lag(busy_ms_total) OVER (ORDER BY ts) AS r "
        "FROM gpu_sample WHERE vm_bios_uuid = ?) WHERE r", [FLAKY_BIOS]).fetchone()[0]
    assert resets == 1
    gaps = con.execute("SELECT target, reason FROM collection_gap").fetchall()
    assert flaky.url in {t for t, _ in gaps}
    # no credential anywhere
    for r in caplog.records:
        assert TOKEN not in r.getMessage()
    assert TOKEN not in text
