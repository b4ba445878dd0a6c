"""``accelmon report``: analyse a window and store the run, then write report.html / findings.csv / findings.json.

One direction (docs/report.md): :func:`accelmon.analytics.persist.run` analyses and stores the
run's findings and plan; :func:`render` only reads the resulting analysis.

Output directory: ``--out DIR`` as given; else ``<report.out_dir or data-dir/reports>/<UTC time>/``,
and then only the newest ``report.keep`` timestamped report directories are kept there.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from accelmon.analytics import persist
from accelmon.analytics.analyze import Analysis
from accelmon.errors import UserError
from accelmon.report import html, jsonout
from accelmon.store.writer import Store

_RUN_DIR_RE = re.compile(r"^\d{8}T\d{6}Z$")
CSV_FIELDS = ["generated_at", "run_id", "kind", "subject", "vcenter_uuid", "window_start", "window_end", "value",
              "reason", "fix", "evidence_json"]


def _write_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# OWASP "CSV Injection": a cell whose first character is one of = + - @ TAB CR is taken as a formula by
# Excel, LibreOffice Calc and Google Sheets; ASVS 1.2.10 adds NUL. Such a text cell gets a leading single
# quote (the spreadsheet's "this is text" marker). Only strings: numbers (a negative value included) are
# written as numbers, and the csv module quotes separators and double quotes (RFC 4180).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\0")


def csv_cell(v: Any) -> Any:
    """One findings.csv cell: datetimes as ISO 8601, strings made inert against formula injection."""
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v


def findings_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    # RFC 4180 line ends (CRLF): the csv module then also quotes a field holding a lone CR, which with
    # lineterminator="\n" (Python 3.11) it wrote bare, splitting the row for every reader
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\r\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: csv_cell(v) for k, v in r.items() if k in CSV_FIELDS})
    return buf.getvalue()


def reports_root(store: Store, cfg: Any) -> Path:
    out = getattr(cfg.report, "out_dir", None)
    return Path(out) if out else store.root / "reports"


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` timestamped report directories under ``root``."""
    if not root.is_dir():
        return []
    runs = sorted(p for p in root.iterdir() if p.is_dir() and _RUN_DIR_RE.match(p.name))
    gone = runs[: max(0, len(runs) - keep)]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def render(a: Analysis, out: Path) -> dict[str, Any]:
    """Write report.html, findings.csv and findings.json of analysis ``a`` into ``out``; returns the JSON
    document. A renderer: it reads the analysis and writes only these files (the run's findings and
    plan are stored by analytics/persist.py, never here)."""
    doc = jsonout.build(a)
    try:
        out.mkdir(parents=True, exist_ok=True)
        page = html.render(a, doc)
        _write_atomic(out / "report.html", page)
        _write_atomic(out / "findings.csv", findings_csv(persist.findings_rows(a)))
        _write_atomic(out / "findings.json", json.dumps(doc, indent=1, default=str) + "\n")
    except OSError as e:
        raise UserError(f"{out}: cannot write the report: {e.strerror or e}") from None
    return doc


def run_dir(store: Store, cfg: Any, a: Analysis) -> Path:
    """The timestamped directory of a run's report under the reports root."""
    return reports_root(store, cfg) / a.generated_at.strftime("%Y%m%dT%H%M%SZ")


def write_report(store: Store, cfg: Any, a: Analysis, *, out_dir: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Render ``a`` into ``out_dir``, or into its timestamped run directory, then keep only the newest
    ``report.keep`` of those."""
    out = Path(out_dir) if out_dir is not None else run_dir(store, cfg, a)
    doc = render(a, out)
    if out_dir is None:
        prune(out.parent, int(cfg.report.keep))
    return doc, out


def generate(store: Store, cfg: Any, *, since: str | None = None, from_: dt.datetime | None = None,
             to: dt.datetime | None = None, out_dir: Path | None = None, now: dt.datetime | None = None,
             log: Any = None) -> tuple[Analysis, dict[str, Any], Path]:
    """Analyse and store the run (analytics/persist.py), then render it; returns (analysis, json doc, out dir)."""
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if log:
            log(f"report: {msg} ({time.monotonic() - t0:.1f}s)")

    a = persist.run(store, cfg.thresholds, since=since, from_=from_, to=to, now=now,
                    rollup_after=float(cfg.report.rollup_after), prices=cfg.cost)
    say(f"window {a.window.start:%Y-%m-%d %H:%M} – {a.window.end:%Y-%m-%d %H:%M} UTC")
    say(f"analysed and stored {a.stats['rows']:,} samples of {a.gpus.height} GPUs (run {a.run_id})")
    doc, out = write_report(store, cfg, a, out_dir=out_dir)
    say(f"wrote {out}")
    return a, doc, out


def run_report(store: Store, cfg: Any, *, since: str | None = None, from_: dt.datetime | None = None,
               to: dt.datetime | None = None, out_dir: Path | None = None, json_out: bool = False,
               progress: bool = True) -> int:
    """The CLI entry point (``accelmon report``). Returns the exit code; bad arguments raise UserError."""
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else None
    a, doc, out = generate(store, cfg, since=since, from_=from_, to=to, out_dir=out_dir, log=log)
    if json_out:
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
        return 0
    print_summary(a, doc, out)
    return 0


def print_summary(a: Analysis, doc: dict[str, Any], out: Path) -> None:
    """The report's summary lines on stdout (``accelmon report``, ``accelmon demo``)."""
    s = doc["summary"]
    share = s["underutilized_share"]
    print(f"window      {a.window.start:%Y-%m-%d %H:%M} – {a.window.end:%Y-%m-%d %H:%M} UTC ({a.window.label})")
    print(f"GPUs        {s['gpus']}: {s['underutilized']} underutilized"
          f"{f' ({100 * share:.0f} %)' if share is not None else ''}, {s['insufficient_data']} insufficient data"
          + (f", {s['mig_unreported']} MIG (utilization not reported)" if s["mig_unreported"] else ""))
    print(f"idle        {s['idle_gpu_hours']:,.0f} GPU-hours, {s['idle_energy_kwh']:,.1f} kWh")
    print(f"NUMA        {s['numa_misaligned_vms']} misaligned VM(s); vMotion: {s['vmotion_flagged']} flagged "
          f"of {s['vmotion_migrations']}")
    print(f"plan        {s['plan_steps']} step(s) free {s['plan_frees_gpus']} GPU(s); {s['plan_frees_hosts']} "
          f"emptied host(s) save {s['plan_kwh_month_saved']:,.0f} kWh/month; {s['plan_freed_capacity_gpus']} GPU(s) "
          "of capacity in hosts that stay on")
    c = doc.get("cost") or {}
    t = c.get("total") or {}
    if t:  # analytics/cost.py: NULL where unpriced, never 0
        idle_cost = "unpriced" if t.get("idle_cost") is None else f"{t['idle_cost']:,.2f} {c['currency']}"
        print(f"idle cost   {idle_cost} over the window ({t.get('unpriced_gpus', 0)} GPU(s) without a price); "
              f"by team, owner and VM in the report")
    print(f"report      {out / 'report.html'}")
