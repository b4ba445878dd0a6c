"""Simulated dcgm-exporter and nvidia_gpu_exporter endpoints over the simulated NVML.

Tests and benches run the daemon's :class:`~accelmon.collector.exporters.DcgmExporterSource`
and :class:`~accelmon.collector.exporters.NvidiaGpuExporterSource` against these servers, fed
by the *same* :class:`~accelmon.sim.nvml.SimNVML` (same traces, same clock) as the accelmon
agent, so one GPU can be read by all three sources and their window means compared.

Each render reads NVML through its pynvml-level API at the moment of the scrape, as the real
exporters do, and writes what the real exporter would write for it (names, labels, units):

**dcgm-exporter** (NVIDIA/dcgm-exporter, ``etc/default-counters.csv`` and
``internal/pkg/rendermetrics/render_metrics.go``): one line per field and entity,
``FIELD{gpu="<index>",UUID="GPU-…",pci_bus_id="…",device="nvidia<index>",modelName="…"
[,GPU_I_PROFILE="3g.20gb",GPU_I_ID="<id>"][,Hostname="…"][,DCGM_FI_DRIVER_VERSION="…"]}``.
``DCGM_FI_DEV_GPU_UTIL`` / ``MEM_COPY_UTIL`` are percent 0–100 (``nvmlDeviceGetUtilizationRates``);
``FB_USED``/``FB_FREE``/``FB_RESERVED`` MiB; ``POWER_USAGE`` W; ``TOTAL_ENERGY_CONSUMPTION``
a counter in mJ.  A blank DCGM value (the driver answered NOT_SUPPORTED, e.g. utilization of a
GPU in MIG mode) is *skipped* by the exporter (``skipDCGMValue``): the line is absent, never 0.
MIG instances get their own ``FB_*`` lines with the parent's ``UUID`` plus ``GPU_I_PROFILE`` and
``GPU_I_ID``.  ``DCGM_FI_DEV_MIG_MODE`` (DCGM field 67, 0/1) is not a default counter; a site
adds it to its counters CSV, so it is rendered only with ``mig_mode_field=True``.  The host
label is ``Hostname`` up to dcgm-exporter 4.x and ``hostname`` after NVIDIA/dcgm-exporter#655
(``hostname_label``).

Profiling fields (``etc/dcp-metrics-included.csv``: ratios 0–1, ``%f``): ``prof_fields`` picks
which are served; the default is what the stock CSV enables (``GR_ENGINE_ACTIVE``,
``PIPE_TENSOR_ACTIVE``, ``DRAM_ACTIVE``); ``SM_ACTIVE``/``SM_OCCUPANCY`` are commented out
there, so a test that wants effective utilization passes :data:`DCGM_PROF_FIELDS`.  The values
come from ``activity(gpu, t0, t1)`` over DCGM's last update interval (``prof_interval_s``,
dcgm-exporter's ``-c`` collect interval, 30 s by default); a GPU for which it answers None
(not Hopper+, a vGPU guest, GPM unsupported) gets no profiling line at all, never 0.  In MIG
mode the lines are per instance (``GPU_I_PROFILE``/``GPU_I_ID``), none for the parent.

**nvidia_gpu_exporter** (utkuozdemir/nvidia_gpu_exporter, ``internal/exporter/exporter.go``,
``docs/METRICS.md`` and its integration-test captures ``*-mig__*.metrics``): ``uuid`` label
lower case without the ``GPU-`` prefix (``NormalizeUUID``); ``nvidia_smi_utilization_gpu_ratio``
is nvidia-smi's ``utilization.gpu [%]`` × 0.01 (ratio 0–1); memory is nvidia-smi's MiB × 2^20
(``nvidia_smi_memory_used_bytes``); ``nvidia_smi_power_draw_watts`` W;
``nvidia_smi_mig_mode_current`` 1/0 (``Enabled``/``Disabled``), absent where nvidia-smi says
``[N/A]`` (a GPU that cannot do MIG); ``nvidia_smi_energy_joules_total`` (NVML backend) J.
A value nvidia-smi reports as ``[N/A]`` (``utilization.gpu`` in MIG mode) is skipped: no line.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pynvml
from pynvml import NVMLError

from accelmon.sim.gpm import activity_mean

MIB = 2**20


def _try(fn: Callable[..., Any], *args: Any) -> Any:
    """The NVML answer, or None where the driver has none (NOT_SUPPORTED and friends)."""
    try:
        return fn(*args)
    except NVMLError:
        return None


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    """A float as client_golang writes it: Go's ``strconv.FormatFloat(v, 'g', -1, 64)``, the
    shortest round-trip digits, in exponent form when the exponent is < -4 or >= 6 (the
    real nvidia_gpu_exporter's ``8.5520809984e+10``)."""
    f = float(v)
    if f == 0 or not math.isfinite(f):
        return {0.0: "0", math.inf: "+Inf", -math.inf: "-Inf"}.get(f, "NaN")
    sign, digits, exp = Decimal(repr(f)).normalize().as_tuple()
    assert isinstance(exp, int)
    ds = "".join(map(str, digits))
    x = len(ds) + exp - 1  # decimal exponent of the first digit
    if x < -4 or x >= 6:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        out = f"{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    else:
        out = format(Decimal(repr(f)).normalize(), "f")
        out = out.lstrip("-")
    return ("-" if sign else "") + out


def _labels(d: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in d.items()) + "}"


class _Family:
    """Lines of one metric family, rendered with its HELP and TYPE like the real exporters."""

    def __init__(self, name: str, typ: str, help_: str) -> None:
        self.name, self.typ, self.help = name, typ, help_
        self.lines: list[str] = []

    def add(self, labels: dict[str, str], value: str) -> None:
        self.lines.append(f"{self.name}{_labels(labels)} {value}")

    def text(self) -> str:
        if not self.lines:
            return ""
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.typ}\n" + "\n".join(self.lines) + "\n"


