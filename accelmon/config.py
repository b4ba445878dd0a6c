"""accelmon.toml: one file, validated up front, every problem reported at once.

Each problem is one line ``<file>: <key>: <what is wrong>`` (see :class:`ConfigError`).
Secrets (passwords, tokens) are ``SecretStr`` and never appear in messages or reprs.

Environment overrides: ``ACCELMON_<KEY>`` for top-level keys and ``ACCELMON_<SECTION>__<KEY>``
for nested ones, list items by index: ``ACCELMON_VCENTER__0__PASSWORD``,
``ACCELMON_THRESHOLDS__UNDERUTILIZED_PERCENT=10``. ``ACCELMON_DATA_DIR`` sets the data dir.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from accelmon.config_cost import PASSWORD_ENV, CostConfig, MailConfig
from accelmon.owners_config import OwnersConfig
from accelmon.shard_names import derive, validate

DEFAULT_CONFIG_NAME = "accelmon.toml"
SECRET_KEYS = {"password", "token", "bearer_token"}

_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DUR_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(v: Any) -> float:
    """``20``, ``"20s"``, ``"5m"``, ``"1h"``, ``"7d"`` → seconds."""
    if isinstance(v, bool):
        raise ValueError("not a duration")
    if isinstance(v, int | float):
        if v <= 0:
            raise ValueError("must be > 0")
        return float(v)
    if isinstance(v, str):
        m = _DUR_RE.match(v)
        if m:
            val = float(m.group(1)) * _DUR_UNITS[m.group(2)]
            if val <= 0:
                raise ValueError("must be > 0")
            return val
    raise ValueError(f'not a duration (use e.g. 20, "20s", "5m", "7d"): {v!r}')


Duration = Annotated[float, BeforeValidator(parse_duration)]


class ConfigError(Exception):
    """All problems of a config file; ``lines`` holds one message per problem."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=True)


