"""The four accelmon dashboards, as grafanalib objects."""

from __future__ import annotations

from typing import Any

import attr
from grafanalib.core import (
    BarGauge,
    Dashboard,
    GridPos,
    Heatmap,
    RowPanel,
    Stat,
    Table,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
    YAxis,
)

from dashboards.queries import (
    CLUSTER_SEL,
    HOST_SEL,
    OWNER_SEL,
    PLACEMENT,
    VM_SEL,
    busy_share,
    m,
    sm_active_share,
    state_allocated_idle,
    state_busy,
    state_down,
    state_idle,
    zero_if_none,
)

DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["accelmon", "gpu", "vsphere"]
UIDS = {
    "fleet": "accelmon-fleet",
    "gpu": "accelmon-gpu",
    "vm_host": "accelmon-vm-host",
    "health": "accelmon-health",
}


# ----------------------------------------------------------------------------- helpers
def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False, ref: str = "A") -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, instant=instant, datasource=DS,
                  format="table" if table else "time_series")


def targets(*pairs: tuple[str, str]) -> list[Target]:
    return [target(e, legend, ref=chr(ord("A") + i)) for i, (e, legend) in enumerate(pairs)]


def templating() -> Templating:
    def var(name: str, label: str, query: str) -> Template:
        # No custom allValue: "All" expands to the current values, so $cluster/$host narrow $vm.
        return Template(name=name, label=label, query=query, dataSource=DS, includeAll=True, multi=True,
                        default="$__all", refresh=2, sort=1)

    def owner_var(name: str, label: str) -> Template:
        # allValue ".*": "All" must keep the VMs nobody owns (owner="" / team="", docs/owners.md),
        # which a list of the current values would drop from $vm
        return Template(name=name, label=label, query=f'label_values({PLACEMENT}{{vcenter=~"$vcenter"}}, {name})',
                        dataSource=DS, includeAll=True, multi=True, default="$__all", refresh=2, sort=1,
                        allValue=".*")

    return Templating(list=[
        Template(name="datasource", label="Data source", query="prometheus", type="datasource", default="Prometheus"),
        var("vcenter", "vCenter", f"label_values({PLACEMENT}, vcenter)"),
        var("cluster", "Cluster", f'label_values({PLACEMENT}{{vcenter=~"$vcenter"}}, cluster)'),
        var("host", "Host", f'label_values({PLACEMENT}{{{CLUSTER_SEL}}}, host)'),
        owner_var("team", "Team"),
        owner_var("owner", "Owner"),
        var("vm", "VM", f'label_values({PLACEMENT}{{{CLUSTER_SEL}, host=~"$host", {OWNER_SEL}}}, vm_name)'),
        var("gpu", "GPU", f'label_values(accelmon_gpu_last_sample_timestamp_seconds{{{VM_SEL}}}, gpu_uuid)'),
    ])


