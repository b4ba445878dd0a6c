"""The Prometheus exporter-toolkit web configuration file (``--web.config.file``), the subset accelmon supports.

Format (prometheus/exporter-toolkit, docs/web-configuration.md): a YAML file with
``tls_server_config`` (``cert_file``, ``key_file``, ``client_auth_type``, ``client_ca_file``,
``client_ca``, ``min_version``, ``max_version``), ``http_server_config`` (``headers``, ``http2: false``)
and ``basic_auth_users`` (user: bcrypt hash). Relative file names are relative to the directory
of the web config file, as in the toolkit (``TLSConfig.SetDirectory``). Every other key of the
toolkit's format is rejected by name (one line: file, key, what is wrong), so a file written for
node_exporter never silently loses a setting here. Used by the guest agent and the daemon's
exporter alike (both import this module; it imports nothing above accelmon.errors).

The file is re-read when it (or a certificate it names) changes, like the toolkit which reads it on
every request: users, headers and certificates rotate without a restart. A file that became invalid
is logged once and the previous settings stay in force (nothing served is lost).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from accelmon.errors import UserError

log = logging.getLogger("accelmon.webconfig")

# exporter-toolkit web/tls_config.go: client_auth_type → Go tls.ClientAuthType. Python's ssl module
# can only ask for a client certificate together with verifying it, so the two "request/require any
# certificate without verifying it" policies cannot be honoured and are refused.
_CLIENT_AUTH = {
    "": ssl.CERT_NONE,
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
# tls_config.go tlsVersions
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# handler.go extraHTTPHeaders: the only headers the toolkit lets a user set, and their allowed values
_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "client_ca", "min_version", "max_version"}
# keys of the toolkit's format that accelmon does not implement (refused by name, not ignored)
_TLS_UNSUPPORTED = {
    "cert": "inline certificates are not supported: use cert_file",
    "key": "inline keys are not supported: use key_file",
    "cipher_suites": "not supported (OpenSSL's default suites are used)",
    "curve_preferences": "not supported (OpenSSL's default curves are used)",
    "prefer_server_cipher_suites": "not supported",
    "client_allowed_sans": "not supported",
}
_TOP_UNSUPPORTED = {"rate_limit": "not supported"}
_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}


@dataclass(frozen=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    client_ca_file: Path | None = None
    client_ca: str | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3

    def files(self) -> list[Path]:
        return [p for p in (self.cert_file, self.key_file, self.client_ca_file) if p is not None]

    def context(self, where: str) -> ssl.SSLContext:
        """A server-side SSLContext; ``where`` names the setting in errors (never a key's content)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.minimum_version = self.min_version
            ctx.maximum_version = self.max_version
        except ValueError as e:
            raise UserError(f"{where}: min_version/max_version: {e}") from None
        try:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as e:
            raise UserError(f"{where}: cannot load {self.cert_file} / {self.key_file}: "
                            f"{getattr(e, 'strerror', None) or e}") from None
        if self.client_auth != ssl.CERT_NONE:
            try:
                ctx.load_verify_locations(cafile=str(self.client_ca_file) if self.client_ca_file else None,
                                          cadata=self.client_ca)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise UserError(f"{where}: client CA: cannot load: {getattr(e, 'strerror', None) or e}") from None
            ctx.verify_mode = self.client_auth
        return ctx


@dataclass(frozen=True)
class WebConfig:
    """What a web config file says: TLS (or None), basic-auth users (name → bcrypt hash), extra headers."""

    source: str = "<none>"
    tls: TLSSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_tls_files(cls, cert: Path, key: Path, source: str) -> WebConfig:
        """The agent's older ``tls_cert``/``tls_key`` settings as a web config (TLS 1.2+, no client certs)."""
        return cls(source=source, tls=TLSSettings(cert_file=cert, key_file=key))


def _as_map(v: Any, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise UserError(f"{where}: must be a mapping")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise UserError(f"{where}: must be a non-empty string")
    return v


def _is_bcrypt(h: str) -> bool:
    # modular crypt format $2a$/$2b$/$2y$, two-digit cost, 53 characters of salt and hash
    return len(h) == 60 and h[:4] in ("$2a$", "$2b$", "$2y$") and h[4:6].isdigit() and h[6] == "$"


def parse(raw: Any, path: Path) -> WebConfig:
    """Validate a parsed web config; every problem is a :class:`UserError` ``<file>: <key>: <problem>``."""
    name = str(path)
    top = _as_map(raw, f"{name}: (top level)")
    for k in top:
        if k in _TOP_UNSUPPORTED:
            raise UserError(f"{name}: {k}: {_TOP_UNSUPPORTED[k]}")
        if k not in _TOP_KEYS:
            raise UserError(f"{name}: {k}: unknown key (supported: {', '.join(sorted(_TOP_KEYS))})")
    base = path.parent

    def rel(p: str) -> Path:
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else base / q

    tls: TLSSettings | None = None
    t = _as_map(top.get("tls_server_config"), f"{name}: tls_server_config")
    for k in t:
        if k in _TLS_UNSUPPORTED:
            raise UserError(f"{name}: tls_server_config.{k}: {_TLS_UNSUPPORTED[k]}")
        if k not in _TLS_KEYS:
            raise UserError(f"{name}: tls_server_config.{k}: unknown key")
    if t:
        w = f"{name}: tls_server_config"
        if "cert_file" not in t:
            raise UserError(f"{w}.cert_file: required when tls_server_config is given")
        if "key_file" not in t:
            raise UserError(f"{w}.key_file: required when tls_server_config is given")
        cert, key = rel(_str(t["cert_file"], f"{w}.cert_file")), rel(_str(t["key_file"], f"{w}.key_file"))
        for k, p in (("cert_file", cert), ("key_file", key)):
            if not p.is_file():
                raise UserError(f"{w}.{k}: file not found: {p}")
        auth_name = t.get("client_auth_type", "")
        if auth_name in _CLIENT_AUTH_UNSUPPORTED:
            raise UserError(f"{w}.client_auth_type: {auth_name} (a client certificate requested but not verified) "
                            "is not supported: use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
        if not isinstance(auth_name, str) or auth_name not in _CLIENT_AUTH:
            raise UserError(f"{w}.client_auth_type: must be one of {', '.join(k for k in _CLIENT_AUTH if k)}")
        ca_file = rel(_str(t["client_ca_file"], f"{w}.client_ca_file")) if "client_ca_file" in t else None
        ca_text = _str(t["client_ca"], f"{w}.client_ca") if "client_ca" in t else None
        if ca_file is not None and ca_text is not None:
            raise UserError(f"{w}: give client_ca_file or client_ca, not both")
        if ca_file is not None and not ca_file.is_file():
            raise UserError(f"{w}.client_ca_file: file not found: {ca_file}")
        client_auth = _CLIENT_AUTH[auth_name]
        # tls_config.go: "client CA's have been configured without a Client Auth Policy"
        if (ca_file or ca_text) and client_auth == ssl.CERT_NONE:
            raise UserError(f"{w}.client_auth_type: a client CA is configured but client_auth_type is NoClientCert")
        if client_auth != ssl.CERT_NONE and not (ca_file or ca_text):
            raise UserError(f"{w}.client_ca_file: required with client_auth_type {auth_name}")
        vers = {}
        for k, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
            v = t.get(k, default)
            if v not in _TLS_VERSIONS:
                raise UserError(f"{w}.{k}: must be one of {', '.join(_TLS_VERSIONS)}")
            vers[k] = _TLS_VERSIONS[v]
        if vers["min_version"] > vers["max_version"]:
            raise UserError(f"{w}: min_version is above max_version")
        tls = TLSSettings(cert, key, client_auth, ca_file, ca_text, vers["min_version"], vers["max_version"])

    h = _as_map(top.get("http_server_config"), f"{name}: http_server_config")
    headers: dict[str, str] = {}
    for k, v in h.items():
        w = f"{name}: http_server_config.{k}"
        if k == "http2":
            if v is not False:
                raise UserError(f"{w}: accelmon serves HTTP/1.1 only: remove the key or set it to false")
        elif k == "headers":
            for hk, hv in _as_map(v, w).items():
                if hk not in _HEADERS:
                    raise UserError(f"{w}.{hk}: this header cannot be configured (allowed: {', '.join(_HEADERS)})")
                if not isinstance(hv, str) or any(c in hv for c in "\r\n"):
                    raise UserError(f"{w}.{hk}: must be a one-line string")
                if _HEADERS[hk] and hv not in _HEADERS[hk]:
                    raise UserError(f"{w}.{hk}: must be one of {', '.join(_HEADERS[hk])}")
                if hv:  # the toolkit: "Unset if blank"
                    headers[hk] = hv
        else:
            raise UserError(f"{w}: unknown key (supported: headers, http2)")

    users: dict[str, bytes] = {}
    for user, hashed in _as_map(top.get("basic_auth_users"), f"{name}: basic_auth_users").items():
        w = f"{name}: basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise UserError(f"{name}: basic_auth_users: a user name must be a non-empty string without ':'")
        # handler.go validateUsers: every password must be a bcrypt hash (bcrypt.Cost succeeds)
        if not isinstance(hashed, str) or not _is_bcrypt(hashed):
            raise UserError(f"{w}: not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)")
        users[user] = hashed.encode()
    return WebConfig(source=name, tls=tls, users=users, headers=headers)


def load(path: Path) -> WebConfig:
    """Read and validate a web config file (one-line :class:`UserError` naming the file and key)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read the web config file: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{at}") from None
    return parse(raw, path)


class BasicAuth:
    """HTTP basic auth (RFC 7617) against bcrypt hashes, as exporter-toolkit's BasicAuthAuthenticator.

    An unknown user is checked against a dummy hash, so the answer takes as long as for a known user
    (no user enumeration by timing); bcrypt runs one at a time (it is CPU-heavy by design); results
    are cached under a keyed digest of (user, hash, password), never the password itself. The header
    and the password are never logged.
    """

    _dummy: bytes | None = None
    _dummy_lock = threading.Lock()

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._cache: dict[bytes, bool] = {}
        self._lock = threading.Lock()

    @classmethod
    def _dummy_hash(cls) -> bytes:
        with cls._dummy_lock:
            if cls._dummy is None:
                cls._dummy = bcrypt.hashpw(secrets.token_bytes(16).hex().encode(), bcrypt.gensalt(10))
            return cls._dummy

    def check(self, users: Mapping[str, bytes], header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user_b, sep, password = base64.b64decode(token.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        if not sep:
            return False
        user = user_b.decode("utf-8", "replace")
        hashed = users.get(user)
        known = hashed is not None
        if hashed is None:
            hashed = self._dummy_hash()
        digest = hmac.new(self._key, b"\0".join((user_b, hashed, password)), hashlib.sha256).digest()
        with self._lock:  # one bcrypt at a time; the cache is read under the same lock
            ok = self._cache.get(digest)
            if ok is None:
                try:
                    ok = bcrypt.checkpw(password, hashed)  # constant-time comparison inside
                except ValueError:
                    ok = False
                if len(self._cache) >= 1024:
                    self._cache.clear()
                self._cache[digest] = ok
        return known and ok


class WebConfigSource:
    """A web config file followed live: re-read when the file or a certificate it names changes."""

    def __init__(self, path: Path | None = None, *, fixed: WebConfig | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._ctx: ssl.SSLContext | None = None
        self.auth = BasicAuth()
        if path is not None:
            self._config = load(path)
            self._stamp = self._stamps(self._config)
        else:
            self._config = fixed or WebConfig()
        self._ctx = self._config.tls.context(self._config.source) if self._config.tls else None

    @property
    def tls(self) -> bool:
        """Whether the endpoint serves HTTPS (fixed at start: a scheme change needs a restart)."""
        return self._config.tls is not None

    def _stamps(self, cfg: WebConfig) -> tuple[Any, ...]:
        out: list[Any] = []
        for p in [self.path, *(cfg.tls.files() if cfg.tls else [])]:
            try:
                st = os.stat(p) if p is not None else None
                out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
            except OSError:
                out.append(None)
        return tuple(out)

    def current(self) -> WebConfig:
        if self.path is None:
            return self._config
        with self._lock:
            stamp = self._stamps(self._config)
            if stamp == self._stamp:
                return self._config
            self._stamp = stamp
            try:
                cfg = load(self.path)
                if (cfg.tls is None) != (self._config.tls is None):
                    raise UserError(f"{self.path}: tls_server_config: turning TLS on or off needs a restart")
                ctx = cfg.tls.context(cfg.source) if cfg.tls else None
            except UserError as e:
                log.warning("web config changed but is not usable (%s); keeping the previous settings", e)
                return self._config
            self._config, self._ctx = cfg, ctx
            self._stamp = self._stamps(cfg)
            log.info("web config %s re-read", self.path)
            return cfg

    def ssl_context(self) -> ssl.SSLContext | None:
        self.current()
        return self._ctx

    def authorized(self, header: str | None) -> bool:
        """Whether a request with this Authorization header may pass (always, without basic_auth_users)."""
        users = self.current().users
        if not users:
            return True
        return self.auth.check(users, header)

    @property
    def basic_auth(self) -> bool:
        return bool(self._config.users)
