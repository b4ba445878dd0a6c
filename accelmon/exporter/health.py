"""Health records: what the daemon counts about its sources, jobs and store, and /metrics shows.

Plain data, filled by the daemon (accelmon/daemon/) and read by the exporter through
:class:`accelmon.exporter.view.StateView`; defined on the exporter's side so that the exporter
never imports the daemon (docs/architecture.md, layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
