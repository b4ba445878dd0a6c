"""Both /metrics endpoints (guest agent, daemon exporter) on real sockets: TLS and basic auth from a
web config file, the listen backlog, idle keep-alive connections closed after the idle timeout,
connection threads bounded, and a real Prometheus scraping over TLS with basic auth."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from accelmon.demo.prometheus import PrometheusServer, free_port
from accelmon.httpserver import HardenedHTTPServer, ServerLimits

from .helpers import METRIC, basic, bcrypt_hash, endpoint, self_signed, write_web_config

KINDS = ["agent", "exporter"]


def _eof(s: socket.socket, wait_s: float = 20.0) -> bool:
    """Whether the server closed this connection (EOF or reset) within ``wait_s`` (a generous bound)."""
    s.settimeout(wait_s)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _conn_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "accelmon-http-conn")


@pytest.mark.parametrize("kind", KINDS)
def test_tls_and_basic_auth(kind: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    wc = write_web_config(tmp_path / "web.yml", {
        "tls_server_config": {"cert_file": cert.name, "key_file": key.name},
        "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
        "basic_auth_users": {"prom": bcrypt_hash("s3cret-pw"), "ops": bcrypt_hash("other-pw", "$2y$")},
    })
    with endpoint(kind, web_config_file=wc) as srv:
        assert srv.url.startswith("https://")
        url = srv.url + "/metrics"
        r = requests.get(url, verify=str(cert), timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        for user, pw in (("prom", "wrong"), ("prom", ""), ("nobody", "s3cret-pw"), ("ops", "s3cret-pw")):
            r = requests.get(url, headers=basic(user, pw), verify=str(cert), timeout=10)
            assert r.status_code == 401, (user, pw)
            assert "s3cret" not in r.text
        for user, pw in (("prom", "s3cret-pw"), ("ops", "other-pw")):
            r = requests.get(url, headers=basic(user, pw), verify=str(cert), timeout=10)
            assert r.status_code == 200 and METRIC[kind] in r.text
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert requests.get(srv.url + "/", verify=str(cert), timeout=10).status_code == 401  # not only /metrics
        assert requests.get(srv.url + "/healthz", verify=str(cert), timeout=10).status_code in (200, 503)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, headers=basic("prom", "s3cret-pw"), timeout=10)  # the CA is not trusted by default
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url.replace("https://", "http://"), timeout=10)  # no plain HTTP on a TLS port


@pytest.mark.parametrize("kind", KINDS)
def test_basic_auth_without_tls(kind: str, tmp_path: Path) -> None:
    wc = write_web_config(tmp_path / "web.yml", {"basic_auth_users": {"prom": bcrypt_hash("pw")}})
    with endpoint(kind, web_config_file=wc) as srv:
        assert srv.url.startswith("http://")
        assert requests.get(srv.url + "/metrics", timeout=10).status_code == 401
        assert requests.get(srv.url + "/metrics", headers=basic("prom", "pw"), timeout=10).status_code == 200


def test_client_certificates_when_required(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    ccert, ckey = self_signed(tmp_path, "client")
    other, okey = self_signed(tmp_path, "stranger")
    wc = write_web_config(tmp_path / "web.yml", {"tls_server_config": {
        "cert_file": str(cert), "key_file": str(key), "client_auth_type": "RequireAndVerifyClientCert",
        "client_ca_file": str(ccert)}})
    with endpoint("exporter", web_config_file=wc) as srv:
        url = srv.url + "/metrics"
        assert requests.get(url, verify=str(cert), cert=(str(ccert), str(ckey)), timeout=10).status_code == 200
        for client in (None, (str(other), str(okey))):
            with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
                requests.get(url, verify=str(cert), cert=client, timeout=10)


def test_backlog_is_the_configured_one() -> None:
    # ss(8): for a listening socket Send-Q is the backlog given to listen(2); socketserver's default is 5
    with endpoint("exporter", limits=ServerLimits(backlog=200)) as srv:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{srv.port}"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        assert int(out[2]) == 200, out


@pytest.mark.parametrize("kind", KINDS)
def test_idle_connections_are_closed_after_the_timeout_and_scrapes_go_on(kind: str) -> None:
    n = 40
    with endpoint(kind, limits=ServerLimits(idle_timeout_s=1.0, max_connections=64)) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(n)]
        try:
            # a keep-alive connection that did one request and then stays silent
            kept = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            kept.request("GET", "/metrics")
            assert kept.getresponse().read()
            # meanwhile, an ordinary scrape
            assert requests.get(srv.url + "/metrics", timeout=10).status_code == 200
            assert all(_eof(s) for s in idle)
            assert kept.sock is not None and _eof(kept.sock)
            deadline = time.monotonic() + 20
            while srv.open_connections() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert srv.open_connections() == 0
            assert requests.get(srv.url + "/metrics", timeout=10).status_code == 200
        finally:
            for s in idle:
                s.close()


@pytest.mark.parametrize("kind", KINDS)
def test_connection_threads_are_bounded_and_a_scrape_gets_through(kind: str) -> None:
    bound, n = 4, 100
    with endpoint(kind, limits=ServerLimits(idle_timeout_s=600.0, max_connections=bound)) as srv:
        base = _conn_threads()
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(n)]
        try:
            r = requests.get(srv.url + "/metrics", timeout=30)
            assert r.status_code == 200
            assert _conn_threads() - base <= bound and srv.open_connections() <= bound
            # the longest-idle connections made room (closed by the server, long before the idle timeout)
            assert sum(_eof(s, 10.0) for s in idle[: n - bound]) == n - bound
            assert srv.evicted >= n - bound and srv.refused == 0
        finally:
            for s in idle:
                s.close()


def test_a_stalled_tls_handshake_does_not_block_others(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    wc = write_web_config(tmp_path / "web.yml", {"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}})
    with endpoint("agent", web_config_file=wc, limits=ServerLimits(idle_timeout_s=2.0)) as srv:
        stalled = socket.create_connection(("127.0.0.1", srv.port), timeout=10)  # connects, never says hello
        try:
            ctx = ssl.create_default_context(cafile=str(cert))
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert tls.recv(12) == b"HTTP/1.1 200"
            assert _eof(stalled)
        finally:
            stalled.close()


class _AuthPrometheus(PrometheusServer):
    """The test-suite Prometheus with scrape jobs over TLS + basic auth: one with the right password,
    one with a wrong one."""

    def __init__(self, targets: list[str], ca: Path, password_file: Path, wrong_file: Path, **kw: object) -> None:
        super().__init__(targets, **kw)  # type: ignore[arg-type]
        self.ca, self.password_file, self.wrong_file = ca, password_file, wrong_file

    def write_config(self) -> Path:
        def job(name: str, pw: Path) -> dict[str, object]:
            return {"job_name": name, "scrape_interval": "1s", "scrape_timeout": "1s", "scheme": "https",
                    "tls_config": {"ca_file": str(self.ca)},
                    "basic_auth": {"username": "prom", "password_file": str(pw)},
                    "static_configs": [{"targets": self.targets}]}

        cfg = {"global": {"scrape_interval": "1s"},
               "scrape_configs": [job("good", self.password_file), job("badpass", self.wrong_file)]}
        path = self.dir / "prometheus.yml"
        path.write_text(json.dumps(cfg))
        return path


def test_real_prometheus_scrapes_over_tls_with_basic_auth(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    wc = write_web_config(tmp_path / "web.yml", {
        "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
        "basic_auth_users": {"prom": bcrypt_hash("scrape-pw")}})
    (tmp_path / "pw").write_text("scrape-pw\n")
    (tmp_path / "wrong").write_text("guess\n")
    with endpoint("agent", web_config_file=wc) as agent, endpoint("exporter", web_config_file=wc) as exporter:
        targets = [f"127.0.0.1:{agent.port}", f"127.0.0.1:{exporter.port}"]
        prom = _AuthPrometheus(targets, cert, tmp_path / "pw", tmp_path / "wrong", workdir=tmp_path / "prom")
        with prom:
            res = prom.wait_for('up{job="good"} == 1', lambda r: len(r) == 2, timeout_s=60)
            assert {x["metric"]["instance"] for x in res} == set(targets)
            assert prom.wait_for('accelmon_gpu_up{job="good"}', lambda r: len(r) >= 1, timeout_s=60)
            bad = prom.wait_for('up{job="badpass"}', lambda r: len(r) == 2, timeout_s=60)
            assert all(x["value"][1] == "0" for x in bad)
            health = {(t["labels"]["job"], t["health"]): t.get("lastError", "") for t in prom.targets_health()}
            assert any(job == "badpass" and "401" in err for (job, _), err in health.items()), health


def test_cli_agent_serves_with_web_config_flag(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    wc = write_web_config(tmp_path / "web.yml", {
        "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
        "basic_auth_users": {"prom": bcrypt_hash("cli-pw")}})
    port = free_port()
    exe = Path(sys.executable).with_name("accelmon")
    env = {**os.environ, "ACCELMON_CONFIG": ""}
    env.pop("ACCELMON_CONFIG")
    p = subprocess.Popen([str(exe), "agent", "--simulate", "single", "--listen", f"127.0.0.1:{port}",
                          "--web.config.file", str(wc)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         cwd=tmp_path, env=env, start_new_session=True)
    try:
        url = f"https://127.0.0.1:{port}/metrics"
        deadline, r = time.monotonic() + 60, None
        while time.monotonic() < deadline and p.poll() is None:
            try:
                r = requests.get(url, headers=basic("prom", "cli-pw"), verify=str(cert), timeout=5)
                break
            except requests.exceptions.ConnectionError:
                time.sleep(0.2)
        assert r is not None and r.status_code == 200 and "accelmon_gpu_up" in r.text
        assert requests.get(url, headers=basic("prom", "no"), verify=str(cert), timeout=5).status_code == 401
    finally:
        os.kill(p.pid, 15)
        _, err = p.communicate(timeout=30)
    assert b"cli-pw" not in err and b"Basic " not in err


@pytest.mark.parametrize("verb", ["agent", "run"])
def test_cli_bad_web_config_is_one_line(verb: str, tmp_path: Path) -> None:
    wc = write_web_config(tmp_path / "web.yml", {"basic_auth_users": {"prom": "hunter2"}})
    exe = Path(sys.executable).with_name("accelmon")
    args = [str(exe), "--data-dir", str(tmp_path / "d"), verb, "--web.config.file", str(wc)]
    if verb == "agent":
        args += ["--simulate", "single", "--listen", f"127.0.0.1:{free_port()}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELMON_")}
    env["ACCELMON_EXPORTER__LISTEN"] = f"127.0.0.1:{free_port()}"
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("accelmon:")]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{wc}: basic_auth_users.prom: not a bcrypt hash" in lines[0] and "hunter2" not in r.stderr


def test_server_close_ends_idle_connection_threads() -> None:
    with endpoint("exporter", limits=ServerLimits(idle_timeout_s=600.0)) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        deadline = time.monotonic() + 20
        while srv.open_connections() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        httpd: HardenedHTTPServer = srv
    assert httpd.open_connections() == 0 or _eof(s)
    assert _eof(s)
    s.close()


def test_certificate_rotation_applies_to_the_next_connection(tmp_path: Path) -> None:
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    cert, key = self_signed(old_dir)
    new_cert, new_key = self_signed(new_dir)
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    wc = write_web_config(tmp_path / "web.yml", {"tls_server_config": {"cert_file": "live.crt", "key_file": "live.key"}})
    with endpoint("exporter", web_config_file=wc) as srv:
        url = srv.url + "/metrics"
        assert requests.get(url, verify=str(cert), timeout=10).status_code == 200
        live_cert.write_bytes(new_cert.read_bytes())
        live_key.write_bytes(new_key.read_bytes())
        os.utime(live_cert, (1, 1))
        os.utime(live_key, (1, 1))
        assert requests.get(url, verify=str(new_cert), timeout=10).status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, verify=str(cert), timeout=10)
        live_key.write_text("not a key\n")  # a broken rotation: the last good certificate stays in use
        os.utime(live_key, (2, 2))
        assert requests.get(url, verify=str(new_cert), timeout=10).status_code == 200


def test_agent_refuses_bearer_token_and_basic_auth_together(tmp_path: Path) -> None:
    from accelmon.collector.agent.server import AgentHTTPServer, TokenSource
    from accelmon.errors import UserError

    from .helpers import sim_agent

    wc = write_web_config(tmp_path / "web.yml", {"basic_auth_users": {"prom": bcrypt_hash("pw")}})
    agent = sim_agent()
    try:
        with pytest.raises(UserError, match="basic_auth_users and a bearer token") as ei:
            AgentHTTPServer(agent, "127.0.0.1:0", tokens=TokenSource("s3cret-tok-123"), web_config_file=wc)
        assert "s3cret" not in str(ei.value)
    finally:
        agent.close()


def test_clients_dripping_headers_cannot_hold_the_slots() -> None:
    bound = 4
    with endpoint("exporter", limits=ServerLimits(idle_timeout_s=600.0, max_connections=bound)) as srv:
        slow = []
        for _ in range(3 * bound):  # each sends a request line and one header, then nothing more
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        try:
            assert requests.get(srv.url + "/metrics", timeout=30).status_code == 200
            assert srv.refused == 0 and srv.evicted >= 2 * bound
        finally:
            for s in slow:
                s.close()
