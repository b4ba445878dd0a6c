"""Batch the daemon's appends: one Parquet file per table and day per flush, not per poll.

2,000 agents polled every 10 s would otherwise write 2,000 small fsynced files per cycle.
Sources append here (it quacks like :class:`~accelmon.store.Store` for ``append``; anything
else is passed through to the real store); :meth:`WriteBuffer.flush` runs every
``intervals.flush`` seconds, on SIGTERM and at the end of ``--once``.

A row is *acknowledged* when a flush that contained it returned: from then on it survives
``kill -9``. Rows still buffered at a crash are lost, but every accumulating quantity is a
counter, so the next sample after a restart covers the gap (resolution lost, not information).

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
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from accelmon.store.schema import table
from accelmon.store.writer import Store, to_arrow

log = logging.getLogger(__name__)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


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
    ) -> None:
        self.store = store
        self.max_rows = max_rows
        self._pending: dict[str, list[pa.Table]] = {}
        self._rows = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._on_flushed = on_flushed
        self._on_error = on_error
        self._on_dropped = on_dropped

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
        with self._lock:
            self._pending.setdefault(name, []).append(data)
            self._rows += n
            if self._rows > self.max_rows:
                self._drop_oldest_locked()
        return n

    def _drop_oldest_locked(self) -> None:
        dropped = 0
        while self._rows > self.max_rows and self._pending:
            # drop the oldest batch of the table holding most rows
            name = max(self._pending, key=lambda k: sum(t.num_rows for t in self._pending[k]))
            batch = self._pending[name].pop(0)
            if not self._pending[name]:
                del self._pending[name]
            self._rows -= batch.num_rows
            dropped += batch.num_rows
        if dropped and self._on_dropped:
            self._on_dropped(dropped)

    def flush(self) -> int:
        """Write everything buffered. Returns rows written; raises the OSError of a failed write
        (rows not written stay buffered, in order)."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            written = 0
            failed: dict[str, list[pa.Table]] = {}
            error: BaseException | None = None
            for name, batches in pending.items():
                if error is not None:
                    failed[name] = batches
                    continue
                t = table(name)
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
