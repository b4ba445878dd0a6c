"""The one interface every source implements (node_exporter style).

A source turns one external API into rows of the store schema. It knows nothing of
analytics or Prometheus. Sources are registered in :mod:`accelmon.collector.registry`
and enabled/disabled by config (``[sources] vcenter = false``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import pyarrow as pa

from accelmon.store.sink import StoreWriter


@dataclass
class CollectResult:
    """What one poll of one source did. ``rows`` counts rows written per table."""

    rows: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # per-object problems (poll still succeeded)
    # the rows written, by table, so the daemon can update its in-memory exporter state
    # without re-reading the store (optional: a source may leave it empty)
    tables: dict[str, pa.Table] = field(default_factory=dict)

    def add(self, table: str, n: int) -> None:
        self.rows[table] = self.rows.get(table, 0) + n

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


# One poll: append what was read to the writer, say what was written.
Poll = Callable[[StoreWriter], CollectResult]


@dataclass(frozen=True)
class SourceJob:
    """One schedule of one source instance: ``collect`` runs every ``interval_s`` seconds."""

    name: str  # job name: "vcenter.inventory", "agent", …
    interval_s: float
    collect: Poll


@runtime_checkable
class Source(Protocol):
    """A pollable source. ``collect`` polls once and appends rows to the store.

    ``name`` is the source kind (``vcenter``, ``agent``, ``dcgm``…); ``target`` identifies the
    instance (a URL, never with credentials). ``collect`` raises on total failure; the caller
    (the daemon's wrapper) records success/duration/errors per source and isolates failures.
    """

    name: str
    target: str

    def collect(self, store: StoreWriter) -> CollectResult:
        """Poll everything once; the rows written are counted (and may be kept) in the result."""
        ...

    def jobs(self, interval_s: float) -> list[SourceJob]:
        """The schedules of this instance. ``interval_s`` is the instance's configured poll
        interval; a source with one schedule returns ``[SourceJob(name, interval_s, collect)]``,
        one with several (vCenter: inventory, perf, events) returns its own intervals."""
        ...

    def close(self) -> None:
        """Release connections; called once when the daemon stops or drops the instance."""
        ...
