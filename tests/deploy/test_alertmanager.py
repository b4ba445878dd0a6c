"""Alert delivery by team, with real servers: the shipped Alertmanager config passes ``amtool
check-config``; a real Prometheus evaluating the shipped rules against a fixed /metrics page (an
idle GPU of an owned VM, one of an unowned VM, a busy one) sends its alerts to a real Alertmanager
(Debian ``prometheus-alertmanager``) routing with the shipped route tree, and a webhook receiver
run here gets the GPU-idle alert with its owner/team labels on that team's receiver, the unowned
one on the default receiver, and nothing for the busy GPU.

Only timings change from the shipped files: ``for`` of every alert and Alertmanager's group
waits are cut to seconds, and each receiver becomes a webhook to this test (same receiver names,
same routes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from accelmon.demo.prometheus import PrometheusServer, free_port

ROOT = Path(__file__).resolve().parents[2]
AM_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RULES = ROOT / "deploy" / "prometheus" / "accelmon.rules.yml"

# What the daemon's /metrics says about three GPUs (label names as accelmon/exporter/collectors.py
# writes them; owner/team on the placement info metric, "" when the owner is unknown).
PAGE = """\
# HELP accelmon_gpu_underutilized 1 when the latest analytics run found the GPU underutilized, else 0.
# TYPE accelmon_gpu_underutilized gauge
accelmon_gpu_underutilized{gpu_uuid="GPU-idle",vm_name="cv-01",vm_uuid="5001",vcenter="vc1"} 1.0
accelmon_gpu_underutilized{gpu_uuid="GPU-orphan",vm_name="orphan-01",vm_uuid="5002",vcenter="vc1"} 1.0
accelmon_gpu_underutilized{gpu_uuid="GPU-busy",vm_name="cv-02",vm_uuid="5003",vcenter="vc1"} 0.0
# HELP accelmon_vm_placement_info Current host, cluster, owner and team of a GPU VM.
# TYPE accelmon_vm_placement_info gauge
accelmon_vm_placement_info{cluster="gpu-a",host="esx-01",owner="alice",team="vision",vcenter="vc1",vm_name="cv-01",vm_uuid="5001"} 1.0
accelmon_vm_placement_info{cluster="gpu-a",host="esx-01",owner="",team="",vcenter="vc1",vm_name="orphan-01",vm_uuid="5002"} 1.0
accelmon_vm_placement_info{cluster="gpu-a",host="esx-02",owner="alice",team="vision",vcenter="vc1",vm_name="cv-02",vm_uuid="5003"} 1.0
"""


def _binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    assert os.access(path, os.X_OK), f"{name} not found: install the Debian package prometheus-alertmanager"
    return path


def test_shipped_config_passes_amtool_and_routes_by_team() -> None:
    r = subprocess.run([_binary("amtool"), "check-config", str(AM_CONFIG)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = yaml.safe_load(AM_CONFIG.read_text())
    route = cfg["route"]
    names = {rc["name"] for rc in cfg["receivers"]}
    assert route["receiver"] in names  # the default route
    assert "team" in route["group_by"]
    assert route["routes"], "no team routes"
    for child in route["routes"]:
        assert child["receiver"] in names
        assert any(m.startswith("team=") for m in child["matchers"]), child
    # what amtool's routing test says for a labelled alert and for one without a team
    team = route["routes"][0]["matchers"][0].split("=", 1)[1].strip('"')
    for labels, want in ((f"team={team}", route["routes"][0]["receiver"]), ("alertname=X", route["receiver"])):
        r = subprocess.run([_binary("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}", labels],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip() == want, (labels, r.stdout)


class _Hooks(ThreadingHTTPServer):
    """Serves PAGE on GET /metrics; records webhook POSTs (JSON) by path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def received(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return list(self.posts)


class _Handler(BaseHTTPRequestHandler):
    server: _Hooks

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        body = PAGE.encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        n = int(self.headers.get("Content-Length") or 0)
        doc = json.loads(self.rfile.read(n))
        with self.server.lock:
            self.server.posts.append((self.path, doc))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


class _AlertingPrometheus(PrometheusServer):
    """The test harness' Prometheus plus rule files and an Alertmanager."""

    def __init__(self, targets: list[str], rules: Path, alertmanager: str, workdir: Path) -> None:
        super().__init__(targets, workdir=workdir)
        self.rules = rules
        self.alertmanager = alertmanager

    def write_config(self) -> Path:
        path = super().write_config()
        cfg = json.loads(path.read_text())
        cfg["rule_files"] = [str(self.rules)]
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [self.alertmanager]}]}]}
        path.write_text(json.dumps(cfg, indent=1))
        return path


