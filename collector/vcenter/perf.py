"""Realtime power and energy per VM and host: batched ``QueryPerf``, resumed from the last sample.

* Counters are looked up by name (``power.power.average``, ``power.energy.summation``); their
  ids differ between vCenter installs.
* Each entity resumes after its own last stored sample (``startTime`` = cursor, and only
  samples newer than the cursor are kept), so a missed poll loses nothing and a sample is
  never stored twice: energy is never double counted.
* vCenter keeps realtime (20 s) samples for one hour only.  When a cursor is older than that,
  the samples in between are gone: the hole is written to ``collection_gap`` instead of
  passing silently.
* Requests are written and answers parsed as raw XML: for a thousand entities pyVmomi's
  pure-Python (de)serialization would cost more than the server's work.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from pyVmomi import vmodl

from accelmon.collector.vcenter.session import VCenterSession

POWER = "power.power.average"
ENERGY = "power.energy.summation"
REALTIME_INTERVAL = 20
REALTIME_WINDOW = 3600  # seconds of realtime samples a host keeps (180 × 20 s)
# a never-seen entity starts with its last minute; from then on every sample is read.  (Reading
# the whole hour for 1,200 entities costs seconds; after a restart the saved cursors still
# resume up to the full hour.)
FIRST_POLL_BACKFILL = 60
# entities per QueryPerf: realtime queries go to the hosts' stats and are not subject to
# vpxd.stats.maxQueryMetrics (that limit is for historical intervals)
BATCH = 400

_NS = "{urn:vim25}"
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


@dataclass
class PowerSample:
    moref: str
    kind: str  # VirtualMachine | HostSystem
    ts: float  # Unix seconds, end of the interval
    interval: int
    power_watts: float | None
    energy_joules: float | None


@dataclass
class PerfPoll:
    samples: list[PowerSample] = field(default_factory=list)
    queried: int = 0
    calls: int = 0


def counter_ids(perf_counters: Iterable[Any], names: Sequence[str] = (POWER, ENERGY)) -> dict[str, int]:
    """``group.name.rollup`` → counter key, for the wanted names (from ``perfManager.perfCounter``)."""
    want = set(names)
    out: dict[str, int] = {}
    for c in perf_counters:
        name = f"{c.groupInfo.key}.{c.nameInfo.key}.{c.rollupType}"
        if name in want and name not in out:
            out[name] = int(c.key)
    return out


def fetch_counter_ids(session: VCenterSession, names: Sequence[str] = (POWER, ENERGY)) -> dict[str, int]:
    """Counter ids by name from ``perfManager.perfCounter``, read as raw XML (a vCenter has
    hundreds of counters; pyVmomi takes most of a second to build objects for them)."""
    pcls = vmodl.query.PropertyCollector
    pm = session.content.perfManager
    spec = pcls.FilterSpec(
        objectSet=[pcls.ObjectSpec(obj=pm, skip=False)],
        propSet=[pcls.PropertySpec(type=type(pm), pathSet=["perfCounter"])],
    )
    xml = session.call(lambda: session.invoke_raw(session.content.propertyCollector, "RetrievePropertiesEx",
                                                  [spec], pcls.RetrieveOptions()))
    want = set(names)
    out: dict[str, int] = {}
    for c in ET.fromstring(xml).iter(f"{_NS}PerfCounterInfo"):
        name = ".".join((
            _text(c.find(f"{_NS}groupInfo/{_NS}key")),
            _text(c.find(f"{_NS}nameInfo/{_NS}key")),
            _text(c.find(f"{_NS}rollupType")),
        ))
        if name in want and name not in out:
            out[name] = int(_text(c.find(f"{_NS}key")))
    return out


def plan_start(cursor: float | None, now: float) -> float:
    """Where to start reading an entity: after its cursor, but not before the realtime window."""
    if cursor is None:
        return now - FIRST_POLL_BACKFILL
    return max(cursor, now - REALTIME_WINDOW)


def lost_stretch(last_poll_covered: float | None, now: float) -> tuple[float, float] | None:
    """The stretch vCenter no longer has, when the previous successful poll (which covered up
    to ``last_poll_covered``) is older than the realtime window.  Per-entity cursors cannot
    tell this: a VM that was powered off has no samples, and that is not a loss."""
    if last_poll_covered is None:
        return None
    oldest = now - REALTIME_WINDOW
    if last_poll_covered < oldest - REALTIME_INTERVAL:
        return last_poll_covered, oldest
    return None


def _text(e: ET.Element | None) -> str:
    return (e.text or "").strip() if e is not None else ""


_FRAC_RE = re.compile(r"\.(\d+)")


def _parse_ts(s: str) -> float:
    """xsd:dateTime with any number of fraction digits (Go servers send nanoseconds)."""
    s = _FRAC_RE.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), s.strip(), count=1)
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


_RV_RE = re.compile(rb"<returnval\b[^>]*>(.*?)</returnval>", re.S)
_ENT_RE = re.compile(rb'<entity type="(\w+)">([^<]+)</entity>')
_SI_RE = re.compile(rb"<sampleInfo><timestamp>([^<]+)</timestamp><interval>(-?\d+)</interval></sampleInfo>")
_VAL_RE = re.compile(
    rb"<value\b[^>]*><id><counterId>(\d+)</counterId><instance>([^<]*)</instance></id>((?:<value>-?\d+</value>)*)</value>"
)
_NUM_RE = re.compile(rb"<value>(-?\d+)</value>")


def parse_query_perf(xml: bytes, counters: dict[str, int]) -> list[PowerSample]:
    """PerfEntityMetric answers → samples (``-1`` = no value).

    The common shape is read with byte patterns (a thousand entities per answer); anything
    else (CSV format, other element order) goes through ElementTree."""
    if b"sampleInfoCSV" in xml or b"<returnval" not in xml:
        return _parse_query_perf_et(xml, counters)
    by_id = {v: k for k, v in counters.items()}
    out: list[PowerSample] = []
    for rv in _RV_RE.finditer(xml):
        body = rv.group(1)
        ent = _ENT_RE.search(body)
        if ent is None:
            return _parse_query_perf_et(xml, counters)
        kind, moref = ent.group(1).decode(), ent.group(2).decode()
        infos = _SI_RE.findall(body)
        series: dict[str, list[int]] = {}
        for cid, inst, vals in _VAL_RE.findall(body):
            name = by_id.get(int(cid))
            if name is not None and not inst.strip():
                series[name] = [int(x) for x in _NUM_RE.findall(vals)]
        if body.count(b"<counterId>") != len(_VAL_RE.findall(body)):
            return _parse_query_perf_et(xml, counters)
        pw, en = series.get(POWER, []), series.get(ENERGY, [])
        for i, (ts, iv) in enumerate(infos):
            p = pw[i] if i < len(pw) and pw[i] >= 0 else None
            e = en[i] if i < len(en) and en[i] >= 0 else None
            if p is None and e is None:
                continue
            out.append(PowerSample(moref, kind, _parse_ts(ts.decode()), int(iv),
                                   float(p) if p is not None else None, float(e) if e is not None else None))
    return out


def _parse_query_perf_et(xml: bytes, counters: dict[str, int]) -> list[PowerSample]:
    """PerfEntityMetric / PerfEntityMetricCSV answers → samples, the general way."""
    by_id = {v: k for k, v in counters.items()}
    root = ET.fromstring(xml)
    out: list[PowerSample] = []
    for rv in root.iter(f"{_NS}returnval"):
        ent = rv.find(f"{_NS}entity")
        if ent is None:
            continue
        moref, kind = _text(ent), ent.get("type", "")
        times: list[float] = []
        intervals: list[int] = []
        csv = rv.find(f"{_NS}sampleInfoCSV")
        if csv is not None:
            parts = _text(csv).split(",")
            for i in range(0, len(parts) - 1, 2):
                intervals.append(int(parts[i]))
                times.append(_parse_ts(parts[i + 1]))
        else:
            for si in rv.iter(f"{_NS}sampleInfo"):
                times.append(_parse_ts(_text(si.find(f"{_NS}timestamp"))))
                intervals.append(int(_text(si.find(f"{_NS}interval")) or REALTIME_INTERVAL))
        series: dict[str, list[float | None]] = {}
        for val in rv.findall(f"{_NS}value"):
            mid = val.find(f"{_NS}id")
            if mid is None:
                continue
            cid = int(_text(mid.find(f"{_NS}counterId")) or -1)
            name = by_id.get(cid)
            if name is None or _text(mid.find(f"{_NS}instance")):
                continue
            if csv is not None:
                raw = [x for x in _text(val.find(f"{_NS}value")).split(",") if x != ""]
            else:
                raw = [_text(v) for v in val.findall(f"{_NS}value")]
            series[name] = [None if (x == "" or int(x) < 0) else float(int(x)) for x in raw]
        pw, en = series.get(POWER, []), series.get(ENERGY, [])
        for i, t in enumerate(times):
            p = pw[i] if i < len(pw) else None
            e = en[i] if i < len(en) else None
            if p is None and e is None:
                continue
            out.append(PowerSample(moref, kind, t, intervals[i], p, e))
    return out


def query_power(
    session: VCenterSession,
    entities: Sequence[tuple[str, str]],
    cursors: dict[str, float],
    counters: dict[str, int],
    now: float,
    batch: int = BATCH,
) -> PerfPoll:
    """Read new power/energy samples of ``entities`` (``(moref, type)``) after their cursors.

    Does not advance ``cursors``: the caller does that once the samples are stored."""
    res = PerfPoll()
    if not entities or not counters:
        return res
    pm = session.content.perfManager
    mids = "".join(f"<metricId><counterId>{c}</counterId><instance></instance></metricId>" for c in counters.values())
    specs: list[str] = []
    for moref, kind in entities:
        start = plan_start(cursors.get(moref), now)
        n = min(REALTIME_WINDOW // REALTIME_INTERVAL, max(1, math.ceil((now - start) / REALTIME_INTERVAL) + 1))
        t = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        specs.append(
            f'<querySpec><entity type="{escape(kind)}">{escape(moref)}</entity><startTime>{t}</startTime>'
            f"<maxSample>{n}</maxSample>{mids}<intervalId>{REALTIME_INTERVAL}</intervalId>"
            f"<format>normal</format></querySpec>"
        )
    res.queried = len(specs)
    head = f'<QueryPerf xmlns="urn:vim25"><_this type="PerformanceManager">{escape(pm._moId)}</_this>'
    bodies = [(head + "".join(specs[i : i + batch]) + "</QueryPerf>").encode() for i in range(0, len(specs), batch)]

    def one(body: bytes) -> list[PowerSample]:
        return parse_query_perf(session.call(lambda: session.invoke_raw(pm, "QueryStats", body=body)), counters)

    # two requests in flight: the server works on one batch while the other is parsed
    with ThreadPoolExecutor(min(2, len(bodies)), thread_name_prefix="vcenter-perf") as ex:
        answers = list(ex.map(one, bodies))
    res.calls += len(bodies)
    for s in (x for a in answers for x in a):
        c = cursors.get(s.moref)
        if c is not None and s.ts <= c:
            continue  # already stored (the start time is inclusive on some servers)
        if c is None and s.ts <= now - FIRST_POLL_BACKFILL - REALTIME_INTERVAL:
            continue
        res.samples.append(s)
    res.samples.sort(key=lambda s: (s.moref, s.ts))
    # dedupe (a server may repeat a sample at a batch border)
    uniq: list[PowerSample] = []
    for s in res.samples:
        if uniq and uniq[-1].moref == s.moref and uniq[-1].ts == s.ts:
            continue
        uniq.append(s)
    res.samples = uniq
    return res
