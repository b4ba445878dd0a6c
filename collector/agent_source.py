"""Daemon-side source for accelmon guest agents: scrape ``/metrics``, store rows.

One :class:`AgentSource` per agent URL.  A scrape has a hard deadline and a body size limit
(the body is streamed and the read aborted past either), the text is parsed by
:mod:`accelmon.collector.promtext` (a strict text-format 0.0.4 parser, ~10x faster than
prometheus_client's), and rows go to ``gpu_sample`` (counters in the store's integer
units: ms, bytes, mJ), ``nvlink_sample`` and ``agent_gpu`` (identity, only when it changed).
Garbage, a hang or an oversized body raise :class:`ScrapeError` (one line, names the URL, no
credentials) and nothing of that scrape is written.

:func:`fetch_metrics_text` and :func:`parse_metrics` are shared with the dcgm-exporter and
nvidia_gpu_exporter sources (:mod:`accelmon.collector.exporters`).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import requests
from requests.adapters import HTTPAdapter

from accelmon.collector.base import CollectResult, SourceJob
from accelmon.collector.deadline import Deadline
from accelmon.collector.promtext import PromTextError, Sample, parse
from accelmon.store.schema import table
from accelmon.store.sink import RowSink, StoreWriter
from accelmon.store.writer import to_arrow

DEFAULT_MAX_BODY = 16 * 1024 * 1024
_CHUNK = 16 * 1024


class ScrapeError(Exception):
    """A scrape that produced nothing usable. The message is one line and names the target."""


def redact_url(url: str) -> str:
    """The URL without user:password (for messages, labels and the store)."""
    u = urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, u.path, "", ""))


def fetch_metrics_text(
    session: requests.Session,
    url: str,
    *,
    token: str | None = None,
    timeout: float = 5.0,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    verify: bool | str = True,
) -> str:
    """GET a Prometheus text endpoint within ``timeout`` seconds in total and ``max_body_bytes``."""
    target = redact_url(url)
    headers = {"Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1", "Accept-Encoding": "gzip"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    deadline = time.monotonic() + timeout
    expired = threading.Event()
    resp: requests.Response | None = None

    def kill() -> None:  # a server that drips bytes: shut the socket under the reader
        expired.set()
        if resp is not None:
            _shutdown(resp)

    timer = Deadline(timeout, kill)
    try:
        try:
            resp = session.get(
                url, headers=headers, stream=True, timeout=(timeout, timeout), verify=verify, allow_redirects=False
            )
        except requests.exceptions.SSLError as e:
            raise ScrapeError(f"{target}: TLS error: {_first_line(e)}") from None
        except requests.exceptions.Timeout:
            raise ScrapeError(f"{target}: no answer within {timeout:g} s") from None
        except requests.exceptions.RequestException as e:
            raise ScrapeError(f"{target}: cannot connect: {_first_line(e)}") from None
        if expired.is_set():
            resp.close()
            raise ScrapeError(f"{target}: no complete answer within {timeout:g} s")
        if resp.status_code in (401, 403):
            resp.close()
            raise ScrapeError(f"{target}: HTTP {resp.status_code}: bearer token missing or wrong")
        if resp.status_code != 200:
            resp.close()
            raise ScrapeError(f"{target}: HTTP {resp.status_code}")
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes and "gzip" not in resp.headers.get(
            "Content-Encoding", ""
        ):
            resp.close()
            raise ScrapeError(f"{target}: body of {int(declared)} bytes exceeds the limit of {max_body_bytes}")
        buf = bytearray()
        try:
            for chunk in _chunks(resp):
                buf += chunk
                if len(buf) > max_body_bytes:
                    raise ScrapeError(f"{target}: body exceeds the limit of {max_body_bytes} bytes; aborted")
                if time.monotonic() > deadline:
                    raise ScrapeError(f"{target}: no complete answer within {timeout:g} s")
        except ScrapeError:
            resp.close()
            raise
        except (requests.exceptions.RequestException, OSError, AttributeError, ValueError) as e:
            resp.close()
            if expired.is_set():
                raise ScrapeError(f"{target}: no complete answer within {timeout:g} s") from None
            raise ScrapeError(f"{target}: connection broke while reading: {_first_line(e)}") from None
        if expired.is_set():
            raise ScrapeError(f"{target}: no complete answer within {timeout:g} s")
        resp.close()
    finally:
        timer.cancel()
    try:
        return buf.decode("utf-8")
    except UnicodeDecodeError:
        raise ScrapeError(f"{target}: body is not UTF-8 text") from None


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    """Body chunks as soon as bytes arrive (``read1``), so the caller can check its deadline often."""
    raw = resp.raw
    if not hasattr(raw, "read1"):  # urllib3 < 2
        yield from resp.iter_content(_CHUNK)
        return
    while True:
        chunk = raw.read1(_CHUNK, decode_content=True)
        if not chunk:  # EOF
            return
        yield chunk


def _shutdown(resp: requests.Response) -> None:
    """Wake a reader blocked in recv(): shut the socket down (close() alone leaves the fd open)."""
    conn = getattr(resp.raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        resp.close()
    except Exception:  # noqa: BLE001 - best effort from a timer thread
        pass


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def parse_metrics(text: str, target: str) -> dict[str, list[Sample]]:
    """Prometheus text → samples by sample name (as written). Raises ScrapeError on anything unparsable."""
    try:
        return parse(text)
    except PromTextError as e:
        raise ScrapeError(f"{target}: not Prometheus text format: {_first_line(e)}") from None


def finite_or_none(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


_INT_MAX = {16: 2**15 - 1, 32: 2**31 - 1, 64: 2**63 - 1}


class OutOfRange(ValueError):
    """A number that does not fit its store column (the scrape is garbage)."""


def scaled_int(v: float | None, scale: float = 1.0, bits: int = 64) -> int | None:
    """``round(v * scale)`` as an int of the store's column width; None when absent or not
    finite. Out of range raises :class:`OutOfRange`: checked here, so a batch converted later
    (the daemon's write buffer) can never fail on it."""
    v = finite_or_none(v)
    if v is None:
        return None
    out = int(round(v * scale))
    if not -_INT_MAX[bits] <= out <= _INT_MAX[bits]:
        raise OutOfRange(f"value {v:g} does not fit the store's {bits}-bit column")
    return out


def small_int(text: str | None) -> int | None:
    """A label such as ``gpu="0"`` or ``numa_node="-1"`` as an int16, else None."""
    if not text or not text.lstrip("-").isdigit() or len(text) > 6:
        return None
    n = int(text)
    return n if -_INT_MAX[16] <= n <= _INT_MAX[16] else None


def new_session() -> requests.Session:
    """An HTTP session for one scrape target: one kept-alive connection, and no environment
    proxies, ``.netrc`` or CA variables (``trust_env = False``; like Prometheus, a scrape
    goes straight to the target; TLS trust comes from the config's ``ca_bundle``). Skipping
    the environment lookups also saves ~0.2 ms per scrape."""
    s = requests.Session()
    s.trust_env = False
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


@dataclass
class _Gpu:
    labels: dict[str, str]
    up: bool = True
    info: dict[str, str] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    nvlink: dict[int, dict[str, float]] = field(default_factory=dict)


# agent metric (sample name) -> key
_AGENT_VALUES = {
    "accelmon_gpu_busy_seconds_total": "busy",
    "accelmon_gpu_idle_seconds_total": "idle",
    "accelmon_gpu_utilization_ratio": "util",
    "accelmon_gpu_memory_utilization_ratio": "mem_util",
    "accelmon_gpu_fb_used_bytes": "fb_used",
    "accelmon_gpu_fb_total_bytes": "fb_total",
    "accelmon_gpu_pcie_tx_bytes_total": "pcie_tx",
    "accelmon_gpu_pcie_rx_bytes_total": "pcie_rx",
    "accelmon_gpu_power_watts": "power",
    "accelmon_gpu_energy_joules_total": "energy",
    # GPM activity (collector/agent/gpm.py): absent where the GPU cannot report it (stored NULL, never 0)
    "accelmon_gpu_sm_active_seconds_total": "sm_active",
    "accelmon_gpu_tensor_active_seconds_total": "tensor_active",
    "accelmon_gpu_dram_active_seconds_total": "dram_active",
    "accelmon_gpu_sm_occupancy_ratio": "sm_occupancy",
}


def _tables(rows: dict[str, list[dict[str, Any]]]) -> dict[str, pa.Table]:
    return {name: to_arrow(table(name), r) for name, r in rows.items() if r}


@dataclass
class RowsResult(CollectResult):
    """A poll whose rows went to a row-batching sink (the daemon's write buffer) as dicts:
    ``row_dicts`` holds them by table (``tables`` stays empty; nothing was converted)."""

    row_dicts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def emit_rows(store: StoreWriter, rows: dict[str, list[dict[str, Any]]]) -> CollectResult:
    """Hand a poll's rows to ``store``. A sink with ``append_rows`` (the daemon's write buffer)
    takes the dicts as they are and converts the rows of all polls in one batch when it
    flushes (one ``to_arrow`` per table and flush instead of per poll: ~1 ms saved per agent);
    a plain :class:`Store` gets typed tables now, all built before any is written."""
    if not isinstance(store, RowSink):
        return write_tables(store, _tables(rows))
    res = RowsResult()
    for name, r in rows.items():
        if r:
            res.add(name, store.append_rows(name, r))
            res.row_dicts[name] = r
    return res


def write_tables(store: StoreWriter, tables: dict[str, pa.Table]) -> CollectResult:
    """Append already-validated tables; the caller built all of them first (nothing half-built is written)."""
    res = CollectResult()
    for name, t in tables.items():
        n = store.append(name, t)
        res.add(name, n)
        res.tables[name] = t
    return res


class MetricsEndpointSource:
    """A source that scrapes one Prometheus-text ``/metrics`` endpoint (accelmon agent,
    dcgm-exporter, nvidia_gpu_exporter): bounded fetch, parse to rows, all-or-nothing append.

    Subclasses implement ``_rows(text, scraped_at)``; its ``agent_gpu`` rows carry a ``_key``
    (the identity tuple) so an unchanged identity is not written again."""

    name = "endpoint"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        verify: bool | str = True,
    ) -> None:
        if not url.rstrip("/").endswith("/metrics"):
            url = url.rstrip("/") + "/metrics"
        self.url = url
        self.target = redact_url(url)
        self.token = token
        self.timeout = float(timeout)
        self.max_body_bytes = int(max_body_bytes)
        self.verify = verify
        self._session = new_session()
        self._identity: dict[str, tuple[Any, ...]] = {}

    def close(self) -> None:
        self._session.close()

    def scrape(self) -> tuple[str, float]:
        text = fetch_metrics_text(
            self._session, self.url, token=self.token, timeout=self.timeout,
            max_body_bytes=self.max_body_bytes, verify=self.verify,
        )
        return text, time.time()

    def rows(self, text: str, scraped_at: float) -> dict[str, list[dict[str, Any]]]:
        """Parse /metrics text into store rows (no I/O). Raises ScrapeError."""
        try:
            return self._rows(text, scraped_at)
        except OutOfRange as e:
            raise ScrapeError(f"{self.target}: {e}") from None

    def _rows(self, text: str, scraped_at: float) -> dict[str, list[dict[str, Any]]]:
        raise NotImplementedError

    def jobs(self, interval_s: float) -> list[SourceJob]:
        """One schedule: a scrape every ``interval_s`` seconds."""
        return [SourceJob(self.name, interval_s, self.collect)]

    def collect(self, store: StoreWriter) -> CollectResult:
        text, at = self.scrape()
        rows = self.rows(text, at)
        keys = [(r["gpu_uuid"], r.pop("_key")) for r in rows["agent_gpu"]]
        res = emit_rows(store, rows)
        for uuid, key in keys:
            self._identity[uuid] = key
        return res


