"""/metrics: joined labels, placement as info, findings gauges, self-metrics, promtool-clean."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from accelmon.config import ExporterConfig
from accelmon.daemon.housekeeping import refresh_findings
from accelmon.daemon.state import DaemonState
from accelmon.demo.prometheus import check_metrics, free_port
from accelmon.exporter.server import MetricsApp, serve
from accelmon.store import Store
from accelmon.store.schema import table
from accelmon.store.writer import to_arrow

from .helpers import CounterSource, bios, inventory_tables


def _t(name: str, rows: list[dict[str, Any]]) -> Any:
    return to_arrow(table(name), rows)


def _state(n: int = 3) -> DaemonState:
    st = DaemonState()
    st.apply(inventory_tables(n))
    now = dt.datetime.now(dt.UTC)
    agents = [
        {"ts": now, "agent_url": f"http://10.1.0.{i + 1}:9835/metrics", "vm_bios_uuid": bios(i),
         "hostname": f"guest{i}", "gpu_uuid": f"GPU-{i}", "gpu_index": 0, "pci_bus_id": "00000000:0b:00.0",
         "model_name": "NVIDIA A100-SXM4-40GB", "virtualization_mode": "passthrough"}
        for i in range(n)
    ]
    # one agent that matches no VM: still shown, flagged
    agents.append({"ts": now, "agent_url": "http://10.9.9.9:9835/metrics", "vm_bios_uuid": bios(999),
                   "hostname": "stray", "gpu_uuid": "GPU-stray", "model_name": "NVIDIA L4"})
    st.apply({"agent_gpu": _t("agent_gpu", agents)})
    for i in range(n):
        src = CounterSource("x", [f"GPU-{i}"], bios_uuid=bios(i))
        st.apply(src.collect(_Null()).tables)
    st.apply(CounterSource("y", ["GPU-stray"], bios_uuid=bios(999)).collect(_Null()).tables)
    st.apply({"nvlink_sample": _t("nvlink_sample", [
        {"ts": now, "gpu_uuid": "GPU-0", "link": k, "tx_bytes_total": 10 * k, "rx_bytes_total": 20 * k}
        for k in range(2)])})
    st.apply({"vm_power_sample": _t("vm_power_sample", [
        {"ts": now - dt.timedelta(seconds=20 * k), "vcenter_uuid": "vc-uuid-1", "vm_moref": "vm-0",
         "vm_instance_uuid": "5000-0", "interval_seconds": 20, "power_watts": 300.0, "energy_joules": 6000.0}
        for k in range(3)])})
    st.apply({"host_power_sample": _t("host_power_sample", [
        {"ts": now, "vcenter_uuid": "vc-uuid-1", "host_moref": "host-0", "interval_seconds": 20,
         "power_watts": 900.0, "energy_joules": 18000.0}])})
    st.apply({"vmotion": _t("vmotion", [
        {"ended_at": now, "vcenter_uuid": "vc-uuid-1", "chain_id": 7, "vm_moref": "vm-1", "cluster_name": "gpu-cluster",
         "succeeded": True, "stun_seconds": 2.1, "vgpu_attached": True},
        {"ended_at": now, "vcenter_uuid": "vc-uuid-1", "chain_id": 8, "vm_moref": "vm-1", "cluster_name": "gpu-cluster",
         "succeeded": False, "stun_seconds": None}])})
    st.register_source("agent", "http://10.1.0.1:9835/metrics", 10).success = True
    return st


class _Null:
    def append(self, name: str, rows: Any) -> int:
        return len(rows)


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _series(text: str, name: str) -> dict[str, float]:
    """name → {canonical 'name{a="1",b="2"}' (labels sorted) → value}."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            k, v = line.rsplit(" ", 1)
            out[_canon(k)] = float(v)
    return out


def _canon(series: str) -> str:
    name, _, rest = series.partition("{")
    labels = sorted(_LABEL.findall(rest))
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def test_fast_renderer_equals_prometheus_client_and_promtool_is_clean() -> None:
    app = MetricsApp(_state(), ExporterConfig(), process_metrics=False)
    with app.provider.scrape():
        reference = generate_latest(app.registry)
    ours = app.render()

    def canon(text: bytes) -> list[str]:  # label order differs between prometheus_client versions
        return [ln if ln.startswith("#") else _canon(ln.rsplit(" ", 1)[0]) + " " + ln.rsplit(" ", 1)[1]
                for ln in text.decode().splitlines()]

    assert canon(ours) == canon(reference)
    rc, out = check_metrics(ours)
    assert rc == 0 and out.strip() == "", out


