"""Custom prometheus_client collectors: families built fresh at every scrape from the state.

Label policy (docs/metrics.md): GPU series carry the GPU and VM identity
(``gpu_uuid, vm_name, vm_uuid, vcenter``); VM series ``vcenter, vm_uuid, vm_name``. Host and
cluster are never labels of sample series - they live in ``accelmon_vm_placement_info`` and
``accelmon_gpu_placement_info``, so a vMotion never ends a series. No per-process labels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from accelmon import __version__
from accelmon.collector.discovery import GpuJoin, VmRecord
from accelmon.exporter.family import FastFamily, label_string
from accelmon.exporter.view import PlanSummary, Snapshot, StateView

GPU_LABELS = ("gpu_uuid", "vm_name", "vm_uuid", "vcenter")
VM_LABELS = ("vcenter", "vm_uuid", "vm_name")
SRC_LABELS = ("source", "target")


def _gpu_label_values(uuid: str, j: GpuJoin | None) -> tuple[str, str, str, str]:
    vm = j.vm if j else None
    if vm is None:
        return (uuid, "", "", "")
    return (uuid, vm.vm_name, vm.vm_instance_uuid, vm.vcenter_name)


def _vm_label_values(vm: VmRecord) -> tuple[str, str, str]:
    return (vm.vcenter_name, vm.vm_instance_uuid, vm.vm_name)


OWNER_LABEL_MAX = 64  # owner/team label values are cut to this many characters (bounded label size)


def _owner_labels(owner_row: dict[str, Any] | None) -> list[str]:
    """``owner``, ``team`` label values of a VM: the stored value as is (cut to OWNER_LABEL_MAX),
    "" when unknown (docs/owners.md)."""
    r = owner_row or {}
    return [str(r.get("owner") or "")[:OWNER_LABEL_MAX], str(r.get("team") or "")[:OWNER_LABEL_MAX]]


def _num(v: Any) -> bool:
    return v is not None


def C(name: str, doc: str, labels: Sequence[str] | None = None, value: float | None = None) -> Any:  # noqa: N802
    """A counter family: labelled ones are FastFamily, a single value is prometheus_client's."""
    if value is not None:
        return CounterMetricFamily(name, doc, value=value)
    return FastFamily(name, doc, "counter", labels or [])


def G(name: str, doc: str, labels: Sequence[str] | None = None, value: float | None = None) -> Any:  # noqa: N802
    if value is not None:
        return GaugeMetricFamily(name, doc, value=value)
    return FastFamily(name, doc, "gauge", labels or [])


def _reason_code(f: dict[str, Any]) -> str:
    """A short, bounded reason label: the analytics' rule code (``evidence_json.rule``, e.g.
    ``affinity_excludes_gpu_node``; or ``reason_code``), else the first words of the reason."""
    ev = f.get("evidence_json")
    if ev:
        try:
            d = json.loads(ev)
            code = d.get("rule") or d.get("reason_code")
        except (ValueError, AttributeError):
            code = None
        if code:
            return str(code)[:64]
    reason = (f.get("reason") or "misaligned").strip().lower()
    word = "".join(c if c.isalnum() else "_" for c in reason.split(":")[0])[:64].strip("_")
    return word or "misaligned"


