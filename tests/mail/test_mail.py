"""accelmon mail against a real SMTP server (aiosmtpd) started by the test.

The server offers STARTTLS with a self-signed certificate (made by ``openssl``; the client trusts it
through ``mail.ca_bundle``, so the certificate is really verified) and requires AUTH over TLS
(aiosmtpd ``auth_require_tls=True``, ``require_starttls=True``). The tests parse what it received.
"""

from __future__ import annotations

import datetime as dt
import email
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import tomllib
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from accelmon.config import ConfigError, parse
from accelmon.demo import costmail
from accelmon.demo.runner import run_demo
from accelmon.errors import UserError
from accelmon.mail.cli import run_mail
from accelmon.report.cli import generate
from accelmon.report.schedule import report_job
from accelmon.store.writer import Store
from tests.analytics.estate import VC, write_estate

USER, PASSWORD = "accelmon", "s3cr3t-Pa55-do-not-leak"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        msg = email.message_from_bytes(envelope.original_content, policy=policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 OK"


def _auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = getattr(data, "login", None) == USER.encode() and getattr(data, "password", None) == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 on failure


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def smtp_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("smtp")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=_free_port(), tls_context=ctx, require_starttls=True,
                     auth_require_tls=True, authenticator=_auth)
    ctl.start()
    try:
        yield ctl, inbox, cert
    finally:
        ctl.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, list[Any]]:
    """The analytics test estate, owners for two VMs, and a findings history: vm-101's GPU flagged on each of the
    5 days before today, vm-201's only yesterday (today's run comes from the report)."""
    st = Store(tmp_path_factory.mktemp("mailstore"))
    vms = write_estate(st)
    by = {v.moref: v for v in vms}
    snap = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    st.append("vm_owner", [
        {"snapshot_ts": snap, "vcenter_uuid": VC, "vm_moref": "vm-101", "owner": "ann", "team": "ml",
         "email": "ann@example.com", "owner_source": "tag"},
        {"snapshot_ts": snap, "vcenter_uuid": VC, "vm_moref": "vm-201", "owner": "bob", "team": "infer",
         "email": "bob@example.com", "owner_source": "attribute"}])
    now = dt.datetime.now(dt.UTC)
    rows = []
    for k in range(1, 6):
        at = now - dt.timedelta(days=k)
        subjects = [by["vm-101"].gpu_uuids[0]] + ([by["vm-201"].gpu_uuids[0]] if k == 1 else [])
        rows += [{"generated_at": at, "run_id": f"hist-{k}", "kind": "underutilized", "subject": s,
                  "vcenter_uuid": VC, "value": 3.0, "reason": "mean 3 % < 15 %", "fix": "release the GPU",
                  "evidence_json": "{}"} for s in subjects]
    st.append("findings", rows)
    return st, vms


def _cfg(port: int, cert: Path, **mail: Any) -> Any:
    return parse({"cost": {"currency": "EUR", "gpu_hour_price": {"A100": 2.0}, "electricity_per_kwh": 0.25},
                  "mail": {"host": "127.0.0.1", "port": port, "security": "starttls", "username": USER,
                           "ca_bundle": str(cert), "from": "accelmon@example.com",
                           "report_to": ["platform@example.com", "lead@example.com"], **mail}}, "t.toml", env={})


