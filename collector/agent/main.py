"""``accelmon agent``: run the guest agent over NVML, or over another :class:`Backend`.

The simulated NVML (``accelmon agent --simulate``) is test/demo support: it lives in
:mod:`accelmon.sim` and is wrapped into a :class:`Backend` by :mod:`accelmon.demo.simnvml`, so this
product module never imports the simulator (import-linter contract in pyproject.toml)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml
from pynvml import NVMLError

from accelmon import webconfig
from accelmon.collector.agent import nvmlerr
from accelmon.collector.agent.agent import Agent
from accelmon.collector.agent.identity import VmIdentity
from accelmon.collector.agent.metrics import make_registry, render
from accelmon.collector.agent.server import AgentHTTPServer, TokenSource
from accelmon.config import Config
from accelmon.errors import UserError
from accelmon.httpserver import ServerLimits

log = logging.getLogger("accelmon.agent")


@dataclass(frozen=True)
class Backend:
    """What the agent reads: the ``pynvml`` module, or an object with the same functions, names,
    units and error codes (the simulated NVML) with its clock and the VM identity it sets."""

    nvml: Any
    name: str = "nvml"
    clock: Any = None  # None: wall clock
    sysfs_root: str | None = "/sys"  # where PCIe/NUMA facts are read; None for a simulated guest
    vm_identity: VmIdentity | None = None  # None: read from the guest's SMBIOS


NVML = Backend(pynvml)  # the real library (libnvidia-ml.so.1 through nvidia-ml-py)


def _init_error(e: Exception) -> UserError:
    code = nvmlerr.code_of(e)
    if code == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
        return UserError("NVML library (libnvidia-ml.so.1) not found: install the NVIDIA driver in this guest, "
                         "or run with --simulate to use the simulated NVML")
    if code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return UserError("NVML: the NVIDIA kernel driver is not loaded (is there a GPU in this VM? check `nvidia-smi`)")
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return UserError("NVML: no permission to open the GPU devices (/dev/nvidia*); run the agent as a user that may")
    if code == pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return UserError("NVML: library and kernel driver versions differ (driver upgraded without reboot?)")
    return UserError(f"NVML initialisation failed: {nvmlerr.name_of(code)}")


def build_agent(cfg: Config, backend: Backend = NVML, *, count_history: bool = False) -> Agent:
    a = cfg.agent
    agent = Agent(
        backend.nvml,
        clock=backend.clock,
        poll_interval=a.poll_interval,
        per_process=a.per_process,
        sysfs_root=backend.sysfs_root,
        backend=backend.name,
        count_history=count_history,
        vm_identity=backend.vm_identity,
    )
    try:
        agent.start()
    except NVMLError as e:
        raise _init_error(e) from None
    return agent


def run_agent(cfg: Config, *, backend: Backend = NVML, listen: str | None = None, once: bool = False,
              web_config_file: Path | None = None) -> int:
    """Run the agent until SIGINT/SIGTERM (exit 0); ``once`` polls once and prints the metrics.
    ``web_config_file`` (``--web.config.file``) wins over ``agent.web_config_file``."""
    web_config_file = web_config_file or cfg.agent.web_config_file
    if web_config_file is not None and not once:
        webconfig.load(web_config_file)  # a bad file fails before NVML is opened
    agent = build_agent(cfg, backend, count_history=once)
    if once:
        try:
            agent.poll_once()
            sys.stdout.write(render(make_registry(agent)).decode())
            sys.stdout.flush()
        finally:
            agent.close()
        return 0
    a = cfg.agent
    token = a.token.get_secret_value() if a.token is not None else None
    try:
        server = AgentHTTPServer(
            agent,
            listen or a.listen,
            tokens=TokenSource(token, a.token_file),
            tls_cert=a.tls_cert,
            tls_key=a.tls_key,
            web_config_file=web_config_file,
            limits=ServerLimits(backlog=a.backlog, idle_timeout_s=a.idle_timeout, max_connections=a.max_connections),
        )
    except BaseException:
        agent.close()
        raise
    agent.poll_once()
    agent.start_polling()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t = server.serve_in_thread()
    log.info("serving %s/metrics (poll every %gs, %d GPU(s), %s)", server.url, a.poll_interval,
             len(agent.slots), agent.backend)
    print(f"accelmon agent listening on {server.url}/metrics", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        server.shutdown()
        server.server_close()
        t.join(timeout=5)
        agent.close()
    log.info("agent stopped")
    return 0
