"""``accelmon mail report|digests [--dry-run]`` and the daemon's mail step after the daily report."""

from __future__ import annotations

import datetime as dt
import logging
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from accelmon.analytics.analyze import analyze
from accelmon.analytics.samples import data_range
from accelmon.analytics.window import resolve_window
from accelmon.errors import UserError
from accelmon.mail import compose, digest, smtp
from accelmon.report.cli import generate

log = logging.getLogger(__name__)


def _sender(cfg: Any) -> str:
    if not cfg.mail.from_:
        raise UserError("mail.from: not set (the sender address of report and digest mails)")
    return str(cfg.mail.from_)


def report_messages(cfg: Any, doc: dict[str, Any], out: Path) -> list[tuple[str, EmailMessage]]:
    """The daily report mail to ``mail.report_to`` (none when the list is empty)."""
    if not cfg.mail.report_to:
        return []
    csv_path = out / "findings.csv"
    csv = csv_path.read_text(encoding="utf-8") if csv_path.is_file() else ""
    m = compose.report_message(doc, csv, sender=_sender(cfg), to=list(cfg.mail.report_to),
                               report_path=str(out / "report.html"))
    return [("report", m)]


def digest_messages(cfg: Any, con: Any, cost: dict[str, Any], window: dict[str, Any],
                    ) -> tuple[list[tuple[str, EmailMessage]], list[dict[str, Any]]]:
    """One message per owner with GPUs flagged ``mail.digest_after_days`` days in a row (never an empty one)."""
    flagged, latest = digest.flagged_by_day(con)
    ds, nobody = digest.digests(cost, digest.streaks(flagged), latest, int(cfg.mail.digest_after_days))
    if not ds:
        return [], nobody
    sender = _sender(cfg)
    return [(f"digest-{d.owner}", compose.digest_message(d, sender=sender, currency=cost.get("currency") or "",
                                                          after_days=int(cfg.mail.digest_after_days), window=window))
            for d in ds], nobody


def deliver(cfg: Any, store: Any, messages: list[tuple[str, EmailMessage]], dry_run: bool) -> str:
    """Send, or with ``dry_run`` / ``mail.dry_run_dir`` write .eml files; returns one line saying what happened."""
    if not messages:
        return "nothing to send"
    if dry_run or cfg.mail.dry_run_dir is not None:
        root = Path(cfg.mail.dry_run_dir) if cfg.mail.dry_run_dir is not None else store.root / "mail"
        paths = smtp.write_eml(messages, root / compose.stamp())
        return f"wrote {len(paths)} message(s) to {paths[0].parent}"
    n = smtp.send(messages, cfg.mail)
    return f"sent {n} message(s) via {cfg.mail.host}:{cfg.mail.effective_port}"


def mail_after_report(store: Any, cfg: Any, doc: dict[str, Any], out: Path, *, dry_run: bool = False,
                      what: tuple[str, ...] = ("report", "digests")) -> list[str]:
    """Mail the report just written (its findings JSON ``doc`` and directory ``out``) and the due digests
    (the daemon calls this after its report job, the demo after its report)."""
    said = []
    if "report" in what:
        said.append("report: " + deliver(cfg, store, report_messages(cfg, doc, out), dry_run))
    if "digests" in what:
        msgs, nobody = digest_messages(cfg, store.connect(), doc.get("cost") or {}, doc["window"])
        line = "digests: " + deliver(cfg, store, msgs, dry_run)
        if nobody:
            line += f"; {len(nobody)} flagged GPU(s) without an owner e-mail"
        said.append(line)
    return said


def run_mail(store: Any, cfg: Any, what: str, *, dry_run: bool = False, out_dir: Path | None = None) -> int:
    """CLI entry point. ``report``: write the report (as ``accelmon report``) and mail it; ``digests``: analyse
    the default window (nothing written) and mail the owners whose GPUs stayed flagged."""
    if what not in ("report", "digests"):
        raise UserError(f'mail: unknown message kind "{what}" (use report or digests)')
    if what == "report":
        _a, doc, out = generate(store, cfg, out_dir=out_dir)
        lines = mail_after_report(store, cfg, doc, out, dry_run=dry_run, what=("report",))
    else:
        first, last = data_range(store)
        window = resolve_window(since=None, from_=None, to=None, default_seconds=float(cfg.thresholds.window),
                                data_first=first, data_last=last, now=dt.datetime.now(dt.UTC))
        a = analyze(store, cfg.thresholds, window, prices=cfg.cost)
        w = {"start": window.start.isoformat(), "end": window.end.isoformat(), "label": window.label}
        msgs, nobody = digest_messages(cfg, store.connect(), a.cost, w)
        lines = ["digests: " + deliver(cfg, store, msgs, dry_run)
                 + (f"; {len(nobody)} flagged GPU(s) without an owner e-mail" if nobody else "")]
    for ln in lines:
        print(ln)
    return 0
