from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from accelmon.config import parse
from accelmon.errors import UserError
from accelmon.report.cli import generate, run_report
from accelmon.report.schedule import JOB_ID, add_report_job, report_job
from accelmon.store.writer import Store
from tests.analytics.estate import write_estate
from tests.analytics.synth import held_trace, reference_mean
from tests.analytics.test_presence import DAY, _h, agent_report, busy_neighbour, counter_rows

GPU_KEYS = {"gpu", "mean_util_percent", "p95_util_percent", "idle_ratio", "coverage_ratio", "underutilized"}


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Store:
    st = Store(tmp_path_factory.mktemp("estate"))
    write_estate(st)
    return st


def test_report_writes_files_json_shape_and_findings(estate: Store, tmp_path: Path, capsys) -> None:
    cfg = parse({}, "<test>", env={})
    rc = run_report(estate, cfg, since="all", out_dir=tmp_path / "r", json_out=True, progress=False)
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads((tmp_path / "r" / "findings.json").read_text())
    for section in ("gpus", "numa_misaligned", "vmotion", "power", "consolidation"):
        assert section in doc
    assert all(set(g) >= GPU_KEYS for g in doc["gpus"])
    by_vm = {g["vm_name"]: g for g in doc["gpus"]}
    assert {n for n, g in by_vm.items() if g["underutilized"] is True} == {
        "train-idle-1", "train-idle-2", "infer-a", "infer-b", "infer-c"}
    assert by_vm["late-agent"]["underutilized"] is None and by_vm["late-agent"]["coverage_ratio"] < 0.5
    assert by_vm["busy-train"]["underutilized"] is False
    numa = {r["vm_name"]: r for r in doc["numa_misaligned"]}
    assert set(numa) == {"numa-wrong-affinity", "numa-split", "numa-wide"}
    assert numa["numa-wrong-affinity"]["fix"].startswith("set-numa-affinity: VM 'numa-wrong-affinity' → node 1 ")
    assert numa["numa-split"]["rule"] == "gpus_split_across_nodes"  # on PCI segment 0001
    plan = doc["consolidation"]
    assert plan["freed_gpus"] and len(plan["moves"]) >= len(plan["freed_gpus"])
    assert any(m["converted"] for m in plan["moves"])
    assert plan["kwh_month_saved"] == pytest.approx(plan["watts_saved"] * 0.73)
    vm = doc["vmotion"]
    assert vm["migrations"] == 40 and vm["stun_vs_framebuffer"]["slope_s_per_gib"] > 0.3
    assert any(f["switchover_failed"] for f in vm["flagged"])
    assert {r["vm_name"] for r in vm["risky_vms"]} >= {"infer-a"}
    assert doc["power"]["hosts"] and doc["power"]["gpu_idle_energy_kwh"] > 0
    # findings.csv = rows stored in the findings table
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r" / "findings.csv").read_text())))
    kinds = {r["kind"] for r in rows}
    assert kinds == {"underutilized", "insufficient_data", "numa_misaligned", "numa_unknown", "vmotion_stun",
                     "consolidation_move"}
    stored = estate.connect().execute(
        "SELECT count(*) FROM findings WHERE run_id = ?", [doc["run_id"]]).fetchone()[0]
    assert stored == len(rows)
    html = (tmp_path / "r" / "report.html").read_text()
    assert "numa.nodeAffinity" in html and "data:image/svg+xml;base64," in html and "<script" not in html


def test_trace_import_flags_exactly_the_gpus_below_15_percent(tmp_path: Path, capsys) -> None:
    """A generated trace (irregular steps, gaps) with known per-GPU means, stored as import-trace does."""
    st = Store(tmp_path / "data")
    targets = [1, 4, 9, 12, 17, 19.5, 21, 35, 60, 90]  # 20 % idle moments: means ≈ 0.8 × target
    traces = [held_trace(f"trace-gpu-{i:02d}", m, seed=10 + i, hours=30) for i, m in enumerate(targets)]
    for tr in traces:
        st.append("gpu_sample", tr.rows(source="import"))
    assert run_report(st, parse({}, "<test>", env={}), since="all", out_dir=tmp_path / "out", json_out=True,
                      progress=False) == 0
    doc = json.loads(capsys.readouterr().out)
    got = {g["gpu"]: g for g in doc["gpus"]}
    expected = {tr.gpu for tr in traces if reference_mean(tr)[0] < 15}
    assert len(expected) == 5
    assert {g for g, r in got.items() if r["underutilized"]} == expected
    for tr in traces:
        assert got[tr.gpu]["mean_util_percent"] == pytest.approx(reference_mean(tr)[0], abs=1e-5)


def test_changes_since_previous_report_and_retention(estate: Store, tmp_path: Path) -> None:
    cfg = parse({"report": {"out_dir": str(tmp_path / "reports"), "keep": 2}}, "<test>", env={})
    base = dt.datetime(2025, 1, 9, 6, 0, tzinfo=dt.UTC)
    docs = [generate(estate, cfg, now=base + dt.timedelta(days=i))[1] for i in range(3)]
    kept = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert kept == ["20250110T060000Z", "20250111T060000Z"]
    assert docs[2]["changes"]["previous_run"] == docs[1]["run_id"]
    assert docs[2]["changes"]["underutilized_now"] == docs[2]["summary"]["underutilized"]


