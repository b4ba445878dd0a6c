"""QueryPerf answer parsing and the resume/gap rules (no server needed)."""

from __future__ import annotations

import pytest

from accelmon.collector.vcenter.perf import (
    ENERGY,
    POWER,
    REALTIME_WINDOW,
    _parse_query_perf_et,
    lost_stretch,
    parse_query_perf,
    plan_start,
)

COUNTERS = {POWER: 157, ENERGY: 159}
XSI = 'xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"'
ANSWER = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    '<soapenv:Body><QueryPerfResponse xmlns="urn:vim25">'
    f'<returnval {XSI} XMLSchema-instance:type="PerfEntityMetric"><entity type="VirtualMachine">vm-47</entity>'
    "<sampleInfo><timestamp>2026-11-26T00:45:20Z</timestamp><interval>20</interval></sampleInfo>"
    "<sampleInfo><timestamp>2026-11-26T00:45:40.123456789Z</timestamp><interval>20</interval></sampleInfo>"
    '<value XMLSchema-instance:type="PerfMetricIntSeries"><id><counterId>157</counterId><instance></instance></id>'
    "<value>81</value><value>-1</value></value>"
    '<value XMLSchema-instance:type="PerfMetricIntSeries"><id><counterId>159</counterId><instance></instance></id>'
    "<value>1630</value><value>-1</value></value></returnval>"
    f'<returnval {XSI} XMLSchema-instance:type="PerfEntityMetric"><entity type="HostSystem">host-17</entity>'
    "<sampleInfo><timestamp>2026-11-26T00:45:40Z</timestamp><interval>20</interval></sampleInfo>"
    '<value XMLSchema-instance:type="PerfMetricIntSeries"><id><counterId>157</counterId><instance></instance></id>'
    "<value>1163</value></value>"
    '<value XMLSchema-instance:type="PerfMetricIntSeries"><id><counterId>159</counterId><instance></instance></id>'
    "<value>23251</value></value></returnval>"
    "</QueryPerfResponse></soapenv:Body></soapenv:Envelope>"
).encode()


def test_fast_and_general_parsers_agree() -> None:
    fast = parse_query_perf(ANSWER, COUNTERS)
    assert fast == _parse_query_perf_et(ANSWER, COUNTERS)
    assert [(s.moref, s.kind, s.power_watts, s.energy_joules, s.interval) for s in fast] == [
        ("vm-47", "VirtualMachine", 81.0, 1630.0, 20),  # the -1 (no value) sample is dropped
        ("host-17", "HostSystem", 1163.0, 23251.0, 20),
    ]
    assert fast[1].ts == pytest.approx(1795653940.0)


def test_csv_format_parsed() -> None:
    csv = (
        b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
        b'<QueryPerfResponse xmlns="urn:vim25"><returnval><entity type="HostSystem">host-9</entity>'
        b"<sampleInfoCSV>20,2026-11-26T00:45:20Z,20,2026-11-26T00:45:40Z</sampleInfoCSV>"
        b"<value><id><counterId>157</counterId><instance></instance></id><value>500,510</value></value>"
        b"<value><id><counterId>159</counterId><instance></instance></id><value>10000,10200</value></value>"
        b"</returnval></QueryPerfResponse></soapenv:Body></soapenv:Envelope>"
    )
    got = parse_query_perf(csv, COUNTERS)
    assert [(s.power_watts, s.energy_joules) for s in got] == [(500.0, 10000.0), (510.0, 10200.0)]


def test_resume_and_gap_rules() -> None:
    now = 1_000_000.0
    assert plan_start(None, now) == now - 60  # a new entity: its last minute
    assert plan_start(now - 40, now) == now - 40  # resume at the cursor
    assert plan_start(now - 7200, now) == now - REALTIME_WINDOW  # vCenter has no more than 1 h
    assert lost_stretch(None, now) is None
    assert lost_stretch(now - 3000, now) is None  # within the window: nothing lost
    assert lost_stretch(now - 7200, now) == (now - 7200, now - REALTIME_WINDOW)