def _check_url(v: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    u = urlparse(v)
    if u.scheme not in schemes or not u.hostname:
        raise ValueError(f'not a URL: "{v}"')
    if u.password:
        raise ValueError("must not contain credentials (use user/password_file)")
    return v


class VCenterConfig(_Model):
    name: str | None = None
    url: str
    user: str
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None
    verify_tls: bool = True
    ca_bundle: Path | None = None
    inventory_interval: Duration = 300.0
    perf_interval: Duration = 20.0
    events_interval: Duration = 60.0
    timeout: Duration = 30.0
    # after vCenter refuses the login (InvalidLogin): no further login for this long, doubling
    # per further refusal up to auth_backoff_max, so the account is not locked by SSO
    auth_backoff: Duration = 900.0
    auth_backoff_max: Duration = 4 * 3600.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = _check_url(v, ("https", "http"))
        if not urlparse(v).path or urlparse(v).path == "/":
            v = v.rstrip("/") + "/sdk"
        return v

    @field_validator("ca_bundle")
    @classmethod
    def _ca(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file not found: {v}")
        return v

    @model_validator(mode="after")
    def _one_password(self) -> VCenterConfig:
        given = [k for k in ("password", "password_file", "password_env") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of password, password_file, password_env")
        if self.password_file is not None and not self.password_file.is_file():
            raise ValueError(f"password_file: file not found: {self.password_file}")
        if self.password_env is not None and self.password_env not in os.environ:
            raise ValueError(f"password_env: environment variable {self.password_env} is not set")
        return self

    @property
    def display_name(self) -> str:
        return self.name or (urlparse(self.url).hostname or self.url)

    def secret(self) -> str:
        """The password, read when needed (files and env are re-read, so rotation works)."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return os.environ[self.password_env or ""]


class AgentsConfig(_Model):
    discovery: bool = True
    port: int = Field(9835, ge=1, le=65535)
    scheme: str = "http"
    static: list[str] = Field(default_factory=list)
    scrape_interval: Duration = 10.0
    timeout: Duration = 5.0
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    token: SecretStr | None = None
    token_file: Path | None = None
    verify_tls: bool = True
    ca_bundle: Path | None = None

    @field_validator("static")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for i, u in enumerate(v):
            try:
                _check_url(u)
            except ValueError as e:
                raise ValueError(f"[{i}]: {e}") from None
        return v

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if v not in ("http", "https"):
            raise ValueError('must be "http" or "https"')
        return v


class ExternalExporterConfig(_Model):
    """A dcgm-exporter or nvidia_gpu_exporter endpoint used as a source."""

    url: str
    interval: Duration = 10.0
    timeout: Duration = 5.0
    vm_bios_uuid: str | None = None  # when the exporter runs inside a known VM

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)


class IntervalsConfig(_Model):
    compaction: Duration = 3600.0
    retention: Duration = 86400.0
    flush: Duration = 10.0
    findings: Duration = 60.0  # daemon: re-read latest_findings (also right after its own report job)


class RetentionConfig(_Model):
    samples: Duration = 400 * 86400.0
    inventory: Duration = 400 * 86400.0
    gc_grace: Duration = 600.0
    rollups: Duration = 5 * 365 * 86400.0  # gpu_rollup_hour (hourly per-GPU rollups)


class ThresholdsConfig(_Model):
    underutilized_percent: float = Field(15.0, gt=0, le=100)
    min_coverage_ratio: float = Field(0.5, ge=0, le=1)  # observed time / presence (docs/analytics.md)
    min_covered_duration: Duration = 3600.0  # observed time a GPU needs before it is judged
    window: Duration = 7 * 86400.0
    stun_limit_seconds: float = Field(10.0, gt=0)
    target_util_percent: float = Field(60.0, gt=0, le=100)
    # consolidation savings: an emptied host without a measured power (host_power_sample) is
    # counted as this baseline + its GPUs' measured idle power; unset = such a host's power is unknown
    host_baseline_watts: float | None = Field(None, ge=0)
    # effective utilization (docs/analytics.md, "Hollow GPUs"): busy on time (mean ≥ underutilized_percent)
    # but SM-active below this → hollow
    hollow_percent: float = Field(15.0, gt=0, le=100)
    # right-sizing (docs/analytics.md, "Right-sizing"): need = framebuffer p99.9 × fb_headroom; NVIDIA vGPU
    # sizing rules of thumb: framebuffer used not above fb_full_percent often, not sustained above fb_tight_percent
    fb_headroom: float = Field(1.2, ge=1.0, le=4.0)
    fb_full_percent: float = Field(90.0, gt=0, le=100)
    fb_tight_percent: float = Field(70.0, gt=0, le=100)


class ReportConfig(_Model):
    enabled: bool = True
    cron: str = "0 6 * * *"
    out_dir: Path | None = None  # default <data-dir>/reports
    keep: int = Field(30, ge=1)
    # a window longer than this reads the hourly rollups (gpu_rollup_hour) for its complete, rolled-up
    # hours and raw samples for the rest (docs/store.md, "Rollups"); shorter windows read raw samples
    rollup_after: Duration = 2 * 86400.0

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f'not a 5-field cron expression: "{v}"')
        return v


class EndpointConfig(_Model):
    """HTTP settings shared by the exporter and the agent endpoint (docs/operations.md, "Securing the endpoints")."""

    web_config_file: Path | None = None  # Prometheus exporter-toolkit web config: TLS, basic auth
    backlog: int = Field(128, ge=1, le=65535)  # listen(2) backlog
    idle_timeout: Duration = 30.0  # a keep-alive connection with no request for this long is closed
    max_connections: int = Field(64, ge=1, le=10000)  # concurrent connections (one thread each)

    @field_validator("web_config_file")
    @classmethod
    def _web_config(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file not found: {v}")
        return v


class ExporterConfig(EndpointConfig):
    listen: str = "127.0.0.1:9836"
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _check_listen(v)


def _check_listen(v: str) -> str:
    host, _, port = v.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'not host:port: "{v}"')
    return v


class AgentConfig(EndpointConfig):
    """Settings of ``accelmon agent`` (the guest side)."""

    listen: str = "0.0.0.0:9835"
    poll_interval: Duration = 1.0
    token: SecretStr | None = None
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    per_process: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _check_listen(v)

    @model_validator(mode="after")
    def _tls(self) -> AgentConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_cert is not None and self.web_config_file is not None:
            raise ValueError("give TLS either as tls_cert/tls_key or in web_config_file, not both")
        for k in ("tls_cert", "tls_key", "token_file"):
            p = getattr(self, k)
            if p is not None and not p.is_file():
                raise ValueError(f"{k}: file not found: {p}")
        return self


class StoreConfig(_Model):
    # this daemon's shard of a shared data dir (docs/store.md, "Sharded writers"); default: the
    # vCenter's name when exactly one is configured, else the host name (sanitized to [a-z0-9_-])
    shard: str | None = None

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str | None) -> str | None:
        return None if v is None else validate(v)


class Config(_Model):
    data_dir: Path | None = None
    log_level: str = "info"
    vcenter: list[VCenterConfig] = Field(default_factory=list)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    dcgm: list[ExternalExporterConfig] = Field(default_factory=list)
    nvidia_gpu_exporter: list[ExternalExporterConfig] = Field(default_factory=list)
    intervals: IntervalsConfig = Field(default_factory=IntervalsConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    exporter: ExporterConfig = Field(default_factory=ExporterConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    cost: CostConfig = Field(default_factory=CostConfig)  # accelmon/config_cost.py, docs/cost.md
    mail: MailConfig = Field(default_factory=MailConfig)  # accelmon/config_cost.py, docs/report.md "Mail"
    sources: dict[str, bool] = Field(default_factory=dict)  # enable/disable by source name
    owners: OwnersConfig = Field(default_factory=OwnersConfig)  # docs/owners.md
    store: StoreConfig = Field(default_factory=StoreConfig)

    @property
    def shard(self) -> str:
        """The shard this process writes: ``[store] shard``, else derived (accelmon/store/shards.py)."""
        return self.store.shard or derive([v.display_name for v in self.vcenter])

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f'must be debug, info, warning or error: "{v}"')
        return v.lower()

    source_file: str = Field(default="<defaults>", exclude=True)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith("function-"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _msg(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    elif err.get("type") == "missing":
        msg = "required key is missing"
    return msg


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for k, v in env.items():
        if not k.startswith("ACCELMON_") or k in ("ACCELMON_CONFIG", PASSWORD_ENV):
            continue
        path = [p.lower() for p in k[len("ACCELMON_") :].split("__")]
        node: Any = raw
        for i, p in enumerate(path):
            last = i == len(path) - 1
            key: Any = int(p) if p.isdigit() else p
            if isinstance(node, list):
                if not isinstance(key, int):
                    break
                while len(node) <= key:
                    node.append({})
                if last:
                    node[key] = _env_value(v)
                else:
                    node = node[key]
            elif isinstance(node, dict):
                if last:
                    node[key] = _env_value(v)
                else:
                    node = node.setdefault(key, [] if path[i + 1].isdigit() else {})
            else:
                break


def _env_value(v: str) -> Any:
    low = v.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return tomllib.loads(f"x = {v}")["x"] if v[:1] in "[{" else v
    except tomllib.TOMLDecodeError:
        return v


def parse(raw: dict[str, Any], source: str, env: Mapping[str, str] | None = None) -> Config:
    raw = dict(raw)
    _apply_env(raw, os.environ if env is None else env)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = _loc(err["loc"])
            lines.append(f"{source}: {loc}: {_msg(err)}")
        raise ConfigError(lines) from None
    cfg.source_file = source
    return cfg


def load(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate a config file; ``None`` gives defaults (plus environment overrides)."""
    if path is None:
        return parse({}, "<defaults>", env)
    p = Path(path)
    name = str(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError([f"{name}: file not found"]) from None
    except OSError as e:
        raise ConfigError([f"{name}: cannot read: {e.strerror}"]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{name}: not valid TOML: {e}"]) from None
    return parse(raw, name, env)
