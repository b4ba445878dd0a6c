"""Daemon-side sources for GPU exporters users may already run: dcgm-exporter and nvidia_gpu_exporter.

Both map onto the same ``gpu_sample`` rows as the accelmon agent (``source = "dcgm"`` /
``"nvidia_gpu_exporter"``) plus ``agent_gpu`` identity rows (when they change), so a site that
runs one of them does not need the agent.  What they cannot give is left null, never faked:

* neither exposes the driver's sample ring, so ``busy_ms_total``/``idle_ms_total`` stay null
  (analytics use ``util_percent``, a gauge sampled at the scrape interval);
* dcgm-exporter's PCIe figures (``DCGM_FI_PROF_PCIE_TX_BYTES``/``RX_BYTES``) are *rates*
  (bytes/s); this source integrates them between scrapes into ``pcie_*_bytes_total``
  counters that start at 0 with the source (an estimate: the rate is assumed constant over a
  scrape interval; readers treat the restart like any counter reset);
* nvidia_gpu_exporter (nvidia-smi) has no energy counter or PCIe byte counters.

Unit conversions: dcgm ``FB_*`` are MiB, ``POWER_USAGE`` is W, ``TOTAL_ENERGY_CONSUMPTION``
is mJ; nvidia_gpu_exporter already converts to bytes and ratios 0–1, and its NVML backend's
``nvidia_smi_energy_joules_total`` is J.  A dcgm MIG series (``GPU_I_ID`` label) is stored under
``<GPU UUID>/GI<GPU_I_ID>`` since dcgm-exporter does not export the MIG UUID.

MIG mode goes to ``agent_gpu.mig_mode`` (true / false / null = not reported):

* dcgm-exporter: ``DCGM_FI_DEV_MIG_MODE`` (DCGM field 67, 0/1; a gauge, or a label when the
  counters CSV declares it ``label``) where the site exports it; otherwise a GPU with any
  ``GPU_I_ID`` series is in MIG mode (true), and a GPU without one is *unknown* (null), never
  false: dcgm-exporter shows instances only for the fields it watches per instance.
* nvidia_gpu_exporter: ``nvidia_smi_mig_mode_current`` (nvidia-smi ``mig.mode.current``,
  ``Enabled`` → 1, ``Disabled`` → 0; absent on GPUs that cannot do MIG).

A GPU in MIG mode has no whole-GPU utilization (NVML answers NOT_SUPPORTED, DCGM leaves the
field blank, nvidia-smi prints ``[N/A]``); both exporters then omit the line, and the sample's
``util_percent`` stays null, never 0.  dcgm-exporter's host label is ``Hostname`` up to 4.x and
``hostname`` after NVIDIA/dcgm-exporter#655; both are read.

Activity (effective utilization, docs/metrics.md): dcgm-exporter's profiling fields
(``etc/dcp-metrics-included.csv``; DCGM "profiling metrics", ratios 0–1 averaged over DCGM's
sampling interval) go to the ``gpu_sample`` gauges in percent (× 100, clamped to 0–100):

* ``DCGM_FI_PROF_SM_ACTIVE`` ("the ratio of cycles an SM has at least 1 warp assigned",
  averaged over all SMs) → ``sm_active_percent`` (effective utilization);
* ``DCGM_FI_PROF_SM_OCCUPANCY`` ("the ratio of number of warps resident on an SM") →
  ``sm_occupancy_percent``;
* ``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE`` ("ratio of cycles the tensor (HMMA) pipe is active") →
  ``tensor_active_percent``;
* ``DCGM_FI_PROF_DRAM_ACTIVE`` ("ratio of cycles the device memory interface is active
  sending or receiving data") → ``dram_active_percent``.

dcgm-exporter ships SM_ACTIVE and SM_OCCUPANCY *commented out* in its counters CSVs: a site
enables them, else only tensor and DRAM activity arrive and ``sm_active_percent`` stays null.
A MIG instance's fields (``GPU_I_ID`` label) land in its ``<uuid>/GI<id>`` row.  The
``*_active_ms_total`` counters stay null (a gauge sampled at the scrape interval cannot tell
active time; the counters are the agent's, from GPM).  ``agent_gpu.activity_source`` is
``"dcgm"`` for a GPU (or instance) with any of the four fields in the scrape, NULL otherwise:
an absent field means the site does not export it or the GPU cannot report it (vGPU guests,
GPUs without profiling support), never 0.  ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` ("ratio of time
the graphics engine is active") is the time-based busy fraction, the same meaning as
``DCGM_FI_DEV_GPU_UTIL``, not SM activity: it is not stored (no column; mixing it into
``util_percent`` would join two measurement paths in one column) and does not set
``activity_source``.
"""

