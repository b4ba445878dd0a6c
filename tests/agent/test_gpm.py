"""GPM: the simulated nvmlGpm* API against NVML's definition, and the agent's activity counters.

Definition: a GPM metric over two samples is Δ(active) / Δ(elapsed) over the interval between them
(NVML "Calculate GPM metrics from two samples"), i.e. the time-weighted mean of the activity; the
agent integrates dt·fraction into *_active_seconds counters (ARCHITECTURE.md "Effective utilization").
"""

from __future__ import annotations

import logging
from typing import Any

import pynvml
import pytest
from pynvml import NVMLError

from accelmon.sim.gpm import activity_mean

from .conftest import T0, agent_of, by_gpu, metrics_text, run_polls, scrape_into_store, series, sim_of

ACTIVITY = ("accelmon_gpu_sm_active_seconds_total", "accelmon_gpu_tensor_active_seconds_total",
            "accelmon_gpu_dram_active_seconds_total", "accelmon_gpu_sm_occupancy_ratio")
IDS = (pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL, pynvml.NVML_GPM_METRIC_SM_UTIL, pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
       pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL, pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL)


def metrics(nv: Any, s1: Any, s2: Any, ids: tuple[int, ...] = IDS) -> Any:
    mg = pynvml.c_nvmlGpmMetricsGet_t()
    mg.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    mg.numMetrics = len(ids)
    mg.sample1, mg.sample2 = s1, s2
    for i, mid in enumerate(ids):
        mg.metrics[i].metricId = mid
    return nv.nvmlGpmMetricsGet(mg)


def code(fn: Any, *args: Any) -> int:
    with pytest.raises(NVMLError) as ei:
        fn(*args)
    return int(ei.value.value)


def info_of(text: str) -> dict[str, str]:
    """UUID -> activity_source label of accelmon_gpu_info."""
    return {dict(k)["UUID"]: dict(k)["activity_source"] for k in series(text, "accelmon_gpu_info")}


# ---------------------------------------------------------------------------------------- simulated NVML
@pytest.mark.parametrize("trace", ["trickle", "matmul", "busy_training", "bursty_inference"])
def test_sim_metric_is_the_time_weighted_mean_between_two_samples(clock, trace) -> None:
    nv = sim_of({"gpu": [{"model": "H100", "trace": trace}]}, clock)
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    a, b = nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()
    for step in (0.35, 1.0, 7.3, 61.0):  # intervals not on the traces' 1/6 s grid
        t1 = clock.time()
        nv.nvmlGpmSampleGet(h, a)
        clock.advance(step)
        nv.nvmlGpmSampleGet(h, b)
        mg = metrics(nv, a, b)
        ref = activity_mean(nv.gpus[0].trace, t1, clock.time(), step=1 / 600)
        for i in range(len(IDS)):
            assert mg.metrics[i].nvmlReturn == pynvml.NVML_SUCCESS
            assert mg.metrics[i].value == pytest.approx(ref[i], abs=0.1), (step, IDS[i])
        clock.advance(3.0)


def test_sim_traces_trickle_and_matmul_differ_in_activity_not_in_busy_time(clock) -> None:
    nv = sim_of("hollow", clock)
    trickle, matmul = (activity_mean(g.trace, T0, T0 + 600) for g in nv.gpus)
    assert trickle[0] == pytest.approx(95, abs=1) and trickle[1] == pytest.approx(4, abs=1)
    assert matmul[0] > 90 and matmul[1] > 85 and matmul[3] > 70