def _fast_rules(dst: Path) -> Path:
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


def _test_am_config(dst: Path, hook_base: str) -> Path:
    """The shipped route tree and receiver names; every receiver a webhook to this test."""
    cfg = yaml.safe_load(AM_CONFIG.read_text())
    cfg.pop("global", None)  # SMTP settings: no mail receivers left
    cfg["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    cfg["receivers"] = [{"name": r["name"], "webhook_configs": [{"url": f"{hook_base}/{r['name']}"}]}
                        for r in cfg["receivers"]]
    dst.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


@pytest.fixture()
def alertmanager(tmp_path: Path, hooks: _Hooks) -> Iterator[str]:
    cfg = _test_am_config(tmp_path / "alertmanager.yml", hooks.base)
    log_path = tmp_path / "alertmanager.log"
    for _attempt in range(3):
        port = free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [_binary("prometheus-alertmanager"), f"--config.file={cfg}", f"--storage.path={tmp_path / 'am'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if _wait_ready(f"http://127.0.0.1:{port}/-/ready", proc):
            break
        _stop(proc)
    else:
        raise AssertionError("alertmanager did not start: " + log_path.read_text(errors="replace")[-2000:])
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture()
def hooks() -> Iterator[_Hooks]:
    srv = _Hooks()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _firing(posts: list[tuple[str, dict[str, Any]]], alertname: str) -> dict[str, list[dict[str, str]]]:
    """receiver path -> labels of the firing alerts named ``alertname`` it received."""
    out: dict[str, list[dict[str, str]]] = {}
    for path, doc in posts:
        for a in doc.get("alerts", []):
            if a.get("status") == "firing" and a["labels"].get("alertname") == alertname:
                out.setdefault(path.lstrip("/"), []).append(a["labels"])
    return out


def test_idle_gpu_alert_reaches_its_teams_receiver_with_owner(tmp_path: Path, hooks: _Hooks,
                                                              alertmanager: str) -> None:
    cfg = yaml.safe_load(AM_CONFIG.read_text())
    default = cfg["route"]["receiver"]
    team_receiver = next(r["receiver"] for r in cfg["route"]["routes"] if r["matchers"] == ['team="vision"'])
    rules = _fast_rules(tmp_path / "rules.yml")
    with _AlertingPrometheus([hooks.base + "/metrics"], rules, alertmanager, tmp_path / "prom") as prom:
        deadline = time.monotonic() + 90
        got: dict[str, list[dict[str, str]]] = {}
        while time.monotonic() < deadline:
            got = _firing(hooks.received(), "AccelmonGPUUnderutilized")
            if team_receiver in got and default in got:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"alerts not delivered: {got}; posts {hooks.received()}; {prom.log_tail(1000)}")
    by_gpu = {lab["gpu_uuid"]: (recv, lab) for recv, labs in got.items() for lab in labs}
    recv, lab = by_gpu["GPU-idle"]
    assert recv == team_receiver
    assert (lab["owner"], lab["team"], lab["vm_name"], lab["severity"]) == ("alice", "vision", "cv-01", "info")
    recv, lab = by_gpu["GPU-orphan"]
    assert recv == default
    assert "owner" not in lab and "team" not in lab  # unknown owner: no label, the default route
    assert "GPU-busy" not in by_gpu
    assert set(got) == {team_receiver, default}
