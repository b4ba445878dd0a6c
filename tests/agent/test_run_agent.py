"""``run_agent``: the entry point the CLI calls (once, serving, real-NVML start-up errors)."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from accelmon.collector.agent.main import build_agent, run_agent
from accelmon.config import load, parse
from accelmon.demo.simnvml import simulated_backend
from accelmon.errors import UserError

from .conftest import series

REPO = Path(__file__).resolve().parents[2]


def _real_nvml_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def test_once_prints_metrics(capsys) -> None:
    assert run_agent(load(None, env={}), backend=simulated_backend("single"), once=True) == 0
    out = capsys.readouterr().out
    busy = series(out, "accelmon_gpu_busy_seconds_total")
    idle = series(out, "accelmon_gpu_idle_seconds_total")
    assert len(busy) == 1 and sum(busy.values()) + sum(idle.values()) > 10  # the driver's ring, integrated
    assert series(out, "accelmon_agent_info")


def test_without_nvml_library_it_is_one_clear_line_exit_2(capsys) -> None:
    cfg = load(None, env={})
    if _real_nvml_present():  # on a GPU machine the real path must work instead
        assert run_agent(cfg, once=True) == 0
        assert series(capsys.readouterr().out, "accelmon_agent_info")
        return
    with pytest.raises(UserError) as ei:
        run_agent(cfg, once=True)
    assert ei.value.exit_code == 2
    msg = str(ei.value)
    assert "libnvidia-ml.so.1" in msg and "--simulate" in msg and "\n" not in msg


def test_spec_file_sets_the_vm_identity(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "vm.toml"
    spec.write_text('vm_bios_uuid = "42023081-331B-58E1-2730-CA560789E551"\nhostname = "gpu-vm-7"\n'
                    '[[gpu]]\nmodel = "T4"\nmode = "vgpu"\nvgpu_profile = "T4-8C"\n')
    assert run_agent(load(None, env={}), backend=simulated_backend(str(spec)), once=True) == 0
    out = capsys.readouterr().out
    (labels, _), = series(out, "accelmon_agent_info").items()
    d = dict(labels)
    assert (d["vm_bios_uuid"], d["vm_bios_uuid_source"], d["Hostname"]) == (
        "42023081-331b-58e1-2730-ca560789e551", "simulated", "gpu-vm-7")
    assert not series(out, "accelmon_gpu_power_watts")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[gpu]]\nmodel = "A100"\ncount = 0\n')
    with pytest.raises(UserError, match=r"bad.toml: gpu\[0\].count"):
        simulated_backend(str(bad))


def test_serves_until_sigterm(tmp_path: Path) -> None:
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO)\n"
        "from accelmon.config import parse\n"
        "from accelmon.collector.agent.main import run_agent\n"
        "from accelmon.demo.simnvml import simulated_backend\n"
        "cfg = parse({'agent': {'poll_interval': 0.2, 'token': 'tok'}}, 't', env={})\n"
        "sys.exit(run_agent(cfg, backend=simulated_backend('mixed'), listen='127.0.0.1:0'))\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.time() + 30
        lines = []
        while time.time() < deadline and url is None:
            line = p.stderr.readline()
            lines.append(line)
            m = re.search(r"listening on (http://\S+/metrics)", line)
            if m:
                url = m.group(1)
        assert url, "".join(lines)
        assert requests.get(url, timeout=5).status_code == 401
        r = requests.get(url, headers={"Authorization": "Bearer tok"}, timeout=5)
        assert r.status_code == 200 and len(series(r.text, "accelmon_gpu_up")) == 4
        time.sleep(0.5)
        r2 = requests.get(url, headers={"Authorization": "Bearer tok"}, timeout=5)
        polls = [v for k, v in series(r2.text, "accelmon_agent_polls_total").items()]
        assert polls and polls[0] >= 2  # polling in the background
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
        rest = p.stderr.read()
        assert "tok" not in "".join(lines) + rest  # the token is never logged
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_cli_verb() -> None:
    env = {**os.environ, "ACCELMON_DATA_DIR": "/tmp/accelmon-agent-cli-test"}
    cli = [sys.executable, "-c", "from accelmon.cli import main; main()", "agent"]
    r = subprocess.run([*cli, "--simulate", "single", "--once"], capture_output=True, text=True, timeout=120,
                       cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    assert series(r.stdout, "accelmon_gpu_busy_seconds_total")
    bad = subprocess.run([*cli, "--simulate", "no-such-preset", "--once"], capture_output=True, text=True,
                         timeout=120, cwd=REPO, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "neither a preset" in bad.stderr


def test_config_keys_reach_the_agent() -> None:
    cfg = parse({"agent": {"poll_interval": "250ms", "per_process": True}}, "t", env={})
    agent = build_agent(cfg, simulated_backend("single"))
    try:
        assert agent.poll_interval == 0.25 and agent.per_process
    finally:
        agent.close()
