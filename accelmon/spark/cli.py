"""``accelmon spark rollup|report``: a thin verb over accelmon/spark/job.py (pyspark imported only when run)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from accelmon.analytics.window import parse_time
from accelmon.errors import UserError

spark_app = typer.Typer(help="The same analysis on Apache Spark (needs the optional extra 'spark' and Java 17; docs/spark.md).",
                        no_args_is_help=True)

Master = Annotated[str, typer.Option("--master", help="Spark master URL: local[N], spark://host:7077, yarn, "
                                     "k8s://https://api:6443.")]
Since = Annotated[str | None, typer.Option("--since", help='Window ending at the newest sample: "7d", "all" '
                                           "(default: thresholds.window).")]
From = Annotated[str | None, typer.Option("--from", help="Window start (ISO 8601).")]
To = Annotated[str | None, typer.Option("--to", help="Window end (ISO 8601).")]
TablesUrl = Annotated[str | None, typer.Option("--tables-url", help="Read the tables from this URL instead of the "
                                               "data dir (s3a://bucket/accelmon, hdfs://…: the same files).")]


def _root_params(ctx: typer.Context) -> dict[str, Any]:
    """The global options (--data-dir, --config) given to ``accelmon`` itself."""
    return dict(ctx.find_root().params)


def _run(ctx: typer.Context, command: str, master: str, since: str | None, from_: str | None, to: str | None,
         tables_url: str | None) -> None:
    if since is not None and (from_ or to):
        raise UserError("--since cannot be combined with --from/--to")
    p = _root_params(ctx)
    data_dir = p.get("data_dir") or Path(os.environ.get("ACCELMON_DATA_DIR", "./accelmon-data"))
    from accelmon.spark.session import require_pyspark  # lazy: the spark package is optional; the CLI loads it per verb

    require_pyspark()  # before importing the job, which needs pyspark: one clear line if it is missing
    job = importlib.import_module("accelmon.spark.job")
    raise typer.Exit(job.run(command, data_dir=Path(data_dir), master=master, config=p.get("config"), since=since,
                             from_=parse_time(from_, "--from"), to=parse_time(to, "--to"), tables_url=tables_url))


@spark_app.command()
def rollup(ctx: typer.Context, master: Master = "local[2]", since: Since = None, from_: From = None, to: To = None,
           tables_url: TablesUrl = None) -> None:
    """Write hourly per-GPU rollups (gpu_rollup_hour) for the window's hours; re-running replaces them."""
    _run(ctx, "rollup", master, since, from_, to, tables_url)


@spark_app.command()
def report(ctx: typer.Context, master: Master = "local[2]", since: Since = None, from_: From = None, to: To = None,
           tables_url: TablesUrl = None) -> None:
    """Per-GPU figures and the underutilized / hollow / insufficient-data findings, stored with a run id."""
    _run(ctx, "report", master, since, from_, to, tables_url)
