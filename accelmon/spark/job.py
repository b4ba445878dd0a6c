"""The Spark job: ``accelmon spark rollup|report`` and ``spark-submit -m accelmon.spark.job`` (same arguments).

    spark-submit --master spark://head:7077 accelmon/spark/job.py report --data-dir /mnt/accelmon --since 30d
    accelmon spark rollup --master 'local[4]' --data-dir ./accelmon-data --since 2d

``report`` computes the per-GPU window figures and the underutilized / hollow / insufficient-data /
MIG findings and appends them to ``findings`` with a run id (``accelmon report`` and the
``latest_findings`` view read them); ``rollup`` writes ``gpu_rollup_hour`` for the window's hours.
``--tables-url`` reads the tables from another URL Spark can read (``s3a://…``, ``hdfs://…``) holding
the same files; results are written into ``--data-dir`` by the store's writer on the driver.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyspark.sql import functions as F

from accelmon.analytics.window import Window, parse_time, resolve_window
from accelmon.config import load
from accelmon.errors import UserError
from accelmon.spark import rollup, verdict
from accelmon.spark.intervals import samples_in
from accelmon.spark.session import build_session, read_table
from accelmon.store.writer import Store


def window_of(spark: Any, gpu_sample: Any, since: str | None, from_: dt.datetime | None, to: dt.datetime | None,
              default_seconds: float, now: dt.datetime | None = None) -> Window:
    """The window rule of analytics/window.py, with the data range from Spark."""
    lo, hi = gpu_sample.where(F.col("date") > F.lit(dt.date(1970, 1, 1))).agg(
        F.min(F.unix_millis("ts")), F.max(F.unix_millis("ts"))).first()

    def t(ms: int | None) -> dt.datetime | None:
        return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC)

    return resolve_window(since=since, from_=from_, to=to, default_seconds=default_seconds,
                          data_first=t(lo), data_last=t(hi), now=now)


def run(command: str, *, data_dir: Path, master: str, config: Path | None = None, since: str | None = None,
        from_: dt.datetime | None = None, to: dt.datetime | None = None, tables_url: str | None = None,
        conf: dict[str, str] | None = None, spark: Any = None, now: dt.datetime | None = None,
        out: Any = None) -> int:
    """Run ``report`` or ``rollup``; ``spark``: an existing session (tests), else one on ``master``."""
    if command not in ("report", "rollup"):
        raise UserError(f"spark: unknown command {command!r} (rollup or report)")
    out = out if out is not None else sys.stdout  # looked up per call (a test runner swaps sys.stdout)
    cfg = load(config)
    store = Store(data_dir, gc_grace_seconds=cfg.retention.gc_grace)
    root = tables_url or str(store.root)
    spark = spark or build_session(master, f"accelmon-{command}", conf)
    gs = read_table(spark, root, "gpu_sample")
    w = window_of(spark, gs, since, from_, to, float(cfg.thresholds.window), now)
    if command == "rollup":
        n = rollup.write_rollups(store, gs, w.start, w.end)
        print(f"rollup      {w.start:%Y-%m-%d %H:%M} – {w.end:%Y-%m-%d %H:%M} UTC: {n} hourly row(s) written",
              file=out)
        return 0
    a = verdict.analyze(spark, root, samples_in(gs, w.start_ms, w.end_ms), w, verdict.thresholds_of(cfg.thresholds),
                        now=now, store=None if tables_url else store)
    if a.rows:
        store.append("findings", a.rows)
    kinds = {k: sum(r["kind"] == k for r in a.rows) for k in verdict.GPU_KINDS}
    print(f"window      {w.start:%Y-%m-%d %H:%M} – {w.end:%Y-%m-%d %H:%M} UTC ({w.label})", file=out)
    print(f"GPUs        {a.gpus.height}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in kinds.items()), file=out)
    print(f"findings    run {a.run_id}: {len(a.rows)} row(s) in the findings table", file=out)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="accelmon.spark.job", description="accelmon's analysis on Apache Spark "
                                "(docs/spark.md).")
    p.add_argument("command", choices=("rollup", "report"))
    p.add_argument("--data-dir", type=Path, required=True, help="the store root (results are written here)")
    p.add_argument("--master", default=None, help="Spark master URL (default: the one spark-submit gives, "
                   "else local[2])")
    p.add_argument("--config", type=Path, default=None, help="accelmon.toml (thresholds)")
    p.add_argument("--since", default=None, help='window ending at the newest sample: "7d", "all"')
    p.add_argument("--from", dest="from_", default=None, help="window start (ISO 8601)")
    p.add_argument("--to", default=None, help="window end (ISO 8601)")
    p.add_argument("--tables-url", default=None, help="read the tables from this URL (s3a://…/tables' parent)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        return run(a.command, data_dir=a.data_dir, master=a.master or "local[2]", config=a.config, since=a.since,
                   from_=parse_time(a.from_, "--from"), to=parse_time(a.to, "--to"), tables_url=a.tables_url)
    except UserError as e:
        print(f"accelmon: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