def test_sim_support_by_model_mode_and_spec(clock) -> None:
    nv = sim_of({"gpu": [{"model": "H100"}, {"model": "H200"}, {"model": "A100"}, {"model": "L4"}, {"model": "T4"},
                         {"model": "H100", "mode": "vgpu", "vgpu_profile": "H100-20C"},
                         {"model": "H100", "gpm": False}, {"model": "A100", "gpm": True},
                         {"model": "H100", "mig": ["3g.40gb"]}]}, clock)
    nv.nvmlInit()
    hs = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
    got = [nv.nvmlGpmQueryDeviceSupport(h).isSupportedDevice for h in hs]
    assert got == [1, 1, 0, 0, 0, 0, 0, 1, 1]
    buf = nv.nvmlGpmSampleAlloc()
    for i in (2, 5):  # unsupported: sampling says NOT_SUPPORTED
        assert code(nv.nvmlGpmSampleGet, hs[i], buf) == pynvml.NVML_ERROR_NOT_SUPPORTED
    mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(hs[8], 0)  # GPM is read through the parent + GI id
    assert code(nv.nvmlGpmQueryDeviceSupport, mig) == pynvml.NVML_ERROR_NOT_SUPPORTED
    nv.nvmlGpmMigSampleGet(hs[8], 1, buf)
    assert code(nv.nvmlGpmMigSampleGet, hs[8], 5, buf) == pynvml.NVML_ERROR_INVALID_ARGUMENT


def test_sim_api_errors_match_nvml(clock) -> None:
    nv = sim_of({"gpu": [{"model": "H100", "trace": "matmul"}] * 2}, clock)
    nv.nvmlInit()
    h0, h1 = nv.nvmlDeviceGetHandleByIndex(0), nv.nvmlDeviceGetHandleByIndex(1)
    a, b, c = nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()
    assert code(metrics, nv, a, b) == pynvml.NVML_ERROR_INVALID_ARGUMENT  # never filled
    nv.nvmlGpmSampleGet(h0, a)
    clock.advance(1)
    nv.nvmlGpmSampleGet(h1, c)
    assert code(metrics, nv, a, c) == pynvml.NVML_ERROR_INVALID_ARGUMENT  # two different GPUs
    nv.nvmlGpmSampleGet(h0, b)
    assert code(metrics, nv, b, a) == pynvml.NVML_ERROR_INVALID_ARGUMENT  # sample2 not newer
    mg = metrics(nv, a, b, (pynvml.NVML_GPM_METRIC_SM_UTIL, pynvml.NVML_GPM_METRIC_NVDEC_0_UTIL))
    assert [mg.metrics[i].nvmlReturn for i in range(2)] == [pynvml.NVML_SUCCESS, pynvml.NVML_ERROR_NOT_SUPPORTED]
    mg.version = 7
    assert code(nv.nvmlGpmMetricsGet, mg) == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    nv.lose_gpu(0)
    assert code(nv.nvmlGpmSampleGet, h0, a) == pynvml.NVML_ERROR_GPU_IS_LOST
    assert code(metrics, nv, a, b) == pynvml.NVML_ERROR_GPU_IS_LOST
    nv.recover_gpu(0)
    nv.nvmlGpmSampleFree(a)
    assert code(metrics, nv, a, b) == pynvml.NVML_ERROR_INVALID_ARGUMENT  # freed
    assert code(nv.nvmlGpmSampleFree, a) == pynvml.NVML_ERROR_INVALID_ARGUMENT


# ---------------------------------------------------------------------------------------- agent
def _fractions(text: str, gpu: str = "0") -> tuple[float, float, float]:
    """(busy, SM-active, tensor-active) as percent of the observed time (busy + idle)."""
    busy = by_gpu(text, "accelmon_gpu_busy_seconds_total")[gpu]
    idle = by_gpu(text, "accelmon_gpu_idle_seconds_total")[gpu]
    sm = by_gpu(text, "accelmon_gpu_sm_active_seconds_total")[gpu]
    tensor = by_gpu(text, "accelmon_gpu_tensor_active_seconds_total")[gpu]
    return 100 * busy / (busy + idle), 100 * sm / (busy + idle), 100 * tensor / (busy + idle)


def test_trickle_is_busy_but_sm_idle_and_matmul_is_both(clock) -> None:
    sim = sim_of("hollow", clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 300, 1.0)
    text = metrics_text(agent)
    busy, sm, _ = _fractions(text, "0")
    assert busy == pytest.approx(95, abs=1) and sm == pytest.approx(4, abs=1)
    busy, sm, tensor = _fractions(text, "1")
    assert busy > 90 and sm > 85 and tensor > 70
    assert set(info_of(text).values()) == {"gpm"}
    # the counter is exactly Σ dt·f since the first sample (taken when the agent started)
    for i, g in enumerate(sim.gpus):
        ref = activity_mean(g.trace, T0, clock.time(), step=1 / 600)
        got = by_gpu(text, "accelmon_gpu_sm_active_seconds_total")[str(i)]
        assert got == pytest.approx(ref[1] / 100 * (clock.time() - T0), rel=1e-3)
        assert 0 < by_gpu(text, "accelmon_gpu_sm_occupancy_ratio")[str(i)] <= 1


