"""What a simulated machine looks like: GPU models, presets, and the simulation spec file.

A spec (TOML or JSON) lists GPUs::

    speed = 1.0                 # simulated seconds per real second (1 = real time)
    driver_version = "550.90.07"
    vm_bios_uuid = "42023081-331b-58e1-2730-ca560789e551"  # what the agent reports (default: this machine's)
    hostname = "gpu-vm-01"
    sample_clock_offset_s = 0.0 # driver sample timestamps = host clock + this (e.g. -1.7e9: a clock since boot)

    [[gpu]]
    model = "A100-SXM4-40GB"    # A100-SXM4-40GB | H100 | H200 | L4 | T4
    mode = "passthrough"        # none | passthrough | vgpu
    count = 2                   # this many identical GPUs
    trace = "busy_training"     # busy_training | bursty_inference | idle_allocated | trickle | matmul |
                                # "constant:40" | "csv:trace.csv#gpu-7" | {generator=..., seed=...}
    nvlink = 12                 # NVLink links (default: the model's)
    mig = ["3g.20gb", "3g.20gb"]  # MIG instances (A100/H100/H200); omit for no MIG
    numa_node = 0
    vgpu_profile = "A100-4C"    # mode = "vgpu": the profile the guest sees
    unsupported = ["nvmlDeviceGetSamples", "NVML_FI_DEV_PCIE_COUNT_TX_BYTES"]
    vgpu_reports_zero = false   # vGPU guest: read N/A fields as 0 instead of NOT_SUPPORTED
    vgpu_pcie_fields = false    # vGPU guest whose PCIe byte-counter fields work
    ring_runs_dry = false       # no utilization samples while idle: nvmlDeviceGetSamples raises NOT_FOUND
    gpm = true                  # GPM (nvmlGpm*) supported; default: the model's (H100/H200 yes), never in a vGPU guest

Presets (``--simulate <name>``): see :data:`PRESETS`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelmon.errors import UserError
from accelmon.identity import slot_guest_address


def guest_gpu_slot(index: int) -> int | None:
    """The ``pciSlotNumber`` the simulated estate gives a VM's ``index``-th GPU device, and so
    where the simulated guest sees that GPU: one PCIe root port each, on pciBridge5, 6, 7 (4
    holds the NIC, slot 160), function 0, then function 1, ... (KB 2047927 encoding,
    accelmon.identity). The vCenter simulator (accelmon/sim/vcsim/seed_vms.go ``gpuSlot``)
    uses the same formula. None past the 24 such ports."""
    if not 0 <= index < 24:
        return None
    bridge, fn = 5 + index % 3, index // 3
    return (fn << 10) | ((bridge + 1) << 5)


def guest_gpu_bus(index: int) -> int:
    """Guest PCI bus of the ``index``-th simulated GPU: its slot decoded (0x0b, 0x13, 0x1b, 0x0c, ...)."""
    addr = slot_guest_address(guest_gpu_slot(index))
    return addr[0] if addr else 0x23 + index - 24


@dataclass(frozen=True)
class Model:
    key: str
    name: str  # what nvmlDeviceGetName returns
    fb_mib: int
    pci_device_id: int  # nvmlPciInfo_t.pciDeviceId (device << 16 | vendor)
    idle_w: float
    max_w: float
    nvlinks: int
    mig_capable: bool
    cc: tuple[int, int]
    pcie_bytes_per_s: float  # PCIe traffic at 100 % utilization (model assumption)
    nvlink_kib_per_s: float  # per link at 100 % utilization
    gpm: bool = False  # GPU Performance Monitoring (nvmlGpm*): Hopper and newer


MODELS: dict[str, Model] = {
    m.key: m
    for m in (
        Model("A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB", 40960, 0x20B010DE, 55, 400, 12, True, (8, 0), 6e9, 2.0e7),
        Model("H100", "NVIDIA H100 80GB HBM3", 81559, 0x233010DE, 70, 700, 18, True, (9, 0), 12e9, 2.4e7, gpm=True),
        Model("H200", "NVIDIA H200", 143771, 0x233510DE, 75, 700, 18, True, (9, 0), 12e9, 2.4e7, gpm=True),
        Model("L4", "NVIDIA L4", 23034, 0x27B810DE, 16, 72, 0, False, (8, 9), 4e9, 0),
        Model("T4", "Tesla T4", 15360, 0x1EB810DE, 10, 70, 0, False, (7, 5), 3e9, 0),
    )
}
MODEL_ALIASES = {"A100": "A100-SXM4-40GB", "H100-SXM5-80GB": "H100", "H100 80GB HBM3": "H100"}
MODES = ("none", "passthrough", "vgpu")


@dataclass
class GpuSpec:
    model: Model
    mode: str = "passthrough"
    trace: Any = "busy_training"
    nvlink: int | None = None
    mig: list[str] = field(default_factory=list)
    numa_node: int = 0
    vgpu_profile: str | None = None
    unsupported: list[str] = field(default_factory=list)
    vgpu_reports_zero: bool = False
    vgpu_pcie_fields: bool = False  # vGPU guest whose PCIe byte-counter fields work
    ring_runs_dry: bool = False  # the driver takes no utilization sample while the GPU is idle (NOT_FOUND)
    seed: int = 0
    gpm: bool | None = None  # GPM supported (None: the model's default)

    @property
    def gpm_supported(self) -> bool:
        """nvmlGpmQueryDeviceSupport's answer: never in a vGPU guest (time-sliced or MIG-backed)."""
        if self.mode == "vgpu":
            return False
        return self.model.gpm if self.gpm is None else self.gpm

    @property
    def nvlinks(self) -> int:
        if self.mode == "vgpu":
            return 0
        return self.model.nvlinks if self.nvlink is None else self.nvlink


