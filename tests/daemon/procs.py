"""Real processes for the daemon tests: simulated agents (`accelmon agent --simulate`), the daemon
(`accelmon run`), and deliberately broken agent endpoints. Every process is stopped by its pid."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from accelmon.demo.prometheus import free_port

CLI = [sys.executable, "-c", "import sys; from accelmon.cli import main; sys.argv[0] = 'accelmon'; main()"]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """A tiny TOML writer (top-level keys, tables, arrays of tables) for generated configs."""
    lines: list[str] = []
    for k, v in data.items():
        if not isinstance(v, dict | list) or (isinstance(v, list) and not any(isinstance(x, dict) for x in v)):
            lines.append(f"{k} = {toml_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
            for item in v:
                lines.append(f"\n[[{k}]]")
                lines += [f"{kk} = {toml_value(vv)}" for kk, vv in item.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_until(pred: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except RuntimeError:  # the process under test died: no point waiting
            raise
        except Exception as e:  # noqa: BLE001 - keep polling
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def stop(p: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
    if p is None or p.poll() is not None:
        return None if p is None else p.returncode
    os.kill(p.pid, sig)
    try:
        return p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        return p.wait(timeout=10)


class Agent:
    """`accelmon agent --simulate <spec>` on a loopback port."""

    def __init__(self, tmp: Path, name: str, *, bios_uuid: str, gpus: list[dict[str, Any]],
                 token: str | None = None, hostname: str | None = None, port: int | None = None) -> None:
        self.dir = tmp / f"agent-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        # the seed makes the simulated GPU UUIDs differ between agents
        seed = int(bios_uuid.replace("-", "")[-8:], 16) % 100_000 + 1
        self.spec = write_toml(self.dir / "spec.toml", {"vm_bios_uuid": bios_uuid, "seed": seed,
                                                          "hostname": hostname or name, "gpu": gpus})
        cfg: dict[str, Any] = {"agent": {"poll_interval": 0.5}}
        if token:
            cfg["agent"]["token"] = token
        self.config = write_toml(self.dir / "agent.toml", cfg)
        self.log = self.dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = token

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self) -> Agent:
        for attempt in range(3):
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [*CLI, "--config", str(self.config), "agent", "--simulate", str(self.spec),
                     "--listen", f"127.0.0.1:{self.port}"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            try:
                wait_until(self._ready, 30, f"agent {self.url}")
                return self
            except RuntimeError as e:  # the free port was taken meanwhile by another process
                if "in use" not in str(e).lower() or attempt == 2:
                    raise
                self.port = free_port()
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"agent exited: {self.log.read_text()[-2000:]}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop(self.proc, sig)
        self.proc = None


class Daemon:
    """`accelmon --config … --data-dir … run` with its stderr in a log file."""

    def __init__(self, tmp: Path, cfg: dict[str, Any], data_dir: Path, name: str = "daemon") -> None:
        self.cfg = cfg
        self.config = tmp / f"{name}.toml"
        self._write_config()
        self.data_dir = data_dir
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ)

    def _write_config(self) -> None:
        self.port = free_port()
        write_toml(self.config, {**self.cfg, "exporter": {**self.cfg.get("exporter", {}),
                                                          "listen": f"127.0.0.1:{self.port}"}})

    def start(self) -> Daemon:
        for attempt in range(3):
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [*CLI, "--config", str(self.config), "--data-dir", str(self.data_dir), "run"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env,
                )
            try:
                wait_until(self._ready, 60, "daemon /metrics")
                return self
            except RuntimeError as e:  # the free port was taken meanwhile by another process
                if "cannot listen" not in str(e) or attempt == 2:
                    raise
                self._write_config()
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        return bool(self.metrics())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return r.read().decode()

    def value(self, name: str, **labels: str) -> float | None:
        """One sample of /metrics (labels must all match), or None."""
        from accelmon.demo.prometheus import parse_samples

        for n, lab, v in parse_samples(self.metrics()):
            if n == name and all(lab.get(k) == val for k, val in labels.items()):
                return v
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        rc = stop(self.proc, sig, timeout_s)
        self.proc = None
        return rc


class BadAgent:
    """An endpoint that misbehaves: ``garbage`` (200 with nonsense), ``hang`` (accepts, never
    answers), ``huge`` (claims and streams a 2 GB body)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self._stop = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                outer.requests += 1
                if outer.mode == "garbage":
                    body = b"\x00\xffthis is { not prometheus text\n\x01\x02" * 50
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif outer.mode == "hang":
                    outer._stop.wait(60)
                elif outer.mode == "huge":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(2 << 30))
                    self.end_headers()
                    chunk = (b'accelmon_gpu_busy_seconds_total{UUID="GPU-x"} 1\n' * 1400)[:65536]
                    sent = 0
                    try:
                        while sent < (2 << 30) and not outer._stop.is_set():
                            self.wfile.write(chunk)
                            sent += len(chunk)
                    except OSError:
                        return

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def start(self) -> BadAgent:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