class GpuCollector(Collector):
    def __init__(self, state: StateView, snap: Callable[[], Snapshot]) -> None:
        self.state = state
        self._snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self._snap()
        fam = {
            "busy": C("accelmon_gpu_busy_seconds", "Busy time: Σ dt·utilization/100 over the driver's sample periods (NVML utilization.gpu).",
                      labels=GPU_LABELS),
            "idle": C("accelmon_gpu_idle_seconds", "Idle time: Σ dt − busy over the driver's sample periods.",
                      labels=GPU_LABELS),
            "util": G("accelmon_gpu_utilization_ratio", "GPU utilization over the driver's last sample period (0-1).",
                      labels=GPU_LABELS),
            "mutil": G("accelmon_gpu_memory_utilization_ratio", "Memory-controller utilization (0-1).",
                       labels=GPU_LABELS),
            "fbu": G("accelmon_gpu_fb_used_bytes", "Framebuffer in use.", labels=GPU_LABELS),
            "fbt": G("accelmon_gpu_fb_total_bytes", "Framebuffer size.", labels=GPU_LABELS),
            "tx": C("accelmon_gpu_pcie_tx_bytes", "PCIe bytes transmitted.", labels=GPU_LABELS),
            "rx": C("accelmon_gpu_pcie_rx_bytes", "PCIe bytes received.", labels=GPU_LABELS),
            "pw": G("accelmon_gpu_power_watts", "Board power draw.", labels=GPU_LABELS),
            "en": C("accelmon_gpu_energy_joules", "Energy since the driver loaded (resets on driver reload).",
                    labels=GPU_LABELS),
            "ts": G("accelmon_gpu_last_sample_timestamp_seconds", "When the GPU's latest sample was measured.",
                    labels=GPU_LABELS),
            "under": G("accelmon_gpu_underutilized",
                       "1 when the latest analytics run found the GPU underutilized, else 0.", labels=GPU_LABELS),
            # effective utilization (docs/analytics.md): only GPUs whose source reports activity, never zeros
            "sm": C("accelmon_gpu_sm_active_seconds", "SM-active time: Σ dt·SM-active fraction (NVML GPM SM_UTIL).",
                    labels=GPU_LABELS),
            "tensor": C("accelmon_gpu_tensor_active_seconds", "Tensor-pipe active time: Σ dt·fraction (GPM).",
                        labels=GPU_LABELS),
            "dram": C("accelmon_gpu_dram_active_seconds", "DRAM-active time: Σ dt·fraction (GPM).", labels=GPU_LABELS),
            "smr": G("accelmon_gpu_sm_active_ratio", "SM activity over the last period, 0-1 (GPM SM_UTIL / "
                     "DCGM_FI_PROF_SM_ACTIVE).", labels=GPU_LABELS),
            "occ": G("accelmon_gpu_sm_occupancy_ratio", "SM occupancy over the last period, 0-1.", labels=GPU_LABELS),
            "hollow": G("accelmon_gpu_hollow", "1 when the latest analytics run found the GPU hollow (busy on time, "
                        "SMs mostly idle), else 0.", labels=GPU_LABELS),
        }
        info = G("accelmon_gpu_info",
                 "Identity of a GPU: source, model, VM device backing and vGPU profile, and the evidence that matched "
                 "it to the VM device (accelmon.identity).",
                 labels=["gpu_uuid", "vm_uuid", "source", "model", "backing", "vgpu_profile", "agent", "match_evidence"])
        place = G("accelmon_gpu_placement_info",
                  "Where a GPU's VM device sits now: host, cluster, host PCI id, host NUMA node (changes on vMotion).",
                  labels=["gpu_uuid", "vm_uuid", "host", "cluster", "host_pci_id", "host_numa_node"])
        nvtx = C("accelmon_gpu_nvlink_tx_bytes", "NVLink data bytes transmitted, per link.", labels=[*GPU_LABELS, "link"])
        nvrx = C("accelmon_gpu_nvlink_rx_bytes", "NVLink data bytes received, per link.", labels=[*GPU_LABELS, "link"])

        under = {f["subject"] for f in s.findings if f.get("kind") == "underutilized"}
        hollow = {f["subject"] for f in s.findings if f.get("kind") == "hollow"}
        models: dict[str, str] = {}
        for a in s.agents.values():
            for g in a.gpus:
                models[g["gpu_uuid"]] = g.get("model_name") or ""
        labels_of: dict[str, tuple[tuple[str, ...], str]] = {}
        per_gpu = (
            ("busy", "busy_ms_total", 0.001), ("idle", "idle_ms_total", 0.001), ("util", "util_percent", 0.01),
            ("mutil", "mem_util_percent", 0.01), ("fbu", "fb_used_bytes", 1), ("fbt", "fb_total_bytes", 1),
            ("tx", "pcie_tx_bytes_total", 1), ("rx", "pcie_rx_bytes_total", 1),
            ("pw", "power_milliwatts", 0.001), ("en", "energy_millijoules_total", 0.001),
            ("sm", "sm_active_ms_total", 0.001), ("tensor", "tensor_active_ms_total", 0.001),
            ("dram", "dram_active_ms_total", 0.001), ("smr", "sm_active_percent", 0.01),
            ("occ", "sm_occupancy_percent", 0.01),
        )
        adds = [(fam[k].add, col, scale) for k, col, scale in per_gpu]
        add_ts, add_under, add_hollow = fam["ts"].add, fam["under"].add, fam["hollow"].add
        for uuid in sorted(s.gpus):
            r = s.gpus[uuid]
            j = s.joins.get(uuid)
            lv = _gpu_label_values(uuid, j)
            lstr = label_string(GPU_LABELS, lv)
            labels_of[uuid] = (lv, lstr)
            for add, col, scale in adds:
                v = r.get(col)
                if v is not None:
                    add(lv, v * scale if scale != 1 else v, lstr)
            add_ts(lv, r["ts"], lstr)
            add_under(lv, 1.0 if uuid in under else 0.0, lstr)
            add_hollow(lv, 1.0 if uuid in hollow else 0.0, lstr)
            dev = j.device if j else None
            vm = j.vm if j else None
            info.add(
                (uuid, lv[2], r.get("source") or "", models.get(uuid, ""),
                 (dev or {}).get("backing") or "", (dev or {}).get("vgpu_profile") or "",
                 (j.agent_url if j else None) or "", j.evidence if j and j.vm is not None else ""),
                1.0,
            )
            if vm is not None and dev is not None:
                numa = dev.get("host_numa_node")
                place.add(
                    (uuid, vm.vm_instance_uuid, vm.host_name, vm.cluster_name, dev.get("host_pci_id") or "",
                     "" if numa is None else str(numa)),
                    1.0,
                )
        for (uuid, link), (tx, rx) in sorted(s.nvlink.items()):
            got = labels_of.get(uuid)
            if got is None:
                continue
            lv = (*got[0], str(link))
            lstr = label_string(nvtx.labelnames, lv)  # label names sorted, as every label string
            if tx is not None:
                nvtx.add(lv, tx, lstr)
            if rx is not None:
                nvrx.add(lv, rx, lstr)
        yield from fam.values()
        yield from (info, place, nvtx, nvrx)


