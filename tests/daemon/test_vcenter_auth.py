"""A wrong vCenter password must not lock the service account, and an insecure vCenter
connection is said once at start.

vCenter SSO locks an account after a few failed logins in a short window, so a refused login
(``InvalidLogin``) stops that vCenter's polling: one error line, no further login until the
auth backoff passed (then one, and the backoff doubles), while every job keeps failing with the
same error.  The logins are counted where vCenter would count them: a TCP relay in front of the
simulator counts the ``Login`` requests that reach it."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from accelmon.config import parse
from accelmon.daemon.service import Daemon
from accelmon.exporter.server import MetricsApp
from accelmon.sim.vcsim import Vcsim
from accelmon.store import Store

from .procs import wait_until

LOGIN_RE = re.compile(rb"<(?:\w+:)?Login[\s>]")
JOBS = ("vcenter.inventory", "vcenter.perf", "vcenter.events")


class LoginCounter:
    """A TCP relay to a plain-HTTP simulator that counts the SOAP ``Login`` requests it forwards."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.logins = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            u = socket.create_connection(self.upstream)
            self._conns += [c, u]
            threading.Thread(target=self._pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        tail = b""
        try:
            while data := src.recv(65536):
                if count:
                    buf = tail + data
                    n = len(LOGIN_RE.findall(buf)) - len(LOGIN_RE.findall(tail))
                    with self._lock:
                        self.logins += n
                    tail = buf[-64:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._sock.close()
        for s in self._conns:
            s.close()


@pytest.fixture
def relay(vcsim_factory: Callable[..., Vcsim]) -> Iterator[tuple[Vcsim, LoginCounter]]:
    sim = vcsim_factory(tls=False, seed=3, vms=20, clusters=1, hosts_per_cluster=2)
    r = LoginCounter(sim.host, sim.port)
    try:
        yield sim, r
    finally:
        r.close()


def _health(d: Daemon, url: str) -> list[Any]:
    return [d.state.source_health(j, url) for j in JOBS]


def test_wrong_password_logs_in_once_per_backoff_and_recovers_when_fixed(
    relay: tuple[Vcsim, LoginCounter], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sim, counter = relay
    wrong = "Wr0ng-" + sim.password[::-1]
    pw = tmp_path / "vc.password"
    pw.write_text(wrong + "\n")
    url = f"http://127.0.0.1:{counter.port}/sdk"
    cfg = parse({
        "vcenter": [{"url": url, "user": sim.user, "password_file": str(pw), "inventory_interval": "0.5s",
                     "perf_interval": "0.5s", "events_interval": "0.5s", "timeout": "5s",
                     "auth_backoff": "6s", "auth_backoff_max": "12s"}],
        "agents": {"discovery": False}, "report": {"enabled": False},
    }, "test.toml", env={})
    d = Daemon(cfg, Store(tmp_path / "data"))
    app = MetricsApp(d.state, cfg.exporter)
    d.prepare()
    d.start()
    try:
        wait_until(lambda: counter.logins >= 1, 30, "the first login")
        t1 = time.monotonic()
        wait_until(lambda: all(h is not None and h.polls_total >= 3 for h in _health(d, url)), 30,
                   "several polls of every vCenter job")
        polls = sum(h.polls_total for h in _health(d, url))
        # several poll cycles of all three jobs, within the 6 s backoff: one login reached vCenter
        assert time.monotonic() - t1 < 6 and polls >= 9
        assert counter.logins == 1, counter.logins
        for h in _health(d, url):
            assert h.success is False and h.error_kind == "auth", h
        text = app.render().decode()
        assert f'accelmon_vcenter_auth_failed{{target="{url}"}} 1.0' in text
        # one error line for the vCenter (not one per job), naming the vCenter and the user
        lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(lines) == 1, lines
        assert url in lines[0] and sim.user in lines[0] and "auth_backoff" in lines[0]
        assert not [r for r in caplog.records if "poll failed" in r.getMessage()]

        # the backoff passes: one more attempt, and the next wait is twice as long (12 s)
        wait_until(lambda: counter.logins >= 2, 30, "the login after the backoff")
        t2 = time.monotonic()
        assert t2 - t1 >= 6
        before = [h.polls_total for h in _health(d, url)]
        wait_until(lambda: all(h.polls_total >= n + 2 for h, n in zip(_health(d, url), before, strict=True)),
                   30, "more polls of every job")
        assert time.monotonic() - t2 < 12 and counter.logins == 2, counter.logins

        # the password is fixed (password_file is re-read): the next poll logs in, polling resumes
        pw.write_text(sim.password + "\n")
        wait_until(lambda: all(h.success for h in _health(d, url)), 30, "vCenter polling to recover")
        assert counter.logins == 3, counter.logins
        assert f'accelmon_vcenter_auth_failed{{target="{url}"}} 0.0' in app.render().decode()
    finally:
        d.stop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert wrong not in text and sim.password not in text


def test_restart_tries_the_login_again(relay: tuple[Vcsim, LoginCounter], tmp_path: Path) -> None:
    sim, counter = relay
    url = f"http://127.0.0.1:{counter.port}/sdk"

    def daemon(password: str) -> Daemon:
        cfg = parse({"vcenter": [{"url": url, "user": sim.user, "password": password}],
                     "agents": {"discovery": False}, "report": {"enabled": False}}, "test.toml", env={})
        d = Daemon(cfg, Store(tmp_path / "data"))
        d.prepare()
        return d

    d = daemon("wrong-password")
    assert d.run_once() == 1
    d.stop()
    assert counter.logins == 1  # three jobs, one login
    d = daemon(sim.password)
    assert d.run_once() == 0
    d.stop()
    assert counter.logins == 2


def test_insecure_vcenter_connection_is_said_once_per_vcenter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    cfg = parse({"vcenter": [
        {"name": "vc-plain", "url": "http://vc-plain.example.com/sdk", "user": "u", "password": "p1-secret"},
        {"name": "vc-noverify", "url": "https://vc-noverify.example.com/sdk", "user": "u", "password": "p2-secret",
         "verify_tls": False},
        {"name": "vc-good", "url": "https://vc-good.example.com/sdk", "user": "u", "password": "p3-secret"},
    ], "agents": {"discovery": False}, "report": {"enabled": False}}, "test.toml", env={})
    d = Daemon(cfg, Store(tmp_path / "data"))
    d.prepare()  # builds the sources (no connection yet)
    d.stop()
    lines = [r.getMessage() for r in caplog.records if "insecure" in r.getMessage()]
    assert len([x for x in lines if "vc-plain" in x]) == 1 and "http://" in next(x for x in lines if "vc-plain" in x)
    assert len([x for x in lines if "vc-noverify" in x]) == 1
    assert "verify_tls = false" in next(x for x in lines if "vc-noverify" in x)
    assert not [x for x in lines if "vc-good" in x] and len(lines) == 2
    assert not any("secret" in x for x in lines)
