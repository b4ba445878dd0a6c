"""``accelmon agent``: run the guest agent (real NVML, or the simulated one with ``--simulate``)."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from accelmon.collector.agent import nvmlerr
from accelmon.collector.agent.agent import Agent
from accelmon.collector.agent.identity import VmIdentity, normalize_uuid, read_vm_identity, swap_uuid_bytes
from accelmon.collector.agent.metrics import make_registry, render
from accelmon.collector.agent.server import AgentHTTPServer, TokenSource

from accelmon import webconfig
from accelmon.config import Config
from accelmon.errors import UserError
from accelmon.httpserver import ServerLimits

log = logging.getLogger("accelmon.agent")


def open_backend(simulate: str | None) -> tuple[Any, Any, str]:
    """(nvml module-like object, clock or None, backend name)."""
    if simulate is None:
        import pynvml

        return pynvml, None, "nvml"
    from accelmon.sim.nvml import SimNVML

    sim = SimNVML(simulate)
    return sim, sim.clock, f"simulated:{sim.spec.name}"


def _init_error(e: Exception) -> UserError:
    code = nvmlerr.code_of(e)
    import pynvml

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


def _vm_identity(sim: Any) -> VmIdentity | None:
    """A simulation spec may set the VM identity (the demo joins simulated agents to vcsim VMs)."""
    spec = getattr(sim, "spec", None)
    raw = getattr(spec, "vm_bios_uuid", None)
    host = getattr(spec, "hostname", None)
    uuid = normalize_uuid(raw)
    if raw is not None and uuid is None:
        raise UserError(f"simulation spec: vm_bios_uuid: not a UUID: {raw!r}")
    if uuid is not None:
        return VmIdentity(host or socket.gethostname(), uuid, swap_uuid_bytes(uuid), "simulated")
    return read_vm_identity(hostname=host) if host else None


def build_agent(cfg: Config, simulate: str | None, *, count_history: bool = False) -> Agent:
    nv, clock, backend = open_backend(simulate)
    a = cfg.agent
    agent = Agent(
        nv,
        clock=clock,
        poll_interval=a.poll_interval,
        per_process=a.per_process,
        sysfs_root=None if simulate else "/sys",
        backend=backend,
        count_history=count_history,
        vm_identity=_vm_identity(nv) if simulate else None,
    )
    try:
        agent.start()
    except Exception as e:
        from pynvml import NVMLError

        if isinstance(e, NVMLError):
            raise _init_error(e) from None
        raise
    return agent


def run_agent(cfg: Config, *, simulate: str | None = None, listen: str | None = None, once: bool = False,
              web_config_file: Path | None = None) -> int:
    """Run the agent until SIGINT/SIGTERM (exit 0); ``once`` polls once and prints the metrics.
    ``web_config_file`` (``--web.config.file``) wins over ``agent.web_config_file``."""
    web_config_file = web_config_file or cfg.agent.web_config_file
    if web_config_file is not None and not once:
        webconfig.load(web_config_file)  # a bad file fails before NVML is opened
    agent = build_agent(cfg, simulate, count_history=once)
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
