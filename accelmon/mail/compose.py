"""The messages: the daily report mail and an owner digest (RFC 5322 ``EmailMessage``).

Mail clients strip scripts and most do not render SVG or data: URIs, so the HTML body is plain
tables with inline styles and the charts are PNG parts of a ``multipart/related`` referenced as
``cid:`` (RFC 2392); a plain-text alternative comes first. The report mail attaches findings.csv.
"""

from __future__ import annotations

import datetime as dt
import html
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from accelmon.mail.digest import Digest
from accelmon.report import charts
from accelmon.report.costhtml import money

TD = "padding:4px 8px;border-bottom:1px solid #e2e8f0;text-align:left;font-size:13px"
TH = TD + ";background:#f1f5f9"
BODY = "font-family:Segoe UI,Arial,sans-serif;color:#0f172a;max-width:900px"


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _n(v: float | None, fmt: str = "{:,.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    h = "".join(f'<th style="{TH}">{_e(x)}</th>' for x in headers)
    b = "".join("<tr>" + "".join(f'<td style="{TD}">{c}</td>' for c in r) + "</tr>" for r in rows)
    return f'<table cellspacing="0" style="border-collapse:collapse"><tr>{h}</tr>{b}</table>'


def _base(subject: str, sender: str, to: list[str]) -> EmailMessage:
    m = EmailMessage()
    m["Subject"] = subject
    m["From"] = sender
    m["To"] = ", ".join(to)
    m["Date"] = formatdate(localtime=False, usegmt=True)
    m["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    return m


def report_message(doc: dict[str, Any], findings_csv: str, *, sender: str, to: list[str],
                   report_path: str | None = None) -> EmailMessage:
    """The daily report: summary, idle cost by team, top idle GPUs, two inline charts, findings.csv attached."""
    s, cost = doc["summary"], doc.get("cost") or {}
    cur = cost.get("currency") or ""
    total = cost.get("total") or {}
    day = str(doc["generated_at"])[:10]
    subject = (f"accelmon report {day}: {s['underutilized']} of {s['gpus']} GPUs underutilized, "
               f"{_n(s['idle_gpu_hours'], '{:,.0f}')} idle GPU-hours, idle cost {money(total.get('idle_cost'), cur)}")
    m = _base(subject, sender, to)
    w = doc["window"]
    teams = cost.get("by_team", [])
    gpus = sorted([g for g in doc["gpus"] if g.get("status") == "underutilized"],
                  key=lambda g: -(g.get("idle_hours") or 0.0))[:15]
    plan = cost.get("plan") or {}
    text = [subject, f"Window {w['start']} – {w['end']} UTC ({w['label']})",
            f"Plan: {s['plan_frees_gpus']} GPU(s) freed, {_n(s['plan_kwh_month_saved'], '{:,.0f}')} kWh/month saved "
            f"= {money(plan.get('energy_saved_month'), cur)}/month",
            "Idle cost by team:"] + [f"  {t['team']}: {_n(t['idle_gpu_hours'])} GPU-h, {money(t['idle_cost'], cur)}"
                                     for t in teams[:20]]
    if report_path:
        text.append(f"Full report: {report_path}")
    m.set_content("\n".join(text) + "\n")
    cid_dist, cid_top = make_msgid("dist"), make_msgid("top")
    body = [f'<div style="{BODY}"><h2>accelmon — GPU report {_e(day)}</h2>',
            f"<p>Window {_e(w['start'][:16])} – {_e(w['end'][:16])} UTC ({_e(w['label'])}).</p>",
            _table(["GPUs", "underutilized", "idle GPU-hours", "idle cost", "idle kWh", "plan saves / month",
                    "capacity freed / month"],
                   [[str(s["gpus"]), str(s["underutilized"]), _n(s["idle_gpu_hours"], "{:,.0f}"),
                     money(total.get("idle_cost"), cur), _n(total.get("idle_energy_kwh")),
                     f"{_n(plan.get('kwh_month_saved'), '{:,.0f}')} kWh = {money(plan.get('energy_saved_month'), cur)}",
                     money((plan.get("capacity_freed") or {}).get("value_month"), cur)]]),
            "<h3>Idle cost by team</h3>",
            _table(["team", "GPUs", "flagged", "idle GPU-h", "idle cost", "idle energy cost"],
                   [[_e(t["team"]), str(t["gpus"]), str(t["flagged_gpus"]), _n(t["idle_gpu_hours"]),
                     money(t["idle_cost"], cur), money(t["idle_energy_cost"], cur)] for t in teams[:20]]),
            "<h3>Most idle GPUs</h3>",
            f'<img src="cid:{cid_top[1:-1]}" alt="most idle GPUs" style="max-width:100%">' if gpus else
            "<p>No underutilized GPUs.</p>",
            _table(["GPU", "VM", "host", "mean %", "idle GPU-h"],
                   [[_e(g["gpu"]), _e(g.get("vm_name")), _e(g.get("host_name")), _n(g.get("mean_util_percent")),
                     _n(g.get("idle_hours"))] for g in gpus]),
            "<h3>Utilization distribution</h3>",
            f'<img src="cid:{cid_dist[1:-1]}" alt="utilization distribution" style="max-width:100%">',
            f"<p>Findings attached (findings.csv).{' Full report: ' + _e(report_path) if report_path else ''}</p>"
            "</div>"]
    m.add_alternative("".join(body), subtype="html")
    related = m.get_payload()[1]
    thr = float(doc["thresholds"]["underutilized_percent"])
    means = [g["mean_util_percent"] for g in doc["gpus"] if g.get("mean_util_percent") is not None]
    if gpus:
        related.add_related(charts.top_idle_png([g.get("vm_name") or g["gpu"] for g in gpus],
                                                [g.get("idle_hours") or 0.0 for g in gpus]),
                            "image", "png", cid=cid_top, filename="top_idle.png")
    related.add_related(charts.distribution_png(means, thr), "image", "png", cid=cid_dist, filename="distribution.png")
    m.add_attachment(findings_csv, subtype="csv", charset="utf-8", filename="findings.csv")
    return m


def digest_message(d: Digest, *, sender: str, currency: str, after_days: int, window: dict[str, Any]
                   ) -> EmailMessage:
    """One owner's digest: only their GPUs flagged ≥ ``after_days`` days, with cost and suggested actions."""
    n = len(d.gpus)
    subject = (f"accelmon: your {n} GPU{'s' if n != 1 else ''} stayed under-used for {after_days}+ days "
               f"(idle cost {money(d.idle_cost, currency)})")
    m = _base(subject, sender, [d.email])
    lines = [f"Hello {d.owner},", "",
             f"These GPUs of yours were underutilized on each of the last {after_days} or more days "
             f"(window {window['start'][:10]} – {window['end'][:10]}):", ""]
    for g in d.gpus:
        lines.append(f"- {g.get('vm_name') or g['gpu']} ({g['gpu']}): mean {_n(g.get('mean_util_percent'))} %, "
                     f"{g['days_flagged']} days flagged, {_n(g['idle_gpu_hours'])} idle GPU-h, "
                     f"{money(g['idle_cost'], currency)}; " + ("; ".join(g["actions"]) or "release the GPU"))
    m.set_content("\n".join(lines) + "\n")
    rows = [[_e(g.get("vm_name")), _e(g["gpu"]), _n(g.get("mean_util_percent")), str(g["days_flagged"]),
             _n(g["idle_gpu_hours"]), money(g["idle_cost"], currency), money(g.get("idle_energy_cost"), currency),
             _e("; ".join(g["actions"]) or "release the GPU")] for g in d.gpus]
    m.add_alternative(
        f'<div style="{BODY}"><p>Hello {_e(d.owner)},</p><p>These GPUs of yours were underutilized on each of the '
        f"last {after_days} or more days (window {_e(window['start'][:10])} – {_e(window['end'][:10])}).</p>"
        + _table(["VM", "GPU", "mean %", "days flagged", "idle GPU-h", "idle cost", "idle energy cost",
                  "suggested action"], rows)
        + f"<p>Total idle cost: <b>{money(d.idle_cost, currency)}</b>.</p></div>", subtype="html")
    return m


def stamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
