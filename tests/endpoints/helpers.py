"""Shared pieces of the endpoint tests: a self-signed certificate (openssl CLI), bcrypt hashes,
a web config file, a raw HTTP GET over a socket, and both servers (agent, exporter) behind one call."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from accelmon.collector.agent.agent import Agent
from accelmon.collector.agent.identity import VmIdentity, swap_uuid_bytes
from accelmon.collector.agent.server import AgentHTTPServer
from accelmon.config import ExporterConfig
from accelmon.daemon.state import DaemonState
from accelmon.exporter.server import MetricsApp, MetricsServer
from accelmon.httpserver import HardenedHTTPServer, ServerLimits
from accelmon.sim.clock import ManualClock
from accelmon.sim.nvml import SimNVML
from accelmon.sim.spec import load_spec

VM_UUID = "42023081-331b-58e1-2730-ca560789e551"


def sim_agent() -> Agent:
    clock = ManualClock(1_700_000_000.0)
    a = Agent(SimNVML(load_spec("single"), clock=clock), clock=clock, poll_interval=1.0, sysfs_root=None,
              backend="simulated", vm_identity=VmIdentity("test-vm", VM_UUID, swap_uuid_bytes(VM_UUID), "simulated"))
    a.start()
    a.poll_once()
    return a


def self_signed(tmp_path: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), made with the openssl CLI."""
    c, k = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    openssl = shutil.which("openssl")
    assert openssl, "openssl not found (Debian package openssl)"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(k), "-out", str(c), "-days", "1", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True, timeout=60,
    )
    return c, k


def bcrypt_hash(password: str, prefix: str = "$2b$") -> str:
    """A bcrypt hash (cost 4: fast in tests); ``prefix="$2y$"`` gives what ``htpasswd -B`` writes."""
    h = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    return prefix + h[4:]


def write_web_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@contextmanager
def endpoint(kind: str, *, web_config_file: Path | None = None, limits: ServerLimits | None = None
             ) -> Iterator[HardenedHTTPServer]:
    """A running agent (simulated NVML) or daemon exporter on a free loopback port; stopped afterwards."""
    if kind == "agent":
        agent = sim_agent()
        srv = AgentHTTPServer(agent, "127.0.0.1:0", web_config_file=web_config_file, limits=limits)
        srv.serve_in_thread()
        try:
            yield srv
        finally:
            srv.shutdown()
            srv.server_close()
            agent.close()
        return
    lim = limits or ServerLimits()
    cfg = ExporterConfig(listen="127.0.0.1:0", web_config_file=web_config_file, backlog=lim.backlog,
                         idle_timeout=lim.idle_timeout_s, max_connections=lim.max_connections)
    ms = MetricsServer(MetricsApp(DaemonState(), cfg, process_metrics=False)).start()
    try:
        yield ms.httpd
    finally:
        ms.stop()


METRIC = {"agent": "accelmon_gpu_up", "exporter": "accelmon_"}
