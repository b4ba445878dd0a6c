"""`accelmon report --json` carries effective utilization, hollow, time-only and right-size per GPU
(docs/report.md), the HTML shows them, and the findings table has the hollow kind."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pytest

from accelmon.analytics.profiles import GIB
from accelmon.config import parse
from accelmon.report.cli import run_report
from accelmon.store.writer import Store
from tests.analytics.estate import DAYS, T0, write_estate


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory):
    st = Store(tmp_path_factory.mktemp("estate-activity"))
    vs = write_estate(st)
    busy = next(v for v in vs if v.name == "busy-train")
    # DCGM profiling gauges for the busy training GPU: SMs 3 % active while the GPU is busy 85 % of the time
    n = DAYS * 1440
    sm = np.random.default_rng(9).uniform(0.02, 0.04, n)
    st.append("gpu_sample", [
        {"ts": T0 + dt.timedelta(minutes=i), "gpu_uuid": busy.gpu_uuids[0], "source": "dcgm",
         "sm_active_percent": float(100 * sm[i]), "tensor_active_percent": 1.0, "dram_active_percent": 2.0}
        for i in range(n)])
    return st, vs, busy, float(100 * sm[1:].mean())


def test_report_json_and_html_carry_effective_utilization_hollow_and_rightsize(estate, tmp_path: Path,
                                                                               capsys) -> None:
    st, vs, busy, eff = estate
    cfg = parse({}, "<test>", env={})
    assert run_report(st, cfg, since="all", out_dir=tmp_path / "r", json_out=True, progress=False) == 0
    doc = json.loads(capsys.readouterr().out)
    by_vm = {g["vm_name"]: g for g in doc["gpus"] if g["gpu"] != "busy-train"}
    for g in doc["gpus"]:
        assert {"effective_util_percent", "tensor_active_percent", "dram_active_percent", "hollow", "time_only",
                "rightsize"} <= set(g)
    b = next(g for g in doc["gpus"] if g["gpu"] == busy.gpu_uuids[0])
    assert b["effective_util_percent"] == pytest.approx(eff, abs=0.05)
    assert b["tensor_active_percent"] == pytest.approx(1.0) and b["dram_active_percent"] == pytest.approx(2.0)
    assert b["status"] == "hollow" and b["hollow"] is True and b["underutilized"] is False
    assert b["mean_util_percent"] >= 15
    # vGPU guests cannot read SM activity: time-only, effective NULL, never hollow
    for name in ("infer-a", "infer-b", "infer-c"):
        g = by_vm[name]
        assert g["time_only"] is True and g["effective_util_percent"] is None and g["hollow"] is not True
    # no GPU without activity data reads 0 %
    assert all(g["effective_util_percent"] is None for g in doc["gpus"] if g["gpu"] != busy.gpu_uuids[0])
    assert doc["summary"]["hollow"] == 1
    # a 10C vGPU using 3 GiB: need 3.6 GiB; the smallest C profile of the A100-40GB that holds it within the
    # sizing rules (peak ≤ 90 %, median ≤ 70 %) is 5C (4C: 3 GiB median is 75 % of it)
    rs = by_vm["infer-a"]["rightsize"]
    assert rs["from"] == "10c" and rs["to"] == "5c" and rs["fb_hwm_bytes"] >= 3 * GIB
    plan = doc["consolidation"]
    assert {r["vm_name"] for r in plan["rightsize"]} >= {"infer-a", "infer-b"}
    steps = {s["n"]: s for s in plan["steps"]}
    for r in plan["rightsize"]:
        if r.get("step"):
            s = steps[r["step"]]
            assert s["action"] == "change-vgpu-profile" and s["target"]["to_profile"].endswith("-" + r["to_profile"])
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r" / "findings.csv").read_text())))
    hollow = [r for r in rows if r["kind"] == "hollow"]
    assert [r["subject"] for r in hollow] == [busy.gpu_uuids[0]]
    assert float(hollow[0]["value"]) == pytest.approx(eff, abs=0.05)
    assert not any(r["kind"] == "underutilized" and r["subject"] == busy.gpu_uuids[0] for r in rows)
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Hollow GPUs" in html and "time-only" in html and "Time vs effective utilization" in html