class AgentSource(MetricsEndpointSource):
    """Scrapes one accelmon agent. ``name = "agent"``; ``target`` is the URL without credentials."""

    name = "agent"

    def _rows(self, text: str, scraped_at: float) -> dict[str, list[dict[str, Any]]]:
        m = parse_metrics(text, self.target)
        info = m.get("accelmon_agent_info")
        if not info:
            raise ScrapeError(f"{self.target}: not an accelmon agent (no accelmon_agent_info)")
        agent = info[0].labels
        vm_uuid = agent.get("vm_bios_uuid") or None
        hostname = agent.get("Hostname") or None
        age = 0.0
        if m.get("accelmon_agent_poll_age_seconds"):
            age = finite_or_none(m["accelmon_agent_poll_age_seconds"][0].value) or 0.0
            age = min(max(age, 0.0), 3600.0)
        ts = scraped_at - age
        gpus: dict[str, _Gpu] = {}

        def gpu(labels: dict[str, str]) -> _Gpu | None:
            uuid = labels.get("UUID")
            if not uuid:
                return None
            g = gpus.get(uuid)
            if g is None:
                g = gpus[uuid] = _Gpu(labels)
            return g

        for s in m.get("accelmon_gpu_up", []):
            g = gpu(s.labels)
            if g is not None:
                g.up = s.value == 1.0
        for s in m.get("accelmon_gpu_info", []):
            g = gpu(s.labels)
            if g is not None:
                g.info = s.labels
        for name, key in _AGENT_VALUES.items():
            for s in m.get(name, []):
                g = gpu(s.labels)
                if g is not None:
                    g.values[key] = s.value
        for name, key in (("accelmon_gpu_nvlink_tx_bytes_total", "tx"), ("accelmon_gpu_nvlink_rx_bytes_total", "rx")):
            for s in m.get(name, []):
                g = gpu(s.labels)
                link = s.labels.get("link", "")
                n = small_int(link)
                if g is not None and n is not None and n >= 0:
                    g.nvlink.setdefault(n, {})[key] = s.value
        samples, links, idents = [], [], []
        for uuid, g in gpus.items():
            if not g.up:
                continue
            v = g.values
            util = finite_or_none(v.get("util"))
            mem_util = finite_or_none(v.get("mem_util"))
            occ = finite_or_none(v.get("sm_occupancy"))
            row = {
                "ts": ts,
                "gpu_uuid": uuid,
                "source": "agent",
                "vm_bios_uuid": vm_uuid,
                "util_percent": None if util is None else util * 100.0,
                "mem_util_percent": None if mem_util is None else mem_util * 100.0,
                "busy_ms_total": scaled_int(v.get("busy"), 1000.0),
                "idle_ms_total": scaled_int(v.get("idle"), 1000.0),
                "fb_used_bytes": scaled_int(v.get("fb_used")),
                "fb_total_bytes": scaled_int(v.get("fb_total")),
                "pcie_tx_bytes_total": scaled_int(v.get("pcie_tx")),
                "pcie_rx_bytes_total": scaled_int(v.get("pcie_rx")),
                "power_milliwatts": scaled_int(v.get("power"), 1000.0, bits=32),
                "energy_millijoules_total": scaled_int(v.get("energy"), 1000.0),
                # the agent exports activity as counters (+ occupancy); the per-period activity gauges
                # (sm/tensor/dram_active_percent) come from DCGM sources, derived here they would
                # only repeat the counters
                "sm_occupancy_percent": None if occ is None else occ * 100.0,
                "sm_active_ms_total": scaled_int(v.get("sm_active"), 1000.0),
                "tensor_active_ms_total": scaled_int(v.get("tensor_active"), 1000.0),
                "dram_active_ms_total": scaled_int(v.get("dram_active"), 1000.0),
            }
            if any(row[k] is not None for k in row if k not in ("ts", "gpu_uuid", "source", "vm_bios_uuid")):
                samples.append(row)
            for link, tr in sorted(g.nvlink.items()):
                links.append({
                    "ts": ts, "gpu_uuid": uuid, "link": link,
                    "tx_bytes_total": scaled_int(tr.get("tx")), "rx_bytes_total": scaled_int(tr.get("rx")),
                })
            if g.info:
                i = g.info
                ident = {
                    "agent_url": self.target,
                    "vm_bios_uuid": vm_uuid,
                    "hostname": hostname,
                    "gpu_uuid": uuid,
                    "gpu_index": small_int(i.get("gpu")),
                    "pci_bus_id": i.get("pci_bus_id") or None,
                    "model_name": i.get("model_name") or i.get("modelName") or None,
                    "serial": i.get("serial") or None,
                    "driver_version": i.get("driver_version") or agent.get("driver_version") or None,
                    "virtualization_mode": i.get("virtualization_mode") or None,
                    "vgpu_profile": i.get("vgpu_profile") or None,
                    "mig_mode": {"enabled": True, "disabled": False}.get(i.get("mig_mode", "")),
                    "activity_source": i.get("activity_source") or None,  # gpm | none; older agents: NULL
                    "numa_node": small_int(i.get("numa_node")),
                    "fb_total_bytes": scaled_int(v.get("fb_total")),
                    "source": "agent",
                }
                key = tuple(ident.values())
                if self._identity.get(uuid) != key:
                    idents.append({"ts": ts, **ident, "_key": key})
        return {"gpu_sample": samples, "nvlink_sample": links, "agent_gpu": idents}

def rows_to_tables(rows: dict[str, Iterable[dict[str, Any]]]) -> dict[str, pa.Table]:
    return _tables({k: list(v) for k, v in rows.items()})
