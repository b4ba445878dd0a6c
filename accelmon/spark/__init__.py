"""The same analysis on Apache Spark (optional extra ``accelmon[spark]``): docs/spark.md.

Nothing here imports pyspark at module level except the modules that need it at run time
(``session``, ``intervals``, ``figures``, ``rollup``, ``verdict``); ``accelmon spark …`` imports them
only when called, so accelmon works without the extra. Entry points: ``accelmon spark rollup|report``
and ``spark-submit -m accelmon.spark.job`` (the same arguments).
"""
