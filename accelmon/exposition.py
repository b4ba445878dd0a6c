"""The one writer of accelmon's ``/metrics`` text: the daemon's exporter and the guest agent both
build their families fresh per scrape in prometheus_client custom collectors, and this module
writes them in the Prometheus text format 0.0.4.

The bytes are exactly what ``prometheus_client.exposition.generate_latest`` writes for the same
families (HELP/TYPE lines, ``_total``/``_info`` naming, label names sorted, label values escaped
``\\\\``, ``\\"``, ``\\n``, values as ``floatToGoString``, OpenMetrics-only ``_created`` samples as a
gauge family after their family): tests compare the two byte for byte on the agent's and the
exporter's registries (tests/golden). It exists because ``generate_latest`` (prometheus_client
0.26) re-validates and re-escapes every label name of every sample: about five times slower on
the exporter's 2,000-GPU page (~50,000 samples; ``bench/promparse.py`` prints both, docs/metrics.md
has the figures). Here a label set is escaped once and cached, and :class:`FastFamily` keeps its
samples as (label string, values, value) rows.

Only legacy-valid metric and label names are written (``[a-zA-Z_:][a-zA-Z0-9_:]*``, all of
accelmon's), and no sample timestamps (accelmon never sets one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE", "FastFamily", "escape", "fmt_value", "label_string", "reference", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TYPE_AS = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
_CACHE_MAX = 500_000  # label sets that went away are dropped all at once past this


def escape(v: str) -> str:
    """A label value as the text format writes it."""
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def fmt_value(v: float | int) -> str:
    """``floatToGoString``, with the common case (finite, < 1e6) fast."""
    s = repr(float(v))
    if "e" in s or "n" in s or s.find(".") > 6:
        return floatToGoString(v)  # type: ignore[no-any-return]
    return s


def _braces(items: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(items))
    return "{" + body + "}" if body else ""


_by_names: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
_by_items: dict[tuple[tuple[str, str], ...], str] = {}


def label_string(names: Sequence[str], values: Iterable[str]) -> str:
    """``{a="1",b="2"}`` (names sorted, '' without labels); label sets are stable, so cached."""
    vals = tuple(values)
    key = (names if isinstance(names, tuple) else tuple(names), vals)
    s = _by_names.get(key)
    if s is None:
        s = _braces(zip(key[0], vals, strict=True))
        if len(_by_names) > _CACHE_MAX:
            _by_names.clear()
        _by_names[key] = s
    return s


def _sample_labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    key = tuple(labels.items())
    s = _by_items.get(key)
    if s is None:
        s = _braces(key)
        if len(_by_items) > _CACHE_MAX:
            _by_items.clear()
        _by_items[key] = s
    return s


class FastFamily(Metric):
    """A family that keeps its samples as (label string, label values, value): a GPU's label
    string is escaped once per scrape and shared by all its families. ``typ`` counter | gauge; a
    counter's name is given without ``_total`` (as prometheus_client). ``samples`` still gives
    proper ``Sample`` objects, so prometheus_client reads it like any family."""

    def __init__(self, name: str, documentation: str, typ: str, labels: Sequence[str] = ()) -> None:
        if typ == "counter" and name.endswith("_total"):
            name = name[: -len("_total")]
        super().__init__(name, documentation, typ)
        self.labelnames = tuple(labels)
        self.sample_name = name + "_total" if typ == "counter" else name
        self.rows: list[tuple[str, tuple[str, ...], float]] = []

    # Metric.__init__ assigns ``samples``; keep that working and derive samples from rows
    @property  # type: ignore[override]
    def samples(self) -> list[Sample]:
        return [Sample(self.sample_name, dict(zip(self.labelnames, values, strict=True)), value)
                for _lstr, values, value in self.rows]

    @samples.setter
    def samples(self, _value: Any) -> None:
        pass

    def add(self, values: Sequence[str], value: float, lstr: str | None = None) -> None:
        """Add a sample; ``lstr`` is ``label_string(self.labelnames, values)`` when the caller has it."""
        t = tuple(values)
        self.rows.append((label_string(self.labelnames, t) if lstr is None else lstr, t, value))

    def add_metric(self, labels: Sequence[str], value: float, timestamp: Any = None) -> None:
        """prometheus_client-compatible spelling."""
        self.add(labels, value)


def render(families: Iterable[Metric]) -> bytes:
    """The text format 0.0.4 of ``families`` (e.g. ``registry.collect()``)."""
    out: list[str] = []
    ap = out.append
    for f in families:
        name, typ = f.name, f.type
        if typ == "counter":
            name += "_total"
        elif typ == "info":
            name += "_info"
        doc = f.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        ap(f"# HELP {name} {doc}\n# TYPE {name} {_TYPE_AS.get(typ, typ)}\n")
        if isinstance(f, FastFamily):
            sname = f.sample_name
            for lstr, _values, value in f.rows:
                ap(f"{sname}{lstr} {fmt_value(value)}\n")
            continue
        om: dict[str, list[str]] = {}
        for s in f.samples:
            line = f"{s.name}{_sample_labels(s.labels)} {fmt_value(s.value)}\n"
            if s.name.startswith(f.name) and s.name[len(f.name):] in _OM_SUFFIXES:
                om.setdefault(s.name[len(f.name):], []).append(line)
            else:
                ap(line)
        for suffix, lines in sorted(om.items()):
            ap(f"# HELP {f.name}{suffix} {doc}\n# TYPE {f.name}{suffix} gauge\n")
            out.extend(lines)
    return "".join(out).encode()


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def reference(families: Iterable[Metric]) -> bytes:
    """prometheus_client's own ``generate_latest`` of the same families (tests and the bench
    compare :func:`render` with it)."""
    return generate_latest(_Families(families))  # type: ignore[arg-type]