def _mig_handles(nv: Any, h: Any) -> list[Any]:
    out = []
    n = _try(nv.nvmlDeviceGetMaxMigDeviceCount, h) or 0
    for i in range(n):
        m = _try(nv.nvmlDeviceGetMigDeviceHandleByIndex, h, i)
        if m is not None:
            out.append(m)
    return out


def _mig_enabled(nv: Any, h: Any) -> bool | None:
    mode = _try(nv.nvmlDeviceGetMigMode, h)
    if mode is None:
        return None
    return int(mode[0]) == pynvml.NVML_DEVICE_MIG_ENABLE


# --------------------------------------------------------------------------- dcgm-exporter
_DCGM_HELP = {  # NVIDIA/dcgm-exporter etc/default-counters.csv
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %)."),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("gauge", "Memory utilization (in %)."),
    "DCGM_FI_DEV_FB_FREE": ("gauge", "Framebuffer memory free (in MiB)."),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB)."),
    "DCGM_FI_DEV_FB_RESERVED": ("gauge", "Framebuffer memory reserved (in MiB)."),
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("counter", "Total energy consumption since boot (in mJ)."),
    "DCGM_FI_DEV_MIG_MODE": ("gauge", "MIG mode of the device (0 disabled, 1 enabled)."),
}


# DCGM profiling fields (ratios 0–1; HELP from dcp-metrics-included.csv) -> key of the activity() answer
_PROF = {
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ("gr_engine_active", "Ratio of time the graphics engine is active."),
    "DCGM_FI_PROF_SM_ACTIVE": ("sm_active", "The ratio of cycles an SM has at least 1 warp assigned."),
    "DCGM_FI_PROF_SM_OCCUPANCY": ("sm_occupancy", "The ratio of number of warps resident on an SM."),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("tensor_active", "Ratio of cycles the tensor (HMMA) pipe is active."),
    "DCGM_FI_PROF_DRAM_ACTIVE": (
        "dram_active", "Ratio of cycles the device memory interface is active sending or receiving data."),
}
DCGM_PROF_FIELDS = tuple(_PROF)  # everything the simulation can serve
DCGM_PROF_DEFAULT = ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE")

