"""Faults against the running simulator: session expiry, wrong password, untrusted TLS,
vCenter down, vmware.log rotation over the real /folder endpoint."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from accelmon.collector.vcenter import stunlog
from accelmon.collector.vcenter.session import (
    VCenterAuthError,
    VCenterSession,
    VCenterTLSError,
    VCenterUnavailable,
)
from accelmon.collector.vcenter.source import VCenterSource
from accelmon.errors import UserError
from accelmon.sim.vcsim import Vcsim
from accelmon.store.writer import Store

from .conftest import vc_config


def test_session_terminated_relogs_in_transparently(estate: Vcsim, source: VCenterSource, store: Store) -> None:
    source.collect(store)
    gen = source.session.generation
    admin = VCenterSession(vc_config(estate))
    admin.connect()
    try:
        key = source.session.content.sessionManager.currentSession.key
        admin.content.sessionManager.TerminateSession([key])
    finally:
        admin.close()
    res = source.collect(store)  # no exception: logged in again, filter recreated
    assert source.session.generation == gen + 1 and source.relogins_total == 1
    assert "vm_power_sample" in res.rows or "host_power_sample" in res.rows or res.errors == []
    assert not any(t.startswith("inv_") for t in res.rows)  # same inventory: no new snapshot


def test_wrong_password_names_url_not_password(estate: Vcsim) -> None:
    secret = "Wr0ng-" + estate.password[::-1]
    s = VCenterSession(vc_config(estate, password=secret))
    with pytest.raises(VCenterAuthError) as ei:
        s.connect()
    msg = str(ei.value)
    assert isinstance(ei.value, UserError) and "\n" not in msg
    assert estate.url in msg and estate.user in msg
    assert secret not in msg and estate.password not in msg


def test_untrusted_certificate_names_ca_bundle(estate: Vcsim) -> None:
    s = VCenterSession(vc_config(estate, ca_bundle=None))  # system CAs do not know the simulator's
    with pytest.raises(VCenterTLSError) as ei:
        s.connect()
    assert "ca_bundle" in str(ei.value) and estate.url in str(ei.value)
    # verification is on unless the config says otherwise
    assert s.ssl_context is not None and s.ssl_context.verify_mode == ssl.CERT_REQUIRED
    ok = VCenterSession(vc_config(estate, ca_bundle=None, verify_tls=False))
    ok.connect()  # the explicit opt-out
    ok.close()


def test_vcenter_down_is_a_clean_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    from accelmon.config import VCenterConfig

    src = VCenterSource(VCenterConfig(url=f"https://127.0.0.1:{port}/sdk", user="u", password="secret-pw",
                                      timeout=2))
    t0 = time.monotonic()
    with pytest.raises(VCenterUnavailable) as ei:
        src.collect(None)
    assert time.monotonic() - t0 < 5
    assert f"127.0.0.1:{port}" in str(ei.value) and "secret-pw" not in str(ei.value)


def test_log_rotation_over_the_folder_endpoint(estate: Vcsim) -> None:
    """Range reads and the folder listing of the simulator's real /folder HTTP endpoint."""
    import urllib.request

    s = VCenterSession(vc_config(estate))
    s.connect()
    q = estate.manifest["datastore"]["folder_query"]
    base = estate.url.rsplit("/sdk", 1)[0]

    def put(name: str, data: bytes) -> None:
        req = urllib.request.Request(f"{base}/folder/rot-test/{name}?{q}", data=data, method="PUT",
                                     headers={"Cookie": s.session_cookie()})
        urllib.request.urlopen(req, context=estate.ssl_context()).read()

    line = "2023-04-15T08:52:{:02d}.000Z In(05) vmx - Tools: heartbeat {}\n"
    first = "".join(line.format(i, i) for i in range(10)).encode()
    put("vmware.log", first)
    cur = stunlog.LogCursor(stunlog.log_url("[LocalDS_0] rot-test/", "DC0") or "")
    chunks, cur = stunlog.fetch_new(s.http_get, cur)
    assert b"".join(chunks) == first
    more = line.format(10, 10).encode()
    put("vmware.log", first + more)
    chunks, cur = stunlog.fetch_new(s.http_get, cur)
    assert chunks == [more]
    # rotation: the current log becomes vmware-1.log with a final line, a new vmware.log starts
    last = line.format(11, 11).encode()
    put("vmware-1.log", first + more + last)
    fresh = "2023-04-15T08:53:00.000Z In(05) vmx - Migrate_Open: Restoring from <10.0.0.1> with migration id 7\n"
    put("vmware.log", fresh.encode())
    chunks, cur = stunlog.fetch_new(s.http_get, cur)
    assert chunks == [last, fresh.encode()] and cur.rotated_max == 1
    s.close()