@pytest.mark.parametrize("gpu", [{"model": "A100"}, {"model": "L4"},
                                 {"model": "H100", "mode": "vgpu", "vgpu_profile": "H100-20C"}])
def test_unsupported_gpus_have_no_activity_series_and_say_so_once(clock, caplog, gpu) -> None:
    caplog.set_level(logging.INFO, "accelmon.agent")
    sim = sim_of({"gpu": [{**gpu, "trace": "matmul"}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 5, 1.0)
    sim.lose_gpu(0)  # a re-initialisation must not log it again
    run_polls(agent, clock, 1, 1.0)
    sim.recover_gpu(0)
    run_polls(agent, clock, 5, 1.0)
    text = metrics_text(agent)
    assert by_gpu(text, "accelmon_gpu_up")["0"] == 1.0
    assert info_of(text) == {sim.gpus[0].uuid: "none"}
    for name in ACTIVITY:
        assert series(text, name) == {}  # never zeros
    assert sim.calls["nvmlGpmSampleGet"] == 0
    assert sum("activity not available" in r.getMessage() for r in caplog.records) == 1


def test_mig_instances_have_their_own_activity(clock) -> None:
    sim = sim_of({"gpu": [{"model": "H100", "mig": ["3g.40gb", "2g.20gb"], "trace": "bursty_inference"}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 120, 1.0)
    text = metrics_text(agent)
    sm = {dict(k)["UUID"]: v for k, v in series(text, "accelmon_gpu_sm_active_seconds_total").items()}
    g = sim.gpus[0]
    span = clock.time() - T0
    want = {}
    for m in g.migs:  # each instance: its own activity, read with nvmlGpmMigSampleGet(parent, gi_id)
        trace = sim.gpm._scope(g, m.gi_id).trace
        want[m.uuid] = activity_mean(trace, T0, clock.time(), step=1 / 600)[1] / 100 * span
        assert sm[m.uuid] == pytest.approx(want[m.uuid], abs=0.001 * span)  # 0.1 pp of the time
    assert sm[g.migs[0].uuid] != pytest.approx(sm[g.migs[1].uuid], rel=0.05)  # not one number copied
    # the whole GPU: slice-weighted (3/7, 2/7; the 2 free slices idle)
    assert sm[g.uuid] == pytest.approx(3 / 7 * sm[g.migs[0].uuid] + 2 / 7 * sm[g.migs[1].uuid], abs=0.001 * span)
    assert sim.calls["nvmlGpmMigSampleGet"] >= 2 * 120
    assert set(info_of(text).values()) == {"gpm"}


def test_not_supported_mid_run_drops_the_series_never_zero(clock) -> None:
    sim = sim_of({"gpu": [{"model": "H100", "trace": "matmul"}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 3, 1.0)
    assert by_gpu(metrics_text(agent), "accelmon_gpu_sm_active_seconds_total")["0"] > 0
    sim.inject("nvmlGpmSampleGet", pynvml.NVML_ERROR_NOT_SUPPORTED)
    run_polls(agent, clock, 3, 1.0)
    text = metrics_text(agent)
    for name in ACTIVITY:
        assert series(text, name) == {}
    assert info_of(text) == {sim.gpus[0].uuid: "none"}
    sup = {dict(k)["collector"]: v for k, v in series(text, "accelmon_agent_collector_supported").items()}
    assert sup["activity"] == 0.0 and sup["utilization"] == 1.0
    assert by_gpu(text, "accelmon_gpu_busy_seconds_total")["0"] > 0  # the rest keeps working


def test_a_failed_read_loses_no_activity(clock) -> None:
    """GPM counters are cumulative: after a failed sample or metrics call, the next pair spans both
    intervals, so the total still equals Σ dt·f over the whole time (resolution lost, not information)."""
    sim = sim_of({"gpu": [{"model": "H100", "trace": "matmul"}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 5, 1.0)
    sim.inject("nvmlGpmMetricsGet", pynvml.NVML_ERROR_UNKNOWN, times=2)
    run_polls(agent, clock, 2, 1.0)
    text = metrics_text(agent)
    assert "0" not in by_gpu(text, "accelmon_gpu_sm_active_seconds_total")  # failed: left out, not 0
    ok = {dict(k)["collector"]: v for k, v in series(text, "accelmon_agent_collector_success").items()}
    assert ok["activity"] == 0.0
    sim.inject("nvmlGpmSampleGet", pynvml.NVML_ERROR_UNKNOWN, times=1)
    run_polls(agent, clock, 4, 1.0)
    got = by_gpu(metrics_text(agent), "accelmon_gpu_sm_active_seconds_total")["0"]
    span = clock.time() - T0
    ref = activity_mean(sim.gpus[0].trace, T0, clock.time(), step=1 / 600)[1] / 100 * span
    assert got == pytest.approx(ref, abs=0.001 * span)  # 0.1 pp; one lost 1 s interval would be ~7 pp here


def test_gpu_lost_mid_sample_is_down_and_counters_continue_without_the_outage(clock) -> None:
    sim = sim_of({"gpu": [{"model": "H100", "trace": "matmul"}, {"model": "H100", "trace": "matmul"}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 5, 1.0)
    before = by_gpu(metrics_text(agent), "accelmon_gpu_sm_active_seconds_total")["1"]
    sim.inject("nvmlGpmSampleGet", pynvml.NVML_ERROR_GPU_IS_LOST, index=1, times=1)
    run_polls(agent, clock, 1, 1.0)
    text = metrics_text(agent)
    assert by_gpu(text, "accelmon_gpu_up") == {"0": 1.0, "1": 0.0}
    assert set(by_gpu(text, "accelmon_gpu_sm_active_seconds_total")) == {"0"}
    freed = sim.calls["nvmlGpmSampleFree"]
    assert freed == 2  # the lost GPU's sample buffers
    clock.advance(30)  # down for a while (re-init after the 1 s backoff)
    run_polls(agent, clock, 5, 1.0)
    text = metrics_text(agent)
    after = by_gpu(text, "accelmon_gpu_sm_active_seconds_total")["1"]
    assert by_gpu(text, "accelmon_gpu_up")["1"] == 1.0 and after > before  # continuous, never back
    # the outage (≥ 30 s) is not credited: at most the polled time outside it
    assert after - before < 0.95 * (5 + 1 + 1)


def test_agent_source_stores_activity_counters_and_source(tmp_path) -> None:
    import time

    from accelmon.sim.clock import ManualClock

    clock = ManualClock(time.time() - 60)
    sim = sim_of({"gpu": [{"model": "H100", "trace": "trickle"}, {"model": "A100", "trace": "matmul"}]}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 20, 1.0)
    store = scrape_into_store(agent, tmp_path / "data")
    text = metrics_text(agent)
    con = store.connect()
    rows = {r[0]: r[1:] for r in con.execute(
        "select gpu_uuid, sm_active_ms_total, tensor_active_ms_total, dram_active_ms_total, sm_occupancy_percent,"
        " sm_active_percent from gpu_sample").fetchall()}
    h100, a100 = (g.uuid for g in sim.gpus)
    sm, tensor, dram, occ, _ = rows[h100]
    assert sm == round(by_gpu(text, "accelmon_gpu_sm_active_seconds_total")["0"] * 1000)  # ms
    assert tensor == round(by_gpu(text, "accelmon_gpu_tensor_active_seconds_total")["0"] * 1000)
    assert dram == round(by_gpu(text, "accelmon_gpu_dram_active_seconds_total")["0"] * 1000)
    assert occ == pytest.approx(by_gpu(text, "accelmon_gpu_sm_occupancy_ratio")["0"] * 100, abs=1e-3)  # percent
    assert rows[a100] == (None, None, None, None, None)  # cannot report it: NULL, never 0
    src = dict(con.execute("select gpu_uuid, activity_source from agent_gpu").fetchall())
    assert src == {h100: "gpm", a100: "none"}
