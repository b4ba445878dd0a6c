"""One direction (issue 16): one analytics run computes findings and the plan and stores both under
one run_id (analytics/persist.py); renderers (report files, the plan verb, the exporter's gauges)
only read the analysis or the store; nothing reads a report file back.

Also the golden findings.json of a fixed small estate (tests/golden/findings.json; regenerate with
``UPDATE_GOLDEN=1``), and the report's totals checked against the stored rows of the same run."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from accelmon.analytics import persist
from accelmon.config import ExporterConfig, parse
from accelmon.daemon import housekeeping
from accelmon.daemon.state import DaemonState
from accelmon.demo.prometheus import parse_samples
from accelmon.exporter.server import MetricsApp
from accelmon.report.cli import generate, render
from accelmon.report.plan import run_plan
from accelmon.report.schedule import report_job
from accelmon.store.writer import Store
from tests.analytics.estate import write_estate
from tests.report.test_plan_output import EXTRA_HOST, _extra

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "findings.json"
# after the estate's data (tests/analytics/estate.py: T0 2025-01-06, 2 days); fixes generated_at and the window
FIXED_NOW = dt.datetime(2025, 1, 9, 6, 0, tzinfo=dt.UTC)
VOLATILE = ("run_id", "generated_at")  # differ per run by definition (uuid, clock)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The analytics estate plus one host the plan empties (measured power), so every step kind appears."""
    st = Store(tmp_path_factory.mktemp("flow"))
    write_estate(st)
    _extra(st)
    return st


def _cfg(tmp: Path | None = None) -> Any:
    return parse({"report": {"out_dir": str(tmp)}} if tmp else {}, "<test>", env={})


def _rows(st: Store, sql: str, args: list[Any]) -> list[dict[str, Any]]:
    con = st.connect(threads=1)
    try:
        cur = con.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def _normal(v: Any) -> Any:
    """The golden comparison: drop the per-run fields; floats to 12 significant digits (parallel
    sums in polars/DuckDB may differ in the last bits between runs, never in these digits)."""
    if isinstance(v, dict):
        return {k: _normal(x) for k, x in v.items() if k not in VOLATILE}
    if isinstance(v, list):
        return [_normal(x) for x in v]
    if isinstance(v, float) and math.isfinite(v):
        return float(f"{v:.12g}")
    return v


def test_golden_findings_json(store: Store, tmp_path: Path) -> None:
    """The first run in this store (no previous run: ``changes`` is stable), at a fixed clock."""
    _a, doc, out = generate(store, _cfg(), since="all", now=FIXED_NOW, out_dir=tmp_path / "r")
    got = _normal(json.loads((out / "findings.json").read_text()))
    assert got == _normal(json.loads(json.dumps(doc, default=str)))  # the file is the returned document
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert got == want, "findings.json differs from tests/golden/findings.json (UPDATE_GOLDEN=1 to regenerate)"