def test_report_and_digest_delivered_over_starttls_auth(smtp_server: Any, store: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, caplog: Any,
                                                        capsys: Any) -> None:
    ctl, inbox, cert = smtp_server
    st, vms = store
    monkeypatch.setenv("ACCELMON_SMTP_PASSWORD", PASSWORD)
    caplog.set_level(logging.DEBUG)
    cfg = _cfg(ctl.port, cert)
    inbox.messages.clear()
    assert run_mail(st, cfg, "report", out_dir=tmp_path / "r") == 0
    assert run_mail(st, cfg, "digests") == 0
    out = capsys.readouterr()
    assert len(inbox.messages) == 2, out.out
    (rcpt, rep), (drcpt, dig) = inbox.messages
    # the report: subject, recipients, text + HTML with inline images by cid, findings.csv attached
    assert sorted(rcpt) == ["lead@example.com", "platform@example.com"]
    assert rep["Subject"].startswith("accelmon report ") and "idle cost" in rep["Subject"] and "EUR" in rep["Subject"]
    html = rep.get_body(("html",)).get_content()
    assert "<script" not in html.lower() and "Idle cost by team" in html
    images = [p for p in rep.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 2
    for p in images:
        assert p.get_content().startswith(b"\x89PNG") and f"cid:{p['Content-ID'].strip('<>')}" in html
    csvs = [p for p in rep.iter_attachments() if p.get_filename() == "findings.csv"]
    assert len(csvs) == 1
    text = csvs[0].get_content()
    text = text.decode() if isinstance(text, bytes) else text
    assert text.splitlines()[0].startswith("generated_at,run_id,kind,subject")
    assert text.splitlines() == (tmp_path / "r" / "findings.csv").read_bytes().decode().splitlines()
    # exactly one digest: ann's GPU was flagged 6 days in a row (5 + today), bob's 2 days < 5
    by = {v.moref: v for v in vms}
    assert drcpt == ["ann@example.com"] and dig["To"] == "ann@example.com"
    body = dig.get_body(("html",)).get_content()
    assert by["vm-101"].gpu_uuids[0] in body and by["vm-201"].gpu_uuids[0] not in body
    assert "train-idle-1" in body and "EUR" in body and "release the GPU" in body
    # the password: nowhere in a message, a log record, stdout or stderr
    for _r, m in inbox.messages:
        assert PASSWORD.encode() not in m.as_bytes()
    assert PASSWORD not in caplog.text and PASSWORD not in out.out + out.err
    assert all(PASSWORD not in json.dumps(str(r.__dict__)) for r in caplog.records)


def test_no_digest_mail_when_no_owner_qualifies(smtp_server: Any, store: Any, monkeypatch: pytest.MonkeyPatch,
                                                capsys: Any) -> None:
    ctl, inbox, cert = smtp_server
    monkeypatch.setenv("ACCELMON_SMTP_PASSWORD", PASSWORD)
    inbox.messages.clear()
    assert run_mail(store[0], _cfg(ctl.port, cert, digest_after_days=30), "digests") == 0
    assert inbox.messages == [] and "nothing to send" in capsys.readouterr().out


def test_wrong_password_is_one_line_without_the_password(smtp_server: Any, store: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ctl, inbox, cert = smtp_server
    wrong = "wrong-Pa55-xyz"
    monkeypatch.setenv("ACCELMON_SMTP_PASSWORD", wrong)
    inbox.messages.clear()
    with pytest.raises(UserError) as e:
        run_mail(store[0], _cfg(ctl.port, cert), "digests")
    msg = str(e.value)
    assert "\n" not in msg and "login refused" in msg and "127.0.0.1" in msg and wrong not in msg
    assert inbox.messages == []


def test_cli_dry_run_writes_eml_and_sends_nothing(smtp_server: Any, store: Any, tmp_path: Path) -> None:
    ctl, inbox, cert = smtp_server
    cfg = tmp_path / "accelmon.toml"
    cfg.write_text(f'[mail]\nhost = "127.0.0.1"\nport = {ctl.port}\nusername = "{USER}"\nfrom = "a@example.com"\n'
                   f'ca_bundle = "{cert}"\n[cost]\ngpu_hour_price = {{ default = 1.5 }}\n')
    inbox.messages.clear()
    env = {**os.environ, "ACCELMON_SMTP_PASSWORD": PASSWORD}
    r = subprocess.run([sys.executable, "-m", "accelmon.cli", "--config", str(cfg), "--data-dir", str(store[0].root),
                        "mail", "digests", "--dry-run"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert inbox.messages == [] and PASSWORD not in r.stdout + r.stderr
    emls = sorted((store[0].root / "mail").rglob("*.eml"))
    assert len(emls) == 1
    m = email.message_from_bytes(emls[0].read_bytes(), policy=policy.default)
    assert m["To"] == "ann@example.com" and "1.50 USD" not in m["Subject"]
    with pytest.raises(UserError, match="bogus"):
        run_mail(store[0], _cfg(ctl.port, cert), "bogus")


def test_demo_mail_to_writes_report_and_digest_eml(store: Any, tmp_path: Path) -> None:
    """accelmon demo --mail-to: the demo's generated [cost]/[mail] config is valid, and after its report the
    report mail and the owners' digests (due after 1 day in the demo) are .eml files; a bad address is refused."""
    raw = tomllib.loads(costmail.COST_TOML + costmail.mail_toml("me@example.com", tmp_path / "mail"))
    cfg = parse(raw, "demo.toml", env={})
    assert cfg.cost.gpu_hour_price["A100"] == 2.5 and cfg.mail.digest_after_days == 1
    _a, doc, out = generate(store[0], cfg, out_dir=tmp_path / "report")
    lines = costmail.write_mail(store[0], cfg, doc, out)
    emls = sorted((tmp_path / "mail").rglob("*.eml"))
    msgs = [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in emls]
    assert [m["To"] for m in msgs] == ["me@example.com", "ann@example.com", "bob@example.com"], lines
    assert "USD" in costmail.cost_line(doc)
    with pytest.raises(UserError, match="--mail-to"):
        run_demo(tmp_path / "d", mail_to="not-an-address")


def test_daemon_report_job_mails_after_the_report(store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's daily report job, with mail.dry_run_dir: the report mail and the due digests land as .eml."""
    cfg = parse({"report": {"out_dir": str(tmp_path / "reports")},
                 "mail": {"from": "a@example.com", "report_to": ["ops@example.com"], "digest_after_days": 5,
                          "dry_run_dir": str(tmp_path / "eml")}}, "t", env={})
    report_job(store[0], cfg)
    tos = [email.message_from_bytes(p.read_bytes(), policy=policy.default)["To"]
           for p in sorted((tmp_path / "eml").rglob("*.eml"))]
    assert tos == ["ops@example.com", "ann@example.com"]


def test_mail_config_errors_are_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"mail": {"security": "none", "username": "u", "report_to": ["nope"], "from": "x",
                        "password": PASSWORD}}, "t.toml", env={})
    text = "\n".join(e.value.lines)
    assert "t.toml: mail.report_to: [0]: not an e-mail address" in text and "t.toml: mail.from:" in text
    assert PASSWORD not in text
    with pytest.raises(ConfigError) as e:
        parse({"mail": {"security": "none", "username": "u", "password": PASSWORD}}, "t.toml", env={})
    assert len(e.value.lines) == 1 and "unencrypted" in e.value.lines[0] and PASSWORD not in e.value.lines[0]
    with pytest.raises(ConfigError) as e:
        parse({"mail": {"security": "tls"}}, "t.toml", env={})
    assert e.value.lines == ['t.toml: mail.security: must be starttls, ssl or none: "tls"']