def test_joined_labels_placement_info_and_unjoined_agents() -> None:
    text = MetricsApp(_state(), ExporterConfig()).render().decode()
    busy = _series(text, "accelmon_gpu_busy_seconds_total")
    assert _canon('accelmon_gpu_busy_seconds_total{gpu_uuid="GPU-1",vm_name="gpu-vm-1",vm_uuid="5000-1",'
                  'vcenter="vc01"}') in busy
    # unjoined agent's GPU: present, with empty VM identity, and the agent flagged
    assert _canon('accelmon_gpu_busy_seconds_total{gpu_uuid="GPU-stray",vm_name="",vm_uuid="",vcenter=""}') in busy
    joined = _series(text, "accelmon_agent_joined")
    assert joined[_canon('accelmon_agent_joined{agent="http://10.9.9.9:9835/metrics",hostname="stray",'
                  f'vm_bios_uuid="{bios(999)}"}}')] == 0
    assert joined[_canon('accelmon_agent_joined{agent="http://10.1.0.1:9835/metrics",hostname="guest0",'
                  f'vm_bios_uuid="{bios(0)}"}}')] == 1
    # host/cluster only in info metrics
    for line in text.splitlines():
        if line.startswith("accelmon_gpu_") and "_info{" not in line and not line.startswith("#"):
            assert "host=" not in line and "cluster=" not in line, line
    place = _series(text, "accelmon_vm_placement_info")
    assert place[_canon('accelmon_vm_placement_info{vcenter="vc01",vm_uuid="5000-0",vm_name="gpu-vm-0",'
                 'host="esx0.lab",cluster="gpu-cluster",owner="",team=""}')] == 1
    gp = _series(text, "accelmon_gpu_placement_info")
    assert gp[_canon('accelmon_gpu_placement_info{gpu_uuid="GPU-1",vm_uuid="5000-1",host="esx1.lab",cluster="gpu-cluster",'
              'host_pci_id="0000:3b:00.1",host_numa_node="1"}')] == 1
    # per-VM power/energy, migrations and the stun histogram
    assert _series(text, "accelmon_vm_power_watts")[_canon('accelmon_vm_power_watts{vcenter="vc01",vm_uuid="5000-0",vm_name="gpu-vm-0"}')] == 300
    assert _series(text, "accelmon_vm_energy_joules_total")[_canon('accelmon_vm_energy_joules_total{vcenter="vc01",vm_uuid="5000-0",vm_name="gpu-vm-0"}')] == 18000
    lv = '{vcenter="vc01",vm_uuid="5000-1",vm_name="gpu-vm-1"}'
    assert _series(text, "accelmon_vm_migrations_total")[_canon("accelmon_vm_migrations_total" + lv)] == 1
    assert _series(text, "accelmon_vm_migration_failures_total")[
        _canon("accelmon_vm_migration_failures_total" + lv)] == 1
    b = _series(text, "accelmon_vmotion_stun_seconds_bucket")
    assert b[_canon('accelmon_vmotion_stun_seconds_bucket{vcenter="vc01",cluster="gpu-cluster",le="2.0"}')] == 0
    assert b[_canon('accelmon_vmotion_stun_seconds_bucket{vcenter="vc01",cluster="gpu-cluster",le="5.0"}')] == 1
    nv = _series(text, "accelmon_gpu_nvlink_rx_bytes_total")
    assert nv[_canon('accelmon_gpu_nvlink_rx_bytes_total{gpu_uuid="GPU-0",vm_name="gpu-vm-0",vm_uuid="5000-0",'
              'vcenter="vc01",link="1"}')] == 20


def _label_sets(text: str, prefix: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines()
            if line.startswith(prefix) and "_info{" not in line}


def test_vmotion_changes_only_the_placement_info_and_counts_the_migration() -> None:
    st = _state()
    app = MetricsApp(st, ExporterConfig())
    before = app.render().decode()
    # vm-1 moves to host-0; the vCenter source writes a new inventory snapshot and the event
    time.sleep(0.01)
    st.apply(inventory_tables(3, host_of=lambda i: "host-0"))
    st.apply({"vmotion": _t("vmotion", [
        {"ended_at": dt.datetime.now(dt.UTC), "vcenter_uuid": "vc-uuid-1", "chain_id": 9, "vm_moref": "vm-1",
         "cluster_name": "gpu-cluster", "succeeded": True, "stun_seconds": 0.3}])})
    after = app.render().decode()
    for prefix in ("accelmon_gpu_", "accelmon_vm_power", "accelmon_vm_energy", "accelmon_vm_migrations_total"):
        assert _label_sets(before, prefix) == _label_sets(after, prefix), prefix
    key = '{cluster="gpu-cluster",host="%s",owner="",team="",vcenter="vc01",vm_name="gpu-vm-1",vm_uuid="5000-1"}'
    assert "accelmon_vm_placement_info" + key % "esx1.lab" in _series(before, "accelmon_vm_placement_info")
    assert "accelmon_vm_placement_info" + key % "esx0.lab" in _series(after, "accelmon_vm_placement_info")
    lv = '{vcenter="vc01",vm_uuid="5000-1",vm_name="gpu-vm-1"}'
    assert _series(after, "accelmon_vm_migrations_total")[_canon("accelmon_vm_migrations_total" + lv)] == 2
    # the same event again (a re-read after restart or page overlap) is not counted twice
    st.apply({"vmotion": _t("vmotion", [
        {"ended_at": dt.datetime.fromtimestamp(time.time(), dt.UTC), "vcenter_uuid": "vc-uuid-1", "chain_id": 7,
         "vm_moref": "vm-1", "cluster_name": "gpu-cluster", "succeeded": True, "stun_seconds": 2.1}])})
    # label sets are stable from scrape to scrape
    assert _label_sets(app.render().decode(), "accelmon_") == _label_sets(app.render().decode(), "accelmon_")


