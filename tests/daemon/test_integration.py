"""The whole chain against real parts: seeded vcsim + simulated agents → `accelmon run` →
real Prometheus scraping /metrics at 1 s. Asserts what Prometheus stores: busy/idle increase
matching the simulated trace, labels from the agent ↔ VM join, placement as info, vCenter power;
promtool-clean output; and no credential in any log or /metrics of the run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelmon.demo.prometheus import PrometheusServer, check_metrics
from accelmon.sim.vcsim import Vcsim

from .procs import Agent, Daemon, wait_until

TOKEN = "agent-bearer-Kx93mmq"
WINDOW = 20  # seconds of Prometheus data the increase() is taken over


def _one(res: list[dict[str, Any]], **labels: str) -> float:
    hits = [r for r in res if all(r["metric"].get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (labels, res)
    return float(hits[0]["value"][1])


def test_prometheus_sees_the_joined_chain(
    vcsim: Vcsim, tmp_path: Path, prometheus_factory: Callable[..., PrometheusServer]
) -> None:
    gpu_vms = [v for v in vcsim.manifest["vms"] if v["power_state"] == "poweredOn" and len(v["gpus"]) == 1]
    vm_a = next(v for v in gpu_vms if v["gpus"][0]["kind"] == "passthrough")
    vm_b = next(v for v in gpu_vms if v is not vm_a)
    # GPU A: 3 s at 80 %, 3 s at 0 %, looped: busy exactly half the time. GPU B: allocated, idle.
    (tmp_path / "square.csv").write_text("timestamp,gpu,util_percent\n0,sq,80\n3,sq,0\n")
    a = Agent(tmp_path, "a", bios_uuid=vm_a["bios_uuid"], token=TOKEN, hostname=vm_a["name"],
              gpus=[{"model": "A100-SXM4-40GB", "trace": f"csv:{tmp_path / 'square.csv'}#sq"}]).start()
    b = Agent(tmp_path, "b", bios_uuid=vm_b["bios_uuid"], token=TOKEN, hostname=vm_b["name"],
              gpus=[{"model": "A100-SXM4-40GB", "trace": "idle_allocated"}]).start()
    pw = tmp_path / "vc.password"
    pw.write_text(vcsim.password + "\n")
    data = tmp_path / "data"
    d = Daemon(tmp_path, {
        "vcenter": [{"name": "vc-test", "url": vcsim.url, "user": vcsim.user, "password_file": str(pw),
                     "ca_bundle": str(vcsim.ca_file), "inventory_interval": "10s", "perf_interval": "5s",
                     "events_interval": "10s"}],
        "agents": {"discovery": False, "static": [a.url, b.url], "scrape_interval": "1s", "token": TOKEN},
        "intervals": {"flush": "2s"}, "report": {"enabled": False},
    }, data)
    d.start()
    prom = prometheus_factory([f"127.0.0.1:{d.port}"], scrape_interval="1s").start()
    texts: list[str] = []
    try:
        try:
            wait_until(lambda: len(prom.query("accelmon_gpu_busy_seconds_total")) == 2, 40,
                       "both GPUs in Prometheus")
        except AssertionError:
            raise AssertionError(f"{prom.query('accelmon_gpu_busy_seconds_total')} {prom.targets_health()}") from None
        t_first = time.time()
        texts.append(d.metrics())
        time.sleep(WINDOW + 3 - (time.time() - t_first))
        busy = prom.query(f"increase(accelmon_gpu_busy_seconds_total[{WINDOW}s])")
        idle = prom.query(f"increase(accelmon_gpu_idle_seconds_total[{WINDOW}s])")
        series = prom.query("accelmon_gpu_busy_seconds_total")
        place = prom.query("accelmon_vm_placement_info")
        gplace = prom.query("accelmon_gpu_placement_info")
        power = prom.query("accelmon_vm_power_watts")
        ok = prom.query("accelmon_source_success")
        joined = prom.query("accelmon_agent_joined")
        texts.append(d.metrics())
        texts += [_get(a.url, TOKEN), _get(b.url, TOKEN)]
    finally:
        rc = d.stop()
        a.stop()
        b.stop()
        prom_log = prom.log_tail(1 << 20)
    assert rc == 0
    # the trace: A busy half the time, B never; busy + idle = wall time
    ba, ia = _one(busy, vm_name=vm_a["name"]), _one(idle, vm_name=vm_a["name"])
    bb, ib = _one(busy, vm_name=vm_b["name"]), _one(idle, vm_name=vm_b["name"])
    assert abs(ba - 0.5 * WINDOW) <= 0.15 * WINDOW, (ba, ia)
    assert abs(ia - 0.5 * WINDOW) <= 0.15 * WINDOW, (ba, ia)
    assert bb == 0 and abs(ib - WINDOW) <= 0.15 * WINDOW, (bb, ib)
    # identity comes from the join by BIOS UUID: VM name, instance UUID, vCenter; no host/cluster labels
    for s in series:
        m = s["metric"]
        vm = vm_a if m["vm_name"] == vm_a["name"] else vm_b
        assert m["vm_uuid"] == vm["instance_uuid"] and m["vcenter"] == "vc-test"
        assert "host" not in m and "cluster" not in m
    assert _one(joined, vm_bios_uuid=vm_a["bios_uuid"]) == 1
    # placement lives in info metrics (host and cluster names as vCenter has them now)
    pa_ = [p["metric"] for p in place if p["metric"]["vm_uuid"] == vm_a["instance_uuid"]]
    assert len(pa_) == 1 and pa_[0]["host"].startswith("DC0_") and pa_[0]["cluster"].startswith("DC0_")
    gp = [g["metric"] for g in gplace if g["metric"]["vm_uuid"] == vm_a["instance_uuid"]]
    assert len(gp) == 1 and gp[0]["host_pci_id"] == vm_a["gpus"][0]["host_pci_id"]
    # vCenter per-VM power, and every source healthy
    assert _one(power, vm_uuid=vm_a["instance_uuid"]) > 0
    assert {r["metric"]["source"] for r in ok} >= {"vcenter.inventory", "vcenter.perf", "vcenter.events", "agent"}
    assert all(float(r["value"][1]) == 1 for r in ok), ok
    # promtool is clean on the daemon's exposition
    rc_check, out = check_metrics(texts[-1])
    assert rc_check == 0 and not out.strip(), out
    # no credential in any log or /metrics of the run
    logs = [d.log.read_text(), a.log.read_text(), b.log.read_text(), prom_log]
    for secret in (vcsim.password, TOKEN):
        for i, t in enumerate(texts + logs):
            assert secret not in t, f"credential leaked in output #{i}"


def _get(url: str, token: str) -> str:
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()