def trace_activity(gpu: Any, t0: float, t1: float) -> dict[str, float] | None:
    """Profiling ratios 0–1 of a simulated GPU (``SimGpu``) over ``[t0, t1]``, or None where DCGM
    has none (not Hopper+ / GPM unsupported by the spec, or a vGPU guest).

    The same activity model as the simulated GPM (:mod:`accelmon.sim.gpm`: a trace's own
    ``activity`` where it has one, e.g. ``trickle``/``matmul``, else ``default_activity`` of its
    utilization), so one simulated GPU reads the same SM activity through the agent (GPM) and
    through dcgm-exporter — the cross-check of effective utilization rests on that.  Invariant a
    real GPU also keeps: occupancy ≤ SM active ≤ engine active."""
    if not gpu.spec.gpm_supported or gpu.mode == "vgpu" or "nvmlGpmQueryDeviceSupport" in gpu.unsupported:
        return None
    util, sm, occ, tensor, dram = activity_mean(gpu.trace, t0, t1, step=1.0 / 6.0)
    return {"gr_engine_active": util / 100.0, "sm_active": sm / 100.0, "sm_occupancy": occ / 100.0,
            "tensor_active": tensor / 100.0, "dram_active": dram / 100.0}


def dcgm_exporter_text(nv: Any, *, hostname: str | None = "sim-host", hostname_label: str = "Hostname",
                       mig_mode_field: bool = False, prof_fields: Sequence[str] = DCGM_PROF_DEFAULT,
                       prof_interval_s: float = 30.0,
                       activity: Callable[[Any, float, float], dict[str, float] | None] = trace_activity) -> str:
    """What dcgm-exporter serves for the GPUs ``nv`` (pynvml or SimNVML, initialised) sees now.

    Profiling lines only for a SimNVML (real NVML has no DCGM profiling): see the module doc."""
    fam = {name: _Family(name, typ, h) for name, (typ, h) in _DCGM_HELP.items()}
    prof = {f: _Family(f, "gauge", _PROF[f][1]) for f in prof_fields}
    now = nv.clock.time() if hasattr(nv, "gpus") else None

    def add_prof(h: Any, labels: dict[str, str]) -> None:
        gpu = getattr(h, "gpu", None)
        act = activity(gpu, now - prof_interval_s, now) if gpu is not None and now is not None and prof else None
        if act is None:
            return  # DCGM has no value: the line is skipped, not 0
        for f, fm in prof.items():
            v = act.get(_PROF[f][0])
            if v is not None:
                fm.add(labels, f"{v:f}")

    driver = _s(_try(nv.nvmlSystemGetDriverVersion) or "")
    for i in range(nv.nvmlDeviceGetCount()):
        h = _try(nv.nvmlDeviceGetHandleByIndex, i)
        if h is None:
            continue  # a lost GPU: DCGM has no entity to report
        pci = _try(nv.nvmlDeviceGetPciInfo_v3, h)
        base = {
            "gpu": str(i),
            "UUID": _s(nv.nvmlDeviceGetUUID(h)),
            "pci_bus_id": _s(pci.busId) if pci is not None else "",
            "device": f"nvidia{i}",
            "modelName": _s(nv.nvmlDeviceGetName(h)),
        }
        tail: dict[str, str] = {}
        if hostname:
            tail[hostname_label] = hostname
        if driver:
            tail["DCGM_FI_DRIVER_VERSION"] = driver
        labels = {**base, **tail}
        util = _try(nv.nvmlDeviceGetUtilizationRates, h)
        if util is not None:  # blank in MIG mode: skipped, not 0
            fam["DCGM_FI_DEV_GPU_UTIL"].add(labels, str(int(util.gpu)))
            fam["DCGM_FI_DEV_MEM_COPY_UTIL"].add(labels, str(int(util.memory)))
        mem = _try(nv.nvmlDeviceGetMemoryInfo, h)
        if mem is not None:
            fam["DCGM_FI_DEV_FB_USED"].add(labels, str(int(mem.used) // MIB))
            fam["DCGM_FI_DEV_FB_FREE"].add(labels, str(int(mem.free) // MIB))
            fam["DCGM_FI_DEV_FB_RESERVED"].add(labels, str(max(0, int(mem.total) - int(mem.used) - int(mem.free)) // MIB))
        power = _try(nv.nvmlDeviceGetPowerUsage, h)
        if power is not None:
            fam["DCGM_FI_DEV_POWER_USAGE"].add(labels, f"{power / 1000.0:f}")
        energy = _try(nv.nvmlDeviceGetTotalEnergyConsumption, h)
        if energy is not None:
            fam["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].add(labels, str(int(energy)))
        mig = _mig_enabled(nv, h)
        if mig_mode_field and mig is not None:
            fam["DCGM_FI_DEV_MIG_MODE"].add(labels, "1" if mig else "0")
        if not mig:
            add_prof(h, labels)
        if mig:
            for m in _mig_handles(nv, h):
                gi = _try(nv.nvmlDeviceGetGpuInstanceId, m)
                name = _s(_try(nv.nvmlDeviceGetName, m) or "")
                mmem = _try(nv.nvmlDeviceGetMemoryInfo, m)
                if gi is None or mmem is None:
                    continue
                ml = {**base, "GPU_I_PROFILE": name.rsplit(" MIG ", 1)[-1], "GPU_I_ID": str(gi), **tail}
                fam["DCGM_FI_DEV_FB_USED"].add(ml, str(int(mmem.used) // MIB))
                fam["DCGM_FI_DEV_FB_FREE"].add(ml, str(int(mmem.free) // MIB))
                add_prof(m, ml)
    return "".join(f.text() for f in [*fam.values(), *prof.values()])


# --------------------------------------------------------------------------- nvidia_gpu_exporter
_SMI_INFO_HELP = ("A metric with a constant '1' value labeled by gpu uuid, name, driver_model_current, "
                  "driver_model_pending, vbios_version, driver_version, pci_bus_id, serial, compute_cap, "
                  "pci_sub_device_id, index, cuda_version.")
_SMI_HELP = {  # HELP is the nvidia-smi query field (utkuozdemir/nvidia_gpu_exporter captures)
    "nvidia_smi_gpu_info": ("gauge", _SMI_INFO_HELP),
    "nvidia_smi_utilization_gpu_ratio": ("gauge", "utilization.gpu [%]"),
    "nvidia_smi_utilization_memory_ratio": ("gauge", "utilization.memory [%]"),
    "nvidia_smi_memory_total_bytes": ("gauge", "memory.total [MiB]"),
    "nvidia_smi_memory_used_bytes": ("gauge", "memory.used [MiB]"),
    "nvidia_smi_memory_free_bytes": ("gauge", "memory.free [MiB]"),
    "nvidia_smi_power_draw_watts": ("gauge", "power.draw [W]"),
    "nvidia_smi_mig_mode_current": ("gauge", "mig.mode.current"),
    "nvidia_smi_energy_joules_total": (
        "counter", "Total energy consumed by the GPU in joules since the driver was last loaded. "
        "Resets on a driver reload; absent on GPUs that cannot report it."),
}


def smi_uuid(uuid: str) -> str:
    """nvidia_gpu_exporter's ``NormalizeUUID``: lower case, without the ``GPU-`` prefix."""
    u = uuid.strip().lower()
    return u[4:] if u.startswith("gpu-") else u


def nvidia_gpu_exporter_text(nv: Any) -> str:
    """What nvidia_gpu_exporter (NVML backend) serves for the GPUs ``nv`` sees now."""
    fam = {name: _Family(name, typ, h) for name, (typ, h) in _SMI_HELP.items()}
    driver = _s(_try(nv.nvmlSystemGetDriverVersion) or "")
    cuda = _try(nv.nvmlSystemGetCudaDriverVersion)
    for i in range(nv.nvmlDeviceGetCount()):
        h = _try(nv.nvmlDeviceGetHandleByIndex, i)
        if h is None:
            continue
        u = {"uuid": smi_uuid(_s(nv.nvmlDeviceGetUUID(h)))}
        pci = _try(nv.nvmlDeviceGetPciInfo_v3, h)
        cc = _try(nv.nvmlDeviceGetCudaComputeCapability, h)
        fam["nvidia_smi_gpu_info"].add({
            "compute_cap": f"{cc[0]}.{cc[1]}" if cc else "[N/A]",
            "cuda_version": f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else "[N/A]",
            "driver_model_current": "[N/A]", "driver_model_pending": "[N/A]",
            "driver_version": driver, "index": str(i), "name": _s(nv.nvmlDeviceGetName(h)),
            "pci_bus_id": _s(pci.busId) if pci is not None else "[N/A]",
            "pci_sub_device_id": f"0x{pci.pciSubSystemId:08X}" if pci is not None else "[N/A]",
            "serial": _s(_try(nv.nvmlDeviceGetSerial, h) or "[N/A]"), **u, "vbios_version": "[N/A]",
        }, "1")
        util = _try(nv.nvmlDeviceGetUtilizationRates, h)
        if util is not None:  # "[N/A]" in MIG mode: no line
            fam["nvidia_smi_utilization_gpu_ratio"].add(u, _num(int(util.gpu) * 0.01))
            fam["nvidia_smi_utilization_memory_ratio"].add(u, _num(int(util.memory) * 0.01))
        mem = _try(nv.nvmlDeviceGetMemoryInfo, h)
        if mem is not None:  # nvidia-smi prints whole MiB; the exporter multiplies by 2^20
            for k in ("total", "used", "free"):
                fam[f"nvidia_smi_memory_{k}_bytes"].add(u, _num(int(getattr(mem, k)) // MIB * MIB))
        power = _try(nv.nvmlDeviceGetPowerUsage, h)
        if power is not None:
            fam["nvidia_smi_power_draw_watts"].add(u, _num(round(power / 1000.0, 2)))
        mig = _mig_enabled(nv, h)
        if mig is not None:
            fam["nvidia_smi_mig_mode_current"].add(u, "1" if mig else "0")
        energy = _try(nv.nvmlDeviceGetTotalEnergyConsumption, h)
        if energy is not None:
            fam["nvidia_smi_energy_joules_total"].add(u, _num(energy / 1000.0))
    return "".join(f.text() for f in fam.values())


# --------------------------------------------------------------------------- HTTP
class ExporterServer(ThreadingHTTPServer):
    """Serves ``render()`` on ``GET /metrics`` (loopback, ephemeral port); NVML is read per request.

    ``with ExporterServer(lambda: dcgm_exporter_text(nv)) as srv: srv.url`` …"""

    daemon_threads = True

    def __init__(self, render: Callable[[], str], host: str = "127.0.0.1", port: int = 0) -> None:
        self.render = render
        self.requests = 0
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _ExporterHandler)

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}/metrics"

    def __enter__(self) -> ExporterServer:
        self._thread = threading.Thread(target=self.serve_forever, name="sim-exporter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _ExporterHandler(BaseHTTPRequestHandler):
    server: ExporterServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.split("?", 1)[0] != "/metrics":
            body, code = b"not found\n", 404
        else:
            self.server.requests += 1
            body, code = self.server.render().encode(), 200
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