@dataclass
class SimSpec:
    gpus: list[GpuSpec]
    speed: float = 1.0
    driver_version: str = "550.90.07"
    nvml_version: str = "12.550.90.07"
    cuda_driver_version: int = 12040
    ring_size: int | None = None  # driver utilization sample buffer length
    sample_period_s: float = 1.0 / 6.0
    seed: int = 1
    base_dir: Path | None = None
    name: str = "custom"
    vm_bios_uuid: str | None = None  # the VM identity the simulated agent reports (default: this machine's)
    hostname: str | None = None
    sample_clock_offset_s: float = 0.0  # driver sample clock − host clock (real drivers: often CLOCK_BOOTTIME)


PRESETS: dict[str, dict[str, Any]] = {
    # one GPU, handy for `accelmon agent --simulate single --once`
    "single": {"gpu": [{"model": "A100-SXM4-40GB", "trace": "bursty_inference"}]},
    # the demo mix: training, inference, allocated-but-idle, a vGPU guest
    "mixed": {
        "gpu": [
            {"model": "A100-SXM4-40GB", "trace": "busy_training", "nvlink": 12},
            {"model": "H100", "trace": "bursty_inference"},
            {"model": "L4", "trace": "idle_allocated"},
            {"model": "T4", "mode": "vgpu", "vgpu_profile": "T4-8C", "trace": "bursty_inference"},
        ]
    },
    # an 8-GPU passthrough VM (the agent_overhead bench)
    "dgx-a100": {"gpu": [{"model": "A100-SXM4-40GB", "count": 8, "trace": "busy_training"}]},
    "h100x8": {"gpu": [{"model": "H100", "count": 8, "trace": "bursty_inference"}]},
    # effective utilization: a hollow (time-busy, SM-idle) H100 beside a dense one
    "hollow": {"gpu": [{"model": "H100", "trace": "trickle"}, {"model": "H100", "trace": "matmul"}]},
    # a vGPU guest: power, energy, PCIe and NVLink are not available inside it
    "vgpu-guest": {"gpu": [{"model": "A100-SXM4-40GB", "mode": "vgpu", "vgpu_profile": "A100-4C"}]},
    # an A100 split into two MIG instances
    "mig": {"gpu": [{"model": "A100-SXM4-40GB", "mig": ["3g.20gb", "3g.20gb"], "trace": "busy_training"}]},
}

