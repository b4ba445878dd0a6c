"""Does the agent's utilization mean what nvidia-smi / DCGM say it means? End to end, over the wire.

Starts ``accelmon agent --simulate <spec>`` as its own process (time accelerated ``SPEED``×) with
one GPU per trace: steady 0, 5, 10, 40, 90 %, a bursty inference trace, and the same bursty
trace on a driver whose sample ring runs dry while idle (``NOT_FOUND``) and stamps samples with
a clock since boot.  Two scrapes of ``/metrics`` ``WINDOW_S`` apart; per GPU the agent's mean is
Δbusy / (Δbusy + Δidle), compared with the trace's time-weighted mean over the same window of
simulated time (the agent's ``accelmon_agent_last_poll_timestamp_seconds`` at each scrape).

Definition (NVML, nvmlUtilization_t.gpu): "Percent of time over the past sample period during
which one or more kernels was executing on the GPU" — so busy = dt·v/100 per reading.

Last line: ``max_abs_error_pp=<E> gpus=<N>`` (target E <= 1).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import requests
from _agentproc import running_agent
from prometheus_client.parser import text_string_to_metric_families

from accelmon.sim.spec import parse_spec
from accelmon.sim.traces import make_trace, time_weighted_mean

REPO = Path(__file__).resolve().parents[1]
SPEED = 20.0
WINDOW_S = 30.0  # real seconds between the two scrapes (600 s of simulated time)
BURSTY = {"generator": "bursty_inference", "seed": 4, "window_s": 10.0}
SPEC = {
    "speed": SPEED,
    "sample_clock_offset_s": -1_690_000_000.0,
    "gpu": [{"model": "L4", "trace": f"constant:{p}"} for p in (0, 5, 10, 40, 90)]
    + [{"model": "A100-SXM4-40GB", "trace": BURSTY},
       {"model": "A100-SXM4-40GB", "trace": BURSTY, "ring_runs_dry": True}],
}


def scrape(s: requests.Session, url: str) -> tuple[float, dict[str, tuple[float, float, float]]]:
    """(agent clock at its last poll, {gpu: (busy, idle, unobserved) seconds})."""
    text = s.get(url, timeout=10).text
    vals: dict[str, dict[str, float]] = {}
    at = float("nan")
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == "accelmon_agent_last_poll_timestamp_seconds":
                at = smp.value
            for k in ("busy", "idle", "unobserved"):
                if smp.name == f"accelmon_gpu_{k}_seconds_total":
                    vals.setdefault(smp.labels["gpu"], {})[k] = smp.value
    return at, {g: (v["busy"], v["idle"], v["unobserved"]) for g, v in vals.items()}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "util.json"
        spec_path.write_text(json.dumps(SPEC))
        with running_agent(str(spec_path), Path(tmp) / "data") as (_p, url):
            s = requests.Session()
            time.sleep(3.0)  # a few polls
            t0, a = scrape(s, url)
            time.sleep(WINDOW_S)
            t1, b = scrape(s, url)
    gpus = parse_spec(SPEC).gpus
    worst = 0.0
    for i, gs in enumerate(gpus):
        g = str(i)
        busy, idle, unobs = (b[g][k] - a[g][k] for k in range(3))
        got = 100.0 * busy / (busy + idle)
        want = time_weighted_mean(make_trace(gs.trace, gs.seed), t0, t1)
        err = abs(got - want)
        worst = max(worst, err)
        name = gs.trace if isinstance(gs.trace, str) else gs.trace["generator"]
        dry = " (ring runs dry)" if gs.ring_runs_dry else ""
        print(f"gpu {g} {name}{dry}: agent {got:6.2f} % trace {want:6.2f} % error {err:5.2f} pp; "
              f"observed {busy + idle:7.1f} s of {t1 - t0:7.1f} s, unobserved {unobs:.1f} s")
    print(f"window: {t1 - t0:.0f} s simulated ({SPEED:g}x), samples stamped with a clock since boot")
    print(f"max_abs_error_pp={worst:.2f} gpus={len(gpus)}")


if __name__ == "__main__":
    main()