class VmCollector(Collector):
    def __init__(self, snap: Callable[[], Snapshot]) -> None:
        self._snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self._snap()
        place = G("accelmon_vm_placement_info",
                  "Current host, cluster, owner and team of a GPU VM (an info metric: vMotion or a new owner "
                  "changes this, not the VM's series; owner/team \"\" when unknown).",
                  labels=[*VM_LABELS, "host", "cluster", "owner", "team"])
        devs = G("accelmon_vm_gpu_devices", "GPU devices (passthrough, vGPU, dynamic) configured on the VM.",
                 labels=VM_LABELS)
        pw = G("accelmon_vm_power_watts", "VM power (vCenter power.power.average, latest 20 s interval).",
               labels=VM_LABELS)
        en = C("accelmon_vm_energy_joules",
               "VM energy (sum of vCenter power.energy.summation intervals seen since the daemon started).",
               labels=VM_LABELS)
        mig = C("accelmon_vm_migrations", "Successful vMotions of the VM seen since the daemon started.",
                labels=VM_LABELS)
        migf = C("accelmon_vm_migration_failures", "Failed vMotions of the VM seen since the daemon started.",
                 labels=VM_LABELS)
        stun = C("accelmon_vm_stun_seconds", "Total vMotion stun time of the VM seen since the daemon started.",
                 labels=VM_LABELS)
        last = G("accelmon_vm_last_stun_seconds", "Stun time of the VM's latest vMotion.", labels=VM_LABELS)
        numa = G("accelmon_vm_numa_misaligned",
                 "1 when the latest analytics run found the VM's vCPUs/memory on another NUMA node than its GPU.",
                 labels=[*VM_LABELS, "reason"])
        hist = HistogramMetricFamily("accelmon_vmotion_stun_seconds",
                                     "vMotion stun time (vmware.log Checkpoint_Unstun) per cluster.",
                                     labels=["vcenter", "cluster"])
        hpw = G("accelmon_host_power_watts", "Host power (vCenter power.power.average).", labels=["vcenter", "host"])
        hen = C("accelmon_host_energy_joules", "Host energy seen since the daemon started.", labels=["vcenter", "host"])
        joined = G("accelmon_agent_joined",
                   "1 when the agent's SMBIOS UUID matched a vCenter VM's BIOS UUID, 0 when it is unjoined.",
                   labels=["agent", "hostname", "vm_bios_uuid"])

        misaligned: dict[tuple[str, str], str] = {}
        for f in s.findings:
            if f.get("kind") == "numa_misaligned":
                misaligned[(f.get("vcenter_uuid") or "", f["subject"])] = _reason_code(f)
        for key in sorted(s.vms):
            vm = s.vms[key]
            lv = _vm_label_values(vm)
            ls = label_string(VM_LABELS, lv)
            place.add([*lv, vm.host_name, vm.cluster_name, *_owner_labels(s.owners.get(key))], 1.0)
            devs.add(lv, float(len(vm.devices)), ls)
            reason = misaligned.get(key)
            if reason is None:
                reason = misaligned.get(("", vm.vm_moref))
            numa.add([*lv, reason or ""], 1.0 if reason else 0.0)
            p = s.vm_power.get(key)
            if p is not None:
                if p.power_watts is not None:
                    pw.add(lv, p.power_watts, ls)
                en.add(lv, p.energy_joules_total, ls)
            m = s.migrations.get(key)
            if m is not None:
                mig.add(lv, m.succeeded_total, ls)
                migf.add(lv, m.failed_total, ls)
                stun.add(lv, m.stun_seconds_total, ls)
                if m.last_stun_seconds is not None:
                    last.add(lv, m.last_stun_seconds, ls)
        for (vc, cluster), h in sorted(s.stun_hist.items()):
            buckets = [(_le(b), float(c)) for b, c in zip(h.buckets, h.counts, strict=True)]
            buckets.append(("+Inf", float(h.n)))
            hist.add_metric([s.vcenter_names.get(vc, vc), cluster], buckets, h.total)
        for (vc, host), p in sorted(s.host_power.items()):
            hname = (s.hosts.get((vc, host)) or {}).get("host_name") or host
            lv2 = [s.vcenter_names.get(vc, vc), hname]
            if p.power_watts is not None:
                hpw.add(lv2, p.power_watts)
            hen.add(lv2, p.energy_joules_total)
        for url in sorted(s.agents):
            a = s.agents[url]
            joined.add([url, a.hostname or "", a.vm_bios_uuid], 1.0 if s.agent_joined.get(url) else 0.0)
        yield from (place, devs, pw, en, mig, migf, stun, last, numa, hist, hpw, hen, joined)
        yield from _plan_families(s.plan)


