"""Batch the daemon's appends: one Parquet file per table and day per flush, not per poll.

2,000 agents polled every 10 s would otherwise write 2,000 small fsynced files per cycle.
Sources append here (it quacks like :class:`~accelmon.store.Store` for ``append``; anything
else is passed through to the real store); :meth:`WriteBuffer.flush` runs every
``intervals.flush`` seconds, on SIGTERM and at the end of ``--once``.

A row is *acknowledged* when a flush that contained it returned: from then on it survives
``kill -9``. Rows still buffered at a crash are lost, but every accumulating quantity is a
counter, so the next sample after a restart covers the gap (resolution lost, not information).

Sources that produce many tiny polls (2,000 agents) hand over plain row dicts
(:meth:`WriteBuffer.append_rows`); they are converted to Arrow once per table and flush, which
costs far less than a ``to_arrow`` per 1-row poll. A chunk that does not fit the schema (which
the sources' own checks should make impossible) is dropped alone, logged and counted; it never
blocks the rows of other polls.

When the disk is full (or the data dir becomes read-only) the flush fails, the rows stay
buffered (bounded by ``max_rows``; the oldest are dropped and counted beyond that), the
failure is logged once and shown on /metrics, and the next flush retries.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from accelmon.store.schema import table
from accelmon.store.writer import Store, to_arrow

log = logging.getLogger(__name__)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

# one poll's rows of one table: an Arrow table, or row dicts still to be converted
Batch: TypeAlias = pa.Table | list[dict[str, Any]]


def _n(b: Batch) -> int:
    return b.num_rows if isinstance(b, pa.Table) else len(b)


def classify_os_error(e: BaseException) -> str:
    """A short reason for a failed write: disk_full | read_only | permission | io."""
    err = getattr(e, "errno", None)
    if err in _DISK_FULL:
        return "disk_full"
    if err == errno.EROFS:
        return "read_only"
    if err in (errno.EACCES, errno.EPERM):
        return "permission"
    text = str(e).lower()
    if "no space left" in text or "disk quota" in text or "file too large" in text:
        return "disk_full"
    return "io"


class WriteBuffer:
    def __init__(
        self,
        store: Store,
        *,
        max_rows: int = 1_000_000,
        on_flushed: Callable[[str, int], None] | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        on_invalid: Callable[[str, int, BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.max_rows = max_rows
        self._pending: dict[str, list[Batch]] = {}
        self._rows = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._on_flushed = on_flushed
        self._on_error = on_error
        self._on_dropped = on_dropped
        self._on_invalid = on_invalid
        self._names: dict[str, frozenset[str]] = {}

    def __getattr__(self, name: str) -> Any:  # everything but append goes to the store
        return getattr(self.store, name)

    @property
    def rows_buffered(self) -> int:
        return self._rows

    def append(self, name: str, rows: Any) -> int:
        t = table(name)
        # a source's to_arrow output is already the contract; anything else is validated now,
        # so a bad row fails the poll, not the flush
        ready = isinstance(rows, pa.Table) and rows.schema.equals(t.schema)
        data = rows if ready else to_arrow(t, rows)
        n = data.num_rows
        if n == 0:
            return 0
        self._put(name, data, n)
        return n

    def append_rows(self, name: str, rows: list[dict[str, Any]]) -> int:
        """Buffer row dicts as they are (converted at the flush, with the rows of other polls).
        Their keys are checked now, so a programming error fails the poll, not the flush."""
        n = len(rows)
        if n == 0:
            return 0
        names = self._names.get(name)
        if names is None:
            names = self._names[name] = frozenset(table(name).schema.names)
        for r in rows:
            if not names.issuperset(r):
                raise ValueError(f"{name}: unknown column(s) {', '.join(sorted(set(r) - names))}")
        self._put(name, rows, n)
        return n

    def _put(self, name: str, batch: Batch, n: int) -> None:
        with self._lock:
            self._pending.setdefault(name, []).append(batch)
            self._rows += n
            if self._rows > self.max_rows:
                self._drop_oldest_locked()

    def _materialize(self, name: str, batches: list[Batch]) -> list[pa.Table]:
        """Arrow tables for a table's batches: consecutive row-dict batches become one table."""
        t = table(name)
        out: list[pa.Table] = []
        run: list[list[dict[str, Any]]] = []

        def convert() -> None:
            try:
                out.append(to_arrow(t, [r for b in run for r in b]))
            except Exception:  # noqa: BLE001 - find the bad poll(s); keep the others
                for b in run:
                    try:
                        out.append(to_arrow(t, b))
                    except Exception as e:  # noqa: BLE001
                        with self._lock:
                            self._rows -= len(b)
                        if self._on_invalid:
                            self._on_invalid(name, len(b), e)
            run.clear()

        for b in batches:
            if isinstance(b, pa.Table):
                if run:
                    convert()
                out.append(b)
            else:
                run.append(b)
        if run:
            convert()
        return out

    def _drop_oldest_locked(self) -> None:
        dropped = 0
        while self._rows > self.max_rows and self._pending:
            # drop the oldest batch of the table holding most rows
            name = max(self._pending, key=lambda k: sum(_n(b) for b in self._pending[k]))
            batch = self._pending[name].pop(0)
            if not self._pending[name]:
                del self._pending[name]
            self._rows -= _n(batch)
            dropped += _n(batch)
        if dropped and self._on_dropped:
            self._on_dropped(dropped)

    def flush(self) -> int:
        """Write everything buffered. Returns rows written; raises the OSError of a failed write
        (rows not written stay buffered, in order)."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            written = 0
            failed: dict[str, list[Batch]] = {}
            error: BaseException | None = None
            for name, raw in pending.items():
                if error is not None:
                    failed[name] = raw
                    continue
                t = table(name)
                batches = self._materialize(name, raw)
                if not batches:
                    continue
                if len(batches) > 1 and any(b.schema != batches[0].schema for b in batches):
                    batches = [b.cast(t.schema) for b in batches]  # e.g. dictionary-encoded vs plain strings
                data = pa.concat_tables(batches) if len(batches) > 1 else batches[0]
                days = pc.strftime(data.column(t.partition_ts), format="%Y-%m-%d")
                uniq = sorted(pc.unique(days).to_pylist())
                for i, day in enumerate(uniq):
                    part = data if len(uniq) == 1 else data.filter(pc.equal(days, day))
                    try:
                        n = self.store.append(name, part)
                    except OSError as e:
                        error = e
                        rest = [part] + [data.filter(pc.equal(days, d)) for d in uniq[i + 1 :]]
                        failed[name] = rest
                        break
                    written += n
                    with self._lock:
                        self._rows -= n
                    if self._on_flushed:
                        self._on_flushed(name, n)
            if failed:
                with self._lock:
                    for name, batches in failed.items():
                        self._pending[name] = batches + self._pending.get(name, [])
                    if self._rows > self.max_rows:
                        self._drop_oldest_locked()
            if error is not None:
                if self._on_error:
                    self._on_error(classify_os_error(error), error)
                raise error
            return written

    def flush_quietly(self, deadline_s: float = 3.0) -> bool:
        """Flush for shutdown: True when everything was written (never raises)."""
        t0 = time.monotonic()
        while True:
            try:
                self.flush()
                return True
            except OSError:
                if time.monotonic() - t0 > deadline_s:
                    return False
                time.sleep(0.2)


class DirectSink:
    """Write-through for sources that keep their own resume cursors (vCenter): a cursor saved
    after ``append`` returned must never point past rows that are not on disk yet."""

    def __init__(
        self,
        store: Store,
        *,
        on_flushed: Callable[[str, int], None] | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self._on_flushed = on_flushed
        self._on_error = on_error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def append(self, name: str, rows: Any) -> int:
        try:
            n = self.store.append(name, rows)
        except OSError as e:
            if self._on_error:
                self._on_error(classify_os_error(e), e)
            raise
        if self._on_flushed and n:
            self._on_flushed(name, n)
        return n
