"""Daemon side: AgentSource scrapes a real agent over HTTP into the real store; bad agents fail cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from accelmon.collector.agent.server import AgentHTTPServer, TokenSource
from accelmon.collector.agent_source import AgentSource, ScrapeError, redact_url
from accelmon.collector.base import Source
from accelmon.sim.clock import ManualClock
from accelmon.store.writer import Store

from .conftest import VM_UUID, agent_of, by_gpu, metrics_text, run_polls, scrape_into_store, sim_of


@pytest.fixture
def live(tmp_path: Path):
    clock = ManualClock(time.time() - 60)
    sim = sim_of("mixed", clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 10, 1.0)
    srv = AgentHTTPServer(agent, "127.0.0.1:0", tokens=TokenSource("t0ken"))
    srv.serve_in_thread()
    yield srv, agent, sim, clock, Store(tmp_path / "data")
    srv.shutdown()
    srv.server_close()


def count(store: Store, table: str) -> int:
    return store.connect().execute(f"select count(*) from {table}").fetchone()[0]


def test_scrape_into_store_with_store_units(live) -> None:
    srv, agent, sim, clock, store = live
    src = AgentSource(srv.url, token="t0ken", timeout=5)
    assert isinstance(src, Source) and src.name == "agent"
    res = src.collect(store)
    assert res.rows == {"gpu_sample": 4, "nvlink_sample": 12 + 18, "agent_gpu": 4}
    assert res.tables["gpu_sample"].num_rows == 4
    text = metrics_text(agent)
    con = store.connect()
    rows = {r[0]: r[1:] for r in con.execute(
        "select gpu_uuid, busy_ms_total, idle_ms_total, energy_millijoules_total, power_milliwatts, fb_used_bytes,"
        " pcie_tx_bytes_total, vm_bios_uuid, source, util_percent from gpu_sample").fetchall()}
    uuids = by_gpu(text, "accelmon_gpu_up", "UUID")
    assert set(rows) == set(uuids)
    a100 = sim.gpus[0]
    busy, idle, energy, power, fb, tx, vm, source, util = rows[a100.uuid]
    assert busy == round(by_gpu(text, "accelmon_gpu_busy_seconds_total")["0"] * 1000)
    assert busy + idle == pytest.approx(10_000, abs=170)  # ms, 10 s of polls
    assert energy == int(a100.energy_mj)  # mJ, exactly what NVML said
    assert power == pytest.approx(by_gpu(text, "accelmon_gpu_power_watts")["0"] * 1000, abs=1)
    assert fb == by_gpu(text, "accelmon_gpu_fb_used_bytes")["0"] and tx == int(a100.pcie_tx)
    assert (vm, source) == (VM_UUID, "agent") and 0 <= util <= 100
    vgpu = rows[sim.gpus[3].uuid]
    assert vgpu[2] is None and vgpu[3] is None and vgpu[5] is None  # not available in a guest: null, never 0
    nvl = con.execute("select link, tx_bytes_total from nvlink_sample where gpu_uuid = ? order by link",
                      [a100.uuid]).fetchall()
    assert [n for n, _ in nvl] == list(range(12)) and nvl[0][1] == int(a100.nvl_tx[0]) * 1024
    ident = con.execute("select gpu_uuid, virtualization_mode, vgpu_profile, pci_bus_id, model_name, numa_node, hostname,"
                    " agent_url from agent_gpu").fetchall()
    assert {(i[1], i[2]) for i in ident} == {("passthrough", None), ("vgpu", "T4-8C")}
    assert all(i[7] == srv.url + "/metrics" and i[6] == "test-vm" for i in ident)
    # identity is written again only when it changes
    res2 = src.collect(store)
    assert "agent_gpu" not in res2.rows and res2.rows["gpu_sample"] == 4
    assert count(store, "agent_gpu") == 4


def test_gpu_down_writes_no_sample_for_it(live) -> None:
    srv, agent, sim, clock, store = live
    sim.lose_gpu(2)
    run_polls(agent, clock, 1, 1.0)
    res = AgentSource(srv.url, token="t0ken").collect(store)
    assert res.rows["gpu_sample"] == 3
    assert sim.gpus[2].uuid not in {r[0] for r in store.connect().execute("select gpu_uuid from gpu_sample").fetchall()}


def test_wrong_token_is_a_clean_error_without_the_token(live) -> None:
    srv, *_, store = live
    with pytest.raises(ScrapeError) as ei:
        AgentSource(srv.url, token="nope").collect(store)
    assert "HTTP 401" in str(ei.value) and "nope" not in str(ei.value) and "t0ken" not in str(ei.value)
    assert count(store, "gpu_sample") == 0


def test_garbage_and_non_agents_write_nothing(fake_http, tmp_path: Path) -> None:
    url, beh = fake_http
    store = Store(tmp_path / "d")
    src = AgentSource(url, timeout=3)
    for body, msg in [
        (b"<html><body>It works!</body></html>\n", "not Prometheus text format"),
        (b"\x00\xff\xfe binary", "not UTF-8"),
        (b'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-1"} 5\n', "not an accelmon agent"),
        (b"", "not an accelmon agent"),
    ]:
        beh.body = body
        with pytest.raises(ScrapeError, match=msg) as ei:
            src.collect(store)
        assert "\n" not in str(ei.value)
    beh.status, beh.body = 500, b"oops"
    with pytest.raises(ScrapeError, match="HTTP 500"):
        src.collect(store)
    # a body that parses but carries a broken GPU row: validated before anything is written
    beh.status = 200
    beh.body = (b'accelmon_agent_info{vm_bios_uuid="x"} 1\n'
                b'accelmon_gpu_up{UUID="GPU-a",gpu="0"} 1\n'
                b'accelmon_gpu_busy_seconds_total{UUID="GPU-a",gpu="0"} 1e30\n')
    with pytest.raises(ScrapeError, match="does not fit the store's 64-bit column") as ei:
        src.collect(store)
    assert str(ei.value).startswith(src.target)
    for t in ("gpu_sample", "nvlink_sample", "agent_gpu"):
        assert count(store, t) == 0


def test_hang_times_out(fake_http, tmp_path: Path) -> None:
    url, beh = fake_http
    beh.mode = "hang"
    t0 = time.monotonic()
    with pytest.raises(ScrapeError, match="within 1 s"):
        AgentSource(url, timeout=1.0).collect(Store(tmp_path / "d"))
    assert time.monotonic() - t0 < 3


def test_dripping_body_hits_the_deadline(fake_http, tmp_path: Path) -> None:
    url, beh = fake_http
    beh.mode = "drip"  # headers at once, then one byte every 0.1 s
    t0 = time.monotonic()
    with pytest.raises(ScrapeError, match="within 1 s"):
        AgentSource(url, timeout=1.0).collect(Store(tmp_path / "d"))
    assert time.monotonic() - t0 < 3


def test_huge_body_is_aborted(fake_http, tmp_path: Path) -> None:
    url, beh = fake_http
    beh.mode = "huge"  # 110 MB without Content-Length
    t0 = time.monotonic()
    with pytest.raises(ScrapeError, match="exceeds the limit of 1048576 bytes"):
        AgentSource(url, timeout=10, max_body_bytes=1024 * 1024).collect(Store(tmp_path / "d"))
    assert time.monotonic() - t0 < 5


def test_unreachable_and_redaction(tmp_path: Path) -> None:
    assert redact_url("https://user:pw@agent.example:9835/metrics?x=1") == "https://agent.example:9835/metrics"
    src = AgentSource("http://user:pw@127.0.0.1:1", timeout=1)
    assert src.target == "http://127.0.0.1:1/metrics"
    with pytest.raises(ScrapeError) as ei:
        src.collect(Store(tmp_path / "d"))
    assert "cannot connect" in str(ei.value) and "pw" not in str(ei.value)


def test_agent_restart_counters_are_stored_as_reported(live, tmp_path: Path) -> None:
    srv, agent, sim, clock, store = live
    src = AgentSource(srv.url, token="t0ken")
    src.collect(store)
    # a new agent process on the same VM: its counters start again from 0
    agent2 = agent_of(sim, clock)
    run_polls(agent2, clock, 2, 1.0)
    srv2 = AgentHTTPServer(agent2, "127.0.0.1:0")
    srv2.serve_in_thread()
    try:
        AgentSource(srv2.url).collect(store)
    finally:
        srv2.shutdown()
        srv2.server_close()
    busy = [r[0] for r in store.connect().execute(
        "select busy_ms_total from gpu_sample where gpu_uuid = ? order by ts", [sim.gpus[0].uuid]).fetchall()]
    assert busy[0] > busy[1]  # a reset, left for readers to handle like increase()


def test_mig_mode_from_nvml_and_unreported_utilization_is_null(tmp_path: Path) -> None:
    """agent_gpu.mig_mode comes from nvmlDeviceGetMigMode (NOT_SUPPORTED → NULL); a MIG-enabled GPU,
    whose utilization NVML does not report, stores NULL utilization and busy/idle, never 0."""
    clock = ManualClock(time.time() - 60)
    sim = sim_of({"gpu": [{"model": "A100-SXM4-40GB", "mig": ["3g.20gb", "3g.20gb"], "trace": "constant:70"},
                          {"model": "A100-SXM4-40GB", "trace": "constant:70"},
                          {"model": "L4", "trace": "constant:70"}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 5, 1.0)
    assert sim.calls["nvmlDeviceGetMigMode"] >= 3  # read from the real call, per GPU
    store = scrape_into_store(agent, tmp_path / "data")
    con = store.connect()
    modes = dict(con.execute("select gpu_uuid, mig_mode from agent_gpu").fetchall())
    g = sim.gpus
    assert modes[g[0].uuid] is True and modes[g[1].uuid] is False and modes[g[2].uuid] is None
    util = {r[0]: r[1:] for r in con.execute(
        "select gpu_uuid, util_percent, busy_ms_total, idle_ms_total from gpu_sample").fetchall()}
    mig_rows = [util[u] for u in [g[0].uuid] + [m.uuid for m in g[0].migs] if u in util]
    assert mig_rows and all(r == (None, None, None) for r in mig_rows)  # unreported: NULL, never 0
    assert util[g[1].uuid][0] == pytest.approx(70.0) and util[g[2].uuid][0] == pytest.approx(70.0)
