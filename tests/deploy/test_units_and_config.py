"""systemd units (hardened, verified by systemd-analyze) and the example accelmon.toml."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = {
    "accelmon.service": ROOT / "deploy" / "systemd" / "accelmon.service",
    "accelmon-agent.service": ROOT / "deploy" / "systemd" / "accelmon-agent.service",
}
EXAMPLE = ROOT / "deploy" / "accelmon.toml"


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file keeping repeated keys (systemd allows them; configparser does not)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_is_hardened(name: str) -> None:
    svc = _unit(UNITS[name])["Service"]
    assert svc["User"][0] not in ("", "root")
    assert svc["NoNewPrivileges"] == ["yes"]
    assert svc["ProtectSystem"] == ["strict"]
    assert svc["ProtectHome"] == ["yes"]
    assert svc["PrivateTmp"] == ["yes"]
    assert "@system-service" in svc["SystemCallFilter"]
    assert svc["ExecStart"][0].split()[0].endswith("/accelmon")


def test_daemon_unit_writes_only_its_data_dir() -> None:
    u = _unit(UNITS["accelmon.service"])["Service"]
    assert u["ReadWritePaths"] == ["/var/lib/accelmon"]
    assert u["StateDirectory"] == ["accelmon"]
    assert "--data-dir /var/lib/accelmon" in u["ExecStart"][0]
    assert u["ExecStart"][0].split()[-1] == "run"
    assert u["CapabilityBoundingSet"] == [""]  # no capabilities at all
    assert "check-config" in u["ExecStartPre"][0]


def test_agent_unit_runs_the_agent_without_root() -> None:
    u = _unit(UNITS["accelmon-agent.service"])["Service"]
    assert u["ExecStart"][0].split()[-1] == "agent"
    assert "ReadWritePaths" not in u  # the agent writes nothing
    assert u["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH"]
    assert u["DevicePolicy"] == ["closed"]


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found: install the Debian package `systemd`"
    exe = shutil.which("accelmon") or str(Path(sys.executable).with_name("accelmon"))
    assert Path(exe).exists(), "the accelmon entry point is not installed"
    for name, src in UNITS.items():
        # verify needs the ExecStart binary to exist: point it at this checkout's entry point
        (tmp_path / name).write_text(src.read_text().replace("/usr/local/bin/accelmon", exe))
    r = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in UNITS)],
                       capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode == 0 and not problems, "\n".join(problems)


def test_example_config_passes_check_config(tmp_path: Path) -> None:
    # The example points password_file at /etc/accelmon; point it at a temp file with the
    # documented environment override, exactly as a user would test it before installing.
    pw = tmp_path / "vcenter.password"
    pw.write_text("not-a-real-password\n")
    env = {**os.environ, "ACCELMON_VCENTER__0__PASSWORD_FILE": str(pw)}
    env.pop("ACCELMON_CONFIG", None)
    r = subprocess.run([sys.executable, "-m", "accelmon.cli", "check-config", str(EXAMPLE)],
                       capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ok (1 vCenter(s)" in r.stdout
    assert "not-a-real-password" not in r.stdout + r.stderr


def test_example_config_names_a_missing_password_file_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELMON_")}
    r = subprocess.run([sys.executable, "-m", "accelmon.cli", "check-config", str(EXAMPLE)],
                       capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    if Path("/etc/accelmon/vcenter.password").exists():
        pytest.fail("this test assumes a machine without /etc/accelmon/vcenter.password")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"{EXAMPLE}: vcenter[0]: password_file: file not found: /etc/accelmon/vcenter.password"
    ]


def test_example_config_stun_limit_matches_the_alert_rule() -> None:
    import tomllib

    cfg = tomllib.loads(EXAMPLE.read_text())
    rules = (ROOT / "deploy" / "prometheus" / "accelmon.rules.yml").read_text()
    limit = float(cfg["thresholds"]["stun_limit_seconds"])
    assert f'le="{limit!r}"' in rules


def test_unit_parser_reads_repeated_keys() -> None:
    # configparser would reject the units (repeated DeviceAllow=): make sure ours keeps them
    with pytest.raises(configparser.DuplicateOptionError):
        configparser.ConfigParser().read_string(UNITS["accelmon-agent.service"].read_text())
    assert len(_unit(UNITS["accelmon-agent.service"])["Service"]["DeviceAllow"]) == 3
