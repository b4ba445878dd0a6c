"""Shared by the benches: run `accelmon agent --simulate SPEC` as its own process and find its URL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def running_agent(spec: str, data_dir: str | Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Yield (process, /metrics URL) of a simulated agent on a free loopback port; SIGTERM at exit."""
    code = "from accelmon.cli import main; main()"
    env = {**os.environ, "ACCELMON_DATA_DIR": str(data_dir)}
    p = subprocess.Popen([sys.executable, "-c", code, "agent", "--simulate", spec, "--listen", "127.0.0.1:0"],
                         stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        url = None
        deadline = time.time() + 60
        while url is None and time.time() < deadline:
            line = p.stderr.readline() if p.stderr else ""
            if not line:
                break
            m = re.search(r"listening on (http://\S+/metrics)", line)
            url = m.group(1) if m else None
        if url is None:
            raise SystemExit("agent did not start")
        yield p, url
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
