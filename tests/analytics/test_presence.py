"""Coverage is measured against presence (ARCHITECTURE.md "Coverage"), so short-lived idle GPUs are judged.

Each test builds its own small store: agent-style counter samples (busy/idle ms counters, so a
0.6 % GPU is representable exactly), optionally an inventory history (full snapshots, as the
vCenter collector writes them) and the agent's GPU report that joins a GPU to its VM.
"""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest

from accelmon.analytics.analyze import analyze
from accelmon.analytics.findings import rows as finding_rows
from accelmon.analytics.verdict import MIG_REASON
from accelmon.analytics.window import Window
from accelmon.config import parse
from accelmon.store.writer import Store

T0 = dt.datetime(2025, 3, 3, tzinfo=dt.UTC)
DAY = Window(T0, T0 + dt.timedelta(hours=24), "test day")
VC = "5d2b8a3e-2222-4c1e-9a6e-0c9f6c2d0002"
STEP_S = 10
H = 3600.0


def _h(x: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=x)


def counter_rows(gpu: str, start_h: float, end_h: float, util_percent: float | None, *, bios: str | None = None,
                 fb_bytes: int = 4 << 30) -> list[dict]:
    """Samples every 10 s over [start, end]: busy = dt·u/100 accumulated in ms counters (u None: MIG, no util)."""
    n = int(round((end_h - start_h) * H / STEP_S)) + 1
    t = np.array([_h(start_h) + dt.timedelta(seconds=STEP_S * i) for i in range(n)])
    rows = []
    for i in range(n):
        r = {"ts": t[i], "gpu_uuid": gpu, "source": "agent", "vm_bios_uuid": bios, "fb_used_bytes": fb_bytes,
             "fb_total_bytes": 40 << 30, "energy_millijoules_total": 60_000 * STEP_S * i}
        if util_percent is not None:
            busy = round(i * STEP_S * 1000 * util_percent / 100)
            r |= {"busy_ms_total": busy, "idle_ms_total": i * STEP_S * 1000 - busy,
                  "util_percent": math.floor(util_percent)}
        rows.append(r)
    return rows


def agent_report(gpu: str, bios: str, at: dt.datetime, *, mig: bool = False) -> dict:
    return {"ts": at, "agent_url": "http://g:9835/metrics", "vm_bios_uuid": bios, "hostname": "g", "gpu_uuid": gpu,
            "gpu_index": 0, "pci_bus_id": "00000000:13:00.0", "model_name": "NVIDIA A100-PCIE-40GB",
            "virtualization_mode": "passthrough", "vgpu_profile": None, "mig_mode": mig, "numa_node": -1,
            "fb_total_bytes": 40 << 30}


def inventory(st: Store, vm: str, bios: str, states: list[tuple[float, str]]) -> None:
    """Full inventory snapshots at the given hours, the VM in the given power state, device attached."""
    for at_h, power in states:
        snap = {"snapshot_ts": _h(at_h), "vcenter_uuid": VC}
        st.append("inv_vcenter", [{**snap, "url": "https://vc/sdk", "name": "vc", "api_version": "8.0.2.0"}])
        st.append("inv_vm", [{**snap, "vm_moref": vm, "vm_bios_uuid": bios, "vm_name": vm + "-name",
                              "host_moref": "host-1", "cluster_name": "c", "power_state": power, "num_cpu": 8}])
        st.append("inv_vm_gpu", [{**snap, "vm_moref": vm, "device_key": 13000, "backing": "passthrough",
                                  "host_pci_id": "0000:3b:00.0", "host_numa_node": 0}])


def busy_neighbour(st: Store) -> None:
    """A GPU busy all day, so the store is not just the GPU under test."""
    st.append("gpu_sample", counter_rows("GPU-busy", 0, 24, 70.0))


def run(st: Store, window: Window = DAY) -> dict[str, dict]:
    cfg = parse({}, "<test>", env={})
    a = analyze(st, cfg.thresholds, window, now=window.end + dt.timedelta(hours=1))
    got = {r["gpu"]: r for r in a.gpus.to_dicts()}
    findings = finding_rows(run_id=a.run_id, generated_at=a.generated_at, window=window, gpus=a.gpus, numa=a.numa,
                            vmotion_flagged=a.vmotion["flagged"], plan=a.plan, thresholds=a.thresholds)
    for f in findings:
        if f["subject"] in got:
            got[f["subject"]]["finding"] = f
    return got


