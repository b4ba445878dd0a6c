"""Utilization means what NVML, DCGM and nvidia-smi say it means, read from the agent's counters.

NVML, nvmlUtilization_t.gpu: "Percent of time over the past sample period during which one or
more kernels was executing on the GPU".  So the window mean read from the agent,
Δbusy / (Δbusy + Δidle) between two scrapes, must equal the trace's time-weighted mean — whether
the driver's ring keeps sampling an idle GPU or runs dry (NOT_FOUND), and whatever clock the
driver stamps its samples with.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pynvml
import pytest
import requests

from accelmon.collector.agent.server import AgentHTTPServer
from accelmon.sim.clock import ManualClock
from accelmon.sim.traces import make_trace, time_weighted_mean

from .conftest import agent_of, by_gpu, metrics_text, run_polls, sim_of

P = 1 / 6
BURSTY = {"generator": "bursty_inference", "seed": 1, "window_s": 7.0}


class Wire:
    """An agent served over HTTP; ``scrape()`` reads its counters the way Prometheus does."""

    def __init__(self, spec: dict[str, Any], clock: ManualClock) -> None:
        self.sim = sim_of(spec, clock)
        self.agent = agent_of(self.sim, clock)
        self.srv = AgentHTTPServer(self.agent, "127.0.0.1:0")
        self.srv.serve_in_thread()

    def scrape(self) -> dict[str, dict[str, float]]:
        r = requests.get(self.srv.url + "/metrics", timeout=10)
        r.raise_for_status()
        return {k: by_gpu(r.text, f"accelmon_gpu_{k}_seconds_total") for k in ("busy", "idle", "unobserved")}

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def wire(clock) -> Iterator[Any]:
    made: list[Wire] = []

    def make(spec: dict[str, Any]) -> Wire:
        w = Wire(spec, clock)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def window(w: Wire, clock: ManualClock, seconds: float, step: float = 1.0) -> dict[str, dict[str, float]]:
    """Δ of every counter over ``seconds`` of 1 s polls (after a few polls to settle)."""
    run_polls(w.agent, clock, 3, step)
    a = w.scrape()
    run_polls(w.agent, clock, round(seconds / step), step)
    b = w.scrape()
    return {k: {g: b[k][g] - a[k][g] for g in b[k]} for k in b}


class _Active:
    def __init__(self, trace: Any) -> None:
        self.trace = trace

    def util(self, t: float) -> float:
        return 100.0 if self.trace.util(t) > 0 else 0.0


def mean_pp(d: dict[str, dict[str, float]], gpu: str) -> float:
    busy, idle = d["busy"][gpu], d["idle"][gpu]
    return 100.0 * busy / (busy + idle)


def test_a_steady_ten_percent_l4_reads_ten_percent_over_the_wire(wire, clock) -> None:
    w = wire({"gpu": [{"model": "L4", "trace": "constant:10"}], "speed": 20})
    d = window(w, clock, 120)
    assert mean_pp(d, "0") == pytest.approx(10.0, abs=0.5)  # was 100 % when any sample > 0 counted as busy
    assert d["busy"]["0"] + d["idle"]["0"] == pytest.approx(120.0, abs=P)
    assert d["unobserved"]["0"] == 0.0


@pytest.mark.parametrize("pct", [0, 5, 40, 90, 100])
def test_steady_levels_read_their_level(wire, clock, pct) -> None:
    w = wire({"gpu": [{"model": "L4", "trace": f"constant:{pct}"}]})
    assert mean_pp(window(w, clock, 60), "0") == pytest.approx(pct, abs=0.5)


def test_a_bursty_gpu_reads_its_time_weighted_mean(wire, clock) -> None:
    w = wire({"gpu": [{"trace": BURSTY}]})
    run_polls(w.agent, clock, 3, 1.0)
    t0 = clock.time()
    a = w.scrape()
    run_polls(w.agent, clock, 600, 1.0)
    b = w.scrape()
    busy, idle = b["busy"]["0"] - a["busy"]["0"], b["idle"]["0"] - a["idle"]["0"]
    trace = make_trace(BURSTY)
    want = time_weighted_mean(trace, t0, clock.time())
    active = time_weighted_mean(_Active(trace), t0, clock.time())  # share of time with any activity
    assert 5 < want < active - 5  # the trace really is bursty, its bursts well under 100 %
    assert 100 * busy / (busy + idle) == pytest.approx(want, abs=1.0)  # "any sample > 0 = busy" would read `active`
    assert busy + idle == pytest.approx(600.0, abs=P)


def test_a_ring_that_runs_dry_when_idle_is_observed_idle_time(wire, clock) -> None:
    """Real drivers take no samples on an idle GPU: nvmlDeviceGetSamples raises NOT_FOUND."""
    w = wire({"gpu": [{"trace": BURSTY, "ring_runs_dry": True},
                      {"model": "L4", "trace": "idle_allocated", "ring_runs_dry": True}]})
    run_polls(w.agent, clock, 3, 1.0)
    t0 = clock.time()
    a = w.scrape()
    run_polls(w.agent, clock, 600, 1.0)
    b = w.scrape()
    d = {k: {g: b[k][g] - a[k][g] for g in b[k]} for k in b}
    assert d["unobserved"] == {"0": 0.0, "1": 0.0}  # coverage is not lost
    assert d["busy"]["1"] == 0.0 and d["idle"]["1"] == pytest.approx(600.0, abs=P)
    assert d["busy"]["0"] + d["idle"]["0"] == pytest.approx(600.0, abs=2 * P)
    want = time_weighted_mean(make_trace(BURSTY), t0, clock.time())
    assert mean_pp(d, "0") == pytest.approx(want, abs=1.0)


def test_not_found_is_credited_by_the_utilization_rates_reading(wire, clock) -> None:
    """If the ring says nothing new but nvmlDeviceGetUtilizationRates reads > 0, credit that value."""
    w = wire({"gpu": [{"trace": "constant:30"}]})
    w.sim.inject("nvmlDeviceGetSamples", pynvml.NVML_ERROR_NOT_FOUND)
    d = window(w, clock, 60)
    assert d["unobserved"]["0"] == 0.0
    assert d["busy"]["0"] == pytest.approx(18.0) and d["idle"]["0"] == pytest.approx(42.0)


@pytest.mark.parametrize("offset", [-1_699_000_000.0, -3600.0, 86400.0])
def test_a_driver_clock_in_another_domain_changes_nothing(wire, clock, offset) -> None:
    """Sample timestamps since boot (or ahead of the host): compared only with each other, so the
    counters equal those of a driver whose clock is the host's."""
    gpus = [{"trace": "constant:10"}, {"trace": BURSTY}, {"trace": BURSTY, "ring_runs_dry": True}]
    w, ref = wire({"gpu": gpus, "sample_clock_offset_s": offset}), wire({"gpu": gpus[:1]})

    def poll_both(n: int) -> None:
        for _ in range(n):
            clock.advance(1.0)
            w.agent.poll_once()
            ref.agent.poll_once()

    poll_both(3)
    t0 = clock.time()
    a, ra = w.scrape(), ref.scrape()
    poll_both(300)
    b, rb = w.scrape(), ref.scrape()
    d = {k: {g: b[k][g] - a[k][g] for g in b[k]} for k in b}
    assert d["unobserved"] == {"0": 0.0, "1": 0.0, "2": 0.0}
    for k in ("busy", "idle"):  # a steady GPU: exactly what a driver on the host's clock gives
        assert d[k]["0"] == pytest.approx(rb[k]["0"] - ra[k]["0"], abs=1e-3)
    want = time_weighted_mean(make_trace(BURSTY), t0, clock.time())
    assert mean_pp(d, "1") == pytest.approx(want, abs=1.0) and mean_pp(d, "2") == pytest.approx(want, abs=1.0)
    busy, idle = b["busy"]["0"] - a["busy"]["0"], b["idle"]["0"] - a["idle"]["0"]
    assert 100 * busy / (busy + idle) == pytest.approx(10.0, abs=0.5) and busy + idle == pytest.approx(300, abs=P)


def test_an_accelerated_clock_does_not_turn_idle_polls_into_unobserved_time() -> None:
    """`--simulate` with speed 20: a 1 s poll is 20 s of agent clock; a dry ring is still idle time."""

    class Fast(ManualClock):
        speed = 20.0

    clock = Fast(1_700_000_000.0)
    sim = sim_of({"gpu": [{"trace": "constant:0", "ring_runs_dry": True}], "speed": 20}, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 30, 20.0)
    text = metrics_text(agent)
    assert by_gpu(text, "accelmon_gpu_unobserved_seconds_total")["0"] == 0.0
    assert by_gpu(text, "accelmon_gpu_idle_seconds_total")["0"] == pytest.approx(600.0)
