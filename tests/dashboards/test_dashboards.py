"""Dashboards: generated from code and committed up to date, the required variables, sane
layout, PromQL that Prometheus parses, and only metrics accelmon exports.

Every panel returning data against a live daemon is tested in tests/demo (one demo run)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.dashboards.promql import (
    JSON_DIR,
    ROOT,
    RULES,
    dashboards,
    metric_names,
    panels,
    queries,
    substitute,
    variable_queries,
)

sys.path.insert(0, str(ROOT))
from dashboards import generate  # noqa: E402
from dashboards.build import EXTERNAL_METRICS, UIDS  # noqa: E402

VARIABLES = ["datasource", "vcenter", "cluster", "host", "team", "owner", "vm", "gpu"]


def test_committed_json_is_what_the_code_generates() -> None:
    for name, path in generate.paths().items():
        assert path.exists(), f"{path} missing: run python -m dashboards.generate"
        assert path.read_text() == generate.render(name), f"{path} is stale: run python -m dashboards.generate"
    assert {p.name for p in JSON_DIR.glob("*.json")} == {p.name for p in generate.paths().values()}


def test_generate_check_mode_detects_a_stale_file(tmp_path: Path, monkeypatch) -> None:
    for p in generate.paths().values():
        shutil.copy(p, tmp_path / p.name)
    monkeypatch.setattr(generate, "OUT_DIR", tmp_path)
    assert generate.main(["--check"]) == 0
    (tmp_path / "accelmon-gpu.json").write_text("{}\n")
    assert generate.main(["--check"]) == 1
    assert generate.main([]) == 0 and generate.main(["--check"]) == 0


def test_four_dashboards_with_the_template_variables() -> None:
    ds = dashboards()
    assert set(ds) == set(UIDS.values())
    for name, d in ds.items():
        assert d["uid"] == name
        names = [v["name"] for v in d["templating"]["list"]]
        assert names == VARIABLES, name
        for v in d["templating"]["list"][1:]:
            assert v["multi"] and v["includeAll"], (name, v["name"])
            # no custom "All" value: All expands to the variable's current values, so cluster/host narrow vm;
            # except team/owner, whose "All" must keep the VMs nobody owns (label value "")
            assert v["allValue"] == (".*" if v["name"] in ("team", "owner") else None), (name, v["name"])
        by = {v["name"]: v["query"] for v in d["templating"]["list"]}
        assert "$vcenter" in by["cluster"] and "$cluster" in by["host"] and "$host" in by["vm"]
        assert "$team" in by["vm"] and "$owner" in by["vm"]
        assert "$vm" in by["gpu"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    for name, d in dashboards().items():
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)), name
        cells: dict[tuple[int, int], str] = {}
        for p in panels(d):
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, (name, p["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {p['title']!r} overlaps {cells[(x, y)]!r}"
                    cells[(x, y)] = p["title"]
            if p["type"] != "row":
                assert p["targets"], (name, p["title"])
                assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_panel_queries_filter_by_the_variables() -> None:
    """Every GPU sample selector honours $gpu and $vm (and through $vm: cluster, host); every
    panel outside the health dashboard is scoped by some variable, except the consolidation
    plan's (one plan for the whole estate, no vcenter/cluster labels)."""
    for q in queries():
        for sel in re.findall(r"(accelmon_gpu_\w+)\{([^}]*)\}", q.expr):
            if sel[0] not in ("accelmon_gpu_info", "accelmon_gpu_placement_info"):
                assert "$gpu" in sel[1] and "$vm" in sel[1] and "$vcenter" in sel[1], (q.dashboard, q.panel, sel)
        estate_wide = all(n.startswith(("accelmon_consolidation_", "accelmon_idle_cost"))
                          for n in metric_names(q.expr))  # plan and idle cost: one analysis of the estate
        if q.dashboard != "accelmon-health" and not estate_wide:  # the plan covers the estate: no filter
            assert re.search(r"\$(vcenter|cluster|host|vm|gpu)\b", q.expr), (q.dashboard, q.panel)


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each substituted panel and variable query (as a recording rule)."""
    values = {"vcenter": "vc", "cluster": "(c1|c2)", "host": "h.1", "vm": "vm-1", "gpu": "GPU-1", "datasource": "x",
              "team": ".*", "owner": ".*"}
    rules = []
    for i, q in enumerate(queries()):
        rules.append({"record": f"panel_{i}", "expr": substitute(q.expr, values)})
    for i, q in enumerate(variable_queries()):
        m = re.fullmatch(r"label_values\((.*), *(\w+)\)", q.expr)
        assert m, q
        rules.append({"record": f"var_{i}", "expr": substitute(m.group(1), values)})
    f = tmp_path / "panels.rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    tool = shutil.which("promtool") or "/usr/bin/promtool"
    r = subprocess.run([tool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(rules) > 60


def _exported_names() -> set[str]:
    src = "\n".join(p.read_text() for p in (ROOT / "accelmon" / "exporter").glob("*.py"))
    base = set(re.findall(r'"(accelmon_[a-z0-9_]+)"', src))
    out = set(base)
    for b in base:
        out |= {b + "_total", b + "_bucket", b + "_count", b + "_sum"}
    return out


def test_dashboards_and_rules_name_only_exported_metrics() -> None:
    """A cheap drift check against the exporter source (the live check is in tests/demo)."""
    exported = _exported_names()
    used = {n for q in queries() for n in metric_names(q.expr)}
    used |= {n for q in variable_queries() for n in metric_names(q.expr.removeprefix("label_values(").rsplit(",", 1)[0])}
    assert {"accelmon_gpu_busy_seconds_total", "accelmon_vm_placement_info", "up"} <= used
    missing = used - exported - EXTERNAL_METRICS
    assert not missing, f"dashboards use metrics the exporter does not define: {sorted(missing)}"
    rules = yaml.safe_load(RULES.read_text())
    rule_metrics = {n for g in rules["groups"] for r in g["rules"] for n in metric_names(r["expr"])}
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}  # the rules' own series
    assert recorded, "the alert conditions are recording rules (deploy/prometheus)"
    missing = rule_metrics - exported - recorded - {"up"}
    assert not missing, f"alert rules use metrics the exporter does not define: {sorted(missing)}"


def test_metric_name_extraction() -> None:
    e = ('sum by (vm_name) (increase(accelmon_vm_energy_joules_total{vcenter=~"$vc"}[$__range])) / 3600000 '
         'or on(gpu_uuid) group_left(host) max by (vm_uuid) (accelmon_vm_placement_info) and up == 1')
    assert metric_names(e) == {"accelmon_vm_energy_joules_total", "accelmon_vm_placement_info", "up"}


def test_provisioning_points_grafana_at_the_dashboards() -> None:
    prov = ROOT / "dashboards" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "accelmon.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    default_ds = next(v for v in next(iter(dashboards().values()))["templating"]["list"] if v["name"] == "datasource")
    assert default_ds["current"]["value"] == ds["datasources"][0]["name"]
    dp = yaml.safe_load((prov / "dashboards" / "accelmon.yml").read_text())
    assert dp["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/accelmon"
