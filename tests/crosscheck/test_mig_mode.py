"""MIG mode is recorded from every source that reports it (agent_gpu.mig_mode), and a GPU in MIG
mode, whose whole-GPU utilization the driver does not report, stores NULL utilization, never 0.

NVML: ``nvmlDeviceGetUtilizationRates`` is NOT_SUPPORTED on a GPU in MIG mode; DCGM leaves
``DCGM_FI_DEV_GPU_UTIL`` blank (dcgm-exporter skips the line); nvidia-smi prints ``[N/A]`` for
``utilization.gpu`` (nvidia_gpu_exporter skips it). ``nvmlDeviceGetMigMode`` is NOT_SUPPORTED
on a GPU that cannot do MIG: its mode is unknown (NULL), not "disabled".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelmon.collector.exporters import DcgmExporterSource, NvidiaGpuExporterSource
from accelmon.sim.clock import ManualClock
from accelmon.sim.exporters import dcgm_exporter_text, nvidia_gpu_exporter_text
from accelmon.sim.nvml import SimNVML
from accelmon.sim.spec import parse_spec
from tests.crosscheck.harness import SOURCES, machine

FIX = Path(__file__).parent / "fixtures"
T0 = 1_700_000_000.0
SPEC = {
    "gpu": [
        {"model": "A100-SXM4-40GB", "mig": ["3g.20gb", "3g.20gb"], "trace": "constant:30"},
        {"model": "A100-SXM4-40GB", "trace": "constant:20"},
        {"model": "L4", "trace": "constant:20"},  # cannot do MIG
    ]
}


def _latest_mig(store: Any) -> dict[str, tuple[bool | None, str | None]]:
    rows = store.connect().execute(
        "SELECT gpu_uuid, mig_mode, source FROM agent_gpu QUALIFY ts = max(ts) OVER (PARTITION BY gpu_uuid)").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_mig_mode_from_every_source_and_null_utilization(tmp_path: Path) -> None:
    with machine(tmp_path, SPEC, T0, mig_mode_field=True) as m:
        for _ in range(5):
            m.step(2.0)
        mig_gpu, plain, l4 = m.uuids()
    for src in SOURCES:
        got = _latest_mig(m.stores[src])
        assert got[mig_gpu] == (True, src), (src, got)
        assert got[plain] == (False, src), (src, got)
        if src != "agent":  # the exporters: not reported for a GPU that cannot do MIG
            assert got[l4] == (None, src), (src, got)
        con = m.stores[src].connect()
        util = dict(con.execute("SELECT gpu_uuid, list(util_percent) FROM gpu_sample GROUP BY ALL").fetchall())
        assert util[plain] and set(util[plain]) == {20.0}, (src, util[plain])
        assert set(util[l4]) == {20.0}, (src, util[l4])
        # the MIG GPU's own utilization: unreported, so NULL in every row that source wrote for it
        assert all(u is None for u in util.get(mig_gpu, [])), (src, util.get(mig_gpu))
        if src != "agent":
            assert util[mig_gpu], f"{src} wrote no row for the MIG GPU (framebuffer and power are reported)"


def _sim() -> SimNVML:
    sim = SimNVML(parse_spec(SPEC), clock=ManualClock(T0))
    sim.nvmlInit()
    return sim


def test_dcgm_mig_mode_without_the_mig_mode_field() -> None:
    """dcgm-exporter's default counters lack DCGM_FI_DEV_MIG_MODE: MIG is known from the
    instances' GPU_I_ID labels (also for the parent GPU's own row), anything else is unknown."""
    sim = _sim()
    mig_gpu, plain, l4 = (g.uuid for g in sim.gpus)
    rows = DcgmExporterSource("http://dcgm:9400").rows(dcgm_exporter_text(sim), T0)
    ident = {r["gpu_uuid"]: r["mig_mode"] for r in rows["agent_gpu"]}
    assert ident[mig_gpu] is True and ident[f"{mig_gpu}/GI1"] is True and ident[f"{mig_gpu}/GI2"] is True
    assert ident[plain] is None and ident[l4] is None  # not reported: unknown, not False
    samples = {r["gpu_uuid"]: r for r in rows["gpu_sample"]}
    assert samples[mig_gpu]["util_percent"] is None and samples[mig_gpu]["fb_used_bytes"] is not None
    assert samples[plain]["util_percent"] == 20.0


def test_dcgm_mig_mode_field_as_label_and_renamed_hostname_label() -> None:
    """A counters CSV may declare DCGM_FI_DEV_MIG_MODE a label; dcgm-exporter after
    NVIDIA/dcgm-exporter#655 writes ``hostname`` instead of ``Hostname``."""
    text = ('DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA A100",'
            'hostname="node-7",DCGM_FI_DEV_MIG_MODE="0"} 12\n'
            'DCGM_FI_DEV_FB_USED{gpu="1",UUID="GPU-b",device="nvidia1",modelName="NVIDIA A100",'
            'Hostname="node-7",DCGM_FI_DEV_MIG_MODE="1"} 100\n')
    rows = DcgmExporterSource("http://dcgm:9400").rows(text, T0)
    ident = {r["gpu_uuid"]: r for r in rows["agent_gpu"]}
    assert (ident["GPU-a"]["mig_mode"], ident["GPU-b"]["mig_mode"]) == (False, True)
    assert ident["GPU-a"]["hostname"] == ident["GPU-b"]["hostname"] == "node-7"
    assert {r["gpu_uuid"]: r["util_percent"] for r in rows["gpu_sample"]} == {"GPU-a": 12.0, "GPU-b": None}


def test_nvidia_gpu_exporter_real_mig_capture() -> None:
    """The real exporter's output for an H100 in MIG mode: mig_mode_current 1, no utilization line."""
    rows = NvidiaGpuExporterSource("http://smi:9835").rows((FIX / "nvidia_gpu_exporter_h100_mig.txt").read_text(), T0)
    (s,) = rows["gpu_sample"]
    (i,) = rows["agent_gpu"]
    assert s["gpu_uuid"] == i["gpu_uuid"] == "GPU-00000000-0000-0000-0000-000000000000"
    assert s["util_percent"] is None and s["mem_util_percent"] is None
    assert s["fb_used_bytes"] == 11665408000 and s["power_milliwatts"] == 433780
    assert i["mig_mode"] is True and i["source"] == "nvidia_gpu_exporter"


def test_nvidia_gpu_exporter_energy_counter_and_mig_mode_from_the_sim() -> None:
    """The NVML backend's nvidia_smi_energy_joules_total (J) becomes energy_millijoules_total;
    mig.mode.current Disabled → False, absent (GPU cannot do MIG) → NULL."""
    sim = _sim()
    mig_gpu, plain, l4 = sim.gpus
    rows = NvidiaGpuExporterSource("http://smi:9835").rows(nvidia_gpu_exporter_text(sim), T0)
    ident = {r["gpu_uuid"]: r["mig_mode"] for r in rows["agent_gpu"]}
    assert (ident[mig_gpu.uuid], ident[plain.uuid], ident[l4.uuid]) == (True, False, None)
    samples = {r["gpu_uuid"]: r for r in rows["gpu_sample"]}
    h = sim.nvmlDeviceGetHandleByIndex(1)
    assert abs(samples[plain.uuid]["energy_millijoules_total"] - sim.nvmlDeviceGetTotalEnergyConsumption(h)) <= 1
    assert samples[plain.uuid]["util_percent"] == 20.0 and samples[mig_gpu.uuid]["util_percent"] is None
