"""report.html: one self-contained file (inline CSS, charts as SVG data URIs, no scripts)."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from accelmon.analytics.analyze import Analysis
from accelmon.report import charts, costhtml
from accelmon.report import plan as plan_section

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#0f172a;background:#f8fafc}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e2e8f0;padding-bottom:4px}
.sub{color:#475569;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:10px;margin:16px 0}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:10px 12px}
.card b{display:block;font-size:22px} .card span{color:#475569;font-size:12px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:12.5px}
th,td{border-bottom:1px solid #e2e8f0;padding:5px 7px;text-align:left;vertical-align:top}
th{background:#f1f5f9;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
img.chart{max-width:100%;box-sizing:border-box;background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:6px}
.muted{color:#64748b} .bad{color:#b91c1c} .ok{color:#15803d} code{background:#f1f5f9;padding:1px 4px;border-radius:3px}
img.wide{width:100%} .row{display:flex;gap:14px;flex-wrap:wrap} .row>div{flex:1 1 480px}
"""


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def num(v: Any, fmt: str = "{:.1f}") -> str:
    if v is None:
        return "–"
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return esc(v)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    h = "".join(f"<th>{esc(x)}</th>" for x in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def img(svg: str, alt: str, wide: bool = False) -> str:
    cls = "chart wide" if wide else "chart"
    return f'<img class="{cls}" alt="{esc(alt)}" src="{charts.data_uri(svg)}">'


def pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def presence(r: dict[str, Any]) -> str:
    """Presence span of a GPU row: hours and start – end (UTC)."""
    sec = r.get("presence_seconds")
    if sec is None:
        return "–"
    ends = []
    for e in ("start", "end"):
        v = r.get(f"presence_{e}")  # ISO string (the JSON rows)
        if v is None and r.get(f"presence_{e}_ms") is not None:  # epoch ms (the analysis frame)
            v = dt.datetime.fromtimestamp(r[f"presence_{e}_ms"] / 1000, dt.UTC).isoformat()
        ends.append(None if v is None else str(v)[:16].replace("T", " "))
    span = f' <span class="muted">{esc(ends[0])} – {esc(ends[1])}</span>' if None not in ends else ""
    return f"{sec / 3600:.1f} h{span}"


def card(value: str, label: str) -> str:
    return f'<div class="card"><b>{value}</b><span>{esc(label)}</span></div>'


def render(a: Analysis, doc: dict[str, Any]) -> str:
    s = doc["summary"]
    th = a.thresholds
    g = a.gpus
    parts: list[str] = []
    share = s["underutilized_share"]
    parts.append('<div class="cards">' + "".join([
        card(str(s["gpus"]), "GPUs analysed"),
        card(f'{s["underutilized"]} <small class="muted">({num(100 * share if share is not None else None, "{:.0f}")} %)</small>',
             f"underutilized (< {th['underutilized_percent']:g} % mean)"),
        card(str(s["insufficient_data"]), f"insufficient data (< {100 * th['min_coverage_ratio']:.0f} % of presence "
             f"or < {th['min_covered_duration'] / 3600:g} h observed)"),
        card(num(s["idle_gpu_hours"], "{:,.0f}"), "GPU-hours idle"),
        card(num(s["idle_energy_kwh"], "{:,.1f}"), "kWh spent idle"),
        card(f'{s["plan_frees_gpus"]} GPUs / {s["plan_frees_hosts"]} hosts', "the plan frees"),
        card(num(s["plan_kwh_month_saved"], "{:,.0f}"), "kWh/month saved (hosts the plan empties)"),
        card(str(s["numa_misaligned_vms"]), "NUMA-misaligned VMs"),
        card(str(s.get("hollow", 0)), f"hollow (busy, SMs < {th.get('hollow_percent', 15):g} % active)"),
    ]) + "</div>")
    # changes
    ch = a.changes
    if ch.get("previous_run"):
        parts.append("<h2>What changed since the previous report</h2>")
        parts.append(f'<p class="sub">Previous run {esc(ch["previous_run"])} ({esc(ch.get("previous_generated_at"))}): '
                     f'{ch["underutilized_before"]} underutilized then, {ch["underutilized_now"]} now.</p>')
        parts.append(table(["newly underutilized", "no longer underutilized"], [[
            esc(", ".join(ch["newly_underutilized"][:30]) or "none"),
            esc(", ".join(ch["no_longer_underutilized"][:30]) or "none")]]))
    else:
        parts.append('<h2>What changed since the previous report</h2><p class="sub">No earlier report in this store.</p>')
    # heatmap + distribution
    order = g.filter(pl.col("underutilized").is_not_null())["gpu"].to_list() + \
        g.filter(pl.col("underutilized").is_null())["gpu"].to_list()
    ncells = max(1, -(-int(a.window.seconds * 1000) // _cell_ms(a)))
    parts.append("<h2>Fleet heatmap (GPU × hour)</h2>")
    parts.append(img(charts.heatmap(a.heat, order, a.window.start_ms, _cell_ms(a), ncells), "fleet heatmap",
                     wide=True))
    parts.append('<div class="row"><div><h2>Utilization distribution</h2>')
    parts.append(img(charts.distribution([x for x in g["mean_util_percent"].to_list() if x is not None],
                                         th["underutilized_percent"]), "utilization distribution"))
    top = g.filter(pl.col("status") == "underutilized").sort("idle_hours", descending=True).head(15)
    parts.append('</div><div><h2>Most idle GPU-hours</h2>')
    if top.height:
        parts.append(img(charts.top_idle([_label(r) for r in top.to_dicts()], top["idle_hours"].to_list()),
                         "top idle GPUs"))
    else:
        parts.append('<p class="sub">No underutilized GPUs.</p>')
    parts.append("</div></div>")
    parts.append("<h2>Top idle GPUs</h2><p class='sub'>Underutilized GPUs by idle hours. Owner: the VM and its "
                 "cluster (the inventory has no owner field).</p>")
    top = g.filter(pl.col("status") == "underutilized").sort("idle_hours", descending=True).head(40)
    parts.append(table(
        ["GPU", "VM", "host", "cluster", "mean %", "p95 %", "idle %", "idle h", "alloc. idle h", "idle kWh", "present",
         "coverage"],
        [[f"<code>{esc(r['gpu'])}</code>", esc(r.get("vm_name")), esc(r.get("host_name")), esc(r.get("cluster_name")),
          num(r["mean_util_percent"]), num(r["p95_util_percent"], "{:.0f}"), num(pct(r["idle_ratio"]), "{:.0f}"),
          num(r["idle_hours"]), num(r["allocated_idle_hours"]), num(r["idle_energy_kwh"], "{:.2f}"), presence(r),
          num(pct(r["coverage_ratio"]), "{:.0f} %")] for r in top.to_dicts()],
        numeric={4, 5, 6, 7, 8, 9, 11}) if top.height else '<p class="sub">None.</p>')
    parts.append(costhtml.section(doc.get("cost") or {}))
    parts.append(effective_section(doc, th))
    # NUMA
    parts.append("<h2>NUMA-misaligned VMs</h2>")
    parts.append(table(["VM", "host", "GPUs (host node)", "affinity", "why", "fix"], [
        [esc(r["vm_name"] or r["vm_moref"]), esc(r["host_name"]), esc(r["gpus"]), esc(r["numa_node_affinity"] or "–"),
         esc(r["reason"]), f"<code>{esc(r['fix'])}</code>"] for r in a.numa.to_dicts()])
        if a.numa.height else '<p class="sub ok">No NUMA misalignment found.</p>')
    # plan
    parts.append(plan_section.html_section(a.plan))
    # vMotion
    vm = a.vmotion
    parts.append("<h2>vMotion stun</h2>")
    mig = vm["migrations"]
    if mig.height:
        st = mig.filter(pl.col("stun_seconds").is_not_null())
        parts.append('<div class="row"><div>')
        parts.append(img(charts.stun(st.filter(pl.col("vgpu"))["stun_seconds"].to_list(),
                                     st.filter(~pl.col("vgpu"))["stun_seconds"].to_list(), vm["stun_limit_seconds"]),
                         "stun distribution"))
        parts.append("</div><div>")
        by = vm["by_vgpu"]
        parts.append(table(["", "migrations", "p50 s", "p95 s", "max s", "over limit", "switchover failed"], [
            ["vGPU" if r["vgpu"] else "no vGPU", str(r["migrations"]), num(r["p50_stun_seconds"], "{:.2f}"),
             num(r["p95_stun_seconds"], "{:.2f}"), num(r["max_stun_seconds"], "{:.2f}"), str(r["over_limit"]),
             str(r["switchover_failed"])] for r in by.to_dicts()], numeric={1, 2, 3, 4, 5, 6}))
        fit = vm["fit"]
        if fit:
            parts.append(f'<p class="sub">Stun grows with the vGPU framebuffer: ≈ {fit["intercept"]:.2f} s + '
                         f'{fit["slope_s_per_gib"]:.3f} s/GiB (r = {fit["r"]:.2f}, n = {fit["n"]:.0f}).</p>')
        parts.append("</div></div>")
        if vm["risky"]:
            parts.append("<h3>VMs risky to migrate</h3>")
            parts.append(table(["VM", "cluster", "max stun s", "predicted s", "why"], [
                [esc(r["vm_name"] or r["vm_moref"]), esc(r["cluster_name"]), num(r["max_stun_seconds"], "{:.1f}"),
                 num(r["predicted_stun_seconds"], "{:.1f}"), esc(r["reason"])] for r in vm["risky"]], numeric={2, 3}))
        pc = vm["per_cluster"]
        parts.append("<h3>Per cluster</h3>" + table(["cluster", "migrations", "p50 s", "p95 s", "max s", "over limit"], [
            [esc(r["cluster_name"]), str(r["migrations"]), num(r["p50_stun_seconds"], "{:.2f}"),
             num(r["p95_stun_seconds"], "{:.2f}"), num(r["max_stun_seconds"], "{:.2f}"), str(r["over_limit"])]
            for r in pc.to_dicts()], numeric={1, 2, 3, 4, 5}))
    else:
        parts.append('<p class="sub">No migrations in the window.</p>')
    # power
    pw = a.power
    parts.append("<h2>Power</h2>")
    gp = pw["gpus"]
    tot = float(gp["energy_kwh"].sum()) if gp.height else 0.0
    idle = float(gp["idle_energy_kwh"].sum()) if gp.height else 0.0
    parts.append(f'<p class="sub">GPUs used {tot:,.1f} kWh in the window, {idle:,.1f} kWh of it while idle '
                 f'({num(100 * idle / tot if tot else None, "{:.0f}")} %).</p>')
    if pw["hosts"].height:
        parts.append("<h3>Hosts</h3>" + table(["host", "cluster", "kWh", "mean W"], [
            [esc(r["host_name"] or r["host_moref"]), esc(r["cluster_name"]), num(r["energy_kwh"], "{:.2f}"),
             num(r["mean_watts"], "{:.0f}")] for r in pw["hosts"].head(20).to_dicts()], numeric={2, 3}))
    if pw["vms"].height:
        parts.append("<h3>VMs</h3>" + table(["VM", "kWh", "mean W"], [
            [esc(r["vm_name"] or r["vm_moref"]), num(r["energy_kwh"], "{:.2f}"), num(r["mean_watts"], "{:.0f}")]
            for r in pw["vms"].head(20).to_dicts()], numeric={1, 2}))
    ins = g.filter(pl.col("status") == "insufficient_data")
    if ins.height:
        parts.append("<h2>Insufficient data</h2><p class='sub'>Neither flagged nor cleared: observed less than "
                     f"{100 * th['min_coverage_ratio']:.0f} % of the time the GPU was present (VM powered on with "
                     f"the device, else first to last sample), or less than {th['min_covered_duration'] / 3600:g} h."
                     "</p>")
        parts.append(table(["GPU", "VM", "present", "coverage", "samples", "last sample", "why"], [
            [f"<code>{esc(r['gpu'])}</code>", esc(r.get("vm_name")), presence(r),
             num(pct(r["coverage_ratio"]), "{:.0f} %"), str(r["samples"]), esc(r.get("last_sample")),
             esc(r.get("verdict_reason"))] for r in
            [x for x in doc["gpus"] if x["status"] == "insufficient_data"][:50]], numeric={3, 4}))
    mig = [x for x in doc["gpus"] if x["status"] == "mig_unreported"]
    if mig:
        parts.append("<h2>MIG: utilization not reported</h2><p class='sub'>MIG is enabled on these GPUs and the "
                     "driver does not report utilization for them (NVML), so they are neither flagged nor "
                     "cleared.</p>")
        parts.append(table(["GPU", "VM", "host", "present", "samples", "why"], [
            [f"<code>{esc(r['gpu'])}</code>", esc(r.get("vm_name")), esc(r.get("host_name")), presence(r),
             str(r["samples"]), esc(r.get("verdict_reason"))] for r in mig[:50]], numeric={4}))
    head = (f"<h1>accelmon — GPU utilization and consolidation report</h1>"
            f'<div class="sub">Window: {esc(a.window.start.strftime("%Y-%m-%d %H:%M"))} – '
            f'{esc(a.window.end.strftime("%Y-%m-%d %H:%M"))} UTC ({esc(a.window.label)}) · generated '
            f'{esc(a.generated_at.strftime("%Y-%m-%d %H:%M"))} UTC · run {esc(a.run_id)}</div>')
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>accelmon report {esc(a.generated_at.strftime('%Y-%m-%d'))}</title><style>{CSS}</style></head>"
            f"<body><main>{head}{''.join(parts)}"
            "<p class='sub muted'>Definitions: docs/analytics.md. Data: findings.json / findings.csv beside this file."
            "</p></main></body></html>")


def _eff(r: dict[str, Any]) -> str:
    if r.get("effective_util_percent") is not None:
        return num(r["effective_util_percent"])
    return '<span class="muted">time-only</span>' if r.get("time_only") else "–"


def effective_section(doc: dict[str, Any], th: dict[str, float]) -> str:
    """Time utilization beside effective (SM-active) utilization, the hollow GPUs, right-sizing."""
    rows = [r for r in doc["gpus"] if r.get("status") in ("ok", "underutilized", "hollow")]
    out = ["<h2>Time vs effective utilization</h2><p class='sub'>Time utilization: share of time a kernel ran "
           "(NVML/DCGM GPU_UTIL). Effective: time-weighted share of SMs active (NVML GPM SM_UTIL / DCGM "
           "PROF_SM_ACTIVE); <i>time-only</i> where the GPU or a vGPU guest cannot report it (never 0).</p>"]
    out.append(table(["GPU", "VM", "status", "time %", "effective %", "p95 SM %", "tensor %", "DRAM %",
                      "occupancy %"],
                     [[f"<code>{esc(r['gpu'])}</code>", esc(r.get("vm_name")), esc(r["status"]),
                       num(r.get("mean_util_percent")), _eff(r), num(r.get("p95_sm_active_percent"), "{:.0f}"),
                       num(r.get("tensor_active_percent")), num(r.get("dram_active_percent")),
                       num(r.get("sm_occupancy_percent"))] for r in rows[:80]],
                     numeric={3, 4, 5, 6, 7, 8}) if rows else '<p class="sub">No judged GPUs.</p>')
    hollow = [r for r in doc["gpus"] if r.get("status") == "hollow"]
    out.append(f"<h2>Hollow GPUs</h2><p class='sub'>Busy ≥ {th['underutilized_percent']:g} % of the time but SMs "
               f"active &lt; {th.get('hollow_percent', 15):g} %: kernels keep the GPU busy on a small part of it. "
               "Consider a MIG slice or a smaller vGPU profile.</p>")
    out.append(table(["GPU", "VM", "host", "time %", "effective %", "framebuffer peak", "right-size"], [
        [f"<code>{esc(r['gpu'])}</code>", esc(r.get("vm_name")), esc(r.get("host_name")),
         num(r.get("mean_util_percent")), num(r.get("effective_util_percent")),
         num((r.get("fb_max_bytes") or 0) / 2**30 if r.get("fb_max_bytes") is not None else None, "{:.1f} GiB"),
         esc(f"{r['rightsize']['from']} → {r['rightsize']['to']}") if r.get("rightsize") else "–"]
        for r in hollow[:50]], numeric={3, 4, 5}) if hollow else '<p class="sub ok">No hollow GPUs.</p>')
    rs = doc.get("consolidation", {}).get("rightsize") or []
    if rs:
        out.append("<h2>Right-sizing</h2>" + table(["VM", "from", "to", "why", "step / how"], [
            [esc(r["vm_name"]), esc(r["from_profile"]), esc(r["to_profile"]), esc(r["reason"]),
             esc(f"plan step {r['step']}" if r.get("step") else (r.get("words") or r.get("note") or ""))]
            for r in rs[:80]]))
    return "".join(out)


def _cell_ms(a: Analysis) -> int:
    return int(a.stats.get("heat_cell_ms") or 3_600_000)


def _label(r: dict[str, Any]) -> str:
    name = r.get("vm_name") or r["gpu"]
    return name if len(name) <= 28 else name[:12] + "…" + name[-12:]
