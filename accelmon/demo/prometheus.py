"""Run the real Prometheus server (Debian's ``/usr/bin/prometheus``) against accelmon.

Used by the tests (tests/prometheus, tests/daemon) and usable by ``accelmon demo``: a
generated config scraping the given targets, a temporary storage dir, a free loopback
port, and a stop that kills exactly the process it started (by pid).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_prometheus() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )


def find_promtool() -> str | None:
    return shutil.which("promtool") or ("/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None)


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    def __init__(
        self,
        targets: Sequence[str] = (),
        *,
        scrape_interval: str = "1s",
        workdir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        job: str = "accelmon",
        binary: str | None = None,
    ) -> None:
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.job = job
        self.binary = binary or find_prometheus()
        if self.binary is None:
            raise PrometheusError("prometheus binary not found (Debian package `prometheus`)")
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="accelmon-prom-"))
        self.data_dir = self.dir / "data"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        hostports = [urllib.parse.urlparse(t).netloc if "://" in t else t for t in self.targets]
        paths = {urllib.parse.urlparse(t).path or "/metrics" for t in self.targets if "://" in t}
        cfg = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "scrape_interval": self.scrape_interval,
                    "scrape_timeout": self.scrape_interval,
                    "metrics_path": paths.pop() if len(paths) == 1 else "/metrics",
                    "static_configs": [{"targets": hostports}],
                }
            ],
        }
        path = self.dir / "prometheus.yml"
        path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
        return path

    def start(self, timeout_s: float = 30.0) -> PrometheusServer:
        for attempt in range(3):
            try:
                return self._start(timeout_s)
            except PrometheusError as e:
                # another process took the free port between our probe and Prometheus' bind
                if "address already in use" not in str(e) or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout_s: float) -> PrometheusServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        cfg = self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=30d",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP API
    def api(self, path: str, **params: Any) -> Any:
        q = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=30) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        return self.api("query", query=expr, time=at)["result"]  # type: ignore[no-any-return]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]  # type: ignore[no-any-return]

    def targets_health(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]  # type: ignore[no-any-return]

    def wait_for(
        self, expr: str, pred: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 30.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        res: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            res = self.query(expr)
            if pred(res):
                return res
            time.sleep(0.5)
        try:  # why: a target that is down or too slow for scrape_timeout is the usual cause
            targets = "; ".join(f"{t.get('scrapeUrl')} {t.get('health')} {t.get('lastError') or ''}".strip()
                                for t in self.targets_health())
        except (OSError, ValueError, KeyError, PrometheusError) as e:
            targets = f"(targets unavailable: {e})"
        raise PrometheusError(f"timed out waiting for {expr}: last result {res}; targets: {targets}; "
                              f"log: {self.log_tail(500)}")


def create_blocks_from_openmetrics(text: str, data_dir: str | os.PathLike[str]) -> None:
    """Backfill history into a (stopped) Prometheus data dir with ``promtool tsdb
    create-blocks-from openmetrics`` - how the backfill tests get days of DCGM series."""
    tool = find_promtool()
    if tool is None:
        raise PrometheusError("promtool not found (Debian package `prometheus`)")
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".om", delete=False) as f:
        f.write(text)
        name = f.name
    try:
        r = subprocess.run(
            [tool, "tsdb", "create-blocks-from", "openmetrics", name, str(data_dir)],
            capture_output=True, text=True, timeout=300,
        )
        if r.returncode != 0:
            raise PrometheusError(f"promtool create-blocks-from failed: {r.stderr[-1000:]}")
    finally:
        os.unlink(name)


def check_metrics(text: bytes | str) -> tuple[int, str]:
    """``promtool check metrics`` on an exposition: (exit code, output)."""
    tool = find_promtool()
    if tool is None:
        raise PrometheusError("promtool not found (Debian package `prometheus`)")
    data = text.encode() if isinstance(text, str) else text
    r = subprocess.run([tool, "check", "metrics"], input=data, capture_output=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) for every sample of an exposition."""
    return [(s.name, dict(s.labels), float(s.value)) for f in text_string_to_metric_families(text) for s in f.samples]
