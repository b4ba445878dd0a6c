"""The real CLI, run as a subprocess, as a user would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def accelmon(*args: str, data_dir: Path | None = None, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    import os

    e = {k: v for k, v in os.environ.items() if not k.startswith("ACCELMON_")}
    e.update(env or {})
    pre = ["--data-dir", str(data_dir)] if data_dir else []
    return subprocess.run([sys.executable, "-m", "accelmon.cli", *pre, *args], capture_output=True, text=True,
                          env=e, cwd=cwd, timeout=120, input="")


def _commands() -> list[str]:
    import typer.main

    from accelmon.cli import app

    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def test_every_command_is_documented_and_has_help() -> None:
    readme = (ROOT / "README.md").read_text()
    cmds = _commands()
    assert {"run", "agent", "report", "sql", "import-trace", "demo", "check-config"} <= set(cmds)
    for c in cmds:
        assert f"accelmon {c}" in readme, f"README does not document `accelmon {c}`"
        r = accelmon(c, "--help")
        assert r.returncode == 0, r.stderr
        assert "Usage" in r.stdout and len(r.stdout.splitlines()) > 4


def test_readme_first_lines_give_demo_and_test_commands() -> None:
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:6])
    assert "accelmon demo" in head and "pytest" in head
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.search(r"&& (\.venv/bin/python -m pytest)", head)
    assert test_cmd and test_cmd.group(1) in ci, "CI runs the README's test command"


def test_schema_doc_is_up_to_date() -> None:
    from accelmon.store.schema import render_markdown

    assert (ROOT / "docs" / "schema.md").read_text() == render_markdown(), \
        "run: accelmon schema > docs/schema.md"


BAD_CONFIG = """
log_level = "loud"
[[vcenter]]
url = "vc01"
user = "svc"
password = "S3cr3t-Passw0rd!"
[[vcenter]]
url = "https://vc02.example.com"
user = "svc"
password = "An0ther-S3cret"
password_file = "/etc/x"
[thresholds]
underutilized_percent = 150
window = "7 parsecs"
[agents]
bogus = 1
"""


def test_check_config_reports_every_problem_on_one_line(tmp_path: Path) -> None:
    f = tmp_path / "accelmon.toml"
    f.write_text(BAD_CONFIG)
    r = accelmon("check-config", str(f))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr
    assert all(line.startswith(f"{f}: ") for line in lines), lines
    keys = [line.split(": ")[1] for line in lines]
    assert set(keys) == {"log_level", "vcenter[0].url", "vcenter[1]", "thresholds.underutilized_percent",
                         "thresholds.window", "agents.bogus"}, lines
    assert f'{f}: vcenter[0].url: not a URL: "vc01"' in lines
    assert "S3cr3t" not in r.stderr + r.stdout and "An0ther" not in r.stderr + r.stdout


def test_check_config_ok_and_env_override(tmp_path: Path) -> None:
    pw = tmp_path / "vc.pass"
    pw.write_text("hunter2\n")
    f = tmp_path / "accelmon.toml"
    f.write_text(f'[[vcenter]]\nurl = "https://vc01.example.com/sdk"\nuser = "svc"\npassword_file = "{pw}"\n')
    r = accelmon("check-config", str(f))
    assert r.returncode == 0, r.stderr
    assert "1 vCenter(s)" in r.stdout and "below 15 %" in r.stdout
    r = accelmon("check-config", str(f), env={"ACCELMON_THRESHOLDS__UNDERUTILIZED_PERCENT": "10"})
    assert "below 10 %" in r.stdout
    r = accelmon("check-config", str(f), env={"ACCELMON_THRESHOLDS__UNDERUTILIZED_PERCENT": "-3"})
    assert r.returncode == 2 and "thresholds.underutilized_percent" in r.stderr
    r = accelmon("check-config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and r.stderr.strip() == f"{tmp_path / 'missing.toml'}: file not found"
    (tmp_path / "broken.toml").write_text("[[vcenter]\n")
    r = accelmon("check-config", str(tmp_path / "broken.toml"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not valid TOML" in r.stderr


def _count(data: Path) -> int:
    r = accelmon("sql", "--format", "json", "SELECT count(*) AS n FROM gpu_sample", data_dir=data)
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)[0]["n"])


def test_import_trace_all_or_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = tmp_path / "good.csv"
    good.write_text("timestamp,gpu,util_percent,memory_used_bytes\n"
                    "1700000000,gpu-a,5,1048576\n"
                    "2023-11-14T22:13:30Z,gpu-a,7.5,\n"
                    "1700000020.5,gpu-b,80,2097152\n")
    r = accelmon("import-trace", str(good), data_dir=data)
    assert r.returncode == 0, r.stderr
    assert "imported 3 samples of 2 GPU(s)" in r.stdout
    assert _count(data) == 3
    # the same file again adds nothing (it would double every sample) and says so; --force overrides
    r = accelmon("import-trace", str(good), data_dir=data)
    assert r.returncode == 0 and "already imported" in r.stdout and _count(data) == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,gpu,util_percent\n"
                   "1700000100,gpu-a,5\n"
                   "yesterday,gpu-a,5\n"
                   "1700000110,,5\n"
                   "1700000120,gpu-a,101\n"
                   "1700000130,gpu-a,lots\n")
    r = accelmon("import-trace", str(bad), data_dir=data)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[:4] == [f'{bad}:3: timestamp: not Unix seconds or ISO 8601: "yesterday"',
                         f"{bad}:4: gpu: empty GPU id",
                         f'{bad}:5: util_percent: out of range 0–100: "101"',
                         f'{bad}:6: util_percent: not a number: "lots"']
    assert _count(data) == 3, "nothing of a bad file is stored"
    hdr = tmp_path / "hdr.csv"
    hdr.write_text("time,gpu,util\n1,a,2\n")
    r = accelmon("import-trace", str(hdr), data_dir=data)
    assert r.returncode == 1 and "timestamp: missing column" in r.stderr
    r = accelmon("sql", "--format", "csv", "SELECT gpu_uuid, util_percent, fb_used_bytes, "
                 "epoch(ts) AS t FROM gpu_sample ORDER BY t", data_dir=data)
    assert r.stdout.splitlines()[1:] == ["gpu-a,5.0,1048576,1700000000.0", "gpu-a,7.5,,1700000010.0",
                                         "gpu-b,80.0,2097152,1700000020.5"]


def test_sql_formats_and_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = accelmon("sql", "SELECT 42 AS answer, 'x' AS s", data_dir=data)
    assert r.returncode == 0 and "answer" in r.stdout and "42" in r.stdout
    r = accelmon("sql", "-f", "json", "SELECT 42 AS answer, DATE '2026-01-02' AS d", data_dir=data)
    assert json.loads(r.stdout) == [{"answer": 42, "d": "2026-01-02"}]
    r = accelmon("sql", "-f", "csv", "SELECT 1 AS a, 2 AS b", data_dir=data)
    assert r.stdout.splitlines() == ["a,b", "1,2"]
    r = accelmon("sql", "SELEC nonsense", data_dir=data)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("accelmon: sql:")
    r = accelmon("sql", "-f", "yaml", "SELECT 1", data_dir=data)
    assert r.returncode == 2 and "--format" in r.stderr
    r = accelmon("sql", data_dir=data)  # interactive, fed from stdin
    assert r.returncode == 0


@pytest.mark.parametrize("where", ["env", "flag"])
def test_data_dir_from_env_or_flag(tmp_path: Path, where: str) -> None:
    d = tmp_path / where
    if where == "env":
        r = accelmon("sql", "SELECT 1", env={"ACCELMON_DATA_DIR": str(d)})
    else:
        r = accelmon("sql", "SELECT 1", data_dir=d)
    assert r.returncode == 0, r.stderr
    # the store was opened there (a reader creates the layout's roots; a shard's tables only on first write)
    assert (d / "tables").is_dir() and (d / ".gen").is_dir()


def test_unwritable_data_dir_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    r = accelmon("sql", "SELECT 1", data_dir=f / "sub")
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(f / "sub") in r.stderr
