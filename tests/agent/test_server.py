"""The agent's HTTP side: /metrics, /healthz, bearer token, TLS, and promtool's lint."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from accelmon.collector.agent.metrics import make_registry, render, render_reference
from accelmon.collector.agent.server import AgentHTTPServer, TokenSource
from accelmon.errors import UserError

from .conftest import agent_of, metrics_text, run_polls, sim_of


@pytest.fixture
def served(clock) -> Iterator[tuple[AgentHTTPServer, object]]:
    sim = sim_of("mixed", clock)
    agent = agent_of(sim, clock)
    agent.poll_once()
    srv = AgentHTTPServer(agent, "127.0.0.1:0")
    srv.serve_in_thread()
    yield srv, agent
    srv.shutdown()
    srv.server_close()


def test_metrics_healthz_and_404(served) -> None:
    srv, _ = served
    r = requests.get(srv.url + "/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "accelmon_gpu_busy_seconds_total{" in r.text
    assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200
    assert requests.get(srv.url + "/nope", timeout=5).status_code == 404
    raw = requests.get(srv.url + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5, stream=True).raw
    assert raw.headers["Content-Encoding"] == "gzip"
    assert b"accelmon_gpu_up" in gzip.decompress(raw.read(decode_content=False))


def test_healthz_is_503_before_any_poll(clock) -> None:
    agent = agent_of(sim_of("single", clock), clock)
    srv = AgentHTTPServer(agent, "127.0.0.1:0")
    srv.serve_in_thread()
    try:
        assert requests.get(srv.url + "/healthz", timeout=5).status_code == 503
        agent.poll_once()
        assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_promtool_check_metrics_is_clean(clock) -> None:
    texts = []
    for spec, kw in (("mixed", {"per_process": True}), ("mig", {}), ("vgpu-guest", {})):
        sim = sim_of(spec, clock)
        agent = agent_of(sim, clock, **kw)
        run_polls(agent, clock, 3, 1.0)
        sim.xid(0, 79)
        run_polls(agent, clock, 1, 1.0)
        texts.append(metrics_text(agent))
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install the Debian package prometheus"
    for text in texts:
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_fast_renderer_writes_what_prometheus_client_writes(clock) -> None:
    sim = sim_of("mixed", clock)
    agent = agent_of(sim, clock, per_process=True)
    run_polls(agent, clock, 2, 1.0)
    reg = make_registry(agent)
    dynamic = ("accelmon_agent_cpu_seconds_total", "accelmon_agent_resident_memory_bytes", "accelmon_agent_poll_age")
    ours = [line for line in render(reg).decode().splitlines() if not line.startswith(dynamic)]
    ref = [line for line in render_reference(reg).decode().splitlines() if not line.startswith(dynamic)]
    assert len(ours) > 300 and ours == ref


def test_bearer_token_and_rotation(clock, tmp_path: Path) -> None:
    agent = agent_of(sim_of("single", clock), clock)
    agent.poll_once()
    tf = tmp_path / "token"
    tf.write_text("s3cret-one\n")
    srv = AgentHTTPServer(agent, "127.0.0.1:0", tokens=TokenSource(None, tf))
    srv.serve_in_thread()
    try:
        url = srv.url + "/metrics"
        r = requests.get(url, timeout=5)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert "s3cret" not in r.text
        assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer s3cret-one"}, timeout=5).status_code == 200
        assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200  # health needs no token
        tf.write_text("s3cret-two\n")
        os.utime(tf, (1, 1))  # make sure the mtime changes even within the same second
        assert requests.get(url, headers={"Authorization": "Bearer s3cret-one"}, timeout=5).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer s3cret-two"}, timeout=5).status_code == 200
    finally:
        srv.shutdown()
        srv.server_close()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI (ca-certificates depends on it)."""
    c, k = tmp_path / "agent.crt", tmp_path / "agent.key"
    openssl = shutil.which("openssl")
    assert openssl, "openssl not found (Debian package openssl)"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(k), "-out", str(c), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True, timeout=60,
    )
    return c, k


def test_tls(clock, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    agent = agent_of(sim_of("single", clock), clock)
    agent.poll_once()
    srv = AgentHTTPServer(agent, "127.0.0.1:0", tokens=TokenSource("tok"), tls_cert=cert, tls_key=key)
    srv.serve_in_thread()
    try:
        assert srv.url.startswith("https://")
        r = requests.get(srv.url + "/metrics", headers={"Authorization": "Bearer tok"}, verify=str(cert), timeout=5)
        assert r.status_code == 200 and "accelmon_gpu_up" in r.text
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(srv.url + "/metrics", timeout=5)  # not trusted without the CA
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(srv.url.replace("https://", "http://") + "/metrics", timeout=5)  # plain HTTP refused
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(UserError, match="agent.tls_cert/tls_key: cannot load"):
        AgentHTTPServer(agent, "127.0.0.1:0", tls_cert=key, tls_key=key)


def test_listen_errors_are_one_line(clock) -> None:
    agent = agent_of(sim_of("single", clock), clock)
    with pytest.raises(UserError, match='agent.listen: not host:port: "nowhere"'):
        AgentHTTPServer(agent, "nowhere")
    srv = AgentHTTPServer(agent, "127.0.0.1:0")
    try:
        with pytest.raises(UserError, match="agent.listen: cannot listen on"):
            AgentHTTPServer(agent, f"127.0.0.1:{srv.port}")
    finally:
        srv.server_close()
