"""One authenticated vSphere API session: login, transparent re-login, clean errors.

Errors are :class:`accelmon.errors.UserError` subclasses, one line each, naming the vCenter URL
and never a credential:

* :class:`VCenterAuthError`  wrong user name or password (``InvalidLogin``)
* :class:`VCenterTLSError`   certificate not trusted: names the ``ca_bundle`` option
  (verification is only off when the config says ``verify_tls = false``)
* :class:`VCenterUnavailable` refused, reset, timed out, not a vSphere API endpoint

A ``NotAuthenticated`` fault (session expired, terminated by an admin, vCenter restarted)
triggers one re-login and a retry of the call; :attr:`VCenterSession.generation` counts logins
so callers can recreate session-scoped objects (property collectors, views, filters).

**A refused login is not retried on the polling schedule** (SSO would lock the account): the
three jobs of a vCenter share this one session, and after an ``InvalidLogin`` every job gets
the same :class:`VCenterAuthError` without a request to vCenter until the auth backoff passed
(:mod:`.authgate`).  Network errors do not arm it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import io
import logging
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any, TypeVar
from urllib.parse import urlparse

from pyVim.connect import GetServiceVersions
from pyVmomi import SoapStubAdapter, VmomiSupport, vim, vmodl
from pyVmomi.SoapAdapter import SoapResponseDeserializer

from accelmon.collector.vcenter.authgate import AuthGate
from accelmon.collector.vcenter.stunlog import HttpResult
from accelmon.config import VCenterConfig
from accelmon.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

COOKIE_NAME = "vmware_soap_session"
SOAP_HEAD = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope '
    b'xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" '
    b'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">\n'
    b"<soapenv:Body>"
)
SOAP_TAIL = b"</soapenv:Body>\n</soapenv:Envelope>"


class VCenterError(UserError):
    """A vCenter problem; ``target`` is the vCenter URL (never credentials)."""

    kind = "error"

    def __init__(self, target: str, message: str) -> None:
        super().__init__(f"vCenter {target}: {message}")
        self.target = target


class VCenterUnavailable(VCenterError):
    kind = "unavailable"


class VCenterAuthError(VCenterError):
    kind = "auth"
    #: True once this error was logged (the session logs a refused login itself, once per
    #: attempt; the job wrapper then does not log the same error again for each job)
    logged = False


class VCenterTLSError(VCenterError):
    kind = "tls"


def make_ssl_context(cfg: VCenterConfig) -> ssl.SSLContext:
    """Verified by default (system CAs, or ``ca_bundle``); unverified only by explicit opt-out."""
    if not cfg.verify_tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(cfg.ca_bundle) if cfg.ca_bundle else None)


def insecure_transport(cfg: VCenterConfig) -> str | None:
    """Why this vCenter's connection can be read or impersonated on the network, if it can."""
    if urlparse(cfg.url).scheme == "http":
        return "the URL is http://: the session cookie and the password travel unencrypted"
    if not cfg.verify_tls:
        return "verify_tls = false: the certificate is not checked, anyone on the path can impersonate vCenter"
    return None


def _one_line(e: BaseException) -> str:
    if isinstance(e, vmodl.MethodFault):  # str() of a fault is a multi-line object dump
        return getattr(e, "msg", None) or type(e).__name__.rsplit(".", 1)[-1]
    msg = getattr(e, "msg", None) or getattr(e, "reason", None) or str(e) or type(e).__name__
    return " ".join(str(msg).split())


