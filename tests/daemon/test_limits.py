"""The daemon raises its open-files limit: one kept-alive connection per agent (2,000 agents)
does not fit a systemd service's default soft limit of 1,024."""

from __future__ import annotations

import subprocess
import sys


def test_soft_open_files_limit_is_raised_towards_the_hard_one() -> None:
    code = (
        "import resource\n"
        "from accelmon.daemon.main import raise_fd_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "before, after = raise_fd_limit(4096)\n"
        "now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "print(before, after, now, hard)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    before, after, now, hard = (int(x) for x in out.stdout.split())
    assert before == 256
    assert now == after == (4096 if hard < 0 or hard >= 4096 else hard)
