"""DuckDB query → polars frame, across DuckDB versions (``.pl()`` left the connection in 2.0)."""

from __future__ import annotations

from typing import Any

import polars as pl


def frame(con: Any, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    rel = con.sql(sql, params=params) if params else con.sql(sql)
    return rel.pl()  # type: ignore[no-any-return]
