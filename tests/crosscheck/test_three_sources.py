"""The same GPU reads the same window mean (±1 pp) through the agent, dcgm-exporter,
nvidia_gpu_exporter and its trace (ARCHITECTURE.md, Definitions: Utilization).

A sample with value v over a period dt contributes busy = dt·v/100: the agent integrates the
driver's sample ring into busy/idle counters; the exporters serve NVML's utilization gauge
(the last driver sample period) that analytics hold until the next scrape. Both must arrive
at the time-weighted mean of what the driver sampled.
"""

from __future__ import annotations

from pathlib import Path

from tests.crosscheck.harness import SOURCES, machine, report_json, trace_mean

# A fixed instant (the run is deterministic) in the busier half of the simulated day, one
# second past a whole minute: the trace's burst windows start on whole minutes, and a real
# scraper's phase has nothing to do with when bursts start. Scrapes landing exactly on every
# burst start would bias a held gauge upwards by ~STEP_S/2 per burst end (docs/metrics.md).
T0 = 1_699_965_001.0
STEP_S = 2.0  # scrape and agent poll interval (simulated)
HOURS = 1.0
TOL_PP = 1.0
# steady 10 %, steady 40 %, and request bursts: 60 s windows of which 15–60 % see a burst
# filling 30–100 % of the window at 20–85 % (accelmon.sim.traces.BurstyInference). The bursts
# are longer than a scrape interval: a gauge scraped every STEP_S can resolve them; the agent's
# counters resolve anything down to the driver's sample period.
SPEC = {
    "gpu": [
        {"model": "A100-SXM4-40GB", "trace": "constant:10"},
        {"model": "A100-SXM4-40GB", "trace": "constant:40"},
        {"model": "H100", "trace": {"generator": "bursty_inference", "window_s": 60.0, "seed": 11}},
    ]
}


def test_window_mean_agrees_across_agent_dcgm_nvidia_gpu_exporter_and_trace(tmp_path: Path) -> None:
    steps = int(HOURS * 3600 / STEP_S)
    with machine(tmp_path, SPEC, T0) as m:
        for _ in range(steps):
            m.step(STEP_S)
        uuids = m.uuids()
        t_first, t_last = T0 + STEP_S, T0 + steps * STEP_S
        expected = {u: trace_mean(m.sim, i, t_first, t_last) for i, u in enumerate(uuids)}
    # the window holds every sample; coverage runs from each source's first to last sample
    means: dict[str, dict[str, float]] = {}
    for src in SOURCES:
        doc = report_json(tmp_path / src, T0, t_last + 1, tmp_path / f"report-{src}")
        rows = {g["gpu"]: g for g in doc["gpus"]}
        assert set(rows) == set(uuids), (src, sorted(rows))
        for u in uuids:
            assert rows[u]["source"] == src
            assert rows[u]["method"] == ("counters" if src == "agent" else "held_samples"), (src, rows[u]["method"])
            assert abs(rows[u]["covered_hours"] - (t_last - t_first) / 3600) < 0.01, (src, rows[u]["covered_hours"])
        means[src] = {u: rows[u]["mean_util_percent"] for u in uuids}
    assert expected[uuids[0]] == 10.0 and expected[uuids[1]] == 40.0
    assert 10.0 < expected[uuids[2]] < 50.0  # bursty: neither idle nor saturated
    table = "\n".join(f"{u[:12]} trace={expected[u]:.2f} " + " ".join(f"{s}={means[s][u]:.2f}" for s in SOURCES)
                      for u in uuids)
    print(table)
    for u in uuids:
        for src in SOURCES:
            assert abs(means[src][u] - expected[u]) <= TOL_PP, f"{src} vs trace, {u}:\n{table}"
        for a in SOURCES:
            for b in SOURCES:
                assert abs(means[a][u] - means[b][u]) <= TOL_PP, f"{a} vs {b}, {u}:\n{table}"
