"""Helpers shared by the dashboard tests (static here, live in tests/demo): walk the committed
dashboard JSON, substitute Grafana's variables, and pull metric names out of PromQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
JSON_DIR = ROOT / "dashboards" / "json"
RULES = ROOT / "deploy" / "prometheus" / "accelmon.rules.yml"

# PromQL keywords/functions that look like identifiers
_NOT_METRICS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "stddev", "stdvar", "count_values",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "last_over_time", "quantile_over_time", "histogram_quantile",
    "label_replace", "label_join", "vector", "scalar", "time", "sort", "sort_desc", "abs", "clamp_min",
    "clamp_max", "absent", "absent_over_time", "changes", "resets", "round", "humanizePercentage", "printf",
    "inf", "nan", "le", "label_values",
}


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(JSON_DIR.glob("*.json"))}


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def queries() -> list[Query]:
    out = []
    for name, d in dashboards().items():
        for p in panels(d):
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append(Query(name, p["title"], t["refId"], t["expr"]))
    return out


def variable_queries() -> list[Query]:
    out = []
    for name, d in dashboards().items():
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                out.append(Query(name, f"${v['name']}", v["name"], v["query"]))
    return out


_GRAFANA_ESCAPE = re.compile(r"([\\/^$*+?.()|\[\]{}])")


def regex_of(values: list[str]) -> str:
    """What Grafana substitutes for a multi-value variable in a =~ matcher: (a|b|c), escaped."""
    esc = [_GRAFANA_ESCAPE.sub(r"\\\\\1", v) for v in values]
    return esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"


def substitute(expr: str, variables: dict[str, str], *, range_: str = "1h", rate_interval: str = "1m") -> str:
    out = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_).replace(
        "$__interval", rate_interval)
    for name in sorted(variables, key=len, reverse=True):
        out = out.replace(f"${{{name}}}", variables[name]).replace(f"${name}", variables[name])
    assert "$" not in out, f"unsubstituted variable in {out}"
    return out


_LABELS = re.compile(r"\{[^{}]*\}")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGES = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?=\s*(?:\{|\[|\)|$|\s|,|>|<|=|!|\*|/|\+|-))")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not label names, functions or keywords)."""
    s = _STRINGS.sub('""', expr)
    s = _LABELS.sub("", s)
    s = _RANGES.sub("", s)
    # grouping clauses: by (a, b), on(a), group_left(a, b)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in _IDENT.finditer(s):
        word = m.group(1)
        rest = s[m.end():].lstrip()
        if word in _NOT_METRICS or rest.startswith("("):
            continue
        if re.fullmatch(r"\d.*", word):
            continue
        names.add(word)
    return names