def test_report_totals_equal_the_stored_rows_of_its_run(store: Store, tmp_path: Path) -> None:
    """The second path: the report's numbers recomputed from findings/plan_action rows of the same run."""
    a, doc, out = generate(store, _cfg(), since="all", out_dir=tmp_path / "r")
    s, plan = doc["summary"], doc["consolidation"]
    f = _rows(store, "SELECT kind, subject, evidence_json FROM findings WHERE run_id = ?", [a.run_id])
    steps = _rows(store, "SELECT * FROM plan_action WHERE run_id = ? ORDER BY step", [a.run_id])
    with open(out / "findings.csv", encoding="utf-8", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(f) == len(csv_rows) > 0 and {r["run_id"] for r in csv_rows} == {a.run_id}
    kinds = [r["kind"] for r in f]
    assert kinds.count("underutilized") == s["underutilized"]
    assert kinds.count("insufficient_data") == s["insufficient_data"]
    assert kinds.count("numa_misaligned") == s["numa_misaligned_vms"]
    assert kinds.count("vmotion_stun") == s["vmotion_flagged"]
    assert kinds.count("consolidation_move") == s["plan_moves"] == len(plan["moves"])
    freed = {json.loads(r["evidence_json"])["from_gpu"] for r in f if r["kind"] == "consolidation_move"}
    assert len(freed) == s["plan_frees_gpus"]
    assert len(steps) == s["plan_steps"] == len(plan["steps"]) > 0
    off = [r for r in steps if r["action"] == "power-off-host"]
    assert [r["subject"] for r in off] == plan["freed_hosts"] == [EXTRA_HOST[1]]
    assert sum(r["saves_watts"] for r in off if r["saves_watts"] is not None) == pytest.approx(s["plan_watts_saved"])
    assert s["plan_watts_saved"] == 640.0  # the extra host's measured power, nothing else
    assert sum(r["frees_gpus"] for r in off) + s["plan_freed_capacity_gpus"] == s["plan_frees_gpus"]
    # every step of the rendered plan is its stored row
    for row, st in zip(steps, plan["steps"], strict=True):
        assert (row["step"], row["action"], row["subject"], row["subject_name"], row["words"], row["api"],
                row["powercli"]) == (st["n"], st["action"], st["subject"], st["subject_name"], st["words"],
                                     st["api"], st["powercli"])
        assert json.loads(row["preconditions_json"]) == st["preconditions"]
        if row["vm_moref"] is not None:  # a VM step: its id is <vcenter>/<moref>
            assert st["subject"] == f"{row['vcenter_uuid']}/{row['vm_moref']}"
        if row["action"] == "vmotion":
            assert row["to_host"] == st["target"]["host"] and row["from_host"] and row["from_gpu"]
        if row["action"] == "set-numa-affinity":
            assert row["numa_node"] == st["target"]["numa_node"]
        assert (row["saves_watts"] is not None) <= (row["action"] == "power-off-host")


def test_rendering_twice_stores_nothing_and_a_run_is_stored_once(store: Store, tmp_path: Path) -> None:
    a = persist.run(store, _cfg().thresholds, since="all")
    count = "SELECT (SELECT count(*) FROM findings WHERE run_id = $1) AS f, " \
            "(SELECT count(*) FROM plan_action WHERE run_id = $1) AS p"
    before = _rows(store, count, [a.run_id])[0]
    assert before == {"f": len(persist.findings_rows(a)), "p": len(a.plan.steps)} and before["p"] > 0
    render(a, tmp_path / "one")
    render(a, tmp_path / "two")
    assert persist.persist(store, a).findings == before["f"]  # the same run again: nothing added
    assert _rows(store, count, [a.run_id])[0] == before
    assert (tmp_path / "one" / "findings.csv").read_bytes() == (tmp_path / "two" / "findings.csv").read_bytes()


def _gauges(st: DaemonState) -> dict[str, float]:
    text = MetricsApp(st, ExporterConfig(), process_metrics=False).render().decode()
    return {n: v for n, lab, v in parse_samples(text) if n.startswith("accelmon_consolidation_")}


def test_exporter_plan_gauges_come_from_the_store_not_the_report_files(store: Store, tmp_path: Path) -> None:
    """The daemon's job: analyse + store, render; then housekeeping reads the plan of that run from the
    store. With the report directory deleted (and a forged findings.json in its place) the gauges
    are still the run's."""
    reports = tmp_path / "reports"
    a = report_job(store, _cfg(reports))
    assert a is not None
    (run_dir,) = list(reports.iterdir())
    doc = json.loads((run_dir / "findings.json").read_text())
    shutil.rmtree(reports)
    forged = store.root / "forged"
    forged.mkdir()
    (forged / "findings.json").write_text(json.dumps({**doc, "consolidation": {
        **doc["consolidation"], "watts_saved": 9999.0, "freed_hosts": ["a", "b", "c"]}}))
    st = DaemonState()
    housekeeping.refresh_findings(store, st)
    g = _gauges(st)
    plan = doc["consolidation"]
    assert g["accelmon_consolidation_saved_power_watts"] == pytest.approx(plan["watts_saved"]) == 640.0
    assert g["accelmon_consolidation_freed_hosts"] == len(plan["freed_hosts"]) == 1
    assert g["accelmon_consolidation_moves"] == len(plan["moves"])
    assert g["accelmon_consolidation_freed_gpus"] == len(plan["freed_gpus"])
    assert g["accelmon_consolidation_unmeasured_freed_gpus"] == plan["unmeasured_freed_gpus"]
    assert g["accelmon_consolidation_plan_timestamp_seconds"] == pytest.approx(a.generated_at.timestamp(), abs=0.001)


def test_plan_verb_stores_its_run_and_the_script_is_its_rows(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "plan.ps1"
    assert run_plan(store, _cfg(), fmt="powercli", out=out, since="all") == 0
    text = out.read_bytes().decode("utf-8")  # as written: CRLF line ends
    m = re.search(r"^# Generated .* run (\S+)\r$", text, re.M)
    assert m is not None
    steps = _rows(store, "SELECT step, powercli FROM plan_action WHERE run_id = ? ORDER BY step", [m.group(1)])
    commands = [ln for ln in text.split("\r\n") if ln and not ln.startswith("#")]
    assert [r["powercli"] for r in steps] == commands and commands
