"""vCenter unreachable: the other sources keep going, each vCenter job logs its failure once,
and when vCenter returns the power perf resumes from the last sample (vCenter keeps an hour of
realtime samples): per VM the 20 s series has no hole and no duplicate across the outage."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from accelmon.config import parse
from accelmon.daemon.service import Daemon
from accelmon.sim.vcsim import Vcsim
from accelmon.store import Store

from .procs import Agent, wait_until

OUTAGE_S = 25.0  # crosses at least one 20 s realtime sample


def test_vcenter_outage_isolated_and_perf_resumes(
    vcsim_factory: Callable[..., Vcsim], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sim = vcsim_factory(tls=False, seed=3)
    port, password = sim.port, sim.password
    agent = Agent(tmp_path, "a", bios_uuid="42000000-0000-4000-8000-0000000000b1",
                  gpus=[{"model": "L4", "trace": "constant:50"}]).start()
    cfg = parse({
        "vcenter": [{"url": sim.url, "user": sim.user, "password": password, "inventory_interval": "5s",
                     "perf_interval": "2s", "events_interval": "5s", "timeout": "3s"}],
        "agents": {"discovery": False, "static": [agent.url], "scrape_interval": "0.5s"},
        "intervals": {"flush": "1s"}, "report": {"enabled": False},
    }, "test.toml", env={})
    data = tmp_path / "data"
    d = Daemon(cfg, Store(data))
    d.prepare()
    d.start()
    con = lambda: Store(data).connect()  # noqa: E731
    try:
        wait_until(lambda: con().execute("SELECT count(*) FROM vm_power_sample").fetchone()[0] > 0, 30,
                   "vCenter power samples")
        ah = d.state.source_health("agent", agent.url)
        polls_before = ah.polls_total
        down_at = time.time()
        sim.stop()
        time.sleep(OUTAGE_S)
        polls_during = ah.polls_total - polls_before
        perf = d.state.source_health("vcenter.perf", sim.url)
        assert perf is not None and perf.success is False
        sim2 = vcsim_factory(tls=False, seed=3, port=port, password=password)
        up_at = time.time()
        assert sim2.url == sim.url
        wait_until(lambda: d.state.source_health("vcenter.perf", sim.url).success, 60, "vCenter perf to recover")
        wait_until(lambda: con().execute("SELECT epoch(max(ts)) FROM vm_power_sample").fetchone()[0] > up_at - 20,
                   30, "power samples after the outage")
    finally:
        d.stop()
        agent.stop()
    # the agent never noticed
    assert ah.errors_total == 0
    assert polls_during >= 0.6 * OUTAGE_S / 0.5, polls_during
    # each vCenter job said it once
    fails = Counter(r.getMessage().split(" ", 1)[0] for r in caplog.records if "poll failed" in r.getMessage())
    assert set(fails) <= {"vcenter.inventory", "vcenter.perf", "vcenter.events"} and fails["vcenter.perf"] == 1
    assert all(n == 1 for n in fails.values()), fails
    # perf resumed from the last sample: contiguous 20 s series across the outage, no duplicates
    rows = con().execute(
        "SELECT vm_moref, list(epoch(ts) ORDER BY ts) FROM vm_power_sample GROUP BY 1").fetchall()
    assert rows
    for moref, ts in rows:
        assert len(ts) == len(set(ts)), moref
        assert all(b - a == 20 for a, b in zip(ts, ts[1:], strict=False)), (moref, ts)
        assert ts[0] < down_at and ts[-1] > down_at + OUTAGE_S - 20, (moref, ts, down_at)