from __future__ import annotations

from typing import Any

from accelmon.collector.agent_source import (
    MetricsEndpointSource,
    Sample,
    ScrapeError,
    finite_or_none,
    parse_metrics,
    scaled_int,
    small_int,
)

MIB = 1024 * 1024

# DCGM profiling fields (ratios 0–1, NVIDIA/dcgm-exporter etc/dcp-metrics-included.csv) -> gpu_sample gauge (percent)
PROF_ACTIVITY = {
    "DCGM_FI_PROF_SM_ACTIVE": "sm_active_percent",
    "DCGM_FI_PROF_SM_OCCUPANCY": "sm_occupancy_percent",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "tensor_active_percent",
    "DCGM_FI_PROF_DRAM_ACTIVE": "dram_active_percent",
}


def ratio_percent(v: float | None) -> float | None:
    """A DCGM profiling ratio (0–1) as percent 0–100; None stays None (absent is not 0)."""
    f = finite_or_none(v)
    return None if f is None else min(max(f * 100.0, 0.0), 100.0)


def normalize_gpu_uuid(u: str) -> str:
    """nvidia_gpu_exporter strips the ``GPU-`` prefix; put it back so ids match NVML's."""
    u = u.strip()
    if not u or u.startswith(("GPU-", "MIG-")):
        return u
    return "GPU-" + u


