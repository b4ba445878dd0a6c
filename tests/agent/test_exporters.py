"""dcgm-exporter and nvidia_gpu_exporter endpoints mapped onto gpu_sample (fixtures from their documented output)."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelmon.collector.agent_source import ScrapeError, emit_rows
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


# --------------------------------------------------------------------------- profiling fields (effective utilization)
_L = 'gpu="{i}",UUID="{u}",pci_bus_id="00000000:{b}:00.0",device="nvidia{i}",modelName="NVIDIA H100 80GB HBM3"'
_MIG = ',GPU_I_PROFILE="{p}",GPU_I_ID="{gi}"'
H100 = "GPU-22dbdd79-f55a-92a8-aa39-322198e72ed6"
H100_MIG = "GPU-289275cb-a907-ab73-9a95-058ae119f62d"


def _line(field: str, value: float, i: int, u: str, mig: tuple[str, int] | None = None) -> str:
    labels = _L.format(i=i, u=u, b=53 + i)
    if mig:
        labels += _MIG.format(p=mig[0], gi=mig[1])
    return f'{field}{{{labels},hostname="node-a"}} {value:f}'  # dcgm-exporter: fmt.Sprintf("%f", v)


def _prof_text() -> str:
    """dcgm-exporter with SM_ACTIVE/SM_OCCUPANCY enabled: GPU 0 whole, GPU 1 in MIG mode (two instances)."""
    lines = [
        _line("DCGM_FI_DEV_GPU_UTIL", 100, 0, H100),
        _line("DCGM_FI_DEV_FB_USED", 70000, 0, H100),
        _line("DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0.99, 0, H100),
        _line("DCGM_FI_PROF_SM_ACTIVE", 0.125, 0, H100),
        _line("DCGM_FI_PROF_SM_OCCUPANCY", 0.0625, 0, H100),
        _line("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 0.0, 0, H100),  # a real 0: measured, not missing
        _line("DCGM_FI_PROF_DRAM_ACTIVE", 0.375, 0, H100),
        _line("DCGM_FI_DEV_FB_USED", 100, 1, H100_MIG),
    ]
    for gi, sm in ((1, 0.5), (2, 0.25)):
        m = ("3g.40gb", gi)
        lines += [
            _line("DCGM_FI_DEV_FB_USED", 1000 * gi, 1, H100_MIG, m),
            _line("DCGM_FI_PROF_SM_ACTIVE", sm, 1, H100_MIG, m),
            _line("DCGM_FI_PROF_SM_OCCUPANCY", sm / 2, 1, H100_MIG, m),
            _line("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", sm / 4, 1, H100_MIG, m),
            _line("DCGM_FI_PROF_DRAM_ACTIVE", 1.0000001, 1, H100_MIG, m),  # a ratio a hair over 1: clamped
        ]
    return "\n".join(lines) + "\n"


def test_dcgm_profiling_fields_to_percent_per_gpu_and_mig_instance(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    src = DcgmExporterSource("http://dcgm:9400/metrics")
    rows = src.rows(_prof_text(), 1_700_000_000.0)
    for r in rows["agent_gpu"]:
        r.pop("_key")
    emit_rows(store, rows)  # as collect() stores them
    con = store.connect()
    got = {r[0]: r[1:] for r in con.execute(
        "SELECT gpu_uuid, sm_active_percent, sm_occupancy_percent, tensor_active_percent, dram_active_percent,"
        " sm_active_ms_total, tensor_active_ms_total, dram_active_ms_total, util_percent FROM gpu_sample").fetchall()}
    # ratio 0–1 → percent; counters are the agent's (GPM), not invented from a sampled gauge
    assert got[H100] == (12.5, 6.25, 0.0, 37.5, None, None, None, 100.0)
    assert got[f"{H100_MIG}/GI1"] == (50.0, 25.0, 12.5, 100.0, None, None, None, None)
    assert got[f"{H100_MIG}/GI2"] == (25.0, 12.5, 6.25, 100.0, None, None, None, None)
    # the MIG parent has no activity lines of its own: NULL, never 0
    assert got[H100_MIG][:4] == (None, None, None, None)
    for vals in got.values():  # every stored activity gauge is a percentage
        assert all(v is None or 0.0 <= v <= 100.0 for v in vals[:4])
    src_of = dict(con.execute("SELECT gpu_uuid, activity_source FROM agent_gpu").fetchall())
    assert src_of == {H100: "dcgm", f"{H100_MIG}/GI1": "dcgm", f"{H100_MIG}/GI2": "dcgm", H100_MIG: None}


def test_dcgm_without_profiling_fields_is_null_not_zero() -> None:
    """The default H100 capture has no DCGM_FI_PROF_* lines: activity NULL, activity_source NULL."""
    src = DcgmExporterSource("http://dcgm:9400")
    rows = src.rows((FIX / "dcgm_h100.txt").read_text(), 1_700_000_000.0)
    assert rows["gpu_sample"] and rows["agent_gpu"]
    for r in rows["gpu_sample"]:
        for col in ("sm_active_percent", "sm_occupancy_percent", "tensor_active_percent", "dram_active_percent"):
            assert r[col] is None, (r["gpu_uuid"], col)
    assert {r["activity_source"] for r in rows["agent_gpu"]} == {None}


def test_dcgm_gr_engine_active_alone_is_not_activity() -> None:
    """GR_ENGINE_ACTIVE is a time-busy fraction (like GPU_UTIL), not SM activity: no activity_source."""
    text = _line("DCGM_FI_DEV_GPU_UTIL", 80, 0, H100) + "\n" + _line("DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0.8, 0, H100) + "\n"
    rows = DcgmExporterSource("http://dcgm:9400").rows(text, 0.0)
    (r,) = rows["gpu_sample"]
    assert r["util_percent"] == 80.0 and r["sm_active_percent"] is None
    assert rows["agent_gpu"][0]["activity_source"] is None


def test_dcgm_activity_source_follows_the_fields_between_scrapes() -> None:
    """A site that enables the profiling fields later: the identity row changes to dcgm (and is written again)."""
    src = DcgmExporterSource("http://dcgm:9400")
    plain = _line("DCGM_FI_DEV_GPU_UTIL", 50, 0, H100) + "\n"
    r1 = src.rows(plain, 0.0)
    src._identity = {r["gpu_uuid"]: r["_key"] for r in r1["agent_gpu"]}  # as collect() records it
    r2 = src.rows(plain + _line("DCGM_FI_PROF_DRAM_ACTIVE", 0.5, 0, H100) + "\n", 10.0)
    assert r1["agent_gpu"][0]["activity_source"] is None
    assert [r["activity_source"] for r in r2["agent_gpu"]] == ["dcgm"]
    assert r2["gpu_sample"][0]["dram_active_percent"] == 50.0 and r2["gpu_sample"][0]["sm_active_percent"] is None


def _real_fields() -> dict[str, tuple[str, str, bool]]:
    """NVIDIA/dcgm-exporter etc/dcp-metrics-included.csv: field -> (type, help, enabled by default)."""
    out = {}
    for line in (FIX / "dcgm-exporter-dcp-metrics-included.csv").read_text().splitlines():
        body = line.lstrip("#").strip()
        parts = [p.strip() for p in body.split(",", 2)]
        if len(parts) == 3 and parts[0].startswith("DCGM_FI_"):
            out[parts[0]] = (parts[1], parts[2], not line.startswith("#"))
    return out


def test_profiling_field_names_exist_in_the_real_dcgm_exporter_list() -> None:
    from accelmon.collector.exporters import PROF_ACTIVITY

    real = _real_fields()
    assert len(real) > 30  # the file was parsed
    for field, col in PROF_ACTIVITY.items():
        assert field in real, field
        typ, help_, _enabled = real[field]
        assert typ == "gauge" and help_.lower().startswith(("ratio", "the ratio")), (field, help_)  # a 0–1 ratio
        assert col.endswith("_percent")
    # what a stock dcgm-exporter serves (docs/metrics.md): tensor and DRAM yes, SM active/occupancy only when enabled
    assert real["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"][2] and real["DCGM_FI_PROF_DRAM_ACTIVE"][2]
    assert not real["DCGM_FI_PROF_SM_ACTIVE"][2] and not real["DCGM_FI_PROF_SM_OCCUPANCY"][2]
    assert real["DCGM_FI_PROF_GR_ENGINE_ACTIVE"][2]


# --------------------------------------------------------------------------- the simulated dcgm-exporter's profiling fields
SIM_SPEC = {
    "gpu": [
        {"model": "H100", "trace": "constant:40"},
        {"model": "H100", "mig": ["3g.40gb", "3g.40gb"], "trace": "busy_training"},
        {"model": "A100-SXM4-40GB", "trace": "constant:40"},  # not Hopper: no GPM in the simulation
        {"model": "H100", "mode": "vgpu", "vgpu_profile": "H100-20C", "trace": "constant:40"},  # a vGPU guest
        {"model": "H100", "trace": "constant:40", "unsupported": ["nvmlGpmQueryDeviceSupport"]},
    ]
}


def _sim_rows(**kw: object) -> tuple[list[str], dict[str, dict], dict[str, dict]]:
    from accelmon.sim.clock import ManualClock
    from accelmon.sim.exporters import dcgm_exporter_text
    from accelmon.sim.nvml import SimNVML
    from accelmon.sim.spec import parse_spec

    t0 = 1_700_000_000.0
    sim = SimNVML(parse_spec(SIM_SPEC), clock=ManualClock(t0))
    sim.clock.advance(120.0)
    sim.nvmlInit()
    try:
        text = dcgm_exporter_text(sim, **kw)  # type: ignore[arg-type]
    finally:
        sim.nvmlShutdown()
    rows = DcgmExporterSource("http://dcgm:9400").rows(text, t0 + 120.0)
    return ([g.uuid for g in sim.gpus], {r["gpu_uuid"]: r for r in rows["gpu_sample"]},
            {r["gpu_uuid"]: r for r in rows["agent_gpu"]})


def test_sim_dcgm_exporter_serves_profiling_fields_for_hopper_only() -> None:
    from accelmon.sim.exporters import DCGM_PROF_FIELDS

    (h100, mig, a100, vgpu, nogpm), s, ident = _sim_rows(prof_fields=DCGM_PROF_FIELDS)
    cols = ("sm_active_percent", "sm_occupancy_percent", "tensor_active_percent", "dram_active_percent")
    have = [h100, f"{mig}/GI1", f"{mig}/GI2"]
    for g in have:
        assert all(s[g][c] is not None for c in cols), g
        assert ident[g]["activity_source"] == "dcgm"
        # occupancy ≤ SM active (warps are resident only on an active SM); all percentages
        assert 0.0 <= s[g]["sm_occupancy_percent"] <= s[g]["sm_active_percent"] <= 100.0
    # SM active ≤ utilization: an SM is active only while a kernel runs (constant trace: the same over any period)
    assert 0.0 < s[h100]["sm_active_percent"] <= s[h100]["util_percent"] == 40.0
    for g in (a100, vgpu, nogpm, mig):  # cannot report (or the MIG parent): no line, NULL, never 0
        assert all(s[g][c] is None for c in cols), g
        assert ident[g]["activity_source"] is None, g


def test_sim_dcgm_exporter_default_fields_are_the_stock_csv() -> None:
    """The stock dcp-metrics-included.csv leaves SM_ACTIVE/SM_OCCUPANCY commented out, so does the simulation."""
    from accelmon.sim.exporters import DCGM_PROF_DEFAULT, DCGM_PROF_FIELDS

    real = _real_fields()
    assert set(DCGM_PROF_FIELDS) <= set(real)
    assert set(DCGM_PROF_DEFAULT) == {f for f in DCGM_PROF_FIELDS if real[f][2]}
    (h100, *_), s, ident = _sim_rows()
    assert s[h100]["sm_active_percent"] is None and s[h100]["sm_occupancy_percent"] is None
    assert s[h100]["tensor_active_percent"] is not None and s[h100]["dram_active_percent"] is not None
    assert ident[h100]["activity_source"] == "dcgm"


def test_sim_dcgm_exporter_activity_hook() -> None:
    """The activity source is a parameter (the simulated GPM plugs in there): its ratios are served as is."""
    from accelmon.sim.exporters import DCGM_PROF_FIELDS

    def half(gpu: object, t0: float, t1: float) -> dict[str, float] | None:
        assert t1 - t0 == 30.0  # DCGM's update interval ending now
        return {"sm_active": 0.5, "sm_occupancy": 0.25} if getattr(gpu, "index", None) == 2 else None

    (_h100, _mig, a100, *_), s, ident = _sim_rows(prof_fields=DCGM_PROF_FIELDS, activity=half)
    assert {g for g, r in s.items() if r["sm_active_percent"] is not None} == {a100}
    assert (s[a100]["sm_active_percent"], s[a100]["sm_occupancy_percent"], s[a100]["tensor_active_percent"]) == (
        50.0, 25.0, None)