def _data_dir_families(data_dir: str | None) -> Iterator[Metric]:
    """Free and total bytes of the data dir's file system, read at scrape time (``statvfs``;
    free = available to the daemon's user, as node_exporter's ``node_filesystem_avail_bytes``)."""
    if not data_dir:
        return
    try:
        st = os.statvfs(data_dir)
    except OSError:
        return  # not there (yet): no value rather than a wrong one
    yield G("accelmon_data_dir_free_bytes", "Bytes available to the daemon on the data dir's file system.",
            value=float(st.f_bavail * st.f_frsize))
    yield G("accelmon_data_dir_size_bytes", "Size of the data dir's file system in bytes.",
            value=float(st.f_blocks * st.f_frsize))


def _plan_families(p: PlanSummary | None) -> Iterator[Metric]:
    """The latest analytics run's consolidation plan (fleet-wide gauges; absent before any run)."""
    if p is None:
        return
    yield G("accelmon_consolidation_moves", "VM moves in the latest consolidation plan.", value=p.moves)
    yield G("accelmon_consolidation_freed_gpus", "Physical GPUs the latest consolidation plan frees.",
            value=p.freed_gpus)
    if p.freed_hosts is not None:
        yield G("accelmon_consolidation_freed_hosts", "Hosts left without GPU workloads by the latest plan.",
                value=p.freed_hosts)
    if p.watts_saved is not None:
        yield G("accelmon_consolidation_saved_power_watts",
                "Power of the hosts the latest consolidation plan empties (measured host power, else baseline + GPU idle power); GPUs freed in hosts that stay on count as capacity, not watts.", value=p.watts_saved)
    if p.unmeasured_freed_gpus is not None:
        yield G("accelmon_consolidation_unmeasured_freed_gpus",
                "Freed GPUs without a measured idle power (not in the saved power).", value=p.unmeasured_freed_gpus)
    if p.idle_cost_by_team is not None:  # bounded: one series per team (docs/owners.md), "unowned" included
        cost = G("accelmon_idle_cost", "Idle cost of the team's GPUs over the latest analytics run's window "
                 "(idle GPU-hours × price per GPU-hour, docs/cost.md), in the currency of the label.",
                 labels=["team", "currency"])
        for team, v in p.idle_cost_by_team:
            cost.add_metric([team, p.currency or ""], v)
        yield cost
    yield G("accelmon_consolidation_plan_timestamp_seconds", "When the analytics run that made the plan ran.",
            value=p.generated_at)


def _le(b: float) -> str:
    return repr(float(b))


