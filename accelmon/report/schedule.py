"""The daily report job for the daemon's APScheduler (cron from ``report.cron``, UTC)."""

from __future__ import annotations

import logging
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from accelmon.errors import UserError
from accelmon.report.cli import generate

log = logging.getLogger(__name__)
JOB_ID = "report"


_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def cron_dow(field: str) -> str:
    """Cron day-of-week (0 or 7 = Sunday) → APScheduler names. APScheduler 3 counts 0 = Monday,
    and its ``from_crontab`` passes numbers through, so "1-5" would mean Tuesday to Saturday."""
    out: list[str] = []
    for tok in field.split(","):
        tok = tok.strip().lower()
        rng, _, step_s = tok.partition("/")
        step = int(step_s) if step_s else 1
        if rng == "*":
            a, b = 0, 6
        elif "-" in rng:
            x, y = rng.split("-", 1)
            if not (x.isdigit() and y.isdigit()):
                out.append(tok)  # names (mon-fri) mean the same in both
                continue
            a, b = int(x), int(y)
        elif rng.isdigit():
            a = b = int(rng)
            if step_s:
                b = 6
        else:
            out.append(tok)
            continue
        if not (0 <= a <= 7 and 0 <= b <= 7 and a <= b):
            raise ValueError(f"day of week out of range: {tok}")
        out += [_DAYS[d % 7] for d in range(a, b + 1, step)]
    return ",".join(dict.fromkeys(out))


def trigger(cron: str) -> CronTrigger:
    try:
        minute, hour, dom, month, dow = cron.split()
        return CronTrigger(minute=minute, hour=hour, day=dom, month=month, day_of_week=cron_dow(dow),
                           timezone="UTC")
    except ValueError as e:
        raise UserError(f'report.cron: not a valid cron expression "{cron}": {e}') from None


def report_job(store: Any, cfg: Any) -> None:
    try:
        a, _doc, out = generate(store, cfg)
        log.info("report written to %s (%d GPUs, %d underutilized)", out, a.gpus.height,
                 int((a.gpus["status"] == "underutilized").sum()))
    except Exception:  # the daemon keeps running; the next day tries again
        log.exception("daily report failed")


def add_report_job(scheduler: Any, store: Any, cfg: Any) -> Any | None:
    """Add the daily report (cron ``cfg.report.cron``, keeps ``cfg.report.keep``); None when disabled."""
    if not cfg.report.enabled:
        return None
    return scheduler.add_job(
        report_job, trigger(cfg.report.cron), args=[store, cfg], id=JOB_ID, name="daily report",
        replace_existing=True, max_instances=1, coalesce=True, misfire_grace_time=3600,
    )