@pytest.mark.parametrize(("kw", "msg"), [
    ({"since": "7x"}, "--since"),
    ({"since": "-3d"}, "--since"),
    ({"from_": dt.datetime(2025, 2, 1, tzinfo=dt.UTC), "to": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}, "--from"),
    ({"since": "7d", "to": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}, "--since"),
])
def test_bad_arguments_are_user_errors(tmp_path: Path, kw: dict, msg: str) -> None:
    with pytest.raises(UserError, match=msg):
        run_report(Store(tmp_path), parse({}, "<test>", env={}), progress=False, **kw)


def test_unwritable_out_dir_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=str(blocker)):
        run_report(Store(tmp_path / "d"), parse({}, "<test>", env={}), out_dir=blocker / "sub", progress=False)


def test_empty_store_reports_nothing_without_error(tmp_path: Path, capsys) -> None:
    assert run_report(Store(tmp_path), parse({}, "<test>", env={}), out_dir=tmp_path / "o", progress=False) == 0
    assert "GPUs        0" in capsys.readouterr().out
    doc = json.loads((tmp_path / "o" / "findings.json").read_text())
    assert doc["gpus"] == [] and doc["consolidation"]["moves"] == [] and doc["consolidation"]["reason"]


def test_schedule_adds_a_cron_job_that_writes_a_report(estate: Store, tmp_path: Path) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    cfg = parse({"report": {"cron": "30 5 * * 1-5", "out_dir": str(tmp_path / "rep")}}, "<test>", env={})
    sched = BackgroundScheduler(timezone="UTC")
    job = add_report_job(sched, estate, cfg)
    assert job is not None and job.id == JOB_ID
    fields = {f.name: str(f) for f in job.trigger.fields}
    assert fields["hour"] == "5" and fields["minute"] == "30"
    # cron semantics (1-5 = Monday to Friday), which APScheduler's own from_crontab gets wrong
    fri = dt.datetime(2025, 1, 3, 6, tzinfo=dt.UTC)
    nxt = [fri]
    for _ in range(5):
        nxt.append(job.trigger.get_next_fire_time(None, nxt[-1] + dt.timedelta(minutes=1)))
    assert [t.strftime("%a %H:%M") for t in nxt[1:]] == [f"{d} 05:30" for d in ("Mon", "Tue", "Wed", "Thu", "Fri")]
    assert add_report_job(sched, estate, parse({"report": {"enabled": False}}, "<test>", env={})) is None
    report_job(estate, cfg)  # what the scheduler runs
    (run,) = list((tmp_path / "rep").iterdir())
    assert (run / "report.html").is_file() and (run / "findings.json").is_file()


@pytest.mark.parametrize(("field", "names"), [
    ("0", "sun"), ("7", "sun"), ("1-5", "mon,tue,wed,thu,fri"), ("*/2", "sun,tue,thu,sat"),
    ("mon-fri", "mon-fri"), ("5,6,0", "fri,sat,sun"), ("*", "sun,mon,tue,wed,thu,fri,sat"),
])
def test_cron_day_of_week_translation(field: str, names: str) -> None:
    from accelmon.report.schedule import cron_dow

    assert cron_dow(field) == names


def test_bad_cron_is_a_user_error() -> None:
    from accelmon.report.schedule import trigger

    with pytest.raises(UserError, match="report.cron"):
        trigger("61 * * * *")


def test_report_json_cli_carries_presence_and_coverage(tmp_path: Path) -> None:
    """`accelmon report --json`, run as a user would: every GPU row carries its presence span and coverage,
    the finding's evidence too, and the page shows the span."""
    st = Store(tmp_path / "data")
    busy_neighbour(st)
    st.append("gpu_sample", counter_rows("pod-short", 7, 12, 0.6))
    st.append("agent_gpu", [agent_report("GPU-mig", "4221abcd-0000-0000-0000-0000000000aa", _h(0), mig=True)])
    st.append("gpu_sample", counter_rows("GPU-mig", 0, 24, None))
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "accelmon.cli", "--data-dir", str(tmp_path / "data"), "report", "--json",
                        "--from", DAY.start.isoformat(), "--to", DAY.end.isoformat(), "--out", str(out)],
                       capture_output=True, text=True, timeout=300, input="",
                       env={k: v for k, v in os.environ.items() if not k.startswith("ACCELMON_")})
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["thresholds"]["min_covered_duration"] == 3600
    for g in doc["gpus"]:
        assert {"presence_start", "presence_end", "presence_seconds", "presence_source", "coverage_ratio",
                "verdict_reason"} <= set(g)
        assert g["coverage_ratio"] == pytest.approx(g["covered_hours"] * 3600 / g["presence_seconds"], rel=1e-5)
    short = next(g for g in doc["gpus"] if g["gpu"] == "pod-short")
    assert short["status"] == "underutilized"
    assert short["presence_start"] == _h(7).isoformat() and short["presence_end"] == _h(12).isoformat()
    assert short["presence_seconds"] == pytest.approx(5 * 3600)
    rows = {r["subject"]: r for r in csv.DictReader(io.StringIO((out / "findings.csv").read_text()))}
    ev = json.loads(rows["pod-short"]["evidence_json"])
    assert ev["presence_start"] == short["presence_start"] and ev["coverage_ratio"] == pytest.approx(
        short["coverage_ratio"])
    mig = next(g for g in doc["gpus"] if g["gpu"] == "GPU-mig")
    assert mig["status"] == "mig_unreported" and mig["mean_util_percent"] is None and mig["idle_hours"] is None
    assert doc["summary"]["mig_unreported"] == 1 and rows["GPU-mig"]["kind"] == "mig_unreported"
    page = (out / "report.html").read_text()
    assert "MIG: utilization not reported by the driver" in page
    assert "5.0 h" in page and _h(7).strftime("%Y-%m-%d %H:%M") in page
