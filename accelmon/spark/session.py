"""SparkSession and reading the store's tables as Spark DataFrames.

The store's tables are hive-partitioned Parquet: ``<root>/tables/<table>/date=<day>/*.parquet``
and, with sharded writers, ``<root>/tables/<table>/shard=<name>/date=<day>/*.parquet``. Both
layouts are read (whichever globs match) with the table directory as ``basePath``, so ``date``
(and ``shard``) become columns as DuckDB's ``hive_partitioning`` makes them. The root may be any
Hadoop file system URL Spark can read (``file:///…``, ``hdfs://…``, ``s3a://…``).
"""

from __future__ import annotations

import os
from typing import Any

from accelmon.errors import UserError

LAYOUTS = ("date=*/*.parquet", "shard=*/date=*/*.parquet")


def require_pyspark() -> Any:
    """The pyspark module, or a UserError saying how to get it."""
    try:
        import pyspark  # lazy: optional extra (accelmon[spark]), imported only when a Spark verb runs
    except ModuleNotFoundError:
        raise UserError("spark: pyspark is not installed: pip install 'accelmon[spark]' "
                        "(and Java 17: apt-get install openjdk-17-jre-headless); see docs/spark.md") from None
    return pyspark


def build_session(master: str = "local[2]", app_name: str = "accelmon", conf: dict[str, str] | None = None) -> Any:
    """A SparkSession in UTC (the store's timestamps are UTC instants). ``conf`` adds/overrides settings."""
    require_pyspark()
    from pyspark.sql import SparkSession  # lazy: optional extra (see require_pyspark)

    b = SparkSession.builder.master(master).appName(app_name)
    base = {
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "8",
        # Parquet TIMESTAMP(MILLIS, UTC) columns read as instants
        "spark.sql.parquet.int96RebaseModeInRead": "CORRECTED",
        "spark.sql.parquet.datetimeRebaseModeInRead": "CORRECTED",
    }
    for k, v in {**base, **(conf or {})}.items():
        b = b.config(k, v)
    try:
        spark = b.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        return spark
    except Exception as e:  # noqa: BLE001 - no Java, bad master URL: one line, no JVM traceback
        raise UserError(f"spark: cannot start a Spark session on {master!r}: {str(e).splitlines()[0][:300]}") from None


def tables_url(root: str) -> str:
    """``<root>/tables`` as a URL (a plain path becomes ``file://``)."""
    r = root.rstrip("/")
    if "://" not in r:
        r = "file://" + os.path.abspath(r)
    return r + "/tables"


def _matching(spark: Any, pattern: str) -> bool:
    jvm = spark._jvm
    p = jvm.org.apache.hadoop.fs.Path(pattern)
    fs = p.getFileSystem(spark._jsc.hadoopConfiguration())
    st = fs.globStatus(p)
    return st is not None and len(st) > 0


def read_table(spark: Any, root: str, name: str) -> Any:
    """Every Parquet file of a table (all shards), schemas merged (older files lack newer columns)."""
    base = f"{tables_url(root)}/{name}"
    paths = [f"{base}/{lay}" for lay in LAYOUTS if _matching(spark, f"{base}/{lay}")]
    if not paths:
        raise UserError(f"spark: {base}: no Parquet files of table {name!r} (is this an accelmon data dir?)")
    return spark.read.option("basePath", base).option("mergeSchema", "true").parquet(*paths)
