"""dcgm-exporter and nvidia_gpu_exporter endpoints mapped onto gpu_sample (fixtures from their documented output)."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelmon.collector.agent_source import ScrapeError
from accelmon.collector.exporters import DcgmExporterSource, NvidiaGpuExporterSource, normalize_gpu_uuid

from accelmon.store.writer import Store

FIX = Path(__file__).parent / "fixtures"
MIB = 2**20


def test_dcgm_exporter_h100_over_http(fake_http, tmp_path: Path) -> None:
    url, beh = fake_http
    beh.body = (FIX / "dcgm_h100.txt").read_bytes()
    store = Store(tmp_path / "d")
    src = DcgmExporterSource(url, timeout=3, vm_bios_uuid="42023081-331B-58E1-2730-CA560789E551")
    assert src.name == "dcgm"
    res = src.collect(store)
    assert res.rows == {"gpu_sample": 2, "agent_gpu": 2}
    con = store.connect()
    rows = {r[0]: r[1:] for r in con.execute(
        "select gpu_uuid, source, util_percent, mem_util_percent, power_milliwatts, vm_bios_uuid, busy_ms_total"
        " from gpu_sample").fetchall()}
    assert rows["GPU-22dbdd79-f55a-92a8-aa39-322198e72ed6"] == (
        "dcgm", 0.0, 0.0, 67351, "42023081-331b-58e1-2730-ca560789e551", None)  # W → mW; no busy counters
    assert rows["GPU-289275cb-a907-ab73-9a95-058ae119f62d"][3] == 67746
    ident = con.execute("select gpu_uuid, gpu_index, pci_bus_id, model_name, driver_version, hostname from agent_gpu"
                        " order by gpu_index").fetchall()
    assert ident[0] == ("GPU-22dbdd79-f55a-92a8-aa39-322198e72ed6", 0, "00000000:53:00.0", "NVIDIA H100 80GB HBM3",
                        "580.105.08", "ip-100-64-171-120.ec2.internal")
    assert src.collect(store).rows == {"gpu_sample": 2}  # identity unchanged: not written again


def test_dcgm_exporter_units_energy_and_fb() -> None:
    src = DcgmExporterSource("http://dcgm:9400")
    rows = src.rows((FIX / "dcgm_b200.txt").read_text(), 1_700_000_000.0)
    (r,) = rows["gpu_sample"]
    assert r["gpu_uuid"] == "GPU-0"
    assert r["fb_used_bytes"] == 1024 * MIB  # MiB → bytes
    assert r["fb_total_bytes"] is None  # FB_RESERVED not exported: total unknown, not guessed
    assert r["energy_millijoules_total"] == 196764132  # already mJ
    assert r["power_milliwatts"] == 77000 and r["util_percent"] == 0 and r["mem_util_percent"] == 37
    assert r.get("pcie_tx_bytes_total") is None  # no PCIe rate exported: no counter


def test_dcgm_pcie_rates_integrate_into_counters_and_mig_ids() -> None:
    src = DcgmExporterSource("http://dcgm:9400/metrics")
    base = ('DCGM_FI_PROF_PCIE_TX_BYTES{{gpu="0",UUID="GPU-a"}} {tx}\nDCGM_FI_PROF_PCIE_RX_BYTES{{gpu="0",UUID="GPU-a"}} {rx}\n'
            'DCGM_FI_DEV_FB_USED{{gpu="0",UUID="GPU-a",GPU_I_ID="3",GPU_I_PROFILE="1g.10gb"}} 100\n')
    r1 = src.rows(base.format(tx=1e6, rx=2e6), 1000.0)["gpu_sample"]
    r2 = src.rows(base.format(tx=3e6, rx=2e6), 1010.0)["gpu_sample"]
    a1 = next(r for r in r1 if r["gpu_uuid"] == "GPU-a")
    a2 = next(r for r in r2 if r["gpu_uuid"] == "GPU-a")
    assert (a1["pcie_tx_bytes_total"], a2["pcie_tx_bytes_total"], a2["pcie_rx_bytes_total"]) == (0, 30_000_000, 20_000_000)
    mig = next(r for r in r2 if r["gpu_uuid"] == "GPU-a/GI3")
    assert mig["fb_used_bytes"] == 100 * MIB


def test_nvidia_gpu_exporter(fake_http, tmp_path: Path) -> None:
    url, beh = fake_http
    beh.body = (FIX / "nvidia_gpu_exporter.txt").read_bytes()
    store = Store(tmp_path / "d")
    res = NvidiaGpuExporterSource(url, timeout=3).collect(store)
    assert res.rows == {"gpu_sample": 1, "agent_gpu": 1}
    con = store.connect()
    (row,) = con.execute("select gpu_uuid, source, util_percent, mem_util_percent, fb_used_bytes, fb_total_bytes,"
                         " power_milliwatts, energy_millijoules_total from gpu_sample").fetchall()
    assert row == ("GPU-df6e7a7c-7314-46f8-abc4-b88b36dcf3aa", "nvidia_gpu_exporter", 0.0, 0.0, 706740224, 8589934592,
                   28070, None)
    (ident,) = con.execute("select pci_bus_id, model_name, driver_version, serial, gpu_index from agent_gpu").fetchall()
    assert ident == ("00000000:71:00.0", "NVIDIA GeForce RTX 2080 SUPER", "471.11", None, 0)


def test_normalize_uuid_and_wrong_endpoints(fake_http) -> None:
    assert normalize_gpu_uuid("df6e7a7c-7314-46f8-abc4-b88b36dcf3aa") == "GPU-df6e7a7c-7314-46f8-abc4-b88b36dcf3aa"
    assert normalize_gpu_uuid("GPU-x") == "GPU-x" and normalize_gpu_uuid("MIG-y") == "MIG-y"
    url, beh = fake_http
    beh.body = (FIX / "nvidia_gpu_exporter.txt").read_bytes()
    with pytest.raises(ScrapeError, match="no dcgm GPU metrics found"):
        DcgmExporterSource(url).rows((FIX / "nvidia_gpu_exporter.txt").read_text(), 0.0)
    with pytest.raises(ScrapeError, match="not Prometheus text format"):
        NvidiaGpuExporterSource(url).rows("<html>nope</html>", 0.0)
