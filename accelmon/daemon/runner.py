"""One scheduled poll of one source instance: timing, success, backoff, log-once, state update.

The job function APScheduler calls. It never raises: a failed poll is counted
(``accelmon_source_errors_total``), logged once when the source's state changes (ok →
failing, failing with a different error, failing → recovered), and retried with exponential
backoff (in whole intervals, capped at ``max_backoff_s``). Single-flight comes from
APScheduler's ``max_instances=1``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from accelmon.collector.base import CollectResult
from accelmon.daemon.redact import REDACTOR
from accelmon.daemon.state import DaemonState

log = logging.getLogger("accelmon.daemon")

# sources whose outages the daemon records as collection_gap rows (vCenter records its own)
GAP_KINDS = {"agent", "dcgm", "nvidia_gpu_exporter"}


def summarize(e: BaseException) -> str:
    """One credential-free line: ``TypeName: first line of the message``."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return REDACTOR.apply(text[:300])


class SourceRunner:
    def __init__(
        self,
        *,
        kind: str,
        target: str,
        interval_s: float,
        collect: Callable[[Any], CollectResult],
        sink: Any,
        state: DaemonState,
        close: Callable[[], None] | None = None,
        after: Callable[[CollectResult], None] | None = None,
        max_backoff_s: float | None = None,
        job_name: str | None = None,
    ) -> None:
        self.kind = kind
        self.target = target
        self.interval_s = interval_s
        self.job_name = job_name or kind
        self._collect = collect
        self._close = close
        self._after = after
        self.sink = sink
        self.state = state
        # default cap: 6 intervals (agents every 10 s: 1 min), at most 5 minutes
        cap = min(300.0, 6 * interval_s) if max_backoff_s is None else max_backoff_s
        self.max_backoff_s = max(cap, interval_s)
        self.health = state.register_source(self.job_name, target, interval_s)
        self._next_allowed = 0.0
        self._last_error_type = ""
        self._seen_object_errors: set[str] = set()
        self._lock = threading.Lock()  # belt and braces on top of max_instances=1
        self.closed = False

    def backoff_s(self, failures: int) -> float:
        return min(self.interval_s * (2 ** max(failures - 1, 0)), self.max_backoff_s)

    def __call__(self) -> bool | None:
        """Poll once. True/False = success/failure, None = skipped (backoff or already running)."""
        if self.closed:
            return None
        now_m = time.monotonic()
        if now_m + 0.25 * self.interval_s < self._next_allowed:
            return None
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._poll()
        finally:
            self._lock.release()

    def _poll(self) -> bool:
        h = self.health
        t0 = time.perf_counter()
        try:
            res = self._collect(self.sink)
            if not isinstance(res, CollectResult):
                res = CollectResult()
        except Exception as e:  # noqa: BLE001 - isolation is the point
            dur = time.perf_counter() - t0
            self._failed(e, dur)
            return False
        dur = time.perf_counter() - t0
        now = time.time()
        was_failing = h.success is False
        failures = h.consecutive_failures
        failing_since = h.failing_since
        last_error = h.last_error
        h.success = True
        h.last_duration_s = dur
        h.last_success_ts = now
        h.polls_total += 1
        h.consecutive_failures = 0
        h.failing_since = 0.0
        h.error_kind = ""
        h.object_errors_total += len(res.errors)
        self._next_allowed = 0.0
        self._last_error_type = ""
        for err in res.errors:
            key = err[:200]
            if key not in self._seen_object_errors and len(self._seen_object_errors) < 200:
                self._seen_object_errors.add(key)
                log.warning("%s %s: %s", self.job_name, self.target, REDACTOR.apply(err))
        row_dicts = getattr(res, "row_dicts", None)  # rows a batching sink converts at its flush
        self.state.apply({**res.tables, **row_dicts} if row_dicts else res.tables)
        self.state.count_written(self.kind, res.rows)
        if was_failing:
            down = now - failing_since if failing_since else 0.0
            log.info(
                "%s %s: recovered after %d failed poll(s), %.0f s without data",
                self.job_name, self.target, failures, down,
            )
            if self.kind in GAP_KINDS and down > 2 * self.interval_s:
                self._record_gap(failing_since, now, last_error)
        if self._after is not None:
            try:
                self._after(res)
            except Exception as e:  # noqa: BLE001
                log.warning("%s %s: after-poll hook failed: %s", self.job_name, self.target, summarize(e))
        return True

    def _failed(self, e: BaseException, dur: float) -> None:
        h = self.health
        now = time.time()
        summary = summarize(e)
        first = h.success is not False
        h.success = False
        h.last_duration_s = dur
        h.polls_total += 1
        h.errors_total += 1
        h.consecutive_failures += 1
        if first:
            h.failing_since = h.last_success_ts or now
        h.last_error = summary
        h.error_kind = str(getattr(e, "kind", "") or "")
        etype = type(e).__name__
        backoff = self.backoff_s(h.consecutive_failures)
        self._next_allowed = time.monotonic() + backoff
        # an error its source already logged (a refused vCenter login: one line per vCenter,
        # not one per job) is counted, not logged again
        if (first or etype != self._last_error_type) and not getattr(e, "logged", False):
            log.warning(
                "%s %s: poll failed: %s (retrying with backoff up to %.0f s; logged again only when this changes)",
                self.job_name, self.target, summary, self.max_backoff_s,
            )
        self._last_error_type = etype

    def _record_gap(self, start: float, end: float, reason: str) -> None:
        row = {
            "gap_start": dt.datetime.fromtimestamp(start, dt.UTC),
            "gap_end": dt.datetime.fromtimestamp(end, dt.UTC),
            "source": self.kind,
            "target": self.target,
            "reason": reason,
        }
        try:
            self.sink.append("collection_gap", [row])
        except Exception as e:  # noqa: BLE001
            log.warning("%s %s: could not record the gap: %s", self.kind, self.target, summarize(e))

    def close(self) -> None:
        self.closed = True
        if self._close is not None:
            try:
                self._close()
            except Exception as e:  # noqa: BLE001
                log.debug("%s %s: close failed: %s", self.kind, self.target, summarize(e))


class JobRunner:
    """A housekeeping job (flush, compaction, retention, findings): same success/duration bookkeeping."""

    def __init__(self, name: str, fn: Callable[[], Any], state: DaemonState, *, quiet_errors: bool = False) -> None:
        self.name = name
        self._fn = fn
        self.state = state
        self.health = state.job(name)
        self._failing = False
        self._last_type = ""
        self.quiet_errors = quiet_errors

    def __call__(self) -> bool:
        h = self.health
        t0 = time.perf_counter()
        try:
            self._fn()
        except Exception as e:  # noqa: BLE001
            h.success = False
            h.last_duration_s = time.perf_counter() - t0
            h.runs_total += 1
            h.errors_total += 1
            etype = type(e).__name__
            if not self.quiet_errors and (not self._failing or etype != self._last_type):
                log.warning("job %s failed: %s (logged again only when this changes)", self.name, summarize(e))
            self._failing, self._last_type = True, etype
            return False
        h.success = True
        h.last_duration_s = time.perf_counter() - t0
        h.last_success_ts = time.time()
        h.runs_total += 1
        if self._failing:
            log.info("job %s: recovered", self.name)
        self._failing = False
        return True
