"""The daemon's in-memory state: what /metrics shows, updated from each poll's rows.

Sources hand back the rows they wrote (``CollectResult.tables``, or row dicts for sources
whose rows the write buffer batches); :meth:`DaemonState.apply` folds them in, so a scrape never reads the store. Findings are the exception: they are
re-read from the store's ``latest_findings`` view by a job (they change once a day).

All methods are thread-safe (one lock; updates are short). Readers take a consistent
:meth:`snapshot` and render from it without holding the lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa

from accelmon.collector.discovery import AgentRecord, GpuJoin, VmRecord, join_agents, normalize_bios_uuid

# which source wins when several report the same GPU (lower = preferred)
SOURCE_PRIORITY = {"agent": 0, "dcgm": 1, "nvidia_gpu_exporter": 2, "prometheus": 3, "simulation": 4, "import": 5}


Rows = pa.Table | Sequence[dict[str, Any]]


def _rows(t: Rows | None) -> list[dict[str, Any]]:
    """Row dicts of a table (row dicts given as such are shared, never changed)."""
    if t is None:
        return []
    if isinstance(t, pa.Table):
        return t.to_pylist() if t.num_rows else []
    return list(t)


def _ts(v: Any) -> float:
    """Arrow timestamps arrive as datetime; keep seconds since the epoch."""
    if v is None:
        return 0.0
    if isinstance(v, int | float):
        return float(v)
    return float(v.timestamp())


@dataclass
class SourceHealth:
    kind: str
    target: str
    interval_s: float
    success: bool | None = None  # None until the first poll
    last_duration_s: float = 0.0
    last_success_ts: float = 0.0
    polls_total: int = 0
    errors_total: int = 0
    object_errors_total: int = 0
    consecutive_failures: int = 0
    failing_since: float = 0.0
    last_error: str = ""
    error_kind: str = ""  # the failing poll's error kind ("auth", "unavailable", "tls"…; "" when none)


@dataclass
class JobHealth:
    name: str
    success: bool | None = None
    last_duration_s: float = 0.0
    last_success_ts: float = 0.0
    runs_total: int = 0
    errors_total: int = 0


@dataclass
class StoreHealth:
    writable: bool = True
    last_error_kind: str = ""
    write_errors_total: dict[str, int] = field(default_factory=dict)  # by reason
    rows_written_total: dict[str, int] = field(default_factory=dict)  # by table (durable)
    rows_dropped_total: int = 0
    rows_buffered: int = 0
    last_flush_ts: float = 0.0
    compactions_total: int = 0
    partitions_dropped_total: int = 0
    generations_removed_total: int = 0
    compaction_errors_total: dict[str, int] = field(default_factory=dict)  # by table


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.total += v
        self.n += 1


STUN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0)


@dataclass
class VmPower:
    ts: float
    power_watts: float | None
    energy_joules_total: float


@dataclass
class VmMigrations:
    succeeded_total: int = 0
    failed_total: int = 0
    stun_seconds_total: float = 0.0
    last_stun_seconds: float | None = None
    last_stun_ended_at: float = 0.0  # end time of the vMotion last_stun_seconds belongs to


@dataclass(frozen=True)
class PlanSummary:
    """The consolidation plan of the latest analytics run (see housekeeping.plan_summary)."""

    generated_at: float
    run_id: str
    moves: int
    freed_gpus: int
    freed_hosts: int | None = None  # None: not known (the run's report JSON was not found)
    watts_saved: float | None = None
    unmeasured_freed_gpus: int | None = None
    # idle cost per team over the run's window (report JSON "cost.by_team", analytics/cost.py); None: unknown
    idle_cost_by_team: tuple[tuple[str, float], ...] | None = None
    currency: str | None = None


@dataclass
class Snapshot:
    """A consistent, read-only view for one scrape."""

    now: float
    gpus: dict[str, dict[str, Any]]  # gpu_uuid -> chosen latest gpu_sample row (fresh ones only)
    nvlink: dict[tuple[str, int], tuple[int | None, int | None]]
    joins: dict[str, GpuJoin]  # gpu_uuid -> join
    agents: dict[str, AgentRecord]
    agent_joined: dict[str, VmRecord | None]
    vms: dict[tuple[str, str], VmRecord]
    vcenter_names: dict[str, str]
    hosts: dict[tuple[str, str], dict[str, Any]]
    vm_power: dict[tuple[str, str], VmPower]
    host_power: dict[tuple[str, str], VmPower]
    migrations: dict[tuple[str, str], VmMigrations]
    stun_hist: dict[tuple[str, str], Histogram]
    findings: list[dict[str, Any]]
    sources: list[SourceHealth]
    jobs: list[JobHealth]
    store: StoreHealth
    samples_written: dict[tuple[str, str], int]
    version: int
    data_dir: str | None = None
    plan: PlanSummary | None = None


class DaemonState:
    def __init__(self, *, stale_after_s: float = 60.0) -> None:
        self._lock = threading.RLock()
        self.stale_after_s = stale_after_s
        self.started = time.time()
        # gpu_uuid -> source -> latest row
        self._gpu: dict[str, dict[str, dict[str, Any]]] = {}
        self._nvlink: dict[tuple[str, int], tuple[float, int | None, int | None]] = {}
        self._agents: dict[str, AgentRecord] = {}
        self._gpu_bios: dict[str, str] = {}  # gpu_uuid -> vm_bios_uuid (from agent_gpu)
        # inventory, per vcenter
        self._vc_names: dict[str, str] = {}
        self._hosts: dict[str, dict[str, dict[str, Any]]] = {}  # vc -> host_moref -> row
        self._vms: dict[str, dict[str, dict[str, Any]]] = {}  # vc -> vm_moref -> row
        self._vm_gpus: dict[str, dict[str, list[dict[str, Any]]]] = {}  # vc -> vm_moref -> devices
        self._inv_ts: dict[tuple[str, str], float] = {}  # (table, vc) -> snapshot ts applied
        self._vm_power: dict[tuple[str, str], VmPower] = {}
        self._host_power: dict[tuple[str, str], VmPower] = {}
        self._migrations: dict[tuple[str, str], VmMigrations] = {}
        self._seen_migrations: set[tuple[Any, ...]] = set()
        self._stun: dict[tuple[str, str], Histogram] = {}
        self._findings: list[dict[str, Any]] = []
        self._plan: PlanSummary | None = None
        self.data_dir: str | None = None  # the store's directory (free/size bytes at scrape time)
        self._sources: dict[tuple[str, str], SourceHealth] = {}
        self._jobs: dict[str, JobHealth] = {}
        self.store = StoreHealth()
        self._written: dict[tuple[str, str], int] = {}
        # derived (recomputed lazily when inventory or agents change)
        self._join_dirty = True
        self._joins: dict[str, GpuJoin] = {}
        self._agent_joined: dict[str, VmRecord | None] = {}
        self._vm_index: dict[tuple[str, str], VmRecord] = {}
        self.version = 0  # bumps when labels may change

    # ------------------------------------------------------------------ health
    def register_source(self, kind: str, target: str, interval_s: float) -> SourceHealth:
        with self._lock:
            h = self._sources.get((kind, target))
            if h is None:
                h = self._sources[(kind, target)] = SourceHealth(kind, target, interval_s)
            return h

    def unregister_source(self, kind: str, target: str) -> None:
        with self._lock:
            self._sources.pop((kind, target), None)

    def source_health(self, kind: str, target: str) -> SourceHealth | None:
        with self._lock:
            return self._sources.get((kind, target))

    def job(self, name: str) -> JobHealth:
        with self._lock:
            j = self._jobs.get(name)
            if j is None:
                j = self._jobs[name] = JobHealth(name)
            return j

    def count_written(self, kind: str, rows: Mapping[str, int]) -> None:
        with self._lock:
            for t, n in rows.items():
                self._written[(kind, t)] = self._written.get((kind, t), 0) + int(n)

    # ------------------------------------------------------------------ apply rows
    def apply(self, tables: Mapping[str, Rows]) -> None:
        """Fold the rows one poll wrote into the state (Arrow tables or row dicts)."""
        if not tables:
            return
        with self._lock:
            for name in ("inv_vcenter", "inv_host", "inv_vm", "inv_vm_gpu"):
                if name in tables:
                    self._apply_inventory(name, _rows(tables[name]))
            if "agent_gpu" in tables:
                self._apply_agent_gpu(_rows(tables["agent_gpu"]))
            if "gpu_sample" in tables:
                self._apply_gpu_sample(tables["gpu_sample"])
            if "nvlink_sample" in tables:
                for r in _rows(tables["nvlink_sample"]):
                    key = (r["gpu_uuid"], int(r["link"]))
                    ts = _ts(r["ts"])
                    old = self._nvlink.get(key)
                    if old is None or ts >= old[0]:
                        self._nvlink[key] = (ts, r.get("tx_bytes_total"), r.get("rx_bytes_total"))
            if "vm_power_sample" in tables:
                self._apply_power(self._vm_power, _rows(tables["vm_power_sample"]), "vm_moref")
            if "host_power_sample" in tables:
                self._apply_power(self._host_power, _rows(tables["host_power_sample"]), "host_moref")
            if "vmotion" in tables:
                self._apply_vmotion(_rows(tables["vmotion"]))

    def _apply_gpu_sample(self, t: Rows) -> None:
        if isinstance(t, pa.Table):
            cols = {c: t.column(c).to_pylist() for c in t.column_names}
            names = list(cols)
            rows: Iterable[dict[str, Any]] = ({c: cols[c][i] for c in names} for i in range(t.num_rows))
        else:
            rows = t
        for row in rows:
            if not isinstance(row["ts"], float):
                row = {**row, "ts": _ts(row["ts"])}
            per = self._gpu.setdefault(row["gpu_uuid"], {})
            old = per.get(row["source"])
            if old is None or row["ts"] >= old["ts"]:
                per[row["source"]] = row
                bios = row.get("vm_bios_uuid")
                if bios and self._gpu_bios.get(row["gpu_uuid"]) != normalize_bios_uuid(bios):
                    self._gpu_bios[row["gpu_uuid"]] = normalize_bios_uuid(bios)
                    self._join_dirty = True

    def _apply_agent_gpu(self, rows: list[dict[str, Any]]) -> None:
        by_agent: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_agent.setdefault(r.get("agent_url") or "", []).append(r)
        for url, rs in by_agent.items():
            latest = max(_ts(r["ts"]) for r in rs)
            rs = [r for r in rs if _ts(r["ts"]) == latest]
            rec = AgentRecord(
                url=url,
                vm_bios_uuid=normalize_bios_uuid(rs[0].get("vm_bios_uuid")),
                hostname=rs[0].get("hostname"),
                gpus=rs,
            )
            self._agents[url] = rec
            for r in rs:
                if rec.vm_bios_uuid:
                    self._gpu_bios[r["gpu_uuid"]] = rec.vm_bios_uuid
        self._join_dirty = True

    def _apply_inventory(self, name: str, rows: list[dict[str, Any]]) -> None:
        """An inventory batch is a full snapshot of that table for its vCenter(s)."""
        by_vc: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_vc.setdefault(r["vcenter_uuid"], []).append(r)
        for vc, rs in by_vc.items():
            snap = max(_ts(r["snapshot_ts"]) for r in rs)
            if snap < self._inv_ts.get((name, vc), 0.0):
                continue  # older than what we have
            self._inv_ts[(name, vc)] = snap
            rs = [r for r in rs if _ts(r["snapshot_ts"]) == snap]
            if name == "inv_vcenter":
                url = rs[-1].get("url") or ""
                self._vc_names[vc] = rs[-1].get("name") or urlparse(url).hostname or url or vc
            elif name == "inv_host":
                self._hosts[vc] = {r["host_moref"]: r for r in rs}
            elif name == "inv_vm":
                self._vms[vc] = {r["vm_moref"]: r for r in rs}
            elif name == "inv_vm_gpu":
                devs: dict[str, list[dict[str, Any]]] = {}
                for r in rs:
                    devs.setdefault(r["vm_moref"], []).append(r)
                self._vm_gpus[vc] = devs
        self._join_dirty = True

    def _apply_power(self, target: dict[tuple[str, str], VmPower], rows: list[dict[str, Any]], key: str) -> None:
        rows = sorted(rows, key=lambda r: _ts(r["ts"]))
        for r in rows:
            k = (r["vcenter_uuid"], r[key])
            ts = _ts(r["ts"])
            cur = target.get(k)
            if cur is None:
                cur = target[k] = VmPower(0.0, None, 0.0)
            if ts <= cur.ts:
                continue  # already counted (a source re-sent an interval)
            cur.ts = ts
            cur.power_watts = r.get("power_watts")
            e = r.get("energy_joules")
            if e is None and r.get("power_watts") is not None and r.get("interval_seconds"):
                e = float(r["power_watts"]) * float(r["interval_seconds"])
            if e is not None and e >= 0:
                cur.energy_joules_total += float(e)

    def _apply_vmotion(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            key = (r["vcenter_uuid"], r.get("chain_id"), r["vm_moref"], _ts(r["ended_at"]))
            if key in self._seen_migrations:
                continue
            self._seen_migrations.add(key)
            m = self._migrations.setdefault((r["vcenter_uuid"], r["vm_moref"]), VmMigrations())
            if r.get("succeeded") is False:
                m.failed_total += 1
            else:
                m.succeeded_total += 1
            stun = r.get("stun_seconds")
            if stun is not None:
                m.stun_seconds_total += float(stun)
                if key[3] >= m.last_stun_ended_at:  # rows may come in any order (start-up load)
                    m.last_stun_seconds = float(stun)
                    m.last_stun_ended_at = key[3]
                hk = (r["vcenter_uuid"], r.get("cluster_name") or "")
                h = self._stun.get(hk)
                if h is None:
                    h = self._stun[hk] = Histogram(STUN_BUCKETS)
                h.observe(float(stun))

    def add_vmotion_totals(self, vms: Mapping[tuple[str, str], VmMigrations],
                           clusters: Mapping[tuple[str, str], Histogram]) -> None:
        """Add totals of migrations no longer in the store (see accelmon.daemon.vmotion_history)."""
        with self._lock:
            for k, v in vms.items():
                m = self._migrations.setdefault(k, VmMigrations())
                m.succeeded_total += v.succeeded_total
                m.failed_total += v.failed_total
                m.stun_seconds_total += v.stun_seconds_total
                if m.last_stun_seconds is None:
                    m.last_stun_seconds = v.last_stun_seconds
            for k, h in clusters.items():
                if h.buckets != STUN_BUCKETS:
                    continue  # buckets changed since the carry was written: cannot be merged
                cur = self._stun.get(k)
                if cur is None:
                    cur = self._stun[k] = Histogram(STUN_BUCKETS)
                cur.counts = [a + b for a, b in zip(cur.counts, h.counts, strict=True)]
                cur.total += h.total
                cur.n += h.n

    def forget_agent(self, url: str) -> None:
        """An agent no longer polled (its VM is gone): drop its identity and join."""
        with self._lock:
            if self._agents.pop(url, None) is not None:
                self._join_dirty = True

    def prune(self, now: float, older_than_s: float = 3600.0) -> None:
        """Forget GPUs and NVLink links not measured for ``older_than_s`` (memory stays bounded)."""
        with self._lock:
            for uuid in [u for u, per in self._gpu.items() if all(now - r["ts"] > older_than_s for r in per.values())]:
                del self._gpu[uuid]
            for k in [k for k, v in self._nvlink.items() if now - v[0] > older_than_s]:
                del self._nvlink[k]

    @property
    def plan(self) -> PlanSummary | None:
        with self._lock:
            return self._plan

    def set_findings(self, rows: list[dict[str, Any]], plan: PlanSummary | None = None) -> None:
        with self._lock:
            self._findings = rows
            self._plan = plan

    # ------------------------------------------------------------------ join
    def _rejoin(self) -> None:
        vms: list[VmRecord] = []
        for vc, by_moref in self._vms.items():
            devs = self._vm_gpus.get(vc, {})
            for moref, r in by_moref.items():
                host = self._hosts.get(vc, {}).get(r.get("host_moref") or "", {})
                vms.append(
                    VmRecord(
                        vcenter_uuid=vc,
                        vcenter_name=self._vc_names.get(vc, vc),
                        vm_moref=moref,
                        vm_name=r.get("vm_name") or moref,
                        vm_instance_uuid=r.get("vm_instance_uuid") or "",
                        vm_bios_uuid=normalize_bios_uuid(r.get("vm_bios_uuid")),
                        host_moref=r.get("host_moref") or "",
                        host_name=host.get("host_name") or r.get("host_moref") or "",
                        cluster_name=r.get("cluster_name") or host.get("cluster_name") or "",
                        guest_ips=list(r.get("guest_ips") or []),
                        power_state=r.get("power_state") or "",
                        devices=sorted(devs.get(moref, []), key=lambda d: d.get("device_key") or 0),
                    )
                )
        self._vm_index = {(v.vcenter_uuid, v.vm_moref): v for v in vms}
        self._agent_joined, self._joins = join_agents(vms, list(self._agents.values()), self._gpu_bios)
        self._join_dirty = False
        self.version += 1

    def vms(self) -> list[VmRecord]:
        with self._lock:
            if self._join_dirty:
                self._rejoin()
            return list(self._vm_index.values())

    # ------------------------------------------------------------------ snapshot
    def snapshot(self, now: float | None = None) -> Snapshot:
        now = time.time() if now is None else now
        with self._lock:
            if self._join_dirty:
                self._rejoin()
            gpus: dict[str, dict[str, Any]] = {}
            for uuid, per in self._gpu.items():
                fresh = [r for r in per.values() if now - r["ts"] <= self.stale_after_s]
                if not fresh:
                    continue
                fresh.sort(key=lambda r: (SOURCE_PRIORITY.get(r["source"], 9), -r["ts"]))
                gpus[uuid] = fresh[0]
            nvlink = {
                k: (tx, rx) for k, (ts, tx, rx) in self._nvlink.items() if now - ts <= self.stale_after_s
            }
            return Snapshot(
                now=now,
                gpus=gpus,
                nvlink=nvlink,
                joins=dict(self._joins),
                agents=dict(self._agents),
                agent_joined=dict(self._agent_joined),
                vms=dict(self._vm_index),
                vcenter_names=dict(self._vc_names),
                hosts={(vc, h): r for vc, hs in self._hosts.items() for h, r in hs.items()},
                vm_power={k: VmPower(v.ts, v.power_watts, v.energy_joules_total) for k, v in self._vm_power.items()},
                host_power={
                    k: VmPower(v.ts, v.power_watts, v.energy_joules_total) for k, v in self._host_power.items()
                },
                migrations={
                    k: VmMigrations(v.succeeded_total, v.failed_total, v.stun_seconds_total, v.last_stun_seconds)
                    for k, v in self._migrations.items()
                },
                stun_hist={k: Histogram(v.buckets, list(v.counts), v.total, v.n) for k, v in self._stun.items()},
                findings=list(self._findings),
                sources=[SourceHealth(**vars(h)) for h in self._sources.values()],
                jobs=[JobHealth(**vars(j)) for j in self._jobs.values()],
                store=StoreHealth(
                    **{
                        **vars(self.store),
                        "write_errors_total": dict(self.store.write_errors_total),
                        "rows_written_total": dict(self.store.rows_written_total),
                    }
                ),
                samples_written=dict(self._written),
                version=self.version,
                data_dir=self.data_dir,
                plan=self._plan,
            )

    def gpu_uuids(self) -> Iterable[str]:
        with self._lock:
            return list(self._gpu)
