"""The consolidation plan on its own: ``accelmon plan --format json|powercli``, and its report section.

The plan comes from the same analysis ``accelmon report`` runs (never read back from a report
file); the run, plan steps included, is stored by analytics/persist.py (``plan_action``). The PowerCLI script is for a person to read, review and run step by step: a header
comment (when, from which window, "review before running; accelmon executes nothing"), then per
step a comment in words with its preconditions, API call, evidence and risk, and one PowerCLI
line using the inventory's VM and host names as PowerShell single-quoted literals. accelmon
executes nothing.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import sys
from pathlib import Path
from typing import Any

from accelmon import __version__
from accelmon.analytics import persist
from accelmon.analytics.actions import comment
from accelmon.analytics.analyze import Analysis
from accelmon.errors import UserError
from accelmon.report.jsonout import clean
from accelmon.store.writer import Store

FORMATS = ("json", "powercli")
GIB = float(1 << 30)


def plan_json(a: Analysis) -> dict[str, Any]:
    """The plan document (docs/report.md, "plan.json")."""
    return {"schema_version": 1, "run_id": a.run_id, "generated_at": a.generated_at.isoformat(),
            "window": {"start": a.window.start.isoformat(), "end": a.window.end.isoformat(),
                       "label": a.window.label},
            "thresholds": a.thresholds, "plan": clean(a.plan.to_dict())}


def _gib(v: Any) -> str:
    return "?" if v is None else f"{v / GIB:.1f} GiB"


def _pct(v: Any) -> str:
    return "?" if v is None else f"{v:.1f} %"


def evidence_words(s: Any) -> str:
    """A step's evidence and risk in one line."""
    ev, risk = s.evidence, s.risk
    parts = []
    if "p95_util_percent" in ev:
        parts.append(f"mean {_pct(ev.get('mean_util_percent'))}, p95 {_pct(ev.get('p95_util_percent'))}, "
                     f"framebuffer peak {_gib(ev.get('fb_peak_bytes'))}")
    if "watts" in ev:
        watts = "?" if ev["watts"] is None else f"{ev['watts']:.0f} W"
        parts.append(f"host power {watts} ({ev['power_source']})")
    if risk.get("power_off"):
        parts.append("needs the VM powered off")
    if "stun_p95_seconds" in risk:
        p95 = risk["stun_p95_seconds"]
        lim = risk.get("stun_limit_seconds")
        over = f", over the {lim:g} s limit" if p95 is not None and lim is not None and p95 > lim else ""
        parts.append(f"stun p95 {'unknown' if p95 is None else format(p95, '.1f') + ' s'}{over} "
                     f"({risk.get('stun_basis')})")
    return "; ".join(parts)


def powercli_script(a: Analysis) -> str:
    p = a.plan
    w = a.window
    lines = [
        "# accelmon consolidation plan as PowerCLI",
        f"# Generated {a.generated_at:%Y-%m-%d %H:%M} UTC by accelmon {__version__}, run {a.run_id}",
        f"# From the measurements of {w.start:%Y-%m-%d %H:%M} - {w.end:%Y-%m-%d %H:%M} UTC ({comment(w.label)})",
        "# REVIEW BEFORE RUNNING: accelmon executes nothing. Run each line by hand after Connect-VIServer,",
        "# check its preconditions first, and stop at the first error. -Name matches by name: make sure each",
        "# VM and host name below is unique in the vCenter you are connected to.",
        f"# Saves {p.watts_saved:.0f} W ({p.kwh_month_saved:.0f} kWh/month) from {len(p.freed_hosts)} emptied "
        f"host(s); frees {p.freed_capacity.get('gpus', 0)} GPU(s) of capacity in hosts that stay on (no watts).",
        f"# {comment(p.reason)}",
    ]
    if not p.steps:
        lines.append("# Nothing to do.")
    for s in p.steps:
        lines.append("#")
        lines.append(f"# Step {s.n} ({s.action}): {comment(s.words)}")
        for pre in s.preconditions:
            lines.append(f"#   needs: {comment(pre)}")
        lines.append(f"#   API: {comment(s.api)}")
        ev = evidence_words(s)
        if ev:
            lines.append(f"#   evidence: {comment(ev)}")
        lines.append(s.powercli)
    return "\r\n".join(lines) + "\r\n"  # Windows PowerShell 5.1 reads either; CRLF is its native form