def test_short_lived_idle_gpu_is_flagged_with_its_presence_span(tmp_path):
    """Present 5 of 24 h, fully sampled at 0.6 %: the report exists to find this one (was "insufficient data")."""
    st = Store(tmp_path)
    busy_neighbour(st)
    st.append("gpu_sample", counter_rows("pod-short", 7, 12, 0.6))
    r = run(st)["pod-short"]
    assert r["presence_source"] == "samples"  # no inventory knows it: first to last sample
    assert r["presence_start_ms"] == int(_h(7).timestamp() * 1000)
    assert r["presence_end_ms"] == int(_h(12).timestamp() * 1000)
    assert r["presence_seconds"] == pytest.approx(5 * H)
    assert r["coverage_ratio"] == pytest.approx(r["covered_hours"] * H / r["presence_seconds"])
    assert r["coverage_ratio"] > 0.99
    assert r["mean_util_percent"] == pytest.approx(0.6, abs=0.01)  # time-weighted: busy = dt·v/100
    assert r["idle_ratio"] == pytest.approx(1 - r["mean_util_percent"] / 100)  # idle = dt − busy
    assert r["status"] == "underutilized" and r["underutilized"] is True
    f = r["finding"]
    assert f["kind"] == "underutilized"
    ev = json.loads(f["evidence_json"])
    assert ev["presence_start"] == _h(7).isoformat() and ev["presence_end"] == _h(12).isoformat()
    assert ev["presence_seconds"] == pytest.approx(5 * H) and ev["coverage_ratio"] > 0.99
    assert "present 5.0 h" in f["reason"]


def test_present_all_day_but_sampled_four_hours_is_insufficient(tmp_path):
    """The inventory says the VM was on with its GPU all day; the agent reported for 4 h only."""
    st = Store(tmp_path)
    busy_neighbour(st)
    bios = "4221abcd-0000-0000-0000-000000000001"
    inventory(st, "vm-7", bios, [(-1, "poweredOn")])
    st.append("agent_gpu", [agent_report("GPU-inv", bios, _h(-1))])
    st.append("gpu_sample", counter_rows("GPU-inv", 10, 14, 0.6, bios=bios))
    r = run(st)["GPU-inv"]
    assert r["presence_source"] == "inventory" and r["presence_seconds"] == pytest.approx(24 * H)
    assert r["coverage_ratio"] == pytest.approx(r["covered_hours"] / 24)
    assert r["status"] == "insufficient_data" and r["underutilized"] is None
    assert r["finding"]["kind"] == "insufficient_data" and "of its presence" in r["finding"]["reason"]


def test_a_gap_inside_the_sample_span_counts_against_coverage(tmp_path):
    """No inventory: seen 0-3 h and 21-24 h. Presence is the span (24 h); the 18 h between are missing."""
    st = Store(tmp_path)
    busy_neighbour(st)
    st.append("gpu_sample", counter_rows("pod-gap", 0, 3, 0.6) + [
        r | {"busy_ms_total": None, "idle_ms_total": None} for r in counter_rows("pod-gap", 21, 24, 0.6)])
    r = run(st)["pod-gap"]
    assert r["presence_seconds"] == pytest.approx(24 * H)
    assert r["covered_hours"] < 7 and r["missing_hours"] == pytest.approx(24 - r["covered_hours"])
    assert r["status"] == "insufficient_data"


def test_seen_for_twenty_minutes_is_below_the_minimum(tmp_path):
    st = Store(tmp_path)
    busy_neighbour(st)
    st.append("gpu_sample", counter_rows("pod-blip", 5, 5 + 1 / 3, 0.6))
    r = run(st)["pod-blip"]
    assert r["coverage_ratio"] > 0.99  # fully observed while it existed ...
    assert r["covered_hours"] * H < parse({}, "<t>", env={}).thresholds.min_covered_duration  # ... but too short
    assert r["status"] == "insufficient_data" and r["underutilized"] is None
    assert "minimum" in r["verdict_reason"]


def test_min_covered_duration_is_configurable(tmp_path):
    st = Store(tmp_path)
    busy_neighbour(st)
    st.append("gpu_sample", counter_rows("pod-blip", 5, 5 + 1 / 3, 0.6))
    cfg = parse({"thresholds": {"min_covered_duration": "10m"}}, "<test>", env={})
    a = analyze(st, cfg.thresholds, DAY, now=DAY.end)
    assert a.gpus.filter(a.gpus["gpu"] == "pod-blip")["status"].item() == "underutilized"
    assert a.thresholds["min_covered_duration"] == 600.0


