"""Dockerfile and docker-compose.yml, checked without a Docker engine: the YAML parses, every
file they reference exists, and the pieces agree (ports, job name, mount paths, packages)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_services_and_their_images() -> None:
    c = compose()
    assert set(c["services"]) == {"accelmon", "prometheus", "alertmanager", "grafana"}
    assert c["services"]["accelmon"]["build"] == "."
    for name in ("prometheus", "alertmanager", "grafana"):
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", c["services"][name]["image"]), name  # pinned
    for name, svc in c["services"].items():
        for dep in svc.get("depends_on", []):
            assert dep in c["services"], (name, dep)
    named = {v.split(":")[0] for s in c["services"].values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert named <= set(c.get("volumes", {})), named


def test_every_bind_mount_exists_in_the_repo() -> None:
    mounts = []
    for name, svc in compose()["services"].items():
        for v in svc.get("volumes", []):
            src, dst, *_ = v.split(":")
            if src.startswith("."):
                mounts.append((name, ROOT / src, dst))
    assert len(mounts) >= 5
    for name, src, dst in mounts:
        assert src.exists(), f"{name}: {src} does not exist"
        assert dst.startswith("/")


def test_dockerfile_copies_only_what_exists_and_installs_the_runtime() -> None:
    ins = _dockerfile_instructions()
    assert ins[0][0] == "FROM" and "bookworm" in ins[0][1]
    for op, rest in ins:
        if op == "COPY":
            *srcs, _dst = shlex.split(rest)
            for s in srcs:
                assert (ROOT / s).exists(), f"COPY {s}: missing"
    run = " ".join(rest for op, rest in ins if op == "RUN")
    for pkg in ("python3", "golang-go", "golang-github-vmware-govmomi-dev", "prometheus"):
        assert re.search(rf"\b{re.escape(pkg)}\b", run), pkg
    setup = (ROOT / "deploy" / "setup.sh").read_text()
    for pkg in ("golang-go", "golang-github-vmware-govmomi-dev", "prometheus"):
        assert pkg in setup, f"{pkg} in the image but not in deploy/setup.sh"
    user = [rest for op, rest in ins if op == "USER"]
    assert user == ["accelmon"]  # not root
    assert ("ENTRYPOINT", '["/opt/accelmon/venv/bin/accelmon"]') in ins


def test_demo_service_serves_what_prometheus_scrapes() -> None:
    c = compose()
    acc = c["services"]["accelmon"]
    assert acc["environment"]["ACCELMON_DEMO_BIND"] == "0.0.0.0"
    assert "demo" in acc["command"]
    assert "9836:9836" in acc["ports"]
    cfg = yaml.safe_load(_mount_source(c, "prometheus", "/etc/prometheus/prometheus.yml").read_text())
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "accelmon")
    assert job["static_configs"][0]["targets"] == ["accelmon:9836"]
    assert cfg["rule_files"] == ["/etc/prometheus/rules/accelmon.rules.yml"]
    assert _mount_source(c, "prometheus", "/etc/prometheus/rules/accelmon.rules.yml") == \
        ROOT / "deploy" / "prometheus" / "accelmon.rules.yml"


def test_prometheus_sends_alerts_to_the_alertmanager_service() -> None:
    c = compose()
    am = c["services"]["alertmanager"]
    assert _mount_source(c, "alertmanager", "/etc/alertmanager/alertmanager.yml") == \
        ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in am["command"]
    assert "alertmanager" in c["services"]["prometheus"]["depends_on"]
    cfg = yaml.safe_load(_mount_source(c, "prometheus", "/etc/prometheus/prometheus.yml").read_text())
    targets = [t for a in cfg["alerting"]["alertmanagers"] for sc in a["static_configs"] for t in sc["targets"]]
    assert targets == ["alertmanager:9093"]
    assert "9093:9093" in am["ports"]


def _mount_source(c: dict, service: str, target: str) -> Path:
    for v in c["services"][service]["volumes"]:
        src, dst, *_ = v.split(":")
        if dst == target:
            return (ROOT / src).resolve()
    raise AssertionError(f"{service}: nothing mounted at {target}")


def test_grafana_provisioning_mounts_match_the_provisioning_files() -> None:
    c = compose()
    dash_provider = yaml.safe_load((_mount_source(c, "grafana", "/etc/grafana/provisioning/dashboards")
                                    / "accelmon.yml").read_text())
    path = dash_provider["providers"][0]["options"]["path"]
    json_dir = _mount_source(c, "grafana", path)
    assert json_dir == ROOT / "dashboards" / "json"
    assert len(list(json_dir.glob("*.json"))) == 4
    home = c["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (json_dir / Path(home).relative_to(path)).is_file()
    ds = yaml.safe_load((_mount_source(c, "grafana", "/etc/grafana/provisioning/datasources")
                         / "accelmon.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


def test_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    src = (ROOT / "deploy" / "compose" / "prometheus.yml").read_text()
    rules = ROOT / "deploy" / "prometheus" / "accelmon.rules.yml"
    (tmp_path / "prometheus.yml").write_text(src.replace("/etc/prometheus/rules/accelmon.rules.yml", str(rules)))
    tool = shutil.which("promtool") or "/usr/bin/promtool"
    r = subprocess.run([tool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
