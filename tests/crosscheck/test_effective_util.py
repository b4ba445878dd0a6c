"""Effective utilization (ARCHITECTURE.md, Definitions: the time-weighted SM-active fraction)
reads the same through the agent's GPM counters and through dcgm-exporter's
``DCGM_FI_PROF_SM_ACTIVE`` gauge, and equals what the simulated hardware did; a source that
cannot report SM activity (nvidia_gpu_exporter: nvidia-smi has no such field) reports none,
never 0.

Two H100s: a *trickle* (a kernel resident ~95 % of the time on ~4 % of the SMs: busy on time,
hollow on activity) and dense matrix multiplies (busy and SM-active). The agent samples GPM each
poll (two samples, one interval: ``nvmlGpmMetricsGet``) and integrates Σ dt·fraction; DCGM's
profiling field is the ratio over its own update interval, held by analytics until the next
scrape. Both must arrive at the simulated trace's SM-active mean.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from accelmon.sim.exporters import DCGM_PROF_FIELDS
from accelmon.sim.gpm import activity_mean
from tests.crosscheck.harness import machine, report_json

T0 = 1_699_965_001.0
STEP_S = 5.0
MINUTES = 20
TOL_PP = 1.0
SPEC = {"gpu": [{"model": "H100", "trace": "trickle"}, {"model": "H100", "trace": "matmul"}]}


def test_effective_util_agrees_between_agent_gpm_and_dcgm_profiling(tmp_path: Path) -> None:
    steps = int(MINUTES * 60 / STEP_S)
    with machine(tmp_path, SPEC, T0, prof_fields=DCGM_PROF_FIELDS, prof_interval_s=STEP_S) as m:
        for _ in range(steps):
            m.step(STEP_S)
        uuids = m.uuids()
        t_first, t_last = T0 + STEP_S, T0 + steps * STEP_S
        # the reference: the simulated hardware's SM-active mean over the observed span
        expected = {u: activity_mean(g.trace, t_first, t_last)[1] for u, g in zip(uuids, m.sim.gpus, strict=True)}
    # judged on 20 minutes (the default needs an hour of observation; the rule, not the span, is under test)
    cfg = tmp_path / "accelmon.toml"
    cfg.write_text("[thresholds]\nmin_covered_duration = \"10m\"\n")
    srcs = ("agent", "dcgm", "nvidia_gpu_exporter")
    with ThreadPoolExecutor(len(srcs)) as pool:  # three report processes side by side
        docs = dict(zip(srcs, pool.map(lambda s: report_json(tmp_path / s, T0, t_last + 1, tmp_path / f"report-{s}", cfg),
                                       srcs), strict=True))
    rows = {src: {g["gpu"]: g for g in d["gpus"]} for src, d in docs.items()}
    trickle, matmul = uuids
    assert expected[trickle] < 10 < 80 < expected[matmul], expected  # the traces mean what they say
    table = "\n".join(f"{u[:12]} sim={expected[u]:.2f} agent={rows['agent'][u]['effective_util_percent']} "
                      f"dcgm={rows['dcgm'][u]['effective_util_percent']}" for u in uuids)
    for u in uuids:
        for src in ("agent", "dcgm"):
            eff = rows[src][u]["effective_util_percent"]
            assert eff is not None, f"{src} gave no effective utilization for an H100:\n{table}"
            assert abs(eff - expected[u]) <= TOL_PP, f"{src} vs simulated hardware, {u}:\n{table}"
        assert abs(rows["agent"][u]["effective_util_percent"] - rows["dcgm"][u]["effective_util_percent"]) <= TOL_PP
        # nvidia-smi reports no SM activity: missing, never 0
        assert rows["nvidia_gpu_exporter"][u]["effective_util_percent"] is None
    # the same verdict on both paths: the trickle is hollow (busy on time, idle on SMs), matmul is not
    for src in ("agent", "dcgm"):
        assert rows[src][trickle]["status"] == "hollow", (src, rows[src][trickle]["status"], table)
        assert rows[src][matmul]["status"] == "ok", (src, rows[src][matmul]["status"])
    assert rows["nvidia_gpu_exporter"][trickle]["status"] == "ok"  # on time alone it looks busy
