"""The daemon's text-format parser (collector/promtext.py) against prometheus_client's parser:
same samples on everything the agent and the supported exporters emit, and clean errors on garbage."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from accelmon.collector.promtext import PromTextError, parse
from accelmon.sim.clock import ManualClock
from accelmon.sim.exporters import DCGM_PROF_FIELDS, dcgm_exporter_text, nvidia_gpu_exporter_text
from accelmon.sim.spec import PRESETS

from .conftest import agent_of, metrics_text, run_polls, sim_of

FIXTURES = Path(__file__).parent / "fixtures"

Flat = list[tuple[str, tuple[tuple[str, str], ...], float | str]]


def _v(x: float) -> float | str:
    return "NaN" if math.isnan(x) else x


def reference(text: str) -> Flat:
    """prometheus_client's samples, with its one renaming undone: it appends ``_total`` to the
    samples of a counter family whose name lacks it; we keep names as written (as Prometheus does)."""
    out: Flat = []
    counters = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ") and ln.split()[3:] == ["counter"]}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name = s.name
            if fam.type == "counter" and name.endswith("_total") and name[:-6] in counters:
                name = name[:-6]
            out.append((name, tuple(sorted(s.labels.items())), _v(float(s.value))))
    return sorted(out, key=repr)


def ours(text: str) -> Flat:
    return sorted(((s.name, tuple(sorted(s.labels.items())), _v(s.value)) for v in parse(text).values() for s in v),
                  key=repr)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_same_samples_as_prometheus_client_on_real_agent_output(preset: str) -> None:
    clock = ManualClock(1_700_000_000.0)
    sim = sim_of(preset, clock)
    agent = agent_of(sim, clock)
    run_polls(agent, clock, 5, 1.0)
    text = metrics_text(agent)
    got = ours(text)
    assert len(got) > 20
    assert got == reference(text)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.txt")))
def test_same_samples_on_exporter_fixtures(name: str) -> None:
    text = (FIXTURES / name).read_text()
    assert ours(text) == reference(text)


EDGE = r'''# a comment, then HELP/TYPE with odd text
# HELP m_total Help with \\ backslash and \n newline escapes.
# TYPE m_total counter
m_total{a="with \"quotes\"",b="back\\slash",c="new\nline",d="brace } and , comma"} 1
m_total{a="",b="x"} 2 1700000000000
# TYPE g gauge
g NaN
g{k="pos"} +Inf
g{k="neg"} -Inf
g{k="exp"} 1.5e-7
g{k="trailing comma",} -0
  g{ k = "blanks" , l="x" }   42   -5
g{} 3
untyped_no_type_line 7

h_bucket{le="0.1"} 1
h_bucket{le="+Inf"} 2
h_sum 0.3
h_count 2
'''


def test_edge_cases_match_and_unescape() -> None:
    got = parse(EDGE)
    m = {tuple(sorted(s.labels.items())): s.value for s in got["m_total"]}
    assert m[(("a", 'with "quotes"'), ("b", "back\\slash"), ("c", "new\nline"), ("d", "brace } and , comma"))] == 1
    assert math.isnan(got["g"][0].value) and got["g"][1].value == math.inf and got["g"][2].value == -math.inf
    assert got["g"][5].labels == {"k": "blanks", "l": "x"} and got["g"][5].value == 42
    assert got["g"][6].labels == {} and got["untyped_no_type_line"][0].value == 7
    assert [s.labels["le"] for s in got["h_bucket"]] == ["0.1", "+Inf"]
    assert ours(EDGE) == reference(EDGE)
    # unknown escapes are kept as written (as Prometheus and prometheus_client do)
    assert parse('x{a="c:\\temp"} 1\n')["x"][0].labels == {"a": "c:\\temp"}
    # CRLF line ends
    assert parse("x 1\r\ny 2\r\n")["y"][0].value == 2


def test_returned_labels_are_private_copies() -> None:
    a = parse('x{a="1"} 1\n')["x"][0]
    a.labels["a"] = "changed"
    assert parse('x{a="1"} 1\n')["x"][0].labels == {"a": "1"}


@pytest.mark.parametrize("text, what", [
    ("<html><body>It works!</body></html>", "not a sample line"),
    ('{"json": true}', "not a sample line"),
    ("this is { not prometheus text", "not a sample line"),
    ("x", "not a sample line"),
    ("x1", "not a sample line"),
    ("x{a=b} 1", "not a sample line"),
    ('x{a="b} 1', "not a sample line"),
    ('x{a="b"', "not a sample line"),
    ('x{0a="b"} 1', "not a sample line"),
    ('x{a="b",,c="d"} 1', "not a sample line"),
    ("1x 1", "not a sample line"),
    ("x 1 2 3", "not a sample line"),
    ("x 1 1.5", "not a sample line"),  # timestamps are integers
    ('x{a="b"} 1 # {trace_id="abc"} 1.0', "not a sample line"),  # an exemplar: OpenMetrics only
    ("x one", "invalid value"),
    ("x 1_000", "invalid value"),
    ('x{a="1",a="2"} 1', "duplicate label name"),
    ("# TYPE x countr", "unknown metric type"),
    ("# TYPE x", "unknown metric type"),
    ("# TYPE x gauge\nx 1\n# TYPE x gauge", "second TYPE line"),
    ("# HELP 0x text", "malformed HELP/TYPE"),
])
def test_garbage_is_rejected_with_the_line(text: str, what: str) -> None:
    with pytest.raises(PromTextError, match=what) as ei:
        parse("ok 1\n" + text + "\n")
    assert str(ei.value).startswith(f"line {text.count(chr(10)) + 2}: ") and "\n" not in str(ei.value)


@pytest.mark.parametrize("evil", [
    'x{a="b"' + " " * 100_000 + "," + " " * 100_000,
    "x{" + 'a="b",' * 200_000,
    'x{a="' + '\\"' * 500_000,
    "x{ " + 'a = "b" , ' * 100_000,
    "x" + " " * 200_000 + "{",
])
def test_hostile_lines_are_rejected(evil: str) -> None:
    # No timing assertion (benchmarks live in bench/); a backtracking regex would make this hang.
    with pytest.raises(PromTextError):
        parse(evil)


@pytest.mark.parametrize("preset", ["mixed", "mig"])
def test_same_samples_on_simulated_exporter_pages(preset: str) -> None:
    """The pages the daemon reads from dcgm-exporter and nvidia_gpu_exporter (simulated over the
    same NVML; profiling fields included): one parser, the same samples as prometheus_client's."""
    clock = ManualClock(1_700_000_000.0)
    sim = sim_of(preset, clock)
    sim.nvmlInit()
    clock.advance(60.0)
    for text in (dcgm_exporter_text(sim, prof_fields=DCGM_PROF_FIELDS), nvidia_gpu_exporter_text(sim)):
        got = ours(text)
        assert len(got) > 5
        assert got == reference(text)
