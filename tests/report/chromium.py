"""Drive Debian's headless Chromium over the DevTools protocol: load a page, collect console
errors, inspect the DOM, take a full-page screenshot."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket  # websocket-client (dev extra)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--remote-allow-origins=*",
]


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)
    value: Any = None
    screenshot: bytes | None = None


class Chromium:
    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="accelmon-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.tmp}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        url = None
        deadline = time.monotonic() + 60
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                url = m.group(1)
                break
        if url is None:
            self.close()
            raise RuntimeError("chromium did not start (no DevTools URL)")
        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            r = json.loads(self.ws.recv())
            if r.get("id") == self._id:
                if "error" in r:
                    raise RuntimeError(f"{method}: {r['error']}")
                return r.get("result", {})
            self.events.append(r)

    def wait_event(self, name: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e.get("method") == name:
                return self.events.pop(i)
        while time.monotonic() < deadline:
            r = json.loads(self.ws.recv())
            if r.get("method") == name:
                return r
            self.events.append(r)
        raise TimeoutError(name)

    def load(self, path: Path, expression: str, width: int = 1280, screenshot: bool = True) -> PageResult:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for dom in ("Page", "Runtime", "Log"):
            self.send(f"{dom}.enable", session=s)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=s)
        self.send("Page.navigate", {"url": path.absolute().as_uri()}, session=s)
        self.wait_event("Page.loadEventFired")
        time.sleep(0.3)  # late console messages
        res = PageResult()
        res.value = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                              session=s)["result"].get("value")
        if screenshot:
            h = self.send("Runtime.evaluate", {"expression": "document.documentElement.scrollHeight",
                                               "returnByValue": True}, session=s)["result"]["value"]
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": int(h), "deviceScaleFactor": 1, "mobile": False}, session=s)
            shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=s)
            res.screenshot = base64.b64decode(shot["data"])
        # drain anything still queued without blocking
        self.ws.settimeout(0.5)
        try:
            while True:
                self.events.append(json.loads(self.ws.recv()))
        except (websocket.WebSocketTimeoutException, TimeoutError):
            pass
        finally:
            self.ws.settimeout(60)
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                res.errors.append("console." + p["type"] + ": " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                res.errors.append("exception: " + d.get("text", "") + " " + d.get("exception", {}).get("description", ""))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                res.errors.append("log: " + p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        self.events.clear()
        self.send("Target.closeTarget", {"targetId": target})
        return res

    def close(self) -> None:
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.tmp, ignore_errors=True)


CHARTS_JS = """(() => {
  const imgs = Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,
      w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width,
      svg: i.src.startsWith('data:image/svg+xml')}));
  const svgs = Array.from(document.querySelectorAll('svg')).map(s => s.getBBox().width);
  return {imgs, svgs, h2: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
          external: Array.from(document.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') || e.getAttribute('href'))
                    .filter(u => !u.startsWith('data:') && !u.startsWith('#'))};
})()"""


def available() -> bool:
    return os.path.exists(CHROMIUM)
