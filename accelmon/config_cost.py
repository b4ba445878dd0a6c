"""The ``[cost]`` and ``[mail]`` sections of accelmon.toml (docs/cost.md, docs/report.md "Mail").

Kept out of :mod:`accelmon.config` (which imports these two models) so that module stays one
concern; validation errors surface through :func:`accelmon.config.parse` as one line each,
``<file>: cost.gpu_hour_price.A100: <problem>``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

PASSWORD_ENV = "ACCELMON_SMTP_PASSWORD"
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
ADDR_RE = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=True)


def _price(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{key}: not a number: {v!r}")
    if v < 0:
        raise ValueError(f"{key}: must be >= 0")
    return float(v)


class CostConfig(_Model):
    """Prices. Unpriced GPUs get a NULL cost (never 0): give ``gpu_hour_price.default`` to price every GPU."""

    currency: str = "USD"  # ISO 4217 code, only a label: no conversion
    # price per GPU-hour by GPU model name; a key matches a model name when all its words (split at
    # non-alphanumerics, case-insensitive) are words of the name, the most specific key wins; "default" else
    gpu_hour_price: dict[str, float] = Field(default_factory=dict)
    # price per hour of a vGPU profile (e.g. "grid_a100-10c"); unlisted profiles cost their framebuffer
    # fraction of their physical GPU's price
    vgpu_profile_price: dict[str, float] = Field(default_factory=dict)
    electricity_per_kwh: float | None = Field(None, ge=0)  # unset: energy costs are NULL

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if not _CURRENCY_RE.match(v):
            raise ValueError(f'not an ISO 4217 currency code (three capitals, e.g. "USD", "EUR"): "{v}"')
        return v

    @field_validator("gpu_hour_price", "vgpu_profile_price", mode="before")
    @classmethod
    def _prices(cls, v: Any) -> dict[str, float]:
        if not isinstance(v, dict):
            raise ValueError("must be a table of name = price")
        return {str(k): _price(x, str(k)) for k, x in v.items()}


class MailConfig(_Model):
    """SMTP delivery of the daily report and the owner digests (docs/report.md, "Mail")."""

    host: str | None = None  # unset: mail is off (dry_run_dir still writes .eml files)
    port: int | None = Field(None, ge=1, le=65535)  # default by security: 587 starttls, 465 ssl, 25 none
    security: str = "starttls"  # starttls | ssl | none
    username: str | None = None
    password: SecretStr | None = None  # prefer the env var ACCELMON_SMTP_PASSWORD or password_file
    password_file: Path | None = None
    from_: str | None = Field(None, alias="from")
    report_to: list[str] = Field(default_factory=list)
    digest_after_days: int = Field(5, ge=1, le=366)
    dry_run_dir: Path | None = None  # when set, messages are written here as .eml instead of sent
    timeout: float = Field(30.0, gt=0)
    ca_bundle: Path | None = None  # extra CA file to verify the server's certificate
    verify_tls: bool = True

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=True,
                              populate_by_name=True)

    @field_validator("security")
    @classmethod
    def _security(cls, v: str) -> str:
        if v not in ("starttls", "ssl", "none"):
            raise ValueError(f'must be starttls, ssl or none: "{v}"')
        return v

    @field_validator("report_to")
    @classmethod
    def _to(cls, v: list[str]) -> list[str]:
        for i, a in enumerate(v):
            if not ADDR_RE.match(a):
                raise ValueError(f'[{i}]: not an e-mail address: "{a}"')
        return v

    @field_validator("from_")
    @classmethod
    def _from(cls, v: str | None) -> str | None:
        if v is not None and not ADDR_RE.match(v):
            raise ValueError(f'not an e-mail address: "{v}"')
        return v

    @model_validator(mode="after")
    def _auth(self) -> MailConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.password_file is not None and not self.password_file.is_file():
            raise ValueError(f"password_file: file not found: {self.password_file}")
        if self.security == "none" and self.username:  # AUTH would send the password in clear text
            raise ValueError("username with security = none would send the password unencrypted: "
                             "use starttls or ssl")
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise ValueError(f"ca_bundle: file not found: {self.ca_bundle}")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or {"starttls": 587, "ssl": 465, "none": 25}[self.security]

    def secret(self, env: dict[str, str] | None = None) -> str | None:
        """The SMTP password: env ACCELMON_SMTP_PASSWORD, else password_file, else password; None = no auth."""
        e = os.environ if env is None else env
        if e.get(PASSWORD_ENV):
            return e[PASSWORD_ENV]
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return None if self.password is None else self.password.get_secret_value()