_GPU_KEYS = {
    "model", "mode", "count", "trace", "nvlink", "mig", "numa_node", "vgpu_profile", "unsupported",
    "vgpu_reports_zero", "vgpu_pcie_fields", "ring_runs_dry", "seed", "gpm",
}
_TOP_KEYS = {
    "gpu", "speed", "driver_version", "nvml_version", "cuda_driver_version", "ring_size", "sample_period_s", "seed",
    "vm_bios_uuid", "hostname", "sample_clock_offset_s",
}


def _err(src: str, where: str, msg: str) -> UserError:
    return UserError(f"{src}: {where}: {msg}")


def parse_spec(raw: dict[str, Any], source: str = "<spec>", base_dir: Path | None = None) -> SimSpec:
    """Validate a spec mapping; every mistake is one :class:`UserError` line naming the key."""
    for k in raw:
        if k not in _TOP_KEYS:
            raise _err(source, k, f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    gpus_raw = raw.get("gpu")
    if not isinstance(gpus_raw, list) or not gpus_raw:
        raise _err(source, "gpu", "give at least one [[gpu]] table")
    seed = int(raw.get("seed", 1))
    gpus: list[GpuSpec] = []
    for i, g in enumerate(gpus_raw):
        where = f"gpu[{i}]"
        if not isinstance(g, dict):
            raise _err(source, where, "must be a table")
        for k in g:
            if k not in _GPU_KEYS:
                raise _err(source, f"{where}.{k}", f"unknown key (known: {', '.join(sorted(_GPU_KEYS))})")
        mkey = str(g.get("model", "A100-SXM4-40GB"))
        mkey = MODEL_ALIASES.get(mkey, mkey)
        if mkey not in MODELS:
            raise _err(source, f"{where}.model", f"unknown model {mkey!r}; known: {', '.join(MODELS)}")
        model = MODELS[mkey]
        mode = str(g.get("mode", "passthrough"))
        if mode not in MODES:
            raise _err(source, f"{where}.mode", f"must be one of {', '.join(MODES)}")
        count = g.get("count", 1)
        if not isinstance(count, int) or count < 1 or count > 64:
            raise _err(source, f"{where}.count", "must be an integer 1–64")
        mig = g.get("mig", [])
        if mig is True:
            mig = ["3g.20gb", "3g.20gb"] if model.key.startswith("A100") else ["3g.40gb", "3g.40gb"]
        if mig is False:
            mig = []
        if not isinstance(mig, list) or not all(isinstance(p, str) for p in mig):
            raise _err(source, f"{where}.mig", 'must be a list of profile names like ["3g.20gb"]')
        if mig and not model.mig_capable:
            raise _err(source, f"{where}.mig", f"{model.key} does not support MIG")
        if mig and mode == "vgpu":
            raise _err(source, f"{where}.mig", "MIG inside a vGPU guest is not simulated")
        for p in mig:
            _mig_profile_mib(p, source, f"{where}.mig")
        nvlink = g.get("nvlink")
        if nvlink is not None and (not isinstance(nvlink, int) or not 0 <= nvlink <= 18):
            raise _err(source, f"{where}.nvlink", "must be an integer 0–18")
        unsupported = g.get("unsupported", [])
        if not isinstance(unsupported, list) or not all(isinstance(u, str) for u in unsupported):
            raise _err(source, f"{where}.unsupported", "must be a list of NVML function or field names")
        profile = g.get("vgpu_profile")
        if mode == "vgpu" and profile is None:
            profile = f"{model.key.split('-')[0]}-4C"
        for n in range(count):
            gpus.append(
                GpuSpec(
                    model=model,
                    mode=mode,
                    trace=g.get("trace", "busy_training"),
                    nvlink=nvlink,
                    mig=list(mig),
                    numa_node=int(g["numa_node"]) if "numa_node" in g else -1,
                    vgpu_profile=profile,
                    unsupported=list(unsupported),
                    vgpu_reports_zero=bool(g.get("vgpu_reports_zero", False)),
                    vgpu_pcie_fields=bool(g.get("vgpu_pcie_fields", False)),
                    ring_runs_dry=_bool(g, "ring_runs_dry", source, f"{where}.ring_runs_dry"),
                    seed=int(g["seed"]) + n if "seed" in g else seed * 1000 + len(gpus),
                    gpm=_bool(g, "gpm", source, f"{where}.gpm") if "gpm" in g else None,
                )
            )
    for i, gs in enumerate(gpus):  # default: the first half of the GPUs on node 0, the rest on node 1
        if gs.numa_node < 0:
            gs.numa_node = (i * 2) // len(gpus)
    speed = raw.get("speed", 1.0)
    if not isinstance(speed, int | float) or speed <= 0:
        raise _err(source, "speed", "must be a number > 0")
    ring = raw.get("ring_size")
    if ring is not None and (not isinstance(ring, int) or ring < 1):
        raise _err(source, "ring_size", "must be an integer >= 1")
    period = raw.get("sample_period_s", 1.0 / 6.0)
    if not isinstance(period, int | float) or not 0.01 <= period <= 10:
        raise _err(source, "sample_period_s", "must be 0.01–10 seconds")
    offset = raw.get("sample_clock_offset_s", 0.0)
    if isinstance(offset, bool) or not isinstance(offset, int | float) or abs(offset) > 1e10:
        raise _err(source, "sample_clock_offset_s", "must be a number of seconds (|offset| <= 1e10)")
    return SimSpec(
        gpus=gpus,
        speed=float(speed),
        driver_version=str(raw.get("driver_version", "550.90.07")),
        nvml_version=str(raw.get("nvml_version", "12.550.90.07")),
        cuda_driver_version=int(raw.get("cuda_driver_version", 12040)),
        ring_size=ring,
        sample_period_s=float(period),
        seed=seed,
        base_dir=base_dir,
        vm_bios_uuid=str(raw["vm_bios_uuid"]) if "vm_bios_uuid" in raw else None,
        hostname=str(raw["hostname"]) if "hostname" in raw else None,
        sample_clock_offset_s=float(offset),
    )


def _bool(g: dict[str, Any], key: str, source: str, where: str) -> bool:
    v = g.get(key, False)
    if not isinstance(v, bool):
        raise _err(source, where, "must be true or false")
    return v


def _mig_profile_mib(profile: str, source: str, where: str) -> int:
    """'3g.20gb' → framebuffer MiB of that MIG instance (a little under the nominal size)."""
    try:
        g, mem = profile.lower().split(".")
        if not g.endswith("g") or not mem.endswith("gb"):
            raise ValueError
        int(g[:-1])
        gb = int(mem[:-2])
    except ValueError:
        raise _err(source, where, f"not a MIG profile like 3g.20gb: {profile!r}") from None
    return gb * 1024 - gb * 24


def mig_profile_mib(profile: str) -> int:
    return _mig_profile_mib(profile, "<mig>", "mig")


def load_spec(name_or_path: str) -> SimSpec:
    """A preset name or a TOML/JSON spec file."""
    if name_or_path in PRESETS:
        spec = parse_spec(PRESETS[name_or_path], f"preset {name_or_path}")
        spec.name = name_or_path
        return spec
    p = Path(name_or_path)
    if not p.is_file():
        raise UserError(
            f"--simulate: {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a spec file"
        )
    try:
        text = p.read_text()
    except OSError as e:
        raise UserError(f"{p}: cannot read: {e.strerror}") from None
    try:
        raw = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise UserError(f"{p}: not valid {kind}: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{p}: expected a table at the top level")
    spec = parse_spec(raw, str(p), base_dir=p.parent)
    spec.name = p.stem
    return spec