def test_include_exclude_and_stale_gpus_disappear() -> None:
    st = _state()
    text = MetricsApp(st, ExporterConfig(include=["accelmon_gpu_*"], exclude=["accelmon_gpu_pcie_*",
                                                                                  "accelmon_gpu_energy_joules"])
                      ).render().decode()
    names = set(re.findall(r"^# TYPE (\S+)", text, re.M))
    assert "accelmon_gpu_busy_seconds_total" in names
    assert not any(n.startswith("accelmon_vm_") or n.startswith("accelmon_source_") for n in names)
    assert "accelmon_gpu_pcie_tx_bytes_total" not in names and "accelmon_gpu_energy_joules_total" not in names
    # a GPU whose agent stopped answering must not look idle: its series go away
    st.stale_after_s = 0.0
    time.sleep(0.01)
    text = MetricsApp(st, ExporterConfig()).render().decode()
    assert not _series(text, "accelmon_gpu_busy_seconds_total")


def test_findings_gauges_from_latest_findings(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    now = dt.datetime.now(dt.UTC)
    old = now - dt.timedelta(days=1)

    def f(run: str, at: dt.datetime, kind: str, subject: str, reason: str, ev: dict[str, Any] | None = None) -> dict:
        return {"generated_at": at, "run_id": run, "kind": kind, "subject": subject, "vcenter_uuid": "vc-uuid-1",
                "reason": reason, "evidence_json": json.dumps(ev or {})}

    store.append("findings", [f("r1", old, "underutilized", "GPU-2", "mean 3 %")])
    store.append("findings", [
        f("r2", now, "underutilized", "GPU-0", "mean 4 % over 7 days"),
        f("r2", now, "numa_misaligned", "vm-2", "GPU on node 1, vCPUs pinned to node 0",
          {"rule": "affinity_excludes_gpu_node"}),
    ])
    st = _state()
    assert refresh_findings(store, st) == 2
    text = MetricsApp(st, ExporterConfig()).render().decode()
    u = _series(text, "accelmon_gpu_underutilized")
    assert u[_canon('accelmon_gpu_underutilized{gpu_uuid="GPU-0",vm_name="gpu-vm-0",vm_uuid="5000-0",vcenter="vc01"}')] == 1
    assert u[_canon('accelmon_gpu_underutilized{gpu_uuid="GPU-2",vm_name="gpu-vm-2",vm_uuid="5000-2",vcenter="vc01"}')] == 0
    n = _series(text, "accelmon_vm_numa_misaligned")
    assert n[_canon('accelmon_vm_numa_misaligned{vcenter="vc01",vm_uuid="5000-2",vm_name="gpu-vm-2",'
             'reason="affinity_excludes_gpu_node"}')] == 1
    assert n[_canon('accelmon_vm_numa_misaligned{vcenter="vc01",vm_uuid="5000-0",vm_name="gpu-vm-0",reason=""}')] == 0


def test_http_endpoint_serves_gzip_and_healthz() -> None:
    import gzip

    app = MetricsApp(_state(), ExporterConfig())
    srv = serve(app, f"127.0.0.1:{free_port()}")
    try:
        base = f"http://127.0.0.1:{srv.port}"
        req = urllib.request.Request(base + "/metrics", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = gzip.decompress(r.read())
        assert b"accelmon_gpu_busy_seconds_total{" in body
        with urllib.request.urlopen(base + "/healthz", timeout=10) as r:
            assert r.read() == b"ok\n"
    finally:
        srv.stop()


def test_every_metric_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    text = MetricsApp(_state(), ExporterConfig()).render().decode()
    names = set(re.findall(r"^# TYPE (accelmon_\S+)", text, re.M))
    missing = [n for n in sorted(names) if f"`{n}`" not in doc and f"`{n.removesuffix('_info')}" not in doc]
    assert not missing, missing
