"""Running the real ``accelmon import-trace`` in a subprocess and looking at the store it left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelmon.store import Store


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ACCELMON_")}
    e.update(extra)
    return e


def run_import(data: Path, *files: Path | str, extra_env: dict[str, str] | None = None,
               preexec: Callable[[], None] | None = None, force: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "accelmon.cli", "--data-dir", str(data), "import-trace",
           *(["--force"] if force else []), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(**(extra_env or {})), timeout=300,
                          input="", preexec_fn=preexec)


def start_import(data: Path, file: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "accelmon.cli", "--data-dir", str(data), "import-trace", str(file)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(**(extra_env or {})))


def rows(data: Path, sql: str = "SELECT count(*) FROM gpu_sample") -> Any:
    con = Store(data).connect()
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def distinct_keys(data: Path) -> int:
    return int(rows(data, "SELECT count(*) FROM (SELECT DISTINCT gpu_uuid, ts FROM gpu_sample)"))


def snapshot(data: Path) -> dict[str, Any]:
    """What a reader or a later import can see: every data file (by path, size), every partition
    link, the import log. Lock files are not state."""
    files = {}
    for p in sorted((data / ".gen").rglob("*")):
        if p.is_file() and not p.name.endswith(".lock"):
            files[str(p.relative_to(data))] = p.stat().st_size
    links = {str(p.relative_to(data)): os.readlink(p) for p in sorted((data / "tables").rglob("*")) if p.is_symlink()}
    log = data / "state" / "imports.json"
    return {"files": files, "links": links, "log": json.loads(log.read_text()) if log.exists() else None}


def write_trace(path: Path, rows_: list[tuple[Any, ...]], header: str = "timestamp,gpu,util_percent") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows_))
    return path


def grid(n_gpus: int, steps: int, t0: int = 1_796_400_000, step_s: int = 10) -> list[tuple[int, str, int]]:
    """A regular trace: every GPU every ``step_s`` seconds, utilization a function of (gpu, step)."""
    return [(t0 + s * step_s, f"gpu-{g:02d}", (7 * s + 13 * g) % 101) for s in range(steps) for g in range(n_gpus)]