class SelfCollector(Collector):
    def __init__(self, snap: Callable[[], Snapshot], started: float) -> None:
        self._snap = snap
        self.started = started

    def collect(self) -> Iterator[Metric]:
        s = self._snap()
        ok = G("accelmon_source_success", "1 when the source's latest poll succeeded.", labels=SRC_LABELS)
        dur = G("accelmon_source_duration_seconds", "Duration of the source's latest poll.", labels=SRC_LABELS)
        err = C("accelmon_source_errors", "Failed polls of the source.", labels=SRC_LABELS)
        oerr = C("accelmon_source_object_errors",
                 "Objects (a VM, a host, a GPU) a poll could not read while the poll itself succeeded.",
                 labels=SRC_LABELS)
        polls = C("accelmon_source_polls", "Polls of the source (successful or not).", labels=SRC_LABELS)
        last = G("accelmon_source_last_success_timestamp_seconds", "When the source last polled successfully.",
                 labels=SRC_LABELS)
        for h in sorted(s.sources, key=lambda h: (h.kind, h.target)):
            lv = (h.kind, h.target)
            ls = label_string(SRC_LABELS, lv)
            if h.success is not None:
                ok.add(lv, 1.0 if h.success else 0.0, ls)
                dur.add(lv, h.last_duration_s, ls)
            err.add(lv, h.errors_total, ls)
            oerr.add(lv, h.object_errors_total, ls)
            polls.add(lv, h.polls_total, ls)
            if h.last_success_ts:
                last.add(lv, h.last_success_ts, ls)
        written = C("accelmon_source_samples_written",
                    "Rows the sources produced, per source kind and table (buffered; see accelmon_store_rows_written).",
                    labels=["source", "table"])
        for (kind, t), n in sorted(s.samples_written.items()):
            written.add((kind, t), n)
        yield from (ok, dur, err, oerr, polls, last, written)
        auth: dict[str, bool] = {}
        for h in s.sources:
            if h.kind.startswith("vcenter"):
                auth[h.target] = auth.get(h.target, False) or (h.success is False and h.error_kind == "auth")
        if auth:
            af = G("accelmon_vcenter_auth_failed",
                   "1 while vCenter refuses the daemon's login (wrong user name or password); its polling "
                   "waits for the auth backoff, so the account is not locked.", labels=["target"])
            for target, failed in sorted(auth.items()):
                af.add([target], 1.0 if failed else 0.0)
            yield af

        st = s.store
        w = C("accelmon_store_rows_written", "Rows durably written to the store (acknowledged), per table.",
              labels=["table"])
        for t, n in sorted(st.rows_written_total.items()):
            w.add([t], n)
        werr = C("accelmon_store_write_errors", "Failed store writes, by reason (disk_full, read_only, permission, io).",
                 labels=["reason"])
        for reason in sorted({"disk_full", "read_only", "permission", "io", *st.write_errors_total}):
            werr.add([reason], st.write_errors_total.get(reason, 0))
        yield w
        yield werr
        yield G("accelmon_store_writable", "0 while writes to the data dir fail (disk full, read-only).",
                value=1.0 if st.writable else 0.0)
        yield G("accelmon_store_rows_buffered", "Rows waiting in memory for the next flush.", value=st.rows_buffered)
        yield C("accelmon_store_rows_dropped", "Rows dropped because the write buffer overflowed while the store "
                "could not be written.", value=st.rows_dropped_total)
        yield G("accelmon_store_last_flush_timestamp_seconds", "When the write buffer was last flushed.",
                value=st.last_flush_ts)
        yield from _data_dir_families(s.data_dir)
        yield C("accelmon_store_compactions", "Partitions compacted.", value=st.compactions_total)
        cerr = C("accelmon_store_compaction_errors", "Partitions whose compaction failed, per table.",
                 labels=["table"])
        for t, n in sorted(st.compaction_errors_total.items()):
            cerr.add([t], n)
        yield cerr
        yield C("accelmon_store_partitions_dropped", "Partitions dropped by retention.",
                value=st.partitions_dropped_total)

        jok = G("accelmon_job_success", "1 when the housekeeping job's latest run succeeded.", labels=["job"])
        jdur = G("accelmon_job_duration_seconds", "Duration of the job's latest run.", labels=["job"])
        jerr = C("accelmon_job_errors", "Failed runs of the job.", labels=["job"])
        jlast = G("accelmon_job_last_success_timestamp_seconds", "When the job last succeeded.", labels=["job"])
        for j in sorted(s.jobs, key=lambda j: j.name):
            if j.success is not None:
                jok.add([j.name], 1.0 if j.success else 0.0)
                jdur.add([j.name], j.last_duration_s)
            jerr.add([j.name], j.errors_total)
            if j.last_success_ts:
                jlast.add([j.name], j.last_success_ts)
        yield from (jok, jdur, jerr, jlast)
        b = G("accelmon_build_info", "accelmon version.", labels=["version"])
        b.add([__version__], 1.0)
        yield b
        yield G("accelmon_daemon_start_time_seconds", "When the daemon started.", value=self.started)