class Layout:
    """Packs panels left to right into 24-column rows."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.panels: list[Any] = []

    def add(self, panel: Any, w: int, h: int) -> None:
        if self.x + w > 24:
            self.newline()
        self.panels.append(attr.evolve(panel, gridPos=GridPos(h=h, w=w, x=self.x, y=self.y)))
        self.x += w
        self.row_h = max(self.row_h, h)

    def newline(self) -> None:
        self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        self.newline()
        self.panels.append(RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=self.y)))
        self.y += 1


def dashboard(uid: str, title: str, description: str, layout: Layout, *, time_from: str = "now-6h") -> Dashboard:
    return Dashboard(
        title=title, uid=uid, description=description, tags=TAGS, panels=layout.panels, templating=templating(),
        time=Time(time_from, "now"), refresh="1m", timezone="browser", editable=True,
        links=[], graphTooltip=1,
    ).auto_panel_ids()


def stat(title: str, expr: str, unit: str = "none", desc: str = "", *, time_from: str | None = None,
         decimals: int | None = None) -> Stat:
    return Stat(title=title, description=desc, dataSource=DS, targets=[target(expr, instant=True)], format=unit,
                reduceCalc="lastNotNull", graphMode="none", decimals=decimals, timeFrom=time_from,
                thresholds=[{"color": "green", "value": None}], noValue="0" if "vector(0)" in expr else "no data")


def multi_stat(title: str, pairs: list[tuple[str, str]], unit: str = "none", desc: str = "") -> Stat:
    """One stat panel showing several instant values side by side, each with its name."""
    tgts = [target(e, legend, instant=True, ref=chr(ord("A") + i)) for i, (e, legend) in enumerate(pairs)]
    return Stat(title=title, description=desc, dataSource=DS, targets=tgts, format=unit, reduceCalc="lastNotNull",
                graphMode="none", textMode="value_and_name", orientation="vertical",
                thresholds=[{"color": "green", "value": None}], noValue="no data")


def series(title: str, tgts: list[Target], unit: str = "none", desc: str = "", *, stack: bool = False,
           fill: int = 10) -> TimeSeries:
    return TimeSeries(title=title, description=desc, dataSource=DS, targets=tgts, unit=unit, fillOpacity=fill,
                      stacking={"mode": "normal", "group": "A"} if stack else {}, legendDisplayMode="list",
                      tooltipMode="multi")


def table(title: str, expr: str, desc: str = "", *, hide: list[str] | None = None,
          rename: dict[str, str] | None = None, unit: str = "") -> Table:
    excl = {k: True for k in ["Time", "__name__", "job", "instance", *(hide or [])]}
    return Table(
        title=title, description=desc, dataSource=DS, targets=[target(expr, instant=True, table=True)], unit=unit,
        transformations=[{"id": "organize", "options": {"excludeByName": excl, "renameByName": rename or {}}}],
        filterable=True,
    )


# ----------------------------------------------------------------------------- dashboards
def fleet() -> Dashboard:
    L = Layout()
    L.add(stat("GPUs busy", zero_if_none(state_busy()), desc="GPUs the driver saw busy in the last 5 minutes."), 4, 4)
    L.add(stat("GPUs idle", zero_if_none(state_idle()),
               desc="GPUs idle for the last 5 minutes with no framebuffer held."), 4, 4)
    L.add(stat("Allocated but idle", zero_if_none(state_allocated_idle()),
               desc="Idle for the last 5 minutes while holding > 256 MiB of framebuffer."), 4, 4)
    L.add(stat("GPUs down", zero_if_none(state_down()),
               desc="GPUs seen in the last hour whose samples stopped (agent or GPU down)."), 4, 4)
    L.add(stat("Underutilized (analytics)", f"sum({m('accelmon_gpu_underutilized')})",
               desc="GPUs the latest analytics run found under the threshold over its window (default 15 %, 7 d)."),
          4, 4)
    L.add(stat("Plan: power saved", "sum(accelmon_consolidation_saved_power_watts)", "watt",
               desc="Measured idle power of the GPUs the latest consolidation plan frees (all daemons; the plan "
               "covers the whole estate, so the vCenter/cluster filters do not apply). Freed GPUs without a "
               "measured idle power are not in it. The report lists the moves."), 4, 4)
    L.add(stat("Idle GPU-hours today", f"sum(increase({m('accelmon_gpu_idle_seconds_total')}[$__range])) / 3600",
               "h", desc="Hours the driver saw the GPUs idle since midnight.", time_from="now/d", decimals=1), 5, 4)
    L.add(stat("Idle energy today",
               f"sum(increase({m('accelmon_gpu_energy_joules_total')}[$__range]) * "
               f"(increase({m('accelmon_gpu_idle_seconds_total')}[$__range]) / "
               f"(increase({m('accelmon_gpu_idle_seconds_total')}[$__range]) + "
               f"increase({m('accelmon_gpu_busy_seconds_total')}[$__range])))) / 3600000", "kwatth",
               desc="Energy since midnight times each GPU's idle share (an estimate; the report computes it per "
               "sample). vGPU guests report no energy: see VM power in the VM & host dashboard.",
               time_from="now/d", decimals=2), 5, 4)
    L.add(stat("GPUs reporting", f"count({m('accelmon_gpu_last_sample_timestamp_seconds')})"), 4, 4)
    L.add(stat("VMs with GPUs", f"count({PLACEMENT}{{{VM_SEL}}})"), 4, 4)
    L.add(multi_stat("Plan: moves and what they free", [
        ("sum(accelmon_consolidation_moves)", "VM moves"),
        ("sum(accelmon_consolidation_freed_gpus)", "GPUs freed"),
        ("sum(accelmon_consolidation_freed_hosts)", "hosts freed"),
    ], desc="The latest consolidation plan (analytics run; all daemons): VM moves, and the GPUs and hosts "
        "they empty. The report lists each move with its vGPU profile and NUMA affinity."), 6, 4)
    L.add(BarGauge(title="Idle cost by team", description="Idle cost of each team's GPUs over the latest analytics "
                   "run's window: idle GPU-hours × price per GPU-hour ([cost] in accelmon.toml; a vGPU at its "
                   "framebuffer fraction), docs/cost.md. Owner/team from vSphere; 'unowned' where none is known. "
                   "Estate-wide (one analysis), so the filters do not apply; unpriced GPUs are not in it.",
                   dataSource=DS, targets=[target("sort_desc(sum by (team, currency) (accelmon_idle_cost))",
                                                  "{{team}} ({{currency}})", instant=True)],
                   format="none", orientation="horizontal", displayMode="gradient", max=None, min=0,
                   calc="lastNotNull", decimals=2), 24, 6)
    L.row("Utilization")
    L.add(series("Fleet busy share", targets(
        (f"avg({busy_share('$__rate_interval')})", "fleet"),
        (f"avg by (cluster) ({busy_share('$__rate_interval')} * on(vm_uuid) group_left(cluster) "
         f"max by (vm_uuid, cluster) ({PLACEMENT}))", "{{cluster}}"),
    ), "percentunit", "Mean utilization of the GPUs: share of time one or more kernels ran (NVML/DCGM/nvidia-smi definition)."), 12, 8)
    L.add(series("GPUs by state", targets(
        (state_busy(), "busy"), (state_idle(), "idle"), (state_allocated_idle(), "allocated but idle"),
        (state_down(), "down"),
    ), desc="Busy / idle / allocated-but-idle / down, over 5-minute windows.", stack=True, fill=60), 12, 8)
    L.add(table("Hollow GPUs (analytics)",
                f"{sm_active_share('1h')} and on(gpu_uuid) ({m('accelmon_gpu_hollow')} == 1)",
                "GPUs the latest analytics run found hollow: busy on time (≥ the underutilized threshold) but "
                "SMs mostly idle (effective utilization < thresholds.hollow_percent). Value: SM-active share over "
                "the last hour. Consider a MIG slice or a smaller vGPU profile (the report's right-sizing).",
                rename={"Value": "SM-active share (1h)"}, unit="percentunit"), 24, 6)
    L.add(table("Least busy GPUs (last hour)",
                f"bottomk(15, {busy_share('1h')} * on(vm_uuid) group_left(host, cluster) "
                f"max by (vm_uuid, host, cluster) ({PLACEMENT}))",
                "The 15 GPUs with the lowest busy share over the last hour, with their VM and host.",
                hide=["vm_uuid"], rename={"Value": "busy share"}, unit="percentunit"), 24, 8)
    L.add(table("Idle GPU-hours by team",
                f"sum by (team) (increase({m('accelmon_gpu_idle_seconds_total')}[$__range]) * on(vm_uuid) "
                f"group_left(team) max by (vm_uuid, team) ({PLACEMENT}{{{OWNER_SEL}}})) / 3600",
                "Hours the driver saw each team's GPUs idle over the dashboard's time range (team from vSphere "
                "tags, custom attributes or the mapping file: docs/owners.md; empty = nobody known).",
                rename={"Value": "idle GPU-hours", "team": "team"}), 12, 8)
    return dashboard(UIDS["fleet"], "accelmon / Fleet overview",
                     "GPU states, fleet utilization, idle hours and energy, underutilized GPUs.", L)


def gpu_detail() -> Dashboard:
    L = Layout()
    L.add(table("GPU, VM, host and NUMA node",
                f"max by (gpu_uuid, vm_uuid, host, cluster, host_pci_id, host_numa_node) "
                f"(accelmon_gpu_placement_info{{gpu_uuid=~\"$gpu\"}}) "
                f"* on(gpu_uuid) group_left(model, backing, vgpu_profile) "
                f"max by (gpu_uuid, model, backing, vgpu_profile) (accelmon_gpu_info{{gpu_uuid=~\"$gpu\"}}) "
                f"* on(vm_uuid) group_left(vm_name) max by (vm_uuid, vm_name) ({PLACEMENT}{{{VM_SEL}}})",
                "Where each GPU sits now (changes on vMotion): VM, host, host PCI id and NUMA node, backing.",
                hide=["Value"]), 24, 6)
    L.add(series("Busy vs idle seconds per second", targets(
        (f"rate({m('accelmon_gpu_busy_seconds_total')}[$__rate_interval])", "{{vm_name}} {{gpu_uuid}} busy"),
        (f"rate({m('accelmon_gpu_idle_seconds_total')}[$__rate_interval])", "{{vm_name}} {{gpu_uuid}} idle"),
    ), "none", "From the driver's own utilization samples (1/6 s); busy + idle = 1 when fully covered."), 12, 8)
    L.add(series("Utilization", targets(
        (m("accelmon_gpu_utilization_ratio"), "{{vm_name}} {{gpu_uuid}} GPU"),
        (m("accelmon_gpu_memory_utilization_ratio"), "{{vm_name}} {{gpu_uuid}} memory"),
    ), "percentunit"), 12, 8)
    L.add(series("Time utilization vs SM active", targets(
        (busy_share("$__rate_interval"), "{{vm_name}} {{gpu_uuid}} time (a kernel ran)"),
        (sm_active_share("$__rate_interval"), "{{vm_name}} {{gpu_uuid}} SM active (effective)"),
    ), "percentunit", "Time utilization is the share of time any kernel ran (NVML/DCGM GPU_UTIL); SM active is "
        "the share of SMs busy (NVML GPM SM_UTIL / DCGM_FI_PROF_SM_ACTIVE). High time with low SM activity: a "
        "hollow GPU. GPUs or vGPU guests that cannot report SM activity show only the time line."), 12, 8)
    L.add(series("Framebuffer", targets(
        (m("accelmon_gpu_fb_used_bytes"), "{{vm_name}} {{gpu_uuid}} used"),
        (m("accelmon_gpu_fb_total_bytes"), "{{vm_name}} {{gpu_uuid}} total"),
    ), "bytes", fill=0), 12, 8)
    L.add(series("PCIe throughput", targets(
        (f"rate({m('accelmon_gpu_pcie_tx_bytes_total')}[$__rate_interval])", "{{vm_name}} {{gpu_uuid}} tx"),
        (f"rate({m('accelmon_gpu_pcie_rx_bytes_total')}[$__rate_interval])", "{{vm_name}} {{gpu_uuid}} rx"),
    ), "Bps", "From NVML PCIe byte counters (not available inside vGPU guests)."), 12, 8)
    L.add(series("NVLink throughput per link", targets(
        (f"rate({m('accelmon_gpu_nvlink_tx_bytes_total')}[$__rate_interval])", "{{gpu_uuid}} link {{link}} tx"),
        (f"rate({m('accelmon_gpu_nvlink_rx_bytes_total')}[$__rate_interval])", "{{gpu_uuid}} link {{link}} rx"),
    ), "Bps", "Per-link data counters; only GPUs with NVLink."), 12, 8)
    L.add(series("Power", targets((m("accelmon_gpu_power_watts"), "{{vm_name}} {{gpu_uuid}}")), "watt",
                 "Board power (passthrough only; a vGPU guest cannot read it)."), 12, 8)
    L.add(series("Energy per hour", targets(
        (f"increase({m('accelmon_gpu_energy_joules_total')}[1h]) / 3600000", "{{vm_name}} {{gpu_uuid}}"),
    ), "kwatth", "Energy counter increase over the trailing hour (driver reloads are handled as resets)."), 12, 8)
    L.add(stat("Energy in range", f"sum(increase({m('accelmon_gpu_energy_joules_total')}[$__range])) / 3600000",
               "kwatth", decimals=2), 6, 4)
    L.add(stat("Busy share in range",
               f"sum(increase({m('accelmon_gpu_busy_seconds_total')}[$__range])) / "
               f"(sum(increase({m('accelmon_gpu_busy_seconds_total')}[$__range])) + "
               f"sum(increase({m('accelmon_gpu_idle_seconds_total')}[$__range])))", "percentunit"), 6, 4)
    L.add(stat("Underutilized (analytics)", f"max({m('accelmon_gpu_underutilized')})",
               desc="1 when the latest analytics run flagged any selected GPU."), 6, 4)
    L.add(stat("Seconds since last sample",
               f"max(time() - {m('accelmon_gpu_last_sample_timestamp_seconds')})", "s"), 6, 4)
    return dashboard(UIDS["gpu"], "accelmon / GPU detail",
                     "Busy/idle counters, framebuffer, PCIe and NVLink, power and energy of selected GPUs.", L)


def vm_host() -> Dashboard:
    L = Layout()
    L.add(series("VM power", targets((m("accelmon_vm_power_watts", VM_SEL), "{{vm_name}}")), "watt",
                 "vCenter per-VM power (vSphere 8 U1 power.power.average, 20 s)."), 12, 8)
    L.add(series("Host power", targets((m("accelmon_host_power_watts", HOST_SEL), "{{host}}")), "watt",
                 "vCenter host power (power.power.average)."), 12, 8)
    L.add(BarGauge(title="VM energy in range", description="Sum of vCenter power.energy.summation intervals.",
                   dataSource=DS, targets=[target(
                       f"sort_desc(sum by (vm_name) (increase({m('accelmon_vm_energy_joules_total', VM_SEL)}"
                       f"[$__range]))) / 3600000", "{{vm_name}}", instant=True)],
                   format="kwatth", orientation="horizontal", displayMode="gradient", max=None, min=0,
                   calc="lastNotNull"), 12, 8)
    L.add(table("NUMA-misaligned VMs",
                f"max by (vcenter, vm_name, vm_uuid, reason) ({m('accelmon_vm_numa_misaligned', VM_SEL)} == 1) "
                f"* on(vm_uuid) group_left(host, cluster) max by (vm_uuid, host, cluster) ({PLACEMENT})",
                "VMs whose vCPUs/memory sit on another NUMA node than their GPU, with the reason (the report "
                "gives the fix).", hide=["Value", "vm_uuid"]), 12, 8)
    L.row("vMotion")
    L.add(Heatmap(title="vMotion stun time", description="Stun time (vmware.log Checkpoint_Unstun) of the "
                  "migrations seen per interval, selected clusters.", dataSource=DS, dataFormat="tsbuckets",
                  targets=[Target(expr=f"sum by (le) (increase(accelmon_vmotion_stun_seconds_bucket{{{CLUSTER_SEL}}}"
                                  "[$__rate_interval]))", legendFormat="{{le}}", refId="A", format="heatmap",
                                  datasource=DS)],
                  yAxis=YAxis(format="s")),
          12, 8)
    L.add(BarGauge(title="Stun time histogram per cluster (since the daemon started)", dataSource=DS,
                   targets=[Target(expr=f"sum by (le) (accelmon_vmotion_stun_seconds_bucket{{{CLUSTER_SEL}}})",
                                   legendFormat="{{le}}", refId="A", format="heatmap", instant=True,
                                   datasource=DS)],
                   format="none", orientation="vertical", displayMode="basic", max=None, min=0,
                   calc="lastNotNull"), 12, 8)
    L.add(table("Stun p50 / p95 per cluster",
                f"histogram_quantile(0.95, sum by (cluster, le) (accelmon_vmotion_stun_seconds_bucket"
                f"{{{CLUSTER_SEL}}}))", "95th percentile of stun time since the daemon started.",
                rename={"Value": "p95 stun (s)"}), 12, 6)
    L.add(table("Last stun per VM, vGPU vs passthrough",
                f"max by (vm_name, vm_uuid, backing) ({m('accelmon_vm_last_stun_seconds', VM_SEL)} "
                f"* on(vm_uuid) group_left(backing) max by (vm_uuid, backing) (accelmon_gpu_info))",
                "vGPU VMs stun longer: their framebuffer is copied during the switchover.",
                hide=["vm_uuid"], rename={"Value": "last stun (s)"}), 12, 6)
    L.row("GPU backing")
    L.add(BarGauge(title="GPUs by backing", description="passthrough, vGPU (time-sliced or MIG-backed), "
                   "dynamic DirectPath.", dataSource=DS,
                   targets=[target(f"count by (backing) (accelmon_gpu_info and on(gpu_uuid) "
                                   f"{m('accelmon_gpu_last_sample_timestamp_seconds')})", "{{backing}}",
                                   instant=True)],
                   format="none", orientation="horizontal", displayMode="basic", max=None, min=0,
                   calc="lastNotNull"), 12, 6)
    L.add(table("vMotions per VM (since the daemon started)",
                f"sum by (vm_name) ({m('accelmon_vm_migrations_total', VM_SEL)})",
                rename={"Value": "migrations"}), 12, 6)
    return dashboard(UIDS["vm_host"], "accelmon / VM & host",
                     "Per-VM and host power and energy, NUMA placement, vMotion stun, vGPU vs passthrough.", L)


def health() -> Dashboard:
    L = Layout()
    agents_up = 'count(accelmon_source_success{source="agent"} == 1)'
    agents_down = 'count(accelmon_source_success{source="agent"} == 0)'
    L.add(stat("Daemon up", 'min(up{job="accelmon"})'), 4, 4)
    L.add(stat("Agents up", zero_if_none(agents_up)), 4, 4)
    L.add(stat("Agents down", zero_if_none(agents_down)), 4, 4)
    L.add(stat("Agents not joined to a VM", zero_if_none("count(accelmon_agent_joined == 0)"),
               desc="Agents whose SMBIOS UUID matched no vCenter VM (stored and shown, not placed)."), 4, 4)
    L.add(stat("Store writable", "min(accelmon_store_writable)"), 4, 4)
    L.add(stat("Rows buffered", "sum(accelmon_store_rows_buffered)"), 4, 4)
    L.add(table("Sources: seconds since last success",
                "time() - accelmon_source_last_success_timestamp_seconds",
                rename={"Value": "seconds since success"}), 12, 8)
    L.add(series("Agents up / down", targets((agents_up, "up"), (agents_down, "down")), fill=40, stack=True),
          12, 8)
    L.add(series("Poll duration", targets(("accelmon_source_duration_seconds", "{{source}} {{target}}")), "s"),
          12, 8)
    L.add(series("Poll errors", targets(
        ("sum by (source) (rate(accelmon_source_errors_total[$__rate_interval]))", "{{source}} polls"),
        ("sum by (source) (rate(accelmon_source_object_errors_total[$__rate_interval]))", "{{source}} objects"),
    ), "ops"), 12, 8)
    L.add(series("Samples produced per second", targets(
        ("sum by (source, table) (rate(accelmon_source_samples_written_total[$__rate_interval]))",
         "{{source}} → {{table}}"),
    ), "ops"), 12, 8)
    L.add(series("Rows written to the store per second", targets(
        ("sum by (table) (rate(accelmon_store_rows_written_total[$__rate_interval]))", "{{table}}"),
    ), "ops"), 12, 8)
    L.add(series("Store write errors and drops", targets(
        ("sum by (reason) (increase(accelmon_store_write_errors_total[$__rate_interval]))", "{{reason}}"),
        ("increase(accelmon_store_rows_dropped_total[$__rate_interval])", "rows dropped"),
    )), 12, 8)
    L.add(table("Housekeeping jobs", "accelmon_job_success", "1 = the job's latest run succeeded.",
                rename={"Value": "ok"}), 12, 8)
    return dashboard(UIDS["health"], "accelmon / Health",
                     "accelmon itself: sources, agents, store writes, housekeeping jobs.", L)


ALL = {"fleet": fleet, "gpu": gpu_detail, "vm_host": vm_host, "health": health}

# Metrics the dashboards use that accelmon does not export (Prometheus' own).
EXTERNAL_METRICS = {"up"}
