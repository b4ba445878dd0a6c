"""Alert rules: promtool check + promtool unit tests, and every alert tested firing and not firing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "accelmon.rules.yml"
RULE_TESTS = [RULES_DIR / "accelmon.rules.test.yml", RULES_DIR / "accelmon.rules.daily.test.yml",
              RULES_DIR / "accelmon.rules.owners.test.yml"]

REQUIRED_ALERTS = {
    "AccelmonGPUUnderutilized",
    "AccelmonGPUAllocatedIdle",
    "AccelmonVMNumaMisaligned",
    "AccelmonVMotionStunAboveLimit",
    "AccelmonAgentDown",
    "AccelmonVCenterSourceFailing",
    "AccelmonVCenterLoginRefused",
    "AccelmonDataDirNearFull",
}


def promtool() -> str:
    tool = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(tool).exists(), "promtool not found: install the Debian package `prometheus`"
    return tool


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def alerts() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def records() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"]: r for g in doc["groups"] for r in g["rules"] if "record" in r}


def test_promtool_check_rules() -> None:
    r = _run("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alerts()) + len(records())} rules found" in r.stdout


def test_promtool_unit_tests_pass() -> None:
    r = _run("test", "rules", *(t.name for t in RULE_TESTS), cwd=RULES_DIR)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_required_alerts_exist_with_severity_and_docs() -> None:
    a = alerts()
    assert set(a) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(a)
    for name, rule in a.items():
        assert rule.get("labels", {}).get("severity") in {"info", "warning", "critical"}, name
        assert rule.get("annotations", {}).get("summary"), name
        assert rule.get("annotations", {}).get("description"), name


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for t in (t for f in RULE_TESTS for t in yaml.safe_load(f.read_text())["tests"]):
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(alerts())
    assert names - firing == set(), f"alerts without a firing test: {names - firing}"
    assert names - quiet == set(), f"alerts without a not-firing test: {names - quiet}"


@pytest.mark.parametrize("mutation", [
    # each mutation must be caught by the unit tests: proves they test the thresholds
    ("for: 1h", "for: 5m"),
    ('le="10.0"', 'le="20.0"'),
    ("> 0.95 * 86400", "> 0.25 * 86400"),
    ('source=~"vcenter.*"', 'source=~".*"'),
    (") < 0.10", ") < 0.50"),  # data dir near full
    ("accelmon_data_dir_free_bytes\n", "accelmon_data_dir_size_bytes\n"),
])
def test_unit_tests_catch_a_broken_rule(tmp_path: Path, mutation: tuple[str, str]) -> None:
    old, new = mutation
    text = RULES.read_text()
    assert old in text
    (tmp_path / RULES.name).write_text(text.replace(old, new, 1))
    for t in RULE_TESTS:
        shutil.copy(t, tmp_path / t.name)
    r = _run("test", "rules", *(t.name for t in RULE_TESTS), cwd=tmp_path)
    assert r.returncode != 0, f"mutation {mutation} went unnoticed:\n{r.stdout}"


def test_example_prometheus_config_is_valid(tmp_path: Path) -> None:
    cfg = (ROOT / "deploy" / "prometheus.yml").read_text()
    assert "/etc/prometheus/rules/accelmon.rules.yml" in cfg
    (tmp_path / "prometheus.yml").write_text(cfg.replace("/etc/prometheus/rules/accelmon.rules.yml", str(RULES)))
    r = _run("check", "config", str(tmp_path / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
