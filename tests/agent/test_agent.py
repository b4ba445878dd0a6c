"""The agent over the simulated NVML: counters match the trace, and every fault of issue 5."""

from __future__ import annotations

import logging
import math
import threading
import time

import pynvml
import pytest

from accelmon.sim.traces import BurstyInference

from .conftest import T0, agent_of, by_gpu, metrics_text, run_polls, series, sim_of

P = 1 / 6


def expected_busy_idle(trace, start: float, end: float) -> tuple[float, float]:
    """What the driver's samples after ``start`` (the ring's newest sample when the agent started)
    up to ``end`` say, period by period on the sim's grid: busy = dt·v/100 (NVML's definition)."""
    p_us = 166667
    k0 = int(start * 1e6) // p_us
    k1 = int(end * 1e6) // p_us
    busy = idle = 0.0
    for k in range(k0 + 1, k1 + 1):
        v = round(trace.util(k * p_us / 1e6))
        busy += p_us * v / 100
        idle += p_us * (100 - v) / 100
    return busy / 1e6, idle / 1e6


def test_busy_and_idle_counters_match_the_trace(clock) -> None:
    sim = sim_of({"gpu": [{"trace": {"generator": "bursty_inference", "seed": 5, "window_s": 2.0}}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 60, 2.0)  # two minutes at a 2 s poll
    text = metrics_text(agent)
    busy = by_gpu(text, "accelmon_gpu_busy_seconds_total")["0"]
    idle = by_gpu(text, "accelmon_gpu_idle_seconds_total")["0"]
    want_busy, want_idle = expected_busy_idle(BurstyInference(seed=5, window_s=2.0), T0, clock.time())
    assert busy == pytest.approx(want_busy, abs=1e-5) and idle == pytest.approx(want_idle, abs=1e-5)
    assert 10 < busy < 110 and 10 < idle < 110  # the trace really has both
    assert busy + idle == pytest.approx(120.0, abs=P)
    assert by_gpu(text, "accelmon_gpu_unobserved_seconds_total")["0"] == 0.0
    info = series(text, "accelmon_gpu_info")
    assert dict(next(iter(info)))["util_source"] == "samples"


def test_a_slow_poll_loses_nothing_the_ring_still_holds_and_says_what_it_lost(clock) -> None:
    sim = sim_of({"gpu": [{"trace": "constant:30"}], "ring_size": 100}, clock)  # 100 × 1/6 s ≈ 16.7 s
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 1, 15.0)  # within the ring: exact
    text = metrics_text(agent)
    assert by_gpu(text, "accelmon_gpu_busy_seconds_total")["0"] == pytest.approx(15.0 * 0.3, abs=P)
    assert by_gpu(text, "accelmon_gpu_idle_seconds_total")["0"] == pytest.approx(15.0 * 0.7, abs=P)
    run_polls(agent, clock, 1, 60.0)  # the ring wrapped
    text = metrics_text(agent)
    unobserved = by_gpu(text, "accelmon_gpu_unobserved_seconds_total")["0"]
    busy = by_gpu(text, "accelmon_gpu_busy_seconds_total")["0"]
    idle = by_gpu(text, "accelmon_gpu_idle_seconds_total")["0"]
    assert unobserved == pytest.approx(60 - 100 * P, abs=2 * P)
    assert busy + idle + unobserved == pytest.approx(75.0, abs=2 * P)
    assert busy / (busy + idle) == pytest.approx(0.3)


def test_allocated_but_idle_is_visible(clock) -> None:
    sim = sim_of({"gpu": [{"model": "L4", "trace": "idle_allocated"}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 5, 1.0)
    text = metrics_text(agent)
    assert by_gpu(text, "accelmon_gpu_busy_seconds_total")["0"] == 0.0
    assert by_gpu(text, "accelmon_gpu_idle_seconds_total")["0"] == pytest.approx(5.0, abs=P)
    used = by_gpu(text, "accelmon_gpu_fb_used_bytes")["0"]
    total = by_gpu(text, "accelmon_gpu_fb_total_bytes")["0"]
    assert used / total == pytest.approx(0.7, abs=0.01)
    assert by_gpu(text, "accelmon_gpu_utilization_ratio")["0"] == 0.0


def test_units_match_nvml(clock) -> None:
    sim = sim_of({"gpu": [{"trace": "constant:80", "nvlink": 2}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 3, 1.0)
    text = metrics_text(agent)
    g = sim.gpus[0]
    assert by_gpu(text, "accelmon_gpu_energy_joules_total")["0"] == pytest.approx(int(g.energy_mj) / 1000.0)
    assert by_gpu(text, "accelmon_gpu_pcie_tx_bytes_total")["0"] == int(g.pcie_tx)
    assert by_gpu(text, "accelmon_gpu_power_watts")["0"] == pytest.approx(g.power_mw(clock.time()) / 1000.0)
    nvl = {dict(k)["link"]: v for k, v in series(text, "accelmon_gpu_nvlink_tx_bytes_total").items()}
    assert nvl == {"0": int(g.nvl_tx[0]) * 1024.0, "1": int(g.nvl_tx[1]) * 1024.0}  # KiB → bytes
    assert by_gpu(text, "accelmon_gpu_utilization_ratio")["0"] == pytest.approx(0.8)


def test_falls_back_to_utilization_rates_and_never_retries_samples(clock) -> None:
    sim = sim_of({"gpu": [{"trace": "constant:40", "unsupported": ["nvmlDeviceGetSamples"]}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 10, 1.0)
    text = metrics_text(agent)
    assert sim.calls["nvmlDeviceGetSamples"] == 1  # probed once
    busy = by_gpu(text, "accelmon_gpu_busy_seconds_total")["0"]
    idle = by_gpu(text, "accelmon_gpu_idle_seconds_total")["0"]
    assert (busy, idle) == pytest.approx((9.0 * 0.4, 9.0 * 0.6))  # first reading has no interval; dt·v/100
    info = dict(next(iter(series(text, "accelmon_gpu_info"))))
    assert info["util_source"] == "utilization_rates"


def test_vgpu_guest_exports_no_power_energy_pcie_nvlink(clock) -> None:
    for zero in (False, True):  # NOT_SUPPORTED, or a guest that reads them as 0
        sim = sim_of({"gpu": [{"mode": "vgpu", "vgpu_profile": "A100-4C", "vgpu_reports_zero": zero}]}, clock)
        agent = agent_of(sim, clock)
        run_polls(agent, clock, 3, 1.0)
        text = metrics_text(agent)
        for name in ("accelmon_gpu_power_watts", "accelmon_gpu_energy_joules_total", "accelmon_gpu_pcie_tx_bytes_total",
                     "accelmon_gpu_nvlink_tx_bytes_total"):
            assert not series(text, name), (zero, name)
        assert sim.calls["nvmlDeviceGetPowerUsage"] == 0 and sim.calls["nvmlDeviceGetTotalEnergyConsumption"] == 0
        assert sim.calls["nvmlDeviceGetPcieThroughput"] == 0
        assert "0" in by_gpu(text, "accelmon_gpu_busy_seconds_total")  # what a guest can read is there
        assert "0" in by_gpu(text, "accelmon_gpu_fb_used_bytes")
        info = dict(next(iter(series(text, "accelmon_gpu_info"))))
        assert (info["virtualization_mode"], info["vgpu_profile"]) == ("vgpu", "A100-4C")
        sup = {dict(k)["collector"]: v for k, v in series(text, "accelmon_agent_collector_supported").items()}
        assert sup["power"] == 0.0 and sup["utilization"] == 1.0


def test_vgpu_guest_pcie_counters_when_the_fields_work(clock) -> None:
    sim = sim_of({"gpu": [{"mode": "vgpu", "vgpu_pcie_fields": True, "trace": "constant:50"}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 3, 1.0)
    text = metrics_text(agent)
    assert by_gpu(text, "accelmon_gpu_pcie_rx_bytes_total")["0"] == int(sim.gpus[0].pcie_rx)
    assert not by_gpu(text, "accelmon_gpu_power_watts")


def test_unsupported_fields_are_dropped_once_never_zero(clock, caplog) -> None:
    caplog.set_level(logging.INFO, "accelmon.agent")
    sim = sim_of({"gpu": [{"model": "L4", "unsupported": ["nvmlDeviceGetPowerUsage"]}, {"model": "A100"}]}, clock)
    # an older driver without the energy call: FUNCTION_NOT_FOUND is cached the same way
    sim.inject("nvmlDeviceGetTotalEnergyConsumption", pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, index=1)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 5, 1.0)
    assert sim.calls_by_gpu[("nvmlDeviceGetTotalEnergyConsumption", 1)] == 1
    assert set(by_gpu(metrics_text(agent), "accelmon_gpu_energy_joules_total")) == {"0"}
    text = metrics_text(agent)
    assert set(by_gpu(text, "accelmon_gpu_power_watts")) == {"1"}  # GPU 0 absent, not 0
    assert sim.calls_by_gpu[("nvmlDeviceGetPowerUsage", 0)] == 1
    assert not [k for k in series(text, "accelmon_gpu_nvlink_tx_bytes_total") if dict(k)["gpu"] == "0"]
    # L4 has no NVLink: asked for the link count once, never for link counters
    assert sim.calls_by_gpu[("nvmlDeviceGetFieldValues", 0)] == 1 + 5  # probe + one PCIe read per poll
    assert len([r for r in caplog.records if "power not supported" in r.getMessage()]) == 1


def test_failed_read_suppresses_series_and_sets_success_0(clock) -> None:
    sim = sim_of("mixed", clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 2, 1.0)
    sim.inject("nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_UNKNOWN, index=0, times=1)
    run_polls(agent, clock, 1, 1.0)
    text = metrics_text(agent)
    assert "0" not in by_gpu(text, "accelmon_gpu_power_watts") and "1" in by_gpu(text, "accelmon_gpu_power_watts")
    ok = {(dict(k)["gpu"], dict(k)["collector"]): v for k, v in series(text, "accelmon_agent_collector_success").items()}
    assert ok[("0", "power")] == 0.0 and ok[("1", "power")] == 1.0 and ok[("0", "energy")] == 1.0
    run_polls(agent, clock, 1, 1.0)
    text = metrics_text(agent)
    assert "0" in by_gpu(text, "accelmon_gpu_power_watts")
    ok = {(dict(k)["gpu"], dict(k)["collector"]): v for k, v in series(text, "accelmon_agent_collector_success").items()}
    assert ok[("0", "power")] == 1.0


def test_no_permission_is_reported_once(clock, caplog) -> None:
    caplog.set_level(logging.INFO, "accelmon.agent")
    sim = sim_of("single", clock)
    sim.inject("nvmlDeviceGetTotalEnergyConsumption", pynvml.NVML_ERROR_NO_PERMISSION)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 10, 1.0)
    text = metrics_text(agent)
    assert not by_gpu(text, "accelmon_gpu_energy_joules_total")
    ok = {dict(k)["collector"]: v for k, v in series(text, "accelmon_agent_collector_success").items()}
    assert ok["energy"] == 0.0
    assert sim.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1  # not hammered every poll
    assert len([r for r in caplog.records if "NO_PERMISSION" in r.getMessage()]) == 1
    clock.advance(301)  # retried after a while, still one log line
    agent.poll_once()
    assert sim.calls["nvmlDeviceGetTotalEnergyConsumption"] == 2
    assert len([r for r in caplog.records if "NO_PERMISSION" in r.getMessage()]) == 1
    sim.clear_faults()
    clock.advance(301)
    agent.poll_once()
    assert by_gpu(metrics_text(agent), "accelmon_gpu_energy_joules_total")["0"] > 0


def test_lost_gpu_is_down_others_keep_serving_and_it_comes_back(clock, caplog) -> None:
    caplog.set_level(logging.INFO, "accelmon.agent")
    sim = sim_of({"gpu": [{"trace": "constant:50"}] * 3}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 3, 1.0)
    busy_before = by_gpu(metrics_text(agent), "accelmon_gpu_busy_seconds_total")["1"]
    sim.lose_gpu(1)
    run_polls(agent, clock, 1, 1.0)
    text = metrics_text(agent)
    assert by_gpu(text, "accelmon_gpu_up") == {"0": 1.0, "1": 0.0, "2": 1.0}
    assert set(by_gpu(text, "accelmon_gpu_busy_seconds_total")) == {"0", "2"}
    assert set(by_gpu(text, "accelmon_gpu_power_watts")) == {"0", "2"}
    calls = sim.calls_by_gpu[("nvmlDeviceGetMemoryInfo", 1)]
    run_polls(agent, clock, 3, 0.2)  # within the 1 s backoff: not retried
    assert sim.calls_by_gpu[("nvmlDeviceGetMemoryInfo", 1)] == calls
    sim.recover_gpu(1)
    run_polls(agent, clock, 3, 1.0)
    text = metrics_text(agent)
    assert by_gpu(text, "accelmon_gpu_up")["1"] == 1.0
    assert by_gpu(text, "accelmon_gpu_busy_seconds_total")["1"] > busy_before  # continuous, not reset
    assert any("is back" in r.getMessage() for r in caplog.records)


def test_backoff_grows_while_a_gpu_stays_lost(clock) -> None:
    sim = sim_of("single", clock)
    agent = agent_of(sim, clock)
    sim.lose_gpu(0)
    attempts = []
    for _ in range(40):
        before = sim.calls["nvmlDeviceGetHandleByUUID"]
        clock.advance(1.0)
        agent.poll_once()
        if sim.calls["nvmlDeviceGetHandleByUUID"] > before:
            attempts.append(clock.time() - T0)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[-1] >= 8  # 1, 2, 4, 8, 16 … s


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, pynvml.NVML_ERROR_DRIVER_NOT_LOADED])
def test_driver_reload_resets_energy_counted_and_counters_continue(clock, code) -> None:
    sim = sim_of({"gpu": [{"trace": "constant:70"}, {"trace": "constant:0"}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 5, 1.0)
    text = metrics_text(agent)
    e_before = by_gpu(text, "accelmon_gpu_energy_joules_total")["0"]
    busy_before = by_gpu(text, "accelmon_gpu_busy_seconds_total")["0"]
    sim.driver_unload(code)  # every call fails with it
    run_polls(agent, clock, 2, 1.0)
    assert by_gpu(metrics_text(agent), "accelmon_gpu_up") == {"0": 0.0, "1": 0.0}
    clock.advance(10)
    sim.driver_load()
    run_polls(agent, clock, 5, 1.0)
    text = metrics_text(agent)
    assert by_gpu(text, "accelmon_gpu_up") == {"0": 1.0, "1": 1.0}
    assert by_gpu(text, "accelmon_gpu_energy_joules_total")["0"] < e_before  # the driver's counter restarted
    assert by_gpu(text, "accelmon_gpu_energy_resets_total")["0"] == 1.0
    assert by_gpu(text, "accelmon_gpu_busy_seconds_total")["0"] > busy_before
    assert by_gpu(text, "accelmon_gpu_unobserved_seconds_total")["0"] > 5  # the outage, not invented


def test_nvlink_links_stop_at_invalid_and_drop_when_they_stop_answering(clock) -> None:
    sim = sim_of({"gpu": [{"nvlink": 6}]}, clock)
    sim.inject_field(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_ERROR_INVALID_ARGUMENT, scope=4)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 2, 1.0)
    links = {dict(k)["link"] for k in series(metrics_text(agent), "accelmon_gpu_nvlink_rx_bytes_total")}
    assert links == {"0", "1", "2", "3"}  # stops at the first invalid link
    sim.inject_field(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, pynvml.NVML_ERROR_NOT_SUPPORTED, scope=1)
    run_polls(agent, clock, 2, 1.0)
    links = {dict(k)["link"] for k in series(metrics_text(agent), "accelmon_gpu_nvlink_rx_bytes_total")}
    assert links == {"0", "2", "3"}


def test_pcie_falls_back_to_throughput_estimate(clock) -> None:
    sim = sim_of({"gpu": [{"trace": "constant:100", "unsupported": [
        "NVML_FI_DEV_PCIE_COUNT_TX_BYTES", "NVML_FI_DEV_PCIE_COUNT_RX_BYTES"]}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 4, 1.0)
    text = metrics_text(agent)
    tx = by_gpu(text, "accelmon_gpu_pcie_tx_bytes_total")["0"]
    rate_kb = sim.nvmlDeviceGetPcieThroughput(sim.nvmlDeviceGetHandleByIndex(0), pynvml.NVML_PCIE_UTIL_TX_BYTES)
    assert tx == pytest.approx(rate_kb * 1000 * 3, rel=0.01)  # three intervals after the first reading
    assert dict(next(iter(series(text, "accelmon_gpu_info"))))["pcie_source"] == "throughput_estimate"


def test_xid_counters_start_at_zero_and_count(clock) -> None:
    sim = sim_of("mixed", clock)
    agent = agent_of(sim, clock)
    agent.poll_once()
    x = {(dict(k)["gpu"], dict(k)["xid"]): v for k, v in series(metrics_text(agent), "accelmon_gpu_xid_errors_total").items()}
    assert x[("0", "79")] == 0.0 and x[("3", "79")] == 0.0
    sim.xid(0, 79)
    sim.xid(0, 79)
    sim.xid(2, 999)
    run_polls(agent, clock, 1, 1.0)
    x = {(dict(k)["gpu"], dict(k)["xid"]): v for k, v in series(metrics_text(agent), "accelmon_gpu_xid_errors_total").items()}
    assert x[("0", "79")] == 2.0 and x[("2", "999")] == 1.0 and x[("1", "79")] == 0.0


def test_per_process_metrics_are_opt_in(clock) -> None:
    for on in (False, True):
        sim = sim_of({"gpu": [{"trace": "constant:60"}]}, clock)
        agent = agent_of(sim, clock, per_process=on)
        run_polls(agent, clock, 2, 1.0)
        text = metrics_text(agent)
        mem = series(text, "accelmon_gpu_process_fb_used_bytes")
        sm = series(text, "accelmon_gpu_process_sm_utilization_ratio")
        if not on:
            assert not mem and not sm and sim.calls["nvmlDeviceGetComputeRunningProcesses"] == 0
        else:
            (labels, used), = mem.items()
            assert dict(labels)["pid"] == "1000" and dict(labels)["process_name"] == "python3" and used > 0
            assert list(sm.values()) == [0.6]


def test_idle_gpu_process_utilization_code_0_is_no_error(clock) -> None:
    sim = sim_of({"gpu": [{"trace": {"generator": "idle_allocated", "memory": 0.0}}]}, clock)
    agent = agent_of(sim, clock, per_process=True)
    run_polls(agent, clock, 2, 1.0)
    ok = {dict(k)["collector"]: v for k, v in series(metrics_text(agent), "accelmon_agent_collector_success").items()}
    assert ok["processes"] == 1.0


def test_mig_instances_are_their_own_series(clock) -> None:
    sim = sim_of("mig", clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 2, 1.0)
    text = metrics_text(agent)
    fb = series(text, "accelmon_gpu_fb_total_bytes")
    migs = {dict(k)["GPU_I_ID"]: (dict(k)["UUID"], v) for k, v in fb.items() if "GPU_I_ID" in dict(k)}
    assert set(migs) == {"1", "2"} and all(u.startswith("MIG-") for u, _ in migs.values())
    assert all(v == 20000 * 2**20 for _, v in migs.values())
    assert by_gpu(text, "accelmon_gpu_power_watts")["0"] > 0  # whole-GPU quantities stay on the parent
    assert not [k for k in series(text, "accelmon_gpu_power_watts") if "GPU_I_ID" in dict(k)]
    infos = [dict(k) for k in series(text, "accelmon_gpu_info")]
    parent = next(i for i in infos if "GPU_I_ID" not in i)
    assert parent["mig_mode"] == "enabled"
    assert {i["parent_UUID"] for i in infos if "GPU_I_ID" in i} == {parent["UUID"]}


def test_a_stuck_driver_never_blocks_a_scrape(clock) -> None:
    sim = sim_of("dgx-a100", clock)
    agent = agent_of(sim, clock, poll_interval=0.05)
    agent.poll_once()
    sim.inject("nvmlDeviceGetMemoryInfo", pynvml.NVML_SUCCESS, index=3, delay_s=1.5)  # NVML hangs 1.5 s
    agent.start_polling()
    try:
        time.sleep(0.3)  # the poll thread is now stuck inside NVML
        t0 = time.perf_counter()
        text = metrics_text(agent)
        elapsed = time.perf_counter() - t0
        assert elapsed < 0.25, elapsed
        assert len(by_gpu(text, "accelmon_gpu_up")) == 8
    finally:
        sim.clear_faults()
        agent.stop()


def test_poll_thread_keeps_polling_and_health(clock) -> None:
    sim = sim_of("single", clock)
    agent = agent_of(sim, clock, poll_interval=0.02)
    assert not agent.healthy()
    agent.start_polling()
    try:
        deadline = time.time() + 5
        while (agent.snapshot is None or agent.snapshot.polls < 5) and time.time() < deadline:
            time.sleep(0.01)
        assert agent.snapshot is not None and agent.snapshot.polls >= 5
        assert agent.healthy()
    finally:
        agent.stop()
    assert math.isfinite(agent.snapshot.poll_cpu_seconds_total)
    assert not any(t.name == "accelmon-agent-poll" for t in threading.enumerate())


def test_xid_events_are_keyed_by_the_device_not_the_handle_object(clock) -> None:
    """pynvml returns a fresh handle object per call (event data included): an Xid still lands on its
    GPU without asking the driver again, even when nvmlDeviceGetUUID fails (e.g. Xid 79, off the bus)."""
    sim = sim_of({"gpu": [{"trace": "constant:50"}] * 2}, clock)
    agent = agent_of(sim, clock)
    agent.poll_once()
    assert agent.slots[1].poller is not None
    assert sim.nvmlDeviceGetHandleByIndex(1) is not agent.slots[1].poller.h  # fresh objects per call
    uuid_calls = sim.calls["nvmlDeviceGetUUID"]
    sim.inject("nvmlDeviceGetUUID", pynvml.NVML_ERROR_UNKNOWN, index=1)
    sim.xid(1, 79)
    sim.xid(1, 48)
    run_polls(agent, clock, 1, 1.0)
    x = {(dict(k)["gpu"], dict(k)["xid"]): v for k, v in series(metrics_text(agent), "accelmon_gpu_xid_errors_total").items()}
    assert x[("1", "79")] == 1.0 and x[("1", "48")] == 1.0 and x[("0", "79")] == 0.0
    assert sim.calls["nvmlDeviceGetUUID"] == uuid_calls  # matched by device, not looked up again
