"""`accelmon demo --duration 60`, run once for this module (exactly that command, through the
installed entry point, in a fresh directory), and everything checked against it while it runs:
joined GPU/VM series on /metrics, findings from the report on /metrics, every metric the
dashboards and alert rules name, every dashboard panel returning data through a real
Prometheus scraping the demo daemon - and finally the exit code, the report, and that every
process it started is gone. A second, short run is interrupted with SIGTERM mid-setup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from accelmon.demo.prometheus import PrometheusServer
from accelmon.sim.nvml import SimNVML
from tests.dashboards.promql import RULES, Query, dashboards, metric_names, queries, regex_of, substitute

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from dashboards.build import EXTERNAL_METRICS  # noqa: E402

DURATION_S = 60
SETUP_TIMEOUT_S = 240
UNJOINED = "ws-lab-07"
NUMA_MISALIGNED_IDLE_VM = "gpu-dev-00000"  # seeded estate: idle passthrough A100, vCPUs pinned off its GPU's node
BUSY_VM = "gpu-train-00020"  # seeded estate: two passthrough H100s training all week
# Nothing is down in the demo: these queries rightly return nothing (a stat's "or vector(0)"
# fallback shows 0); they are still run, so they must parse and execute.
NOTHING_WHEN_HEALTHY = {("GPUs down", "A"), ("Agents down", "A"), ("GPUs by state", "D"), ("Agents up / down", "B"),
                        ("Hollow GPUs (analytics)", "A")}  # no hollow GPU in the demo estate
# series only a dcgm-exporter source feeds (DCGM_FI_PROF_SM_ACTIVE as a gauge); the agent's GPM gives counters
ONLY_FROM_DCGM = {"accelmon_gpu_sm_active_ratio"}
# effective utilization exists only where the hardware reports SM activity (GPM: Hopper+), never as 0
SM_ACTIVE_PANEL = ("Time utilization vs SM active", "B")


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    cwd: Path
    state: dict[str, Any]
    ready_at: float
    stdout: Path
    stderr: Path

    @property
    def data_dir(self) -> Path:
        return self.cwd / "accelmon-data"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.state["metrics_url"], timeout=10) as r:
            return r.read().decode()

    def specs(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.data_dir / "demo" / "agents").glob("*.json")):
            spec = json.loads(p.read_text())
            spec["gpu_uuids"] = [g.uuid for g in SimNVML(str(p)).gpus]
            out.append(spec)
        return out


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("ACCELMON_") or k in ("ACCELMON_CACHE_DIR", "ACCELMON_GOPATH")}


def _accelmon() -> str:
    exe = Path(sys.executable).with_name("accelmon")
    assert exe.exists(), f"the accelmon entry point is not installed next to {sys.executable}"
    return str(exe)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    cwd = tmp_path_factory.mktemp("demo")
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([_accelmon(), "demo", "--duration", str(DURATION_S)], cwd=cwd, env=_env(),
                                stdout=o, stderr=e, stdin=subprocess.DEVNULL, start_new_session=True)
    state_file = cwd / "accelmon-data" / "demo" / "demo.json"
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    state: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline:
            if state_file.exists():
                try:
                    state = json.loads(state_file.read_text())
                except ValueError:
                    state = {}
                if state.get("ready"):
                    break
            if proc.poll() is not None:
                pytest.fail(f"demo exited with {proc.returncode} before it was ready:\n{err.read_text()[-3000:]}")
            time.sleep(0.2)
        else:
            pytest.fail(f"demo not ready after {SETUP_TIMEOUT_S} s:\n{err.read_text()[-3000:]}")
        yield Demo(proc, cwd, state, time.monotonic(), out, err)
    finally:
        if proc.poll() is None:
            try:
                proc.wait(timeout=DURATION_S + 60)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def _families(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _label_values(prom: PrometheusServer, query: str, variables: dict[str, str]) -> list[str]:
    inner, label = query.removeprefix("label_values(").removesuffix(")").rsplit(",", 1)
    res = prom.query(f"group by ({label.strip()}) ({substitute(inner, variables)})")
    return sorted({r["metric"].get(label.strip(), "") for r in res} - {""})


def _resolve(prom: PrometheusServer, dash: dict[str, Any], pick: dict[str, str] | None = None) -> dict[str, str]:
    """Grafana's order: each variable's query with the earlier ones substituted; "All" = every value."""
    values: dict[str, str] = {"datasource": "Prometheus"}
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        got = _label_values(prom, v["query"], values)
        assert got, f"variable ${v['name']} has no values: {v['query']}"
        if v.get("allValue") and not (pick and v["name"] in pick):
            values[v["name"]] = v["allValue"]  # "All" with a custom all value (team/owner: keeps unowned VMs)
            continue
        chosen = [pick[v["name"]]] if pick and v["name"] in pick else got
        assert set(chosen) <= set(got), (v["name"], chosen, got)
        values[v["name"]] = regex_of(chosen)
    return values


def _no_data(prom: PrometheusServer, checks: list[tuple[Query, str]], timeout_s: float) -> list[str]:
    """The checks whose query still returns nothing after ``timeout_s`` (retried together)."""
    deadline = time.monotonic() + timeout_s
    pending = list(checks)
    while True:
        pending = [(q, e) for q, e in pending if not prom.query(e)]
        if not pending or time.monotonic() > deadline:
            return [f"{q.dashboard} / {q.panel} [{q.ref}]: {e}" for q, e in pending]
        time.sleep(1)



# ----------------------------------------------------------------------------- while it runs
def test_every_dashboard_panel_returns_data_in_live_prometheus(demo: Demo, tmp_path: Path) -> None:
    assert demo.proc.poll() is None, (
        f"the demo ended (rc={demo.proc.returncode}) {time.monotonic() - demo.ready_at:.0f} s after it was ready, "
        "before this live check ran")
    target = demo.state["metrics_url"].removeprefix("http://").removesuffix("/metrics")
    with PrometheusServer([target], scrape_interval="2s", workdir=tmp_path / "prom", job="accelmon") as prom:
        prom.wait_for("accelmon_gpu_busy_seconds_total", lambda r: len(r) >= 7, timeout_s=90)
        time.sleep(8)  # a few scrapes, so rate() windows have two points
        checks: list[tuple[Query, str]] = []
        skipped = 0
        for name, dash in dashboards().items():
            variables = _resolve(prom, dash)
            for q in queries():
                if q.dashboard != name:
                    continue
                expr = substitute(q.expr, variables, range_="1h", rate_interval="30s")
                if (q.panel, q.ref) in NOTHING_WHEN_HEALTHY:
                    prom.query(expr.removesuffix(" or vector(0)"))  # runs without error
                    if not expr.endswith(" or vector(0)"):
                        skipped += 1
                        continue
                checks.append((q, expr))
                if expr.endswith(" or vector(0)") and (q.panel, q.ref) not in NOTHING_WHEN_HEALTHY:
                    checks.append((q, expr.removesuffix(" or vector(0)")))  # the real answer, not the fallback
        assert len({(q.dashboard, q.panel, q.ref) for q, _ in checks}) + skipped == len(queries()) > 40
        failed = _no_data(prom, checks, 30)
        assert not failed, "panels without data:\n" + "\n".join(failed)

        # a concrete selection, as a person would click it: one VM, its cluster and host
        place = prom.query(f'accelmon_vm_placement_info{{vm_name="{NUMA_MISALIGNED_IDLE_VM}"}}')[0]["metric"]
        dash = dashboards()["accelmon-gpu"]
        variables = _resolve(prom, dash, {"vcenter": place["vcenter"], "cluster": place["cluster"],
                                          "host": place["host"], "vm": NUMA_MISALIGNED_IDLE_VM})
        assert "|" not in variables["gpu"]  # one passthrough A100 in that VM
        gpu_checks = [(q, substitute(q.expr, variables, range_="1h", rate_interval="30s"))
                      for q in queries() if q.dashboard == "accelmon-gpu"]
        # that VM's GPU is an A100 (no GPM): its SM-active line must be absent, not 0
        sm_active = [e for q, e in gpu_checks if (q.panel, q.ref) == SM_ACTIVE_PANEL]
        assert sm_active and all(prom.query(e) == [] for e in sm_active)
        gpu_checks = [(q, e) for q, e in gpu_checks if (q.panel, q.ref) != SM_ACTIVE_PANEL]
        failed = _no_data(prom, gpu_checks, 10)
        assert not failed, "GPU detail panels without data for one VM:\n" + "\n".join(failed)
        placement_q = next(e for q, e in gpu_checks if q.panel.startswith("GPU, VM, host"))
        row = prom.query(placement_q)[0]["metric"]
        assert row["vm_name"] == NUMA_MISALIGNED_IDLE_VM and row["host"] == place["host"]
        assert row["backing"] == "passthrough" and row["host_numa_node"] == "1"


def test_metrics_serve_joined_gpu_and_vm_series(demo: Demo) -> None:
    deadline = time.monotonic() + 40  # the daemon's first vCenter perf poll (20 s interval) brings VM power
    while "accelmon_vm_power_watts" not in (fam := _families(demo.metrics())) and time.monotonic() < deadline:
        time.sleep(1)
    busy = {s.labels["gpu_uuid"]: s.labels for s in fam["accelmon_gpu_busy_seconds_total"]}
    placement = {s.labels["vm_name"]: s.labels for s in fam["accelmon_vm_placement_info"]}
    specs = demo.specs()
    assert len(specs) >= 6
    for spec in specs:
        for uuid in spec["gpu_uuids"]:
            assert uuid in busy, f"GPU {uuid} of {spec['hostname']} not on /metrics"
            labels = busy[uuid]
            if spec["hostname"] == UNJOINED:  # an agent no vCenter VM matches: shown, not joined
                assert labels["vm_name"] == "" and labels["vm_uuid"] == ""
            else:  # joined by SMBIOS/BIOS UUID to the VM it runs in
                assert labels["vm_name"] == spec["hostname"], labels
                assert labels["vm_uuid"] == placement[spec["hostname"]]["vm_uuid"]
                assert labels["vcenter"] == "vc-demo"
    joined = {s.labels["hostname"]: s.value for s in fam["accelmon_agent_joined"]}
    assert joined[UNJOINED] == 0
    assert sum(1 for v in joined.values() if v == 1) == len(specs) - 1
    # per-VM power from vCenter and GPU placement (host, NUMA node) are exported too
    assert {s.labels["vm_name"] for s in fam["accelmon_vm_power_watts"]} >= {
        s["hostname"] for s in specs if s["hostname"] != UNJOINED}
    assert any(s.labels["host_numa_node"] != "" for s in fam["accelmon_gpu_placement_info"])


def test_findings_of_the_report_reach_metrics(demo: Demo) -> None:
    fam = _families(demo.metrics())
    numa = {s.labels["vm_name"]: s for s in fam["accelmon_vm_numa_misaligned"]}
    assert numa[NUMA_MISALIGNED_IDLE_VM].value == 1, numa[NUMA_MISALIGNED_IDLE_VM]
    assert numa[NUMA_MISALIGNED_IDLE_VM].labels["reason"] != ""
    aligned = [n for n, s in numa.items() if s.value == 0]
    assert aligned, "every VM flagged NUMA-misaligned"
    under = {s.labels["vm_name"]: s.value for s in fam["accelmon_gpu_underutilized"] if s.labels["vm_name"]}
    assert under[NUMA_MISALIGNED_IDLE_VM] == 1  # idle all week
    assert under[BUSY_VM] == 0  # busy all week


def _metric_names_used() -> set[str]:
    names = {n for q in queries() for n in metric_names(q.expr)}
    for d in dashboards().values():
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                names |= metric_names(v["query"].removeprefix("label_values(").rsplit(",", 1)[0])
    rules = yaml.safe_load(RULES.read_text())
    names |= {n for g in rules["groups"] for r in g["rules"] for n in metric_names(r["expr"])}
    names -= {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}  # recorded by the rules
    return names - EXTERNAL_METRICS - {"node_filesystem_avail_bytes", "node_filesystem_size_bytes"}


def test_every_metric_in_dashboards_and_rules_is_on_live_metrics(demo: Demo) -> None:
    assert demo.proc.poll() is None, (
        f"the demo ended (rc={demo.proc.returncode}) {time.monotonic() - demo.ready_at:.0f} s after it was ready, "
        "before this live check ran")
    wanted = _metric_names_used()
    assert len(wanted) > 25
    deadline = time.monotonic() + 40  # vMotion series appear once the first live vMotion is seen
    while True:
        have = set(_families(demo.metrics()))
        missing = wanted - have
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    missing -= ONLY_FROM_DCGM  # the demo scrapes agents, not dcgm-exporter
    assert not missing, f"named in dashboards/rules but not on /metrics: {sorted(missing)}"


def test_the_report_plans_a_legal_consolidation(demo: Demo) -> None:
    """The demo's plan frees at least one GPU, and every figure of the plan in findings.json and
    report.html agrees with the stored findings (findings.csv = the rows stored) and the plan's own
    parts: savings only from emptied hosts, freed capacity for every other freed GPU, steps from the
    vocabulary. No count of moves: those depend on the simulated traces."""
    from html import escape

    from accelmon.analytics import actions

    report = Path(demo.state["report"])
    doc = json.loads((report.parent / "findings.json").read_text())
    plan, summary = doc["consolidation"], doc["summary"]
    estate = json.loads((demo.data_dir / "demo" / "estate.json").read_text())  # placement at report time
    host_name = {h["moref"]: h["name"] for h in estate["hosts"]}
    tenants: dict[str, set[str]] = {}  # "<host>/<pci>" (the plan's GPU id) -> VMs on that physical GPU
    for v in estate["vms"]:
        for g in v["gpus"]:
            if g["host_pci_id"]:
                tenants.setdefault(f"{host_name[v['host']]}/{g['host_pci_id'].lower()}", set()).add(v["name"])
    moves, freed = plan["moves"], plan["freed_gpus"]
    assert freed, plan["reason"]
    for g in freed:  # a freed GPU hosted only VMs the plan moves, and all of them move off it
        assert tenants[g] == {m["vm_name"] for m in moves if m["from_gpu"] == g}, g
    moved = {m["vm_name"] for m in moves}
    assert moved <= {g["vm_name"] for g in doc["gpus"] if g["underutilized"]}
    assert BUSY_VM not in moved
    # savings = emptied hosts only; every other freed GPU is capacity
    emptied = {h["host"] for h in plan["emptied_hosts"]}
    assert set(plan["freed_hosts"]) == emptied
    assert abs(plan["watts_saved"] - sum(h["watts"] or 0 for h in plan["emptied_hosts"])) < 1e-3
    assert abs(plan["kwh_month_saved"] - plan["watts_saved"] * 730 / 1000) < 1e-3
    cap = plan["freed_capacity"]
    assert cap["gpu_ids"] == sorted(g for g in freed if g.split("/")[0] not in emptied)
    assert cap["gpus"] == len(cap["gpu_ids"]) and cap["gpu_hours_month"] == cap["gpus"] * 730
    # steps: the vocabulary, each with preconditions, API call and PowerCLI line, names from the inventory
    names = {v["name"] for v in estate["vms"]} | set(host_name.values())
    for st in plan["steps"]:
        api, cmd = actions.VOCABULARY[st["action"]]
        assert st["api"].startswith(api) and st["powercli"].startswith(cmd) and st["preconditions"]
        assert st["subject_name"] in names
    assert {st["subject_name"] for st in plan["steps"] if st["subject"] in {m["vm"] for m in moves}} == moved
    # the summary and the stored findings say the same
    assert (summary["plan_moves"], summary["plan_frees_gpus"], summary["plan_frees_hosts"], summary["plan_steps"],
            summary["plan_freed_capacity_gpus"]) == (len(moves), len(freed), len(emptied), len(plan["steps"]),
                                                     cap["gpus"])
    assert abs(summary["plan_watts_saved"] - plan["watts_saved"]) < 1e-3
    import csv

    rows = [r for r in csv.DictReader((report.parent / "findings.csv").open(newline=""))
            if r["kind"] == "consolidation_move"]
    assert sorted(r["subject"] for r in rows) == sorted(m["vm"].split("/", 1)[1] for m in moves)
    assert {json.loads(r["evidence_json"])["from_gpu"] for r in rows} == set(freed)
    n_under = sum(1 for g in doc["gpus"] if g["underutilized"] and g["vm_name"])
    assert plan["reason"].startswith(f"{n_under} underutilized GPU workload(s) on ")
    html = report.read_text()
    assert f"saves {plan['watts_saved']:.0f} W" in html and f"{cap['gpus']} GPU(s), " in html
    assert all(escape(st["powercli"]) in html for st in plan["steps"])
    assert "the plan frees" in demo.state["report_summary"]


def test_plan_powercli_on_the_demo_store(demo: Demo, tmp_path: Path) -> None:
    """`accelmon plan --format powercli` on the demo's own store: every line is a comment or one
    of the vocabulary's cmdlet lines, and every VM and host it names is in the demo's inventory."""
    import re

    from accelmon.analytics import actions

    out = tmp_path / "plan.ps1"
    r = subprocess.run([_accelmon(), "--data-dir", str(demo.data_dir), "plan", "--format", "powercli",
                        "--out", str(out)], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    estate = json.loads((demo.data_dir / "demo" / "estate.json").read_text())
    names = {v["name"] for v in estate["vms"]} | {h["name"] for h in estate["hosts"]}
    cmdlets = tuple(cmd for _, cmd in actions.VOCABULARY.values())
    text = out.read_text()
    assert text.startswith("#") and "executes nothing" in text
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines, text
    for ln in lines:
        assert ln.startswith(cmdlets), ln
        named = re.findall(r"Get-VM(?:Host)? -Name '((?:[^']|'')*)'", ln)
        assert named and all(n.replace("''", "'") in names for n in named), ln


# ----------------------------------------------------------------------------- after it ends
def test_demo_exits_0_after_the_duration_with_the_report_written(demo: Demo) -> None:
    rc = demo.proc.wait(timeout=DURATION_S + 90)
    ran_s = time.monotonic() - demo.ready_at
    err = demo.stderr.read_text()
    assert rc == 0, err[-3000:]
    assert ran_s >= DURATION_S - 5, f"exited {ran_s:.0f} s after it was ready"
    state = json.loads((demo.data_dir / "demo" / "demo.json").read_text())
    assert state["exit_code"] == 0
    assert state["joined_gpu_series_seen"] >= 7
    report = Path(state["report"])
    assert report.is_file() and report.stat().st_size > 10_000
    assert (report.parent / "findings.json").is_file()
    out = demo.stdout.read_text()
    for what in (state["metrics_url"], state["prometheus_url"], str(report), "sql", "accelerated simulated time"):
        assert what in out, f"{what!r} not in the demo's output:\n{out}"
    for name, pid in state["pids"].items():  # stopped and reaped, by pid
        assert not Path(f"/proc/{pid}").exists(), f"{name} (pid {pid}) still exists"
    for agent_url in state["agents"]:
        with pytest.raises(OSError):
            urllib.request.urlopen(agent_url, timeout=2)


# ----------------------------------------------------------------------------- interrupted
def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def test_sigterm_during_setup_stops_everything_it_started(tmp_path: Path) -> None:
    data = tmp_path / "d"
    proc = subprocess.Popen([_accelmon(), "--data-dir", str(data), "demo", "--duration", "600"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    kids: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        # wait until the simulator and the agents run (first poll under way)
        # the log file is created just before the first poll's process is spawned: look until all three
        # kinds run (every child seen is remembered, so a first poll that ends quickly still counts)
        if list((data / "demo" / "logs").glob("first-poll.log")):
            kids |= _children(proc.pid)
            if len(kids) >= 3:
                break
        time.sleep(0.1)
    assert len(kids) >= 3, f"expected vcsim, agents and the first poll running, saw {kids}"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"Traceback" not in err
    for pid in kids:
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} survived"


def test_a_data_dir_with_other_data_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    r = subprocess.run([_accelmon(), "--data-dir", str(tmp_path), "demo", "--duration", "5"], env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"accelmon: {tmp_path}: holds data the demo did not write; give the demo an empty or new --data-dir "
        "(e.g. --data-dir ./accelmon-demo)"]
    assert (tmp_path / "tables").is_dir() and not (tmp_path / ".accelmon-demo").exists()
