"""The agent's HTTP endpoint: ``/metrics`` (optionally behind a bearer token or basic auth, optionally
TLS), ``/healthz``.

Each connection is served in its own thread (bounded, idle ones closed: :mod:`accelmon.httpserver`)
from the latest poll snapshot, so a scrape never waits for NVML. TLS and basic auth come from a
Prometheus web config file (:mod:`accelmon.webconfig`, ``--web.config.file``) or, for TLS, the older
``tls_cert``/``tls_key``. The token and passwords are compared in constant time and never logged.
"""

from __future__ import annotations

import gzip
import hmac
import logging
from pathlib import Path
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from accelmon.collector.agent.metrics import make_registry, render
from accelmon.errors import UserError
from accelmon.httpserver import HardenedHandler, HardenedHTTPServer, ServerLimits
from accelmon.webconfig import WebConfig, WebConfigSource

log = logging.getLogger("accelmon.agent")


class TokenSource:
    """A bearer token given inline or in a file (re-read when the file changes, for rotation)."""

    def __init__(self, token: str | None = None, token_file: Path | None = None) -> None:
        self._token = token.encode() if token else None
        self._file = token_file
        self._mtime: float | None = None
        if token_file is not None:
            self._load()

    def _load(self) -> None:
        assert self._file is not None
        try:
            st = self._file.stat()
            if self._mtime != st.st_mtime:
                self._token = self._file.read_text().strip().encode() or None
                self._mtime = st.st_mtime
        except OSError as e:
            if self._token is None:
                raise UserError(f"agent.token_file: cannot read {self._file}: {e.strerror}") from None
            log.warning("agent.token_file: cannot re-read %s (%s); keeping the previous token", self._file, e.strerror)

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._file is not None

    def check(self, header: str | None) -> bool:
        if not self.enabled:
            return True
        if self._file is not None:
            self._load()
        if not header or not header.startswith("Bearer ") or self._token is None:
            return False
        return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), self._token)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f'agent.listen: not host:port: "{listen}"')
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _Handler(HardenedHandler):
    server: AgentHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s - %s", self.address_string(), format % args)

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8", extra: dict[str, str] | None = None) -> None:
        gz = "gzip" in (self.headers.get("Accept-Encoding") or "") and len(body) > 1024
        if gz:
            body = gzip.compress(body, compresslevel=1)
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if gz:
            self.send_header("Content-Encoding", "gzip")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0]
        srv = self.server
        if path == "/healthz":  # no credentials needed: it says only ok / no recent poll
            if srv.agent.healthy():
                self._send(200, b"ok\n")
            else:
                self._send(503, b"no recent NVML poll\n")
            return
        if not self.check_basic_auth():
            return
        if path == "/metrics":
            if not srv.tokens.check(self.headers.get("Authorization")):
                self._send(401, b"missing or wrong bearer token\n", extra={"WWW-Authenticate": 'Bearer realm="accelmon"'})
                return
            # the body is the classic text format (generate_latest), so say 0.0.4, which every Prometheus 2.x reads
            self._send(200, render(srv.registry), CONTENT_TYPE_PLAIN_0_0_4)
            return
        if path == "/":
            self._send(200, b"accelmon agent: /metrics, /healthz\n")
            return
        self._send(404, b"not found\n")


class AgentHTTPServer(HardenedHTTPServer):
    def __init__(self, agent: Any, listen: str, *, tokens: TokenSource | None = None,
                 tls_cert: Path | None = None, tls_key: Path | None = None,
                 web_config_file: Path | None = None, limits: ServerLimits | None = None) -> None:
        host, port = parse_listen(listen)
        self.agent = agent
        self.tokens = tokens or TokenSource()
        if web_config_file is not None and tls_cert is not None:
            raise UserError("agent.tls_cert/tls_key: give TLS either here or in web_config_file, not both")
        if tls_cert is not None:
            web = WebConfigSource(fixed=WebConfig.from_tls_files(tls_cert, tls_key or tls_cert, "agent.tls_cert/tls_key"))
        else:
            web = WebConfigSource(web_config_file) if web_config_file is not None else None
        if web is not None and web.basic_auth and self.tokens.enabled:
            raise UserError(f"agent.token/token_file: {web_config_file}: basic_auth_users and a bearer token "
                            "cannot both be required (one Authorization header): choose one")
        self.registry = make_registry(agent)
        try:
            super().__init__((host, port), _Handler, web=web, limits=limits)
        except OSError as e:
            raise UserError(f"agent.listen: cannot listen on {listen}: {e.strerror or e}") from None
        if (self.tokens.enabled or self.web.basic_auth) and not self.tls and host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("credentials are required but TLS is off: they cross the network in clear text")
