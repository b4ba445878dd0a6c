"""A prometheus_client ``Metric`` that keeps its samples as (label string, label values, value).

prometheus_client's families build a dict and a ``Sample`` per sample, and its exposition
escapes every label of every sample again: ~10 µs a sample, 0.5 s for the ~50,000 samples of
2,000 GPUs. Here a GPU's label string is escaped once per scrape and shared by all its
families, and the renderer writes ``name + label string + value`` directly. ``samples`` still
materialises proper ``Sample`` objects, so ``generate_latest`` gives the same exposition
(tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


def escape(v: str) -> str:
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


_cache: dict[tuple[Sequence[str], tuple[str, ...]], str] = {}


def label_string(names: Sequence[str], values: Iterable[str]) -> str:
    """``{a="1",b="2"}`` (or '' without labels); label sets are stable, so results are cached."""
    vals = tuple(values)
    key = (names if isinstance(names, tuple) else tuple(names), vals)
    s = _cache.get(key)
    if s is None:
        body = ",".join(f'{k}="{escape(v)}"' for k, v in zip(key[0], vals, strict=True))
        s = "{" + body + "}" if body else ""
        if len(_cache) > 200_000:  # label sets that went away
            _cache.clear()
        _cache[key] = s
    return s


def fmt_value(v: float | int) -> str:
    """floatToGoString, with the common case (finite, < 1e6) fast."""
    s = repr(float(v))
    if "e" in s or "n" in s or s.find(".") > 6:
        return floatToGoString(v)  # type: ignore[no-any-return]
    return s


class FastFamily(Metric):
    """``typ`` counter | gauge; a counter's name is given without ``_total`` (as prometheus_client)."""

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

    def render_into(self, out: list[str]) -> None:
        name = self.sample_name
        ap = out.append
        for lstr, _values, value in self.rows:
            ap(f"{name}{lstr} {fmt_value(value)}\n")