def test_bad_min_covered_duration_is_one_line_naming_the_key():
    from accelmon.config import ConfigError

    with pytest.raises(ConfigError) as e:
        parse({"thresholds": {"min_covered_duration": "soon"}}, "accelmon.toml", env={})
    assert e.value.lines == [e.value.lines[0]] and e.value.lines[0].startswith(
        "accelmon.toml: thresholds.min_covered_duration: ")


def test_mig_gpu_without_utilization_gets_the_mig_verdict(tmp_path):
    st = Store(tmp_path)
    busy_neighbour(st)
    bios = "4221abcd-0000-0000-0000-000000000002"
    st.append("agent_gpu", [agent_report("GPU-mig", bios, _h(0), mig=True)])
    st.append("gpu_sample", counter_rows("GPU-mig", 0, 24, None, bios=bios))
    r = run(st)["GPU-mig"]
    assert r["mig_mode"] is True
    assert r["status"] == "mig_unreported" and r["underutilized"] is None
    assert r["verdict_reason"] == MIG_REASON == "MIG: utilization not reported by the driver"
    assert r["finding"]["kind"] == "mig_unreported" and r["finding"]["reason"] == MIG_REASON
    # nothing measured is NULL, never 0
    assert r["mean_util_percent"] is None and r["idle_hours"] is None and r["idle_ratio"] is None


def test_a_non_mig_gpu_without_utilization_stays_insufficient(tmp_path):
    st = Store(tmp_path)
    busy_neighbour(st)
    st.append("gpu_sample", counter_rows("GPU-nomig", 0, 24, None))
    r = run(st)["GPU-nomig"]
    assert r["status"] == "insufficient_data" and r["mig_mode"] is None


def test_powered_off_time_is_not_presence(tmp_path):
    """VM on 0-4 h, off 4-20 h, on 20-24 h (inventory snapshots): presence 8 h, fully sampled → judged."""
    st = Store(tmp_path)
    busy_neighbour(st)
    bios = "4221abcd-0000-0000-0000-000000000003"
    inventory(st, "vm-9", bios, [(-2, "poweredOn"), (4, "poweredOff"), (20, "poweredOn")])
    st.append("agent_gpu", [agent_report("GPU-off", bios, _h(-2))])
    st.append("gpu_sample", counter_rows("GPU-off", 0, 4, 0.6, bios=bios) + counter_rows("GPU-off", 20, 24, 0.6,
                                                                                           bios=bios))
    r = run(st)["GPU-off"]
    assert r["vm_name"] == "vm-9-name"
    assert r["presence_source"] == "inventory"
    assert r["presence_seconds"] == pytest.approx(8 * H)
    assert r["presence_start_ms"] == int(_h(0).timestamp() * 1000)
    assert r["presence_end_ms"] == int(_h(24).timestamp() * 1000)
    # the 16 h the VM was off are neither presence nor missing data
    assert r["missing_hours"] == pytest.approx(8 - r["covered_hours"])
    assert r["coverage_ratio"] > 0.99
    assert r["status"] == "underutilized"


def test_inventory_history_starting_mid_window_falls_back_to_samples_before_it(tmp_path):
    """The vCenter was first inventoried at 12 h: before that, presence is the sample span."""
    st = Store(tmp_path)
    busy_neighbour(st)
    bios = "4221abcd-0000-0000-0000-000000000004"
    inventory(st, "vm-5", bios, [(12, "poweredOn")])
    st.append("agent_gpu", [agent_report("GPU-late-inv", bios, _h(12))])
    st.append("gpu_sample", counter_rows("GPU-late-inv", 6, 24, 0.6, bios=bios))
    r = run(st)["GPU-late-inv"]
    assert r["presence_source"] == "inventory+samples"
    assert r["presence_seconds"] == pytest.approx(18 * H)  # 6-12 h from samples, 12-24 h from the inventory
    assert r["status"] == "underutilized"


def test_allocated_idle_hours_are_idle_time_not_nonzero_samples(tmp_path):
    """A GPU at 0.6 % all the time while holding memory: every interval is non-zero, yet 99.4 % of it is idle."""
    st = Store(tmp_path)
    st.append("gpu_sample", counter_rows("pod-held", 0, 24, 0.6, fb_bytes=8 << 30))
    r = run(st)["pod-held"]
    assert r["allocated_idle_hours"] == pytest.approx(r["covered_hours"] * (1 - r["mean_util_percent"] / 100))
    assert r["idle_hours"] == pytest.approx(r["allocated_idle_hours"])
    assert r["busy_hours"] + r["idle_hours"] == pytest.approx(r["covered_hours"])
