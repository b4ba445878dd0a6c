"""The HTTP server under both /metrics endpoints (the guest agent's and the daemon's exporter).

What the stdlib ``ThreadingHTTPServer`` lacks for an endpoint on a network:

* a listen **backlog** larger than socketserver's 5 (``backlog``, default 128), so a burst of
  scrapers (or a Prometheus HA pair plus the daemon) is not refused at the SYN queue;
* an **idle timeout**: a keep-alive connection that sends no request for ``idle_timeout`` seconds
  is closed (so is one that sends nothing for that long in the middle of a request or a TLS
  handshake; every read and write is bounded by it);
* a **bounded number of connection threads** (``max_connections``): one thread per open connection,
  as the stdlib does, but never more than the bound. When the bound is reached, the connection
  that has been idle longest is closed to make room (keep-alive connections are a convenience, a
  client reopens one; a connection still sending its request line or headers counts as idle, so
  slow senders cannot hold the slots); only when every connection is busy serving a request is a
  new one refused.
  1,000 idle connections therefore hold at most ``max_connections`` threads, and a scrape arriving
  meanwhile is still served;
* **TLS and basic auth** from a Prometheus web config file (:mod:`accelmon.webconfig`); the TLS
  handshake runs in the connection's thread under the same timeout, never in the accept loop.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from accelmon.webconfig import WebConfigSource

log = logging.getLogger("accelmon.http")


@dataclass(frozen=True)
class ServerLimits:
    backlog: int = 128
    idle_timeout_s: float = 30.0
    max_connections: int = 64


class HardenedHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 with the server's idle timeout, web-config headers and basic auth."""

    server: HardenedHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stall)

    def setup(self) -> None:
        self.timeout = self.server.limits.idle_timeout_s
        super().setup()  # sets the socket timeout: every read/write (and the handshake below) is bounded
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def handle_one_request(self) -> None:
        self.server._mark(self.connection, idle=True)
        super().handle_one_request()

    def parse_request(self) -> bool:
        # reads the headers; until they are all in, the connection counts as idle (evictable), so a
        # client dripping headers cannot hold a slot against others
        ok = super().parse_request()
        self.server._mark(self.connection, idle=False)  # busy until its response is written
        return ok

    def end_headers(self) -> None:
        for k, v in self.server.web.current().headers.items():
            self.send_header(k, v)
        super().end_headers()

    def check_basic_auth(self) -> bool:
        """True if the request may pass; otherwise a 401 with a Basic challenge has been sent."""
        if self.server.web.authorized(self.headers.get("Authorization")):
            return True
        body = b"authentication required\n"
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="accelmon"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return False


class HardenedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[HardenedHandler], *,
                 web: WebConfigSource | None = None, limits: ServerLimits | None = None) -> None:
        self.limits = limits or ServerLimits()
        self.web = web or WebConfigSource()
        self.request_queue_size = self.limits.backlog  # socketserver passes it to listen()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self._conns: dict[socket.socket, float | None] = {}  # open connection → idle since (None: busy)
        self._conns_lock = threading.Lock()
        self.refused = 0  # connections refused because every slot was busy serving a request
        self.evicted = 0  # idle connections closed early to make room
        super().__init__(address, handler)

    @property
    def tls(self) -> bool:
        return self.web.tls

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.server_address[0])
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def open_connections(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    # ---------------------------------------------------------------- accept loop
    def get_request(self) -> tuple[Any, Any]:
        conn, addr = self.socket.accept()
        ctx = self.web.ssl_context()
        if ctx is not None:
            try:  # the handshake happens in the connection's thread (HardenedHandler.setup)
                conn = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            except (OSError, ssl.SSLError):
                conn.close()
                raise
        return conn, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # an evicted connection's thread frees its slot as soon as it runs; with every connection
            # busy serving a request, wait briefly for one to finish, then refuse
            wait_s = 10.0 if self._evict_idle() else 1.0
            if not self._slots.acquire(timeout=wait_s):
                self.refused += 1
                log.warning("http: %d connections busy; refusing a connection from %s",
                            self.limits.max_connections, client_address[0])
                self.shutdown_request(request)
                return
        with self._conns_lock:
            self._conns[request] = time.monotonic()
        t = threading.Thread(target=self._serve_connection, args=(request, client_address), daemon=True,
                             name="accelmon-http-conn")
        try:
            t.start()
        except RuntimeError:  # cannot start a thread: refuse this one, keep serving
            self._forget(request)
            self.shutdown_request(request)
            self._slots.release()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a broken client must not end the server
            self.handle_error(request, client_address)
        finally:
            self._forget(request)
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("http: error serving %s", client_address, exc_info=True)

    # ---------------------------------------------------------------- bookkeeping
    def _mark(self, conn: Any, *, idle: bool) -> None:
        with self._conns_lock:
            if conn in self._conns:
                self._conns[conn] = time.monotonic() if idle else None

    def _forget(self, conn: Any) -> None:
        with self._conns_lock:
            self._conns.pop(conn, None)

    @staticmethod
    def _abort(conn: Any) -> None:
        # socket.socket.shutdown, not SSLSocket's: unblock the thread reading it without touching TLS state
        try:
            socket.socket.shutdown(conn, socket.SHUT_RDWR)
        except OSError:
            pass

    def _evict_idle(self) -> bool:
        """Close the longest-idle connection; False if every connection is busy."""
        with self._conns_lock:
            idle = [(since, c) for c, since in self._conns.items() if since is not None]
            if not idle:
                return False
            _, oldest = min(idle, key=lambda x: x[0])
            self._conns[oldest] = None  # not picked twice
        self.evicted += 1
        self._abort(oldest)
        return True

    def server_close(self) -> None:
        super().server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:  # threads blocked on idle keep-alive connections end now, not after the timeout
            self._abort(c)

    def serve_in_thread(self, name: str = "accelmon-http") -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name=name, daemon=True)
        t.start()
        return t
