"""The store schema: the contract between collectors (writers) and analytics (readers).

Every table is described here once, column by column, with units in the column names.
docs/schema.md is generated from this module (``accelmon schema > docs/schema.md``) and a
test checks it is up to date.

Conventions
-----------
* Timestamps are UTC, millisecond precision (``TIMESTAMP_MS`` in Parquet, ``TIMESTAMP`` in
  DuckDB views).  ``ts`` is the time the value was *measured* (for counters: the instant
  the counter had that value).
* Counters end in ``_total`` and are stored exactly as the source reported them, in the
  source's own integer unit (NVML: milliseconds, millijoules, bytes).  Resets are handled
  by readers like Prometheus' ``increase()``: a decrease means the counter restarted at 0.
* Gauges carry their unit in the name (``_bytes``, ``_milliwatts``, ``_percent``, ``_watts``).
* Identity: vCenter by instance UUID, host and VM by moref (VM also by instance UUID and
  BIOS UUID), GPU by UUID (import-trace ids are stored in ``gpu_uuid`` as given).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from accelmon.store.views import VIEWS

TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = True


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]
    # column holding the time used for the hive ``date=YYYY-MM-DD`` partition
    partition_ts: str
    # sort order applied on compaction (makes deltas small and dictionaries run-length encode)
    sort_by: tuple[str, ...]
    kind: str = "sample"  # sample | event | inventory | finding | rollup
    delta_columns: tuple[str, ...] = field(default=())

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def C(name: str, typ: pa.DataType, doc: str, nullable: bool = True) -> Column:
    return Column(name, typ, doc, nullable)


_STR = pa.string()
_I64 = pa.int64()
_I32 = pa.int32()
_I16 = pa.int16()
_F64 = pa.float64()
_F32 = pa.float32()
_BOOL = pa.bool_()

TABLES: dict[str, Table] = {}


def _register(t: Table) -> Table:
    TABLES[t.name] = t
    return t


GPU_SAMPLE = _register(
    Table(
        name="gpu_sample",
        doc="One row per GPU (or MIG instance) per poll. Written by the agent source, "
        "dcgm/nvidia_gpu_exporter sources, Prometheus backfill and import-trace.",
        columns=(
            C("ts", TS, "measurement time (UTC)", False),
            C("gpu_uuid", _STR, "GPU UUID (`GPU-…`, `MIG-…`), or the id given in an imported trace", False),
            C("source", _STR, "agent | import | dcgm | nvidia_gpu_exporter | prometheus | simulation", False),
            C("vm_bios_uuid", _STR, "SMBIOS system UUID the guest agent reported (= vCenter VM `config.uuid`)"),
            C("util_percent", _F32, "GPU utilization 0–100 over the last driver sample period (gauge)"),
            C("mem_util_percent", _F32, "memory-controller utilization 0–100 (gauge)"),
            C("busy_ms_total", _I64, "counter: milliseconds busy = Σ dt·v/100 over the driver's utilization "
              "readings (v %, NVML: percent of the sample period a kernel ran); 1 s at 10 % adds 100"),
            C("idle_ms_total", _I64, "counter: milliseconds idle = Σ dt − busy (1 s at 10 % adds 900); "
              "busy/(busy+idle) over a window is the time-weighted utilization"),
            C("fb_used_bytes", _I64, "framebuffer in use (gauge)"),
            C("fb_total_bytes", _I64, "framebuffer size"),
            C("pcie_tx_bytes_total", _I64, "counter: PCIe bytes transmitted (NVML_FI_DEV_PCIE_COUNT_TX_BYTES)"),
            C("pcie_rx_bytes_total", _I64, "counter: PCIe bytes received (NVML_FI_DEV_PCIE_COUNT_RX_BYTES)"),
            C("power_milliwatts", _I32, "board power draw (nvmlDeviceGetPowerUsage, mW)"),
            C("energy_millijoules_total", _I64, "counter: energy since driver load (nvmlDeviceGetTotalEnergyConsumption)"),
            C("sm_active_percent", _F32, "SM activity 0–100 over the last period (gauge; GPM SM_UTIL / DCGM_FI_PROF_SM_ACTIVE)"),
            C("sm_occupancy_percent", _F32, "SM occupancy 0–100 over the last period (gauge; GPM SM_OCCUPANCY / DCGM_FI_PROF_SM_OCCUPANCY)"),
            C("tensor_active_percent", _F32, "tensor-pipe activity 0–100 (gauge; GPM ANY_TENSOR_UTIL / DCGM_FI_PROF_PIPE_TENSOR_ACTIVE)"),
            C("dram_active_percent", _F32, "DRAM bandwidth activity 0–100 (gauge; GPM DRAM_BW_UTIL / DCGM_FI_PROF_DRAM_ACTIVE)"),
            C("sm_active_ms_total", _I64, "counter: Σ dt·SM-active fraction, ms (agent, GPM)"),
            C("tensor_active_ms_total", _I64, "counter: Σ dt·tensor-active fraction, ms (agent, GPM)"),
            C("dram_active_ms_total", _I64, "counter: Σ dt·DRAM-active fraction, ms (agent, GPM)"),
        ),
        partition_ts="ts",
        sort_by=("gpu_uuid", "ts"),
        delta_columns=(
            "busy_ms_total",
            "idle_ms_total",
            "pcie_tx_bytes_total",
            "pcie_rx_bytes_total",
            "energy_millijoules_total",
            "fb_used_bytes",
            "fb_total_bytes",
            "power_milliwatts",
            "sm_active_ms_total",
            "tensor_active_ms_total",
            "dram_active_ms_total",
        ),
    )
)

# The fields of gpu_sample that are measurements ("values"); the rest is key.
GPU_SAMPLE_VALUE_COLUMNS = tuple(c.name for c in GPU_SAMPLE.columns[4:])

NVLINK_SAMPLE = _register(
    Table(
        name="nvlink_sample",
        doc="Per GPU, per NVLink link byte counters (NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX/RX, scope = link).",
        columns=(
            C("ts", TS, "measurement time (UTC)", False),
            C("gpu_uuid", _STR, "GPU UUID", False),
            C("link", _I16, "NVLink link index", False),
            C("tx_bytes_total", _I64, "counter: data bytes transmitted on the link"),
            C("rx_bytes_total", _I64, "counter: data bytes received on the link"),
        ),
        partition_ts="ts",
        sort_by=("gpu_uuid", "link", "ts"),
        delta_columns=("tx_bytes_total", "rx_bytes_total"),
    )
)

VM_POWER_SAMPLE = _register(
    Table(
        name="vm_power_sample",
        doc="vCenter realtime (20 s) per-VM power: `power.power.average` and `power.energy.summation`.",
        columns=(
            C("ts", TS, "end of the 20 s sample interval (vCenter timestamp)", False),
            C("vcenter_uuid", _STR, "vCenter instance UUID", False),
            C("vm_moref", _STR, "VM managed object id (`vm-123`)", False),
            C("vm_instance_uuid", _STR, "VM instance UUID (`config.instanceUuid`)"),
            C("interval_seconds", _I32, "sample interval length (20 for realtime)"),
            C("power_watts", _F64, "average power over the interval (power.power.average)"),
            C("energy_joules", _F64, "energy used in the interval (power.energy.summation)"),
        ),
        partition_ts="ts",
        sort_by=("vcenter_uuid", "vm_moref", "ts"),
    )
)

HOST_POWER_SAMPLE = _register(
    Table(
        name="host_power_sample",
        doc="vCenter realtime (20 s) per-host power: `power.power.average` and `power.energy.summation`.",
        columns=(
            C("ts", TS, "end of the 20 s sample interval (vCenter timestamp)", False),
            C("vcenter_uuid", _STR, "vCenter instance UUID", False),
            C("host_moref", _STR, "host managed object id (`host-42`)", False),
            C("interval_seconds", _I32, "sample interval length (20 for realtime)"),
            C("power_watts", _F64, "average power over the interval"),
            C("energy_joules", _F64, "energy used in the interval"),
        ),
        partition_ts="ts",
        sort_by=("vcenter_uuid", "host_moref", "ts"),
    )
)

VMOTION = _register(
    Table(
        name="vmotion",
        doc="One row per migration (events paired by chainId, joined with stun time from vmware.log).",
        columns=(
            C("started_at", TS, "start event time (VmBeingHotMigratedEvent / VmBeingMigratedEvent)"),
            C("ended_at", TS, "end event time (VmMigratedEvent / DrsVmMigratedEvent / VmFailedMigrateEvent)", False),
            C("vcenter_uuid", _STR, "vCenter instance UUID", False),
            C("chain_id", _I64, "event chainId that pairs start and end"),
            C("vm_moref", _STR, "VM moref", False),
            C("vm_instance_uuid", _STR, "VM instance UUID"),
            C("vm_name", _STR, "VM name at the time of the migration"),
            C("cluster_name", _STR, "cluster of the destination host"),
            C("src_host_moref", _STR, "source host moref"),
            C("dst_host_moref", _STR, "destination host moref"),
            C("src_host_name", _STR, "source host name"),
            C("dst_host_name", _STR, "destination host name"),
            C("drs", _BOOL, "initiated by DRS"),
            C("succeeded", _BOOL, "false for VmFailedMigrateEvent"),
            C("failure_reason", _STR, "e.g. maxSwitchoverTimeExceeded"),
            C("stun_seconds", _F64, "Checkpoint_Unstun 'vm stopped for N us' / 1e6; null if the log had none"),
            C("vgpu_attached", _BOOL, "VM had a vGPU device during the migration"),
            C("vgpu_fb_bytes", _I64, "vGPU framebuffer size of the VM's profile(s)"),
        ),
        partition_ts="ended_at",
        sort_by=("vcenter_uuid", "ended_at"),
        kind="event",
    )
)

COLLECTION_GAP = _register(
    Table(
        name="collection_gap",
        doc="A period a source could not cover (vCenter down longer than its realtime window, agent away).",
        columns=(
            C("gap_start", TS, "first instant not covered", False),
            C("gap_end", TS, "first instant covered again", False),
            C("source", _STR, "source name (vcenter, agent, …)", False),
            C("target", _STR, "vCenter URL or agent URL (never credentials)", False),
            C("reason", _STR, "why the gap happened"),
        ),
        partition_ts="gap_start",
        sort_by=("source", "target", "gap_start"),
        kind="event",
    )
)

# ---------------------------------------------------------------- inventory snapshots
_SNAP = C("snapshot_ts", TS, "time of the inventory snapshot this row belongs to", False)
_VC = C("vcenter_uuid", _STR, "vCenter instance UUID", False)

INV_VCENTER = _register(
    Table(
        name="inv_vcenter",
        doc="vCenter instances seen.",
        columns=(
            _SNAP,
            _VC,
            C("url", _STR, "SDK URL as configured (no credentials)"),
            C("name", _STR, "configured name"),
            C("api_version", _STR, "about.apiVersion"),
            C("full_name", _STR, "about.fullName"),
        ),
        partition_ts="snapshot_ts",
        sort_by=("vcenter_uuid", "snapshot_ts"),
        kind="inventory",
    )
)

INV_HOST = _register(
    Table(
        name="inv_host",
        doc="ESXi hosts.",
        columns=(
            _SNAP,
            _VC,
            C("host_moref", _STR, "host moref", False),
            C("host_name", _STR, "host name"),
            C("cluster_moref", _STR, "cluster moref (null for standalone)"),
            C("cluster_name", _STR, "cluster name"),
            C("connection_state", _STR, "connected | disconnected | notResponding"),
            C("power_state", _STR, "poweredOn | standBy | …"),
            C("cpu_cores", _I32, "physical cores"),
            C("memory_bytes", _I64, "physical memory"),
            C("numa_node_count", _I16, "hardware.numaInfo.numNodes"),
            C("vgpu_mode", _STR, "config.graphicsInfo / sharedPassthruGpuAssignmentPolicy: sameSize | mixedSize | …"),
            C("esxi_version", _STR, "config.product.version (ESXi release with update level, `8.0.3`)"),
            C("esxi_build", _STR, "config.product.build"),
        ),
        partition_ts="snapshot_ts",
        sort_by=("vcenter_uuid", "host_moref"),
        kind="inventory",
    )
)

INV_NUMA_NODE = _register(
    Table(
        name="inv_numa_node",
        doc="Host NUMA nodes with the PCI devices attached to each (HostNumaNode).",
        columns=(
            _SNAP,
            _VC,
            C("host_moref", _STR, "host moref", False),
            C("node_id", _I16, "HostNumaNode.typeId", False),
            C("cpu_ids", pa.list_(_I16), "logical CPUs of the node"),
            C("memory_bytes", _I64, "memoryRangeLength"),
            C("pci_ids", pa.list_(_STR), "PCI devices on the node, SBDF (`0000:3b:00.0`)"),
        ),
        partition_ts="snapshot_ts",
        sort_by=("vcenter_uuid", "host_moref", "node_id"),
        kind="inventory",
    )
)

INV_HOST_PCI = _register(
    Table(
        name="inv_host_pci",
        doc="Host PCI devices that matter (GPUs and other accelerators), with their NUMA node.",
        columns=(
            _SNAP,
            _VC,
            C("host_moref", _STR, "host moref", False),
            C("pci_id", _STR, "SBDF bus id, lower case (`0000:3b:00.0`)", False),
            C("vendor_id", _I32, "PCI vendor id (0x10de = NVIDIA), unsigned"),
            C("device_id", _I32, "PCI device id, unsigned"),
            C("vendor_name", _STR, "vendor name"),
            C("device_name", _STR, "device name"),
            C("numa_node", _I16, "host NUMA node the device hangs off (from HostNumaNode.pciId)"),
            C("passthru_enabled", _BOOL, "pciPassthruInfo.passthruEnabled"),
            C("fb_bytes", _I64, "GPU memory when known (from the device id table / vGPU info)"),
        ),
        partition_ts="snapshot_ts",
        sort_by=("vcenter_uuid", "host_moref", "pci_id"),
        kind="inventory",
    )
)

INV_VM = _register(
    Table(
        name="inv_vm",
        doc="Virtual machines that have a GPU device (passthrough, vGPU or dynamic DirectPath).",
        columns=(
            _SNAP,
            _VC,
            C("vm_moref", _STR, "VM moref", False),
            C("vm_instance_uuid", _STR, "config.instanceUuid"),
            C("vm_bios_uuid", _STR, "config.uuid = SMBIOS UUID the guest agent reports (join key)"),
            C("vm_name", _STR, "VM name"),
            C("host_moref", _STR, "runtime.host"),
            C("cluster_name", _STR, "cluster of runtime.host"),
            C("power_state", _STR, "runtime.powerState"),
            C("num_cpu", _I32, "config.hardware.numCPU"),
            C("cores_per_socket", _I32, "config.hardware.numCoresPerSocket"),
            C("memory_bytes", _I64, "config.hardware.memoryMB × 2^20"),
            C("numa_node_affinity", _STR, "extraConfig numa.nodeAffinity as configured (e.g. `0`, `0,1`)"),
            C("cpu_affinity_set", pa.list_(pa.int32()),
              "config.cpuAffinity.affinitySet: host logical CPUs the vCPUs may run on; NULL = no CPU affinity"),
            C("vnuma_nodes", _I16, "numa.vcpu / vNUMA node count if set"),
            C("guest_ips", pa.list_(_STR), "guest.net[].ipAddress (agent discovery)"),
            C("guest_hostname", _STR, "guest.hostName"),
        ),
        partition_ts="snapshot_ts",
        sort_by=("vcenter_uuid", "vm_moref"),
        kind="inventory",
    )
)

INV_VM_GPU = _register(
    Table(
        name="inv_vm_gpu",
        doc="GPU devices of a VM: one row per VirtualPCIPassthrough device.",
        columns=(
            _SNAP,
            _VC,
            C("vm_moref", _STR, "VM moref", False),
            C("device_key", _I32, "VirtualDevice.key", False),
            C("backing", _STR, "passthrough | vgpu | dynamic", False),
            C("host_pci_id", _STR, "host SBDF of the physical GPU (passthrough / dynamic; vGPU when known)"),
            C("vgpu_profile", _STR, "VmiopBackingInfo.vgpu, e.g. grid_a100-40c"),
            C("vgpu_fb_bytes", _I64, "framebuffer of the vGPU profile"),
            C("host_numa_node", _I16, "host NUMA node of the physical GPU"),
            C("device_numa_node", _I16, "vSphere 8 VirtualDevice.numaNode (virtual node) if set"),
            C("migrate_supported", _BOOL, "VmiopBackingInfo.migrateSupported"),
            C("vgpu_migrate_data_bytes", _I64, "VmiopBackingInfo.vgpuMigrateDataSizeMB × 2^20 (vSphere 8; drives stun time)"),
            C("pci_slot_number", _I32,
              "VirtualDevice.slotInfo.pciSlotNumber: the guest PCI slot (GPU ↔ device join, docs/analytics.md)"),
        ),
        partition_ts="snapshot_ts",
        sort_by=("vcenter_uuid", "vm_moref", "device_key"),
        kind="inventory",
    )
)

AGENT_GPU = _register(
    Table(
        name="agent_gpu",
        doc="What a guest agent reported about itself and its GPUs (identity; written when it changes).",
        columns=(
            C("ts", TS, "time the agent reported this", False),
            C("agent_url", _STR, "where the agent was scraped"),
            C("vm_bios_uuid", _STR, "SMBIOS system UUID (normalised, lower case)"),
            C("hostname", _STR, "guest hostname"),
            C("gpu_uuid", _STR, "GPU UUID", False),
            C("gpu_index", _I16, "NVML index"),
            C("pci_bus_id", _STR, "guest (virtual) PCI bus id"),
            C("model_name", _STR, "nvmlDeviceGetName"),
            C("serial", _STR, "board serial, where allowed"),
            C("driver_version", _STR, "driver version"),
            C("virtualization_mode", _STR, "none | passthrough | vgpu | host_vgpu | host_vsga"),
            C("vgpu_profile", _STR, "vGPU type name where visible"),
            C("mig_mode", _BOOL, "MIG enabled (true/false); null where the source does not report it"),
            C("activity_source", _STR, "where SM/tensor/DRAM activity comes from: gpm | dcgm | none (NULL: not reported)"),
            C("numa_node", _I16, "guest NUMA node of the GPU (sysfs), -1 unknown"),
            C("fb_total_bytes", _I64, "framebuffer size"),
            C("source", _STR, "which kind of endpoint reported this row: agent, dcgm or nvidia_gpu_exporter"),
        ),
        partition_ts="ts",
        sort_by=("vm_bios_uuid", "gpu_uuid", "ts"),
        kind="inventory",
    )
)

VM_OWNER = _register(
    Table(
        name="vm_owner",
        doc="Who owns a GPU VM (docs/owners.md): resolved per VM from vSphere tags, custom attributes, "
        "the folder / resource pool / cluster it inherits from, or the mapping file. Written when it "
        "changes (history: the row valid at time t is the latest with snapshot_ts <= t).",
        columns=(
            _SNAP,
            _VC,
            C("vm_moref", _STR, "VM moref", False),
            C("vm_name", _STR, "VM name at that time"),
            C("owner", _STR, "owner (person or handle); NULL = unowned"),
            C("team", _STR, "team; NULL = unknown"),
            C("cost_center", _STR, "cost center; NULL = unknown"),
            C("email", _STR, "where owner notices go; NULL = nobody to tell"),
            C("owner_source", _STR,
              "where the owner came from: tag | attribute | folder | resource_pool | cluster | mapping (NULL: unowned)"),
            C("folder_path", _STR, "inventory folder path of the VM, e.g. /dc1/vm/ml-team"),
            C("resource_pool", _STR, "resource pool path of the VM"),
        ),
        partition_ts="snapshot_ts",
        sort_by=("vcenter_uuid", "vm_moref", "snapshot_ts"),
        kind="inventory",
    )
)

GPU_ROLLUP_HOUR = _register(
    Table(
        name="gpu_rollup_hour",
        doc="Hourly per-GPU rollup of gpu_sample (docs/store.md 'Rollups'): the counters' increase() "
        "within [hour_start, hour_start+1h), so sums over hours equal the raw window's figures. One row "
        "per (gpu_uuid, source, hour_start); re-running an hour replaces it.",
        columns=(
            C("hour_start", TS, "start of the UTC hour", False),
            C("gpu_uuid", _STR, "GPU UUID", False),
            C("source", _STR, "gpu_sample.source", False),
            C("vm_bios_uuid", _STR, "last vm_bios_uuid seen in the hour"),
            C("busy_s", _F64, "busy seconds in the hour (Σ dt·v/100)"),
            C("idle_s", _F64, "idle seconds in the hour"),
            C("covered_s", _F64, "observed seconds in the hour (busy + idle; gaps excluded)"),
            C("samples", _I32, "gpu_sample rows in the hour"),
            C("fb_used_max_bytes", _I64, "max framebuffer in use"),
            C("fb_total_bytes", _I64, "framebuffer size"),
            C("energy_j", _F64, "energy in the hour, J (NULL: not reported)"),
            C("sm_active_s", _F64, "SM-active seconds (NULL: no activity source)"),
            C("tensor_active_s", _F64, "tensor-active seconds (NULL: no activity source)"),
            C("dram_active_s", _F64, "DRAM-active seconds (NULL: no activity source)"),
            C("activity_covered_s", _F64, "seconds covered by activity readings (NULL: none)"),
            # added by the rollups work (docs/store.md "Rollups"): what the report needs to give the raw
            # path's figures from rollups
            C("idle_full_s", _F64, "covered seconds of intervals with no kernel at all (Δbusy = 0 / held 0 %)"),
            C("idle_full_energy_j", _F64, "energy of those fully idle intervals, J (NULL: not reported)"),
            C("alloc_idle_s", _F64, "idle seconds of intervals while framebuffer ≥ 1 GiB was held"),
            C("gap_s", _F64, "held-interval seconds excluded as gaps (Δt > 2 × the day's median held step)"),
            C("gap_energy_j", _F64, "energy counter increase over the gap intervals, J (NULL: none)"),
            C("intervals", _I32, "intervals counted (gaps excluded)"),
            C("held_intervals", _I32, "of which held-gauge intervals (the rest: counters)"),
            C("interval_s", _F64, "Σ Δt of the counted intervals (mean step = interval_s / intervals)"),
            C("first_ts", TS, "first sample in the hour"),
            C("last_ts", TS, "last sample in the hour"),
        ),
        partition_ts="hour_start",
        sort_by=("gpu_uuid", "source", "hour_start"),
        kind="rollup",
    )
)

FINDINGS = _register(
    Table(
        name="findings",
        doc="Analytics results, one row per finding, one batch per analytics run.",
        columns=(
            C("generated_at", TS, "when the analytics run produced it", False),
            C("run_id", _STR, "analytics run id", False),
            C("kind", _STR, "underutilized | insufficient_data | mig_unreported | numa_misaligned | numa_unknown | vmotion_stun | consolidation_move | hollow | idle_cost (per team: subject = team, value = idle cost)", False),
            C("subject", _STR, "GPU UUID / VM moref / … the finding is about", False),
            C("vcenter_uuid", _STR, "vCenter, when relevant"),
            C("window_start", TS, "analysed window start"),
            C("window_end", TS, "analysed window end"),
            C("value", _F64, "the headline number (e.g. mean utilization percent)"),
            C("reason", _STR, "why, in words"),
            C("fix", _STR, "suggested fix, in words"),
            C("evidence_json", _STR, "the numbers behind it (JSON)"),
        ),
        partition_ts="generated_at",
        sort_by=("kind", "subject"),
        kind="finding",
    )
)

PLAN_ACTION = _register(
    Table(
        name="plan_action",
        doc="The consolidation plan of an analytics run, one row per step (analytics/actions.py: one vSphere "
        "action a person takes; accelmon executes nothing), written with the run's findings under the same "
        "run_id (analytics/persist.py). Savings = saves_watts of the power-off-host steps; GPUs freed in "
        "hosts that stay on are capacity, not watts (docs/analytics.md).",
        columns=(
            C("generated_at", TS, "when the analytics run produced it", False),
            C("run_id", _STR, "analytics run id (= findings.run_id)", False),
            C("step", _I32, "step number, 1-based, the order a person follows", False),
            C("action", _STR, "vmotion | set-host-graphics-policy | change-vgpu-profile | reassign-passthrough | "
              "set-numa-affinity | enter-maintenance | power-off-host", False),
            C("subject", _STR, "what the step acts on: VM id <vcenter_uuid>/<vm_moref>, or host name", False),
            C("subject_name", _STR, "VM or host name as in the inventory"),
            C("vcenter_uuid", _STR, "vCenter of the subject (NULL: not known for a host step)"),
            C("vm_moref", _STR, "VM moref of a VM step (NULL for a host step)"),
            C("from_host", _STR, "host the VM is on before the plan (VM steps of a move)"),
            C("to_host", _STR, "host the step moves the VM to (vmotion) or the host a host step acts on"),
            C("from_gpu", _STR, "planner GPU id the VM's device leaves"),
            C("to_gpu", _STR, "planner GPU id the device is expected on (placed by ESXi's policy, not chosen)"),
            C("from_profile", _STR, "vGPU profile before (change-vgpu-profile; 'passthrough' for a conversion)"),
            C("to_profile", _STR, "vGPU profile after (change-vgpu-profile)"),
            C("numa_node", _I32, "NUMA node the VM is pinned to (set-numa-affinity)"),
            C("words", _STR, "the step in words"),
            C("preconditions_json", _STR, "what must hold before the step (JSON list of strings)"),
            C("api", _STR, "the vSphere API call"),
            C("powercli", _STR, "the one PowerCLI line of the step"),
            C("saves_watts", _F64, "power-off-host: the emptied host's power (NULL: unknown, or another action)"),
            C("power_source", _STR, "power-off-host: how saves_watts is known"),
            C("frees_gpus", _I32, "power-off-host: GPUs the plan frees in that host (NULL for other actions)"),
            C("evidence_json", _STR, "the measured numbers behind the step (JSON)"),
            C("risk_json", _STR, "its risk: power-off needed, stun history (JSON)"),
            C("window_start", TS, "analysed window start"),
            C("window_end", TS, "analysed window end"),
        ),
        partition_ts="generated_at",
        sort_by=("run_id", "step"),
        kind="finding",
    )
)


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(sorted(TABLES))}") from None


def render_markdown() -> str:
    """docs/schema.md, generated."""
    out = [
        "# accelmon store schema",
        "",
        "Generated from `accelmon/store/schema.py` by `accelmon schema > docs/schema.md`;",
        "a test fails when this file is out of date. See `docs/store.md` for the storage design.",
        "",
        (__doc__ or "").split("Conventions\n-----------\n", 1)[-1].strip(),
        "",
        "## Tables",
        "",
    ]
    for t in TABLES.values():
        out += [
            f"### `{t.name}` ({t.kind})",
            "",
            t.doc,
            "",
            f"Partitioned by day of `{t.partition_ts}`; compacted files sorted by {', '.join(t.sort_by)}.",
            "",
            "| column | type | description |",
            "|---|---|---|",
        ]
        for c in t.columns:
            null = "" if c.nullable else " not null"
            out.append(f"| `{c.name}` | {c.type}{null} | {c.doc} |")
        out.append("")
    out += ["## Views", "", "Defined in `accelmon/store/views.py`.", ""]
    for name, (doc, _sql) in VIEWS.items():
        out += [f"- `{name}`: {doc}"]
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render_markdown(), end="")
