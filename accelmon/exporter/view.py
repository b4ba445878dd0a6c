"""What the exporter reads: one small interface on the exporter's side, implemented by the daemon.

:class:`StateView` is all the exporter needs of the daemon's state (``accelmon.daemon.state.DaemonState``
implements it): when it started, and a consistent :class:`Snapshot` per scrape. The exporter
imports nothing from ``accelmon.daemon``; the daemon imports this module (layers: daemon →
exporter). The value records a snapshot carries are defined here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from accelmon.collector.discovery import AgentRecord, GpuJoin, VmRecord
from accelmon.exporter.health import JobHealth, SourceHealth, StoreHealth


class StateView(Protocol):
    """The daemon's state as the exporter sees it (read only)."""

    @property
    def started(self) -> float:
        """When the daemon started (seconds since the epoch)."""
        ...

    def snapshot(self, now: float | None = None) -> Snapshot:
        """A consistent copy for one scrape, taken without holding any lock while rendering."""
        ...


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
    freed_hosts: int | None = None  # None: not known (a run with moves but no plan_action rows)
    watts_saved: float | None = None
    unmeasured_freed_gpus: int | None = None
    # idle cost per team over the run's window (``idle_cost`` findings, analytics/cost.py); None: unknown
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
    owners: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (vc, vm_moref) -> vm_owner row
