"""Deliver messages: SMTP (stdlib ``smtplib``; STARTTLS per RFC 3207, implicit TLS per RFC 8314, AUTH) or,
in a dry run, ``.eml`` files.

The password is read when sending (env ``ACCELMON_SMTP_PASSWORD``, else ``mail.password_file``, else
``mail.password``) and never logged: ``smtplib``'s debug output (which would print the AUTH
exchange) stays off, and every error message passes through :func:`redact`.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from accelmon.errors import UserError

log = logging.getLogger(__name__)


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[:60].strip("_") or "message"


def write_eml(messages: list[tuple[str, EmailMessage]], out_dir: Path) -> list[Path]:
    """Dry run: each message as ``NN-<name>.eml`` (RFC 5322 bytes, what would have been sent)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        first = len(list(out_dir.glob("*.eml"))) + 1  # a second batch in the same directory continues the numbers
        for i, (name, m) in enumerate(messages, first):
            p = out_dir / f"{i:02d}-{_slug(name)}.eml"
            with open(p, "xb") as f:  # never overwrite
                f.write(m.as_bytes())
            paths.append(p)
    except OSError as e:
        raise UserError(f"mail.dry_run_dir: {out_dir}: cannot write: {e.strerror or e}") from None
    return paths


def _context(cfg: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.ca_bundle) if cfg.ca_bundle else None)
    if not cfg.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send(messages: list[tuple[str, EmailMessage]], cfg: Any, env: dict[str, str] | None = None) -> int:
    """Send over one SMTP session; returns the number sent. Failures raise a one-line :class:`UserError`."""
    if not messages:
        return 0
    if not cfg.host:
        raise UserError("mail.host: not set (set it, or use --dry-run / mail.dry_run_dir)")
    secret = cfg.secret(env)
    where = f"{cfg.host}:{cfg.effective_port}"
    try:
        if cfg.security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.effective_port, timeout=cfg.timeout,
                                                  context=_context(cfg))
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.effective_port, timeout=cfg.timeout)
        with smtp:
            smtp.ehlo()
            if cfg.security == "starttls":
                smtp.starttls(context=_context(cfg))
                smtp.ehlo()
            if cfg.username:
                if secret is None:
                    raise UserError(f"mail.username: {cfg.username} given but no password (env "
                                    "ACCELMON_SMTP_PASSWORD, mail.password_file or mail.password)")
                smtp.login(cfg.username, secret)
            for _name, m in messages:
                smtp.send_message(m)
    except smtplib.SMTPAuthenticationError as e:
        raise UserError(f"mail: {where}: login refused for user {cfg.username} ({e.smtp_code})") from None
    except smtplib.SMTPNotSupportedError as e:
        raise UserError(f"mail: {where}: {redact(str(e), secret)} (check mail.security)") from None
    except (smtplib.SMTPException, OSError) as e:
        raise UserError(f"mail: {where}: {redact(str(e) or type(e).__name__, secret)}") from None
    log.info("mail: sent %d message(s) via %s (%s%s)", len(messages), where, cfg.security,
             f", user {cfg.username}" if cfg.username else "")
    return len(messages)
