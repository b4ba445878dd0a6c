"""History from a Prometheus server that already scrapes dcgm-exporter (``accelmon backfill``).

``query_range`` over ``[now - since, now]`` at ``step`` for

=========================================  ===========================================
DCGM series                                gpu_sample column
=========================================  ===========================================
``DCGM_FI_DEV_GPU_UTIL`` (%)               ``util_percent``
``DCGM_FI_DEV_MEM_COPY_UTIL`` (%)          ``mem_util_percent``
``DCGM_FI_DEV_FB_USED`` (MiB)              ``fb_used_bytes`` (× 2^20)
``DCGM_FI_DEV_FB_FREE`` + ``_RESERVED``    ``fb_total_bytes`` (used + free + reserved, × 2^20)
``DCGM_FI_DEV_POWER_USAGE`` (W)            ``power_milliwatts`` (× 1000)
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``   ``energy_millijoules_total`` (already mJ)
``DCGM_FI_PROF_SM_ACTIVE`` (ratio 0–1)     ``sm_active_percent`` (× 100)
``DCGM_FI_PROF_SM_OCCUPANCY`` (ratio)      ``sm_occupancy_percent`` (× 100)
``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE``        ``tensor_active_percent`` (× 100)
``DCGM_FI_PROF_DRAM_ACTIVE`` (ratio)       ``dram_active_percent`` (× 100)
=========================================  ===========================================

rows with ``source = 'prometheus'``, one per GPU (label ``UUID``, as dcgm-exporter sets it)
and step; a MIG instance's series (label ``GPU_I_ID``) go to ``<UUID>/GI<GPU_I_ID>``, the id
the dcgm-exporter source (collector/exporters.py) gives the same instance.  The profiling
ratios are the same series names dcgm-exporter serves (``etc/dcp-metrics-included.csv``;
SM_ACTIVE and SM_OCCUPANCY only where the site enabled them); a series Prometheus does not
hold leaves its column NULL, never 0, and ``*_active_ms_total`` stay NULL (a sampled gauge
cannot tell active time). Requests are chunked so no series exceeds Prometheus' 11,000 points per query.
Re-running is safe: rows at or before the newest already-imported sample of a GPU are skipped.
Busy/idle counters are left null: a sampled utilization gauge cannot tell busy time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse, urlunparse

import pyarrow as pa
import requests
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from accelmon.collector.base import CollectResult
from accelmon.errors import UserError
from accelmon.store.schema import table
from accelmon.store.writer import to_arrow

log = logging.getLogger(__name__)

MIB = 1 << 20
MAX_POINTS = 10_000  # Prometheus refuses > 11,000 points per series


@dataclass(frozen=True)
class Field:
    metric: str
    column: str
    scale: float


FIELDS = (
    Field("DCGM_FI_DEV_GPU_UTIL", "util_percent", 1.0),
    Field("DCGM_FI_DEV_MEM_COPY_UTIL", "mem_util_percent", 1.0),
    Field("DCGM_FI_DEV_FB_USED", "fb_used_bytes", MIB),
    Field("DCGM_FI_DEV_FB_FREE", "_fb_free", MIB),
    Field("DCGM_FI_DEV_FB_RESERVED", "_fb_reserved", MIB),
    Field("DCGM_FI_DEV_POWER_USAGE", "power_milliwatts", 1000.0),
    Field("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "energy_millijoules_total", 1.0),
    # DCGM profiling ratios 0–1 -> percent (the same mapping as the dcgm-exporter source)
    Field("DCGM_FI_PROF_SM_ACTIVE", "sm_active_percent", 100.0),
    Field("DCGM_FI_PROF_SM_OCCUPANCY", "sm_occupancy_percent", 100.0),
    Field("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "tensor_active_percent", 100.0),
    Field("DCGM_FI_PROF_DRAM_ACTIVE", "dram_active_percent", 100.0),
)
_PERCENT_COLS = ("util_percent", "mem_util_percent", "sm_active_percent", "sm_occupancy_percent",
                 "tensor_active_percent", "dram_active_percent")
# a row is kept when it carries at least one of these (not a lone energy or free-memory point)
_ROW_COLS = ("util_percent", "fb_used_bytes", "power_milliwatts", "sm_active_percent", "sm_occupancy_percent",
             "tensor_active_percent", "dram_active_percent")

_INT_COLS = {"fb_used_bytes", "_fb_free", "_fb_reserved", "power_milliwatts", "energy_millijoules_total"}


def safe_url(url: str) -> str:
    """The URL without user:password, for messages."""
    u = urlparse(url)
    if u.username or u.password:
        host = u.hostname or ""
        if u.port:
            host += f":{u.port}"
        u = u._replace(netloc=host)
    return urlunparse(u)


def gpu_key(labels: dict[str, str]) -> str:
    """GPU identity of a DCGM series: ``UUID`` (dcgm-exporter), else ``uuid``, else instance/gpu;
    a MIG instance (``GPU_I_ID``) is ``<that>/GI<GPU_I_ID>``, as the dcgm-exporter source stores it."""
    gpu = next((labels[k] for k in ("UUID", "uuid", "gpu_uuid") if labels.get(k)), None)
    if gpu is None:
        gpu = f"{labels.get('instance', '?')}/gpu{labels.get('gpu', labels.get('minor_number', '?'))}"
    gi = labels.get("GPU_I_ID", "")
    return f"{gpu}/GI{gi}" if gi else gpu


class PrometheusClient:
    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        u = urlparse(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise UserError(f'--prometheus: not a URL: "{safe_url(url)}"')
        self.base = url.rstrip("/")
        self.shown = safe_url(self.base)
        self.auth = (u.username, u.password or "") if u.username else None
        if self.auth:
            self.base = safe_url(self.base)
        self.timeout = timeout
        self.http = requests.Session()

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        try:
            r = self.http.get(
                f"{self.base}/api/v1/query_range",
                params={"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
                timeout=self.timeout,
                auth=self.auth,
            )
        except requests.RequestException as e:
            raise UserError(f"backfill: cannot reach Prometheus at {self.shown}: {type(e).__name__}") from None
        try:
            body = r.json()
        except ValueError:
            raise UserError(f"backfill: {self.shown} did not answer like Prometheus (HTTP {r.status_code})") from None
        if r.status_code != 200 or body.get("status") != "success":
            raise UserError(f"backfill: {self.shown}: query {expr!r} failed: {body.get('error', r.status_code)}")
        return body["data"]["result"]  # type: ignore[no-any-return]


def _chunks(start: float, end: float, step: float) -> Iterator[tuple[float, float]]:
    span = step * (MAX_POINTS - 1)
    t = start
    while t <= end:
        e = min(t + span, end)
        yield t, e
        t = e + step


class PrometheusBackfillSource:
    """A Source (``collect(store)``) importing one time range of DCGM history."""

    name = "prometheus"

    def __init__(self, url: str, since_seconds: float, *, step_seconds: float = 60.0,
                 now: float | None = None, timeout: float = 60.0) -> None:
        if since_seconds <= 0:
            raise UserError("--since: must be positive")
        if step_seconds <= 0:
            raise UserError("--step: must be positive")
        self.client = PrometheusClient(url, timeout=timeout)
        self.target = self.client.shown
        self.since = since_seconds
        self.step = step_seconds
        self.now = now

    def plan(self) -> list[tuple[float, float]]:
        # on the step grid, so imported samples line up across GPUs and re-runs
        end = math.floor((self.now if self.now is not None else time.time()) / self.step) * self.step
        return list(_chunks(end - math.ceil(self.since / self.step) * self.step, end, self.step))

    def collect(self, store: Any, progress: Any = None, task: Any = None) -> CollectResult:
        res = CollectResult()
        done = _imported_until(store)
        for start, end in self.plan():
            data = self._chunk(start, end)
            t = self._rows(data, done)
            if t.num_rows:
                n = store.append("gpu_sample", t)
                res.add("gpu_sample", n)
            if progress is not None:
                progress.advance(task)
        return res

    def _chunk(self, start: float, end: float) -> dict[tuple[str, int], dict[str, Any]]:
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for f in FIELDS:
            for series in self.client.query_range(f.metric, start, end, self.step):
                uuid = gpu_key(series.get("metric", {}))
                for ts, val in series.get("values", []):
                    try:
                        v = float(val) * f.scale
                    except (TypeError, ValueError):
                        continue
                    if v != v or v in (float("inf"), float("-inf")):
                        continue
                    ms = int(round(float(ts) * 1000))
                    row = rows.setdefault((uuid, ms), {"gpu_uuid": uuid, "ts_ms": ms})
                    row[f.column] = int(round(v)) if f.column in _INT_COLS else v
        return rows

    def _rows(self, rows: dict[tuple[str, int], dict[str, Any]], done: dict[str, int]) -> pa.Table:
        out = []
        for (uuid, ms), r in sorted(rows.items()):
            if ms <= done.get(uuid, -1):
                continue
            if not any(c in r for c in _ROW_COLS):
                continue
            free = r.pop("_fb_free", None)
            reserved = r.pop("_fb_reserved", None)
            if free is not None and r.get("fb_used_bytes") is not None:
                r["fb_total_bytes"] = r["fb_used_bytes"] + free + (reserved or 0)
            for c in _PERCENT_COLS:
                if r.get(c) is not None:
                    r[c] = min(max(r[c], 0.0), 100.0)
            r["ts"] = r.pop("ts_ms") / 1000.0
            r["source"] = "prometheus"
            out.append(r)
        return to_arrow(table("gpu_sample"), out)

    def close(self) -> None:
        self.client.http.close()


def _imported_until(store: Any) -> dict[str, int]:
    """Newest imported sample (ms) per GPU, so a re-run adds only what is new."""
    con = store.connect(threads=1)
    try:
        rows = con.execute(
            "SELECT gpu_uuid, epoch_ms(max(ts)) FROM gpu_sample WHERE source = 'prometheus' GROUP BY gpu_uuid"
        ).fetchall()
    finally:
        con.close()
    return {u: int(ms) for u, ms in rows}


def run_backfill(store: Any, url: str, since_seconds: float, *, step_seconds: float = 60,
                 progress: bool = True) -> int:
    """``accelmon backfill --prometheus URL --since 7d``. Returns the exit code (0 ok, 1 no data)."""
    src = PrometheusBackfillSource(url, since_seconds, step_seconds=step_seconds)
    try:
        probe = src.client.query_range("count(DCGM_FI_DEV_GPU_UTIL)", *src.plan()[-1], src.step)
        del probe  # reachability and API check before the progress bar starts
        chunks = src.plan()
        if progress:
            with Progress(
                TextColumn("[bold]backfill[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), transient=False,
            ) as bar:
                task = bar.add_task(src.target, total=len(chunks))
                res = src.collect(store, bar, task)
        else:
            res = src.collect(store)
    finally:
        src.close()
    n = res.rows.get("gpu_sample", 0)
    if n == 0:
        log.warning("backfill: no new DCGM samples from %s in the last %.0f s", src.target, since_seconds)
        print(f"backfill: no new DCGM samples from {src.target}")
        return 1
    print(f"backfill: imported {n} GPU samples from {src.target}")
    return 0
