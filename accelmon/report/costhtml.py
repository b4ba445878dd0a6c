"""The report's "Idle cost by owner / team" section (figures from analytics/cost.py; docs/cost.md)."""

from __future__ import annotations

import html
from typing import Any


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def money(v: float | None, currency: str) -> str:
    return "–" if v is None else f"{v:,.2f} {_e(currency)}"


def _n(v: float | None, fmt: str = "{:,.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _table(headers: list[str], rows: list[list[str]], first_text: int = 1) -> str:
    h = "".join(f"<th>{_e(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(
        f"<td>{c}</td>" if i < first_text else f'<td class="n">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def group_rows(rows: list[dict[str, Any]], keys: list[str], cur: str, limit: int = 40) -> list[list[str]]:
    return [[*(_e(r.get(k)) for k in keys), str(r["gpus"]), str(r["flagged_gpus"]), _n(r["idle_gpu_hours"]),
             money(r["idle_cost"], cur), _n(r["idle_energy_kwh"], "{:,.2f}"), money(r["idle_energy_cost"], cur)]
            for r in rows[:limit]]


COLS = ["GPUs", "flagged", "idle GPU-h", "idle cost", "idle kWh", "idle energy cost"]


def section(cost: dict[str, Any]) -> str:
    """HTML (no scripts) for the cost section; empty string when the analysis has no cost figures."""
    if not cost:
        return ""
    cur = cost.get("currency") or ""
    t = cost.get("total") or {}
    out = ["<h2>Idle cost by owner / team</h2>",
           "<p class='sub'>Idle GPU-hours = Σ (covered − busy), busy = dt·utilization/100; idle cost = idle "
           "GPU-hours × price per GPU-hour (a vGPU: its framebuffer fraction of the physical GPU's price); idle "
           "energy = energy of the fully idle intervals × price per kWh, – where the GPU reports no power. Owner "
           "and team from vSphere (vm_owner) at the window end; <i>unowned</i> where none is known. "
           "Definitions: docs/cost.md.</p>"]
    if t:
        out.append(f"<p class='sub'>Fleet: <b>{_n(t.get('idle_gpu_hours'), '{:,.0f}')} idle GPU-hours</b> costing "
                   f"<b>{money(t.get('idle_cost'), cur)}</b>, {_n(t.get('idle_energy_kwh'), '{:,.1f}')} kWh idle "
                   f"({money(t.get('idle_energy_cost'), cur)}); {t.get('unpriced_gpus', 0)} GPU(s) without a price, "
                   f"{t.get('no_power_gpus', 0)} without power readings.</p>")
    out.append("<h3>By team</h3>" + _table(["team", *COLS], group_rows(cost.get("by_team", []), ["team"], cur)))
    out.append("<h3>By owner</h3>" + _table(["owner", "e-mail", *COLS],
                                             group_rows(cost.get("by_owner", []), ["owner", "email"], cur), 2))
    out.append("<h3>By VM</h3>" + _table(["VM", "owner", "team", *COLS],
                                          group_rows(cost.get("by_vm", []), ["vm_name", "owner", "team"], cur), 3))
    p = cost.get("plan") or {}
    if p:
        cap = p.get("capacity_freed") or {}
        out.append(f"<p class='sub'>The plan saves {_n(p.get('kwh_month_saved'), '{:,.0f}')} kWh/month "
                   f"(hosts it empties) = <b>{money(p.get('energy_saved_month'), cur)}/month</b>. Capacity freed "
                   f"in hosts that stay on (not a saving in energy): {cap.get('gpus', 0)} GPU(s), "
                   f"{_n(cap.get('gpu_hours_month'), '{:,.0f}')} GPU-hours/month worth "
                   f"{money(cap.get('value_month'), cur)}/month.</p>")
    return "".join(out)
