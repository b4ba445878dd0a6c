"""The demo's child processes: started in their own session, stopped by pid, logs to files."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

_KEEP_ENV = {"ACCELMON_CACHE_DIR", "ACCELMON_GOPATH"}


def _die_with_parent() -> None:  # in the child, between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_env() -> dict[str, str]:
    """The environment without the user's ACCELMON_* overrides (the demo writes its own config)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ACCELMON_") or k in _KEEP_ENV}


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int, host: str = "127.0.0.1") -> int:
    """The well-known port when it is free (stable URLs for a person), else any free one."""
    if port_free(preferred, host):
        return preferred
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Child:
    """One child process. ``stop`` sends SIGTERM to exactly this pid, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log: Path, *, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        main = threading.current_thread() is threading.main_thread()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env(),
                cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent if main else None,
            )
        self.pid = self.proc.pid

    @classmethod
    def python(cls, name: str, args: list[str], log: Path, **kw: object) -> Child:
        return cls(name, [sys.executable, *args], log, **kw)  # type: ignore[arg-type]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode
