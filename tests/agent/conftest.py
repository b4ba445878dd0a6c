"""Shared fixtures for the agent tests: a hand-stepped clock, the simulated NVML, an agent,
a tiny HTTP server whose behaviour a test sets (text, garbage, hang, drip, huge body)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from accelmon.collector.agent.agent import Agent
from accelmon.collector.agent.identity import VmIdentity, swap_uuid_bytes
from accelmon.collector.agent.metrics import make_registry, render
from accelmon.collector.agent.server import AgentHTTPServer
from accelmon.collector.agent_source import AgentSource
from accelmon.sim.clock import ManualClock
from accelmon.sim.nvml import SimNVML
from accelmon.sim.spec import load_spec, parse_spec
from accelmon.store.writer import Store

VM_UUID = "42023081-331b-58e1-2730-ca560789e551"
T0 = 1_700_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def sim_of(spec: Any, clock: Any, **kw: Any) -> SimNVML:
    s = load_spec(spec) if isinstance(spec, str) else parse_spec(spec)
    return SimNVML(s, clock=clock, **kw)


def agent_of(sim: SimNVML, clock: Any, **kw: Any) -> Agent:
    kw.setdefault("poll_interval", 1.0)
    a = Agent(
        sim,
        clock=clock,
        sysfs_root=None,
        backend="simulated",
        vm_identity=VmIdentity("test-vm", VM_UUID, swap_uuid_bytes(VM_UUID), "simulated"),
        **kw,
    )
    a.start()
    return a


def metrics_text(agent: Agent) -> str:
    return render(make_registry(agent)).decode()


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples named ``name``: {sorted label items: value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def by_gpu(text: str, name: str, label: str = "gpu") -> dict[str, float]:
    return {dict(k)[label]: v for k, v in series(text, name).items() if "GPU_I_ID" not in dict(k)}


class Behaviour:
    def __init__(self) -> None:
        self.mode = "text"
        self.body = b""
        self.status = 200
        self.requests = 0
        self.headers: list[dict[str, str]] = []


@pytest.fixture
def fake_http() -> Iterator[tuple[str, Behaviour]]:
    beh = Behaviour()
    stop = threading.Event()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            beh.requests += 1
            beh.headers.append(dict(self.headers))
            if beh.mode == "hang":
                stop.wait(30)
                return
            if beh.mode == "drip":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                for _ in range(300):
                    if stop.is_set():
                        return
                    try:
                        self.wfile.write(b"#")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.1)
                return
            if beh.mode == "huge":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                line = b"x_metric 1\n" * 10000
                try:
                    for _ in range(1000):
                        self.wfile.write(line)
                except OSError:
                    return
                return
            status, body = beh.status, beh.body  # read once: a test may change them meanwhile
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/metrics", beh
    stop.set()
    srv.shutdown()
    srv.server_close()


Poller = Callable[[int, float], None]


def run_polls(agent: Agent, clock: ManualClock, n: int, step: float) -> None:
    for _ in range(n):
        clock.advance(step)
        agent.poll_once()


def scrape_into_store(agent: Agent, data_dir: Any) -> Store:
    """Serve ``agent`` over HTTP once and collect it with the daemon's AgentSource into a new store."""
    srv = AgentHTTPServer(agent, "127.0.0.1:0")
    srv.serve_in_thread()
    try:
        store = Store(data_dir)
        AgentSource(srv.url, timeout=5).collect(store)
    finally:
        srv.shutdown()
        srv.server_close()
    return store