class VCenterSession:
    """A logged-in session to one vCenter, with raw SOAP access for the hot paths."""

    def __init__(self, cfg: VCenterConfig) -> None:
        self.cfg = cfg
        self.target = cfg.url
        u = urlparse(cfg.url)
        self.https = u.scheme == "https"
        self.host = u.hostname or "localhost"
        self.port = u.port or (443 if self.https else 80)
        self.path = u.path or "/sdk"
        self.timeout = float(cfg.timeout)
        self.ssl_context = make_ssl_context(cfg) if self.https else None
        self.generation = 0  # number of successful logins (never reset: callers compare it)
        self._logged_in = False
        self.stub: Any = None
        self.si: Any = None
        self.content: Any = None
        self._lock = threading.RLock()
        self._http: http.client.HTTPConnection | None = None
        self.login_attempts = 0  # logins sent to vCenter (accepted or not)
        self.auth = AuthGate(cfg.auth_backoff, cfg.auth_backoff_max, cfg.secret)
        self.auth_error: VCenterAuthError | None = None  # the refusal standing, until a login is accepted

    # ----------------------------------------------------------------- errors
    def translate(self, e: BaseException) -> BaseException:
        """Map a low-level exception to a one-line :class:`VCenterError` (others unchanged)."""
        if isinstance(e, VCenterError):
            return e
        if isinstance(e, ssl.SSLCertVerificationError):
            return VCenterTLSError(
                self.target,
                f"TLS certificate not trusted ({e.verify_message or 'verify failed'}); set ca_bundle = "
                '"<file with the vCenter CA certificate, PEM>" for this vCenter in the config '
                "(or verify_tls = false to opt out explicitly)",
            )
        if isinstance(e, ssl.SSLError):
            return VCenterTLSError(self.target, f"TLS handshake failed: {_one_line(e)}")
        if isinstance(e, vim.fault.InvalidLogin):
            return VCenterAuthError(
                self.target, f"login as {self.cfg.user!r} refused: wrong user name or password"
            )
        if isinstance(e, vim.fault.NoPermission | vim.fault.NotAuthenticated):
            return VCenterAuthError(self.target, f"not allowed: {_one_line(e)}")
        if isinstance(e, TimeoutError | socket.timeout):
            return VCenterUnavailable(self.target, f"no answer within {self.timeout:g} s")
        if isinstance(e, ConnectionRefusedError):
            return VCenterUnavailable(self.target, "connection refused (vCenter down?)")
        if isinstance(e, OSError | http.client.HTTPException | EOFError):
            return VCenterUnavailable(self.target, f"connection failed: {_one_line(e)}")
        return e

    # ----------------------------------------------------------------- login
    def _negotiate_version(self) -> str:
        """The newest API version both pyVmomi and the server speak (vimServiceVersions.xml)."""
        conn = self._new_http()
        try:
            conn.request("GET", self.path.rstrip("/") + "/vimServiceVersions.xml")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        ours = GetServiceVersions("vim25")
        if resp.status != 200:
            raise VCenterUnavailable(self.target, f"not a vSphere API endpoint (HTTP {resp.status})")
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise VCenterUnavailable(self.target, "not a vSphere API endpoint (bad vimServiceVersions.xml)") from None
        theirs: set[str] = set()
        for ns in root.iter("namespace"):
            if (ns.findtext("name") or "") != "urn:vim25":
                continue
            theirs.add((ns.findtext("version") or "").strip())
            theirs.update((v.text or "").strip() for v in ns.iter("version"))
        for v in ours:
            if VmomiSupport.versionIdMap.get(v) in theirs:
                return v
        raise VCenterUnavailable(self.target, f"no common API version (server speaks {sorted(theirs)})")

    # ----------------------------------------------------------------- auth backoff
    @property
    def auth_failed(self) -> bool:
        """True while the last login was refused (until a login is accepted)."""
        return self.auth_error is not None

    def _refused(self) -> VCenterAuthError:
        wait = self.auth.refused()
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)
        err = VCenterAuthError(
            self.target,
            f"login as {self.cfg.user!r} refused: wrong user name or password; polling of this vCenter "
            f"stopped, next login attempt after {until:%Y-%m-%d %H:%M:%S} UTC ({wait:.0f} s, auth_backoff) "
            "so the account is not locked; a changed password or a restart tries at once",
        )
        err.logged = True
        self.auth_error = err
        log.error("%s", err)
        return err

    def connect(self, *, if_generation: int | None = None) -> None:
        """Log in (again). Raises :class:`VCenterError` subclasses.

        ``if_generation``: only when no other thread has logged in again since that login
        (two threads seeing the same expired session must not log in twice).  After a refused
        login, raises that refusal without contacting vCenter until the auth backoff passed."""
        with self._lock:
            if if_generation is not None and self.generation != if_generation and self._logged_in:
                return
            if self.auth_error is not None:
                if not self.auth.may_try():
                    raise self.auth_error
                log.info("vCenter %s: trying to log in as %r again", self.target, self.cfg.user)
            try:
                if self.stub is None:
                    version = self._negotiate_version()
                    self.stub = SoapStubAdapter(
                        host=self.host,
                        port=self.port if self.https else -self.port,
                        path=self.path,
                        version=version,
                        sslContext=self.ssl_context,
                        httpConnectionTimeout=self.timeout,
                        acceptCompressedResponses=True,
                        poolSize=2,
                    )
                    self.si = vim.ServiceInstance("ServiceInstance", self.stub)
                    self.content = self.si.RetrieveContent()
                else:
                    self.stub.cookie = ""  # a fresh login, not one inside the dead session
                    self.stub.DropConnections()
                self._logged_in = False
                self.login_attempts += 1
                self.content.sessionManager.Login(self.cfg.user, self.cfg.secret())
            except BaseException as e:
                if isinstance(e, vim.fault.InvalidLogin):
                    raise self._refused() from None
                t = self.translate(e)
                if t is e:
                    raise
                raise t from None
            if self.auth_error is not None:
                log.info("vCenter %s: login as %r accepted again after %d refused attempt(s)",
                         self.target, self.cfg.user, self.auth.failures)
            self.auth_error = None
            self.auth.accepted()
            self.generation += 1
            self._logged_in = True
            log.info("vCenter %s: logged in (session %d)", self.target, self.generation)

    @property
    def connected(self) -> bool:
        return self._logged_in and self.stub is not None

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (which talks to vCenter); re-login once on ``NotAuthenticated``."""
        if not self.connected:
            self.connect()
        for attempt in (0, 1):
            gen = self.generation
            try:
                return fn()
            except vim.fault.NotAuthenticated:
                if attempt:
                    raise VCenterAuthError(self.target, "session rejected right after a new login") from None
                log.info("vCenter %s: session expired, logging in again", self.target)
                self.connect(if_generation=gen)
            except BaseException as e:
                t = self.translate(e)
                if t is e:
                    raise
                raise t from None
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- raw SOAP
    def invoke_raw(self, mo: Any, method: str, *args: Any, body: bytes | None = None) -> bytes:
        """Call a vSphere method and return the response XML undeserialized.

        For the few calls whose answers are large (the inventory), where pyVmomi's
        pure-Python object deserialization is the bottleneck.  ``body`` is the SOAP body
        content when the caller serialized the request itself (``args`` are then unused).
        Faults are deserialized and raised exactly as pyVmomi would (so :meth:`call` re-logs
        in on NotAuthenticated)."""
        stub = self.stub
        info = type(mo)._GetMethodInfo(method)
        req = stub.SerializeRequest(mo, info, list(args)) if body is None else SOAP_HEAD + body + SOAP_TAIL
        headers = {
            "Cookie": stub.cookie,
            "SOAPAction": stub.versionId,
            "Content-Type": "text/xml; charset=UTF-8",
            "Accept-Encoding": "gzip, deflate",
        }
        conn = stub.GetConnection()
        try:
            conn.request("POST", stub.path, req, headers)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            stub.DropConnections()
            raise
        stub.ReturnConnection(conn)
        enc = (resp.getheader("Content-Encoding") or "").lower()
        if enc == "gzip":
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            body = zlib.decompress(body)
        if resp.status == 200:
            return body
        if resp.status == 500:
            obj = SoapResponseDeserializer(stub).Deserialize(io.BytesIO(body), info.result)
            if isinstance(obj, BaseException):
                raise obj
        raise http.client.HTTPException(f"{resp.status} {resp.reason}")

    # ----------------------------------------------------------------- datastore HTTP
    def _new_http(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self.ssl_context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def session_cookie(self) -> str:
        c = SimpleCookie()
        try:
            c.load(self.stub.cookie or "")
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
            return ""
        m = c.get(COOKIE_NAME)
        return f'{COOKIE_NAME}="{m.value}"' if m is not None else ""

    def http_get(self, path: str, headers: dict[str, str]) -> HttpResult:
        """GET a vCenter URL path (datastore ``/folder/…``) with the API session cookie."""
        if not self.connected:
            self.connect()
        h = {"Cookie": self.session_cookie(), **headers}
        for attempt in (0, 1):
            conn = self._http or self._new_http()
            self._http = conn
            try:
                conn.request("GET", path, headers=h)
                resp = conn.getresponse()
                body = resp.read()
                return HttpResult(resp.status, body)
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._http = None
                if attempt or isinstance(e, ssl.SSLCertVerificationError):
                    t = self.translate(e)
                    raise t from None
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- close
    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None
            if self.stub is not None and self._logged_in:
                try:
                    self.content.sessionManager.Logout()
                except Exception as e:  # noqa: BLE001 - best effort, the server may be gone
                    log.debug("vCenter %s: logout failed: %s", self.target, _one_line(e))
                with contextlib.suppress(Exception):
                    self.stub.DropConnections()
            self.stub = self.si = self.content = None
            self._logged_in = False


__all__ = [
    "VCenterAuthError",
    "VCenterError",
    "VCenterSession",
    "VCenterTLSError",
    "VCenterUnavailable",
    "insecure_transport",
    "make_ssl_context",
    "vmodl",
]