def _w(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def html_section(p: Any) -> str:
    """The report's plan section: savings (emptied hosts) apart from freed capacity, then the steps."""
    e = html.escape
    cap = p.freed_capacity
    out = ["<h2>Consolidation plan</h2>",
           f'<p class="sub">{e(p.reason)}. Target: receiving GPU p95 sum ≤ {p.target_util_percent:g} %.</p>',
           f'<p class="sub"><b>Savings</b> (hosts the plan empties): saves {p.watts_saved:.0f} W = '
           f'{p.kwh_month_saved:.0f} kWh/month from {len(p.freed_hosts)} emptied host(s)'
           + (f"; {p.unmeasured_emptied_hosts} emptied host(s) have no known power and are not counted"
              if p.unmeasured_emptied_hosts else "") + ".</p>",
           f'<p class="sub"><b>Freed capacity</b> (GPUs freed in hosts that stay on — capacity, not watts): '
           f'{cap.get("gpus", 0)} GPU(s), {cap.get("gpu_hours_month", 0):,.0f} GPU-hours/month, '
           f'{cap.get("fb_bytes", 0) / GIB:,.0f} GiB framebuffer.</p>']
    if p.emptied_hosts:
        out.append("<h3>Emptied hosts</h3><table><thead><tr><th>host</th><th>W saved</th><th>how known</th>"
                   "<th>GPU VMs moved off</th><th>non-GPU VMs</th></tr></thead><tbody>" + "".join(
                       f"<tr><td>{e(h['host'])}</td><td class='n'>{_w(h['watts'])}"
                       f"</td><td>{e(h['power_source'])}</td><td>{e(', '.join(h['gpu_vms_moved']))}</td>"
                       f"<td>{e(h['non_gpu_vms'])}</td></tr>" for h in p.emptied_hosts) + "</tbody></table>")
    if p.hosts_kept_on:
        out.append("<h3>Hosts emptied of GPU work that stay on</h3><ul>" + "".join(
            f"<li>{e(h['host'])}: {e(h['reason'])}</li>" for h in p.hosts_kept_on) + "</ul>")
    if p.steps:
        out.append("<h3>Steps (review before running; accelmon executes nothing)</h3><table><thead><tr><th>#</th>"
                   "<th>action</th><th>step</th><th>needs</th><th>evidence / risk</th><th>PowerCLI</th></tr></thead>"
                   "<tbody>" + "".join(
                       f"<tr><td class='n'>{s.n}</td><td>{e(s.action)}</td><td>{e(s.words)}</td>"
                       f"<td>{'<br>'.join(e(x) for x in s.preconditions)}</td><td>{e(evidence_words(s))}</td>"
                       f"<td><code>{e(s.powercli)}</code></td></tr>" for s in p.steps) + "</tbody></table>")
    return "".join(out)


def _write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"{path}: cannot write the plan: {err.strerror or err}") from None


def run_plan(store: Store, cfg: Any, *, fmt: str = "json", out: Path | None = None, since: str | None = None,
             from_: dt.datetime | None = None, to: dt.datetime | None = None, now: dt.datetime | None = None) -> int:
    """``accelmon plan``: analyse the window and store the run (its findings and ``plan_action`` rows, so
    the run id in the output names stored rows), then write the plan alone (stdout, or ``out``). No
    report files."""
    if fmt not in FORMATS:
        raise UserError(f"--format: must be json or powercli, not {fmt!r}")
    a = persist.run(store, cfg.thresholds, since=since, from_=from_, to=to, now=now,
                    rollup_after=float(cfg.report.rollup_after), prices=cfg.cost)
    text = (json.dumps(plan_json(a), indent=1, default=str) + "\n") if fmt == "json" else powercli_script(a)
    if out is None:
        sys.stdout.write(text)
    else:
        _write(out, text)
    return 0