class _ExporterSource(MetricsEndpointSource):
    name = "exporter"
    VALUES: dict[str, str] = {}  # sample name -> key

    def __init__(self, url: str, *, vm_bios_uuid: str | None = None, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.vm_bios_uuid = vm_bios_uuid.lower() if vm_bios_uuid else None
        self._mig: dict[str, bool] = {}  # GPU key -> MIG mode reported in this scrape (see prepare)

    # subclasses: per-GPU key and identity from a sample's labels
    def gpu_key(self, labels: dict[str, str]) -> str | None:
        raise NotImplementedError

    def identity(self, key: str, labels: dict[str, str], m: dict[str, list[Sample]]) -> dict[str, Any]:
        raise NotImplementedError

    def convert(self, key: str, v: dict[str, float], ts: float) -> dict[str, Any]:
        raise NotImplementedError

    def prepare(self, m: dict[str, list[Sample]]) -> None:
        """Per-scrape state from the whole parse, before ``identity`` runs (subclasses)."""

    def _rows(self, text: str, scraped_at: float) -> dict[str, list[dict[str, Any]]]:
        m = parse_metrics(text, self.target)
        self.prepare(m)
        per: dict[str, dict[str, float]] = {}
        labels_of: dict[str, dict[str, str]] = {}
        for name, key in self.VALUES.items():
            for s in m.get(name, []):
                g = self.gpu_key(s.labels)
                if g is None:
                    continue
                per.setdefault(g, {})[key] = s.value
                labels_of.setdefault(g, s.labels)
        if not per:
            raise ScrapeError(f"{self.target}: no {self.name} GPU metrics found (is this the right endpoint?)")
        samples, idents = [], []
        for g, v in per.items():
            row = {"ts": scraped_at, "gpu_uuid": g, "source": self.name, "vm_bios_uuid": self.vm_bios_uuid}
            row.update(self.convert(g, v, scraped_at))
            samples.append(row)
            ident = {"source": self.name, **self.identity(g, labels_of[g], m)}
            ident["fb_total_bytes"] = row.get("fb_total_bytes")
            k = tuple(ident.values())
            if self._identity.get(g) != k:
                idents.append({"ts": scraped_at, "agent_url": self.target, "vm_bios_uuid": self.vm_bios_uuid,
                               **ident, "_key": k})
        return {"gpu_sample": samples, "agent_gpu": idents}


class DcgmExporterSource(_ExporterSource):
    """NVIDIA dcgm-exporter (``DCGM_FI_*`` metrics, labels ``gpu``, ``UUID``, ``pci_bus_id``, ``modelName``, ``Hostname``)."""

    name = "dcgm"
    VALUES = {
        "DCGM_FI_DEV_GPU_UTIL": "util",
        "DCGM_FI_DEV_MEM_COPY_UTIL": "mem_util",
        "DCGM_FI_DEV_FB_USED": "fb_used_mib",
        "DCGM_FI_DEV_FB_FREE": "fb_free_mib",
        "DCGM_FI_DEV_FB_RESERVED": "fb_reserved_mib",
        "DCGM_FI_DEV_FB_TOTAL": "fb_total_mib",
        "DCGM_FI_DEV_POWER_USAGE": "power_w",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "energy_mj",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total": "energy_mj",
        "DCGM_FI_PROF_PCIE_TX_BYTES": "pcie_tx_rate",
        "DCGM_FI_PROF_PCIE_RX_BYTES": "pcie_rx_rate",
        **PROF_ACTIVITY,
    }

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self._pcie: dict[str, tuple[float, float, float]] = {}  # gpu -> (t, tx, rx) integrated
        self._activity: set[str] = set()  # GPU keys with profiling activity in this scrape (see prepare)

    def prepare(self, m: dict[str, list[Sample]]) -> None:
        mig: dict[str, bool] = {}
        for samples in m.values():  # instances of any field: MIG is on
            for s in samples:
                u = s.labels.get("UUID") or s.labels.get("uuid")
                if u and s.labels.get("GPU_I_ID"):
                    mig[u] = True
                flag = _mig_flag(s.labels.get("DCGM_FI_DEV_MIG_MODE"))
                if u and flag is not None:
                    mig[u] = flag
        for s in m.get("DCGM_FI_DEV_MIG_MODE", []):  # the field itself, where exported
            u = s.labels.get("UUID") or s.labels.get("uuid")
            flag = _mig_flag(s.value)
            if u and flag is not None and not s.labels.get("GPU_I_ID"):
                mig[u] = flag
        self._mig = mig
        self._activity = {g for f in PROF_ACTIVITY for s in m.get(f, [])
                          if (g := self.gpu_key(s.labels)) is not None and finite_or_none(s.value) is not None}

    def gpu_key(self, labels: dict[str, str]) -> str | None:
        uuid = labels.get("UUID") or labels.get("uuid")
        if not uuid:
            return None
        gi = labels.get("GPU_I_ID", "")
        return f"{uuid}/GI{gi}" if gi else uuid

    def identity(self, key: str, labels: dict[str, str], m: dict[str, list[Sample]]) -> dict[str, Any]:
        gpu = labels.get("gpu", "")
        uuid = labels.get("UUID") or labels.get("uuid") or ""
        return {
            "hostname": labels.get("Hostname") or labels.get("hostname") or None,
            "gpu_uuid": key,
            "gpu_index": small_int(gpu),
            "pci_bus_id": labels.get("pci_bus_id") or None,
            "model_name": labels.get("modelName") or None,
            "driver_version": labels.get("DCGM_FI_DRIVER_VERSION") or None,
            "mig_mode": True if labels.get("GPU_I_ID") else self._mig.get(uuid),
            "activity_source": "dcgm" if key in self._activity else None,
        }

    def convert(self, key: str, v: dict[str, float], ts: float) -> dict[str, Any]:
        total = finite_or_none(v.get("fb_total_mib"))
        if total is None and all(finite_or_none(v.get(k)) is not None for k in ("fb_used_mib", "fb_free_mib", "fb_reserved_mib")):
            total = v["fb_used_mib"] + v["fb_free_mib"] + v["fb_reserved_mib"]
        out: dict[str, Any] = {
            "util_percent": finite_or_none(v.get("util")),
            "mem_util_percent": finite_or_none(v.get("mem_util")),
            "fb_used_bytes": scaled_int(v.get("fb_used_mib"), MIB),
            "fb_total_bytes": scaled_int(total, MIB),
            "power_milliwatts": scaled_int(v.get("power_w"), 1000.0, bits=32),
            "energy_millijoules_total": scaled_int(v.get("energy_mj")),
        }
        for col in PROF_ACTIVITY.values():
            out[col] = ratio_percent(v.get(col))
        tx, rx = finite_or_none(v.get("pcie_tx_rate")), finite_or_none(v.get("pcie_rx_rate"))
        if tx is not None and rx is not None:
            t0, ctx, crx = self._pcie.get(key, (ts, 0.0, 0.0))
            dt = min(max(0.0, ts - t0), 300.0)
            ctx, crx = ctx + tx * dt, crx + rx * dt
            self._pcie[key] = (ts, ctx, crx)
            out["pcie_tx_bytes_total"], out["pcie_rx_bytes_total"] = int(ctx), int(crx)
        return out


class NvidiaGpuExporterSource(_ExporterSource):
    """utkuozdemir/nvidia_gpu_exporter (``nvidia_smi_*`` metrics, label ``uuid``)."""

    name = "nvidia_gpu_exporter"
    VALUES = {
        "nvidia_smi_utilization_gpu_ratio": "util",
        "nvidia_smi_utilization_memory_ratio": "mem_util",
        "nvidia_smi_memory_used_bytes": "fb_used",
        "nvidia_smi_memory_total_bytes": "fb_total",
        "nvidia_smi_power_draw_watts": "power_w",
        "nvidia_smi_energy_joules_total": "energy_j",  # NVML backend only
    }

    def gpu_key(self, labels: dict[str, str]) -> str | None:
        u = labels.get("uuid") or labels.get("UUID")
        return normalize_gpu_uuid(u) if u else None

    def identity(self, key: str, labels: dict[str, str], m: dict[str, list[Sample]]) -> dict[str, Any]:
        info: dict[str, str] = {}
        for s in m.get("nvidia_smi_gpu_info", []):
            if self.gpu_key(s.labels) == key:
                info = s.labels
                break
        idx = info.get("index", "")
        return {
            "hostname": None,
            "gpu_uuid": key,
            "gpu_index": small_int(idx),
            "pci_bus_id": info.get("pci_bus_id") or None,
            "model_name": info.get("name") or None,
            "serial": info.get("serial") if info.get("serial") not in (None, "", "[N/A]") else None,
            "driver_version": info.get("driver_version") or None,
            "mig_mode": self._mig.get(key),
        }

    def prepare(self, m: dict[str, list[Sample]]) -> None:
        mig: dict[str, bool] = {}
        for s in m.get("nvidia_smi_mig_mode_current", []):
            g, flag = self.gpu_key(s.labels), _mig_flag(s.value)
            if g is not None and flag is not None:
                mig[g] = flag
        self._mig = mig

    def convert(self, key: str, v: dict[str, float], ts: float) -> dict[str, Any]:
        util, mem = finite_or_none(v.get("util")), finite_or_none(v.get("mem_util"))
        return {
            "util_percent": None if util is None else util * 100.0,
            "mem_util_percent": None if mem is None else mem * 100.0,
            "fb_used_bytes": scaled_int(v.get("fb_used")),
            "fb_total_bytes": scaled_int(v.get("fb_total")),
            "power_milliwatts": scaled_int(v.get("power_w"), 1000.0, bits=32),
            "energy_millijoules_total": scaled_int(v.get("energy_j"), 1000.0),
        }


def _mig_flag(v: str | float | None) -> bool | None:
    """DCGM_FI_DEV_MIG_MODE / mig.mode.current as a bool: 1/"1"/"Enabled" → True, 0 → False."""
    if v is None:
        return None
    if isinstance(v, str):
        t = v.strip().lower()
        if t in ("enabled", "1"):
            return True
        if t in ("disabled", "0"):
            return False
        return None
    f = finite_or_none(v)
    return {1.0: True, 0.0: False}.get(f) if f is not None else None
