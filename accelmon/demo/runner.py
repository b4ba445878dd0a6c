"""``accelmon demo``: a simulated GPU estate end to end, in one command.

1. builds (cached) and starts the seeded vCenter simulator,
2. starts simulated guest agents for its GPU VMs (plus one workstation vCenter does not know),
3. polls vCenter and the agents once (inventory, placement, NUMA facts, vMotions),
4. backfills a week of history in accelerated simulated time (accelmon.demo.backfill),
5. writes the report,
6. starts the daemon (``accelmon run``) and Prometheus (with accelmon's alert rules),
7. prints where to look, and runs until Ctrl-C/SIGTERM or ``--duration`` seconds; then stops
   every process it started, by pid.

``ACCELMON_DEMO_BIND=0.0.0.0`` makes the daemon's /metrics listen on all interfaces (the
container image uses it so the compose Prometheus can scrape it); the default is loopback.

Everything lives under the data dir: the store, ``report/``, and ``demo/`` (config, agent
specs, logs, ``demo.json`` with the URLs, ``estate.json``: the simulator's manifest, i.e. the
seeded estate as placed when the report was written). A data dir the demo did not create is refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
import traceback
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

from accelmon.config import load
from accelmon.demo import costmail
from accelmon.demo.backfill import backfill
from accelmon.demo.estate import AgentPlan, plan_agents, write_specs
from accelmon.demo.procs import Child, pick_port
from accelmon.demo.prometheus import PrometheusServer, find_prometheus
from accelmon.demo.ui import Display
from accelmon.errors import UserError
from accelmon.report.cli import generate, print_summary
from accelmon.sim.vcsim import Vcsim, build
from accelmon.store.writer import Store

log = logging.getLogger("accelmon.demo")

MARKER = ".accelmon-demo"
HISTORY_DAYS = 7
# GPU VMs: one in nine, but at least the simulator's 15 scripted ones (every NUMA, vGPU and
# consolidation case; accelmon/sim/vcsim/estate.go, `forced`)
SCRIPTED_GPU_VMS = 15
AGENTS_PER_PROCESS = 16
DAEMON_PORT = 9836
PROMETHEUS_PORT = 9090
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "accelmon.rules.yml"
SQL_EXAMPLE = ("SELECT gpu_uuid, day, round(mean_util_percent, 1) AS util FROM gpu_utilization_daily "
               "ORDER BY day DESC, util LIMIT 10")


class _Stop(Exception):
    """Ctrl-C or SIGTERM arrived."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def demo_gpu_vm_ratio(vms: int) -> float:
    """Share of GPU VMs in the demo estate: 1/9, but at least SCRIPTED_GPU_VMS of them."""
    return min(1.0, max(1 / 9, SCRIPTED_GPU_VMS / vms))


def prepare_data_dir(data_dir: Path) -> None:
    """An empty or missing dir becomes a demo dir; a previous demo's dir is wiped; anything else is refused."""
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"{data_dir}: not a directory")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        if not (data_dir / MARKER).exists():
            raise UserError(f"{data_dir}: holds data the demo did not write; give the demo an empty or new "
                            f"--data-dir (e.g. --data-dir ./accelmon-demo)")
        for p in data_dir.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("written by `accelmon demo`; the next demo run wipes this directory\n")


def _toml_str(v: object) -> str:
    return json.dumps(str(v))


def daemon_config(sim: Any, agent_urls: list[str], password_file: Path, listen: str, extra: str = "") -> str:
    return "\n".join([
        "# accelmon demo: the daemon's config (generated)",
        'log_level = "info"',
        "[[vcenter]]",
        'name = "vc-demo"',
        f"url = {_toml_str(sim.url)}",
        f"user = {_toml_str(sim.user)}",
        f"password_file = {_toml_str(password_file)}",
        f"ca_bundle = {_toml_str(sim.ca_file)}" if sim.ca_file else "verify_tls = false",
        'inventory_interval = "15s"',
        'perf_interval = "20s"',
        'events_interval = "10s"',
        "[agents]",
        "# the estate's guest IPs are simulated (10.x); the agents listen on loopback instead",
        "discovery = false",
        "static = [" + ", ".join(_toml_str(u) for u in agent_urls) + "]",
        'scrape_interval = "5s"',
        "[intervals]",
        'flush = "2s"',
        "[report]",
        "enabled = false  # the demo writes the report itself",
        "[exporter]",
        f"listen = {_toml_str(listen)}",
        "",
    ]) + extra


def _wait_file(path: Path, child: Child, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        if not child.alive():
            raise UserError(f"demo: {child.name} exited during start: {child.log_tail(3)}")
        time.sleep(0.1)
    raise UserError(f"demo: {child.name} not ready after {timeout_s:.0f} s (log: {child.log})")


def _wait_http(url: str, child: Child, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise UserError(f"demo: {child.name} exited: {child.log_tail(3)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except OSError:
            time.sleep(0.2)
    raise UserError(f"demo: {child.name} does not answer at {url} after {timeout_s:.0f} s (log: {child.log})")


def _gpu_series(metrics_url: str) -> tuple[int, int]:
    """(GPU series, those carrying a VM identity - the agent↔VM join worked) on /metrics."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode(errors="replace")
    except OSError:
        return 0, 0
    lines = [ln for ln in text.splitlines() if ln.startswith("accelmon_gpu_busy_seconds_total{")]
    return len(lines), sum(1 for ln in lines if 'vm_uuid=""' not in ln)


def _joined_gpu_series(metrics_url: str) -> int:
    return _gpu_series(metrics_url)[1]


def _wait_gpus(metrics_url: str, child: Child, n: int, timeout_s: float) -> None:
    """Until the daemon has scraped every agent once (all GPUs on /metrics)."""
    deadline = time.monotonic() + timeout_s
    while _gpu_series(metrics_url)[0] < n and time.monotonic() < deadline:
        if not child.alive():
            raise UserError(f"demo: the daemon exited: {child.log_tail(3)}")
        time.sleep(0.5)


def _start_agents(plans: list[AgentPlan], work: Path, stack: ExitStack) -> dict[str, str]:
    """Agent host processes (AGENTS_PER_PROCESS agents each); returns spec name -> /metrics URL."""
    urls: dict[str, str] = {}
    waits = []
    for i in range(0, len(plans), AGENTS_PER_PROCESS):
        group = plans[i:i + AGENTS_PER_PROCESS]
        ready = work / f"agents-{i // AGENTS_PER_PROCESS}.ready.json"
        ready.unlink(missing_ok=True)
        child = Child.python(f"agents-{i // AGENTS_PER_PROCESS}",
                             ["-m", "accelmon.demo.agents", "--ready", str(ready),
                              *(str(p.spec_path) for p in group)],
                             work / "logs" / f"agents-{i // AGENTS_PER_PROCESS}.log")
        stack.callback(child.stop)
        waits.append((ready, child))
    for ready, child in waits:
        urls.update(_wait_file(ready, child, 60)["agents"])
    return urls


def run_demo(data_dir: Path, *, duration: float | None = None, vms: int = 60, mail_to: str | None = None) -> int:
    """Run the demo; returns the exit code (0 after ``duration`` seconds or a Ctrl-C once running)."""
    if vms < 10:
        raise UserError("--vms: give at least 10 (the seeded estate needs room for its GPU VMs)")
    if duration is not None and duration <= 0:
        raise UserError("--duration: must be > 0 seconds")
    costmail.check_address(mail_to)
    if find_prometheus() is None:
        raise UserError("demo: the Prometheus server was not found; install the Debian package `prometheus`")
    data_dir = data_dir.resolve()
    prepare_data_dir(data_dir)
    work = data_dir / "demo"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    state: dict[str, Any] = {"pid": os.getpid(), "ready": False, "data_dir": str(data_dir)}
    state_file = work / "demo.json"
    rc = 0
    try:
        with ExitStack() as stack, Display() as ui:
            rc = _run(data_dir, work, duration, vms, ui, stack, state, state_file, mail_to)
            for s in (signal.SIGINT, signal.SIGTERM):  # no interruptions while stopping
                signal.signal(s, signal.SIG_IGN)
            ui.note("stopping everything the demo started …")
    except _Stop as e:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        print(f"demo: stopped ({e}); all its processes are stopped", file=sys.stderr)
        rc = 0 if state.get("ready") else 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        state["exit_code"] = rc
        if work.is_dir():
            state_file.write_text(json.dumps(state, indent=1))
    return rc


def _run(data_dir: Path, work: Path, duration: float | None, vms: int, ui: Display, stack: ExitStack,
         state: dict[str, Any], state_file: Path, mail_to: str | None = None) -> int:
    ui.note("a simulated estate: vCenter simulator, simulated NVML in the agents, and a week of history "
            "generated in accelerated simulated time - no real GPU or vCenter is involved")
    with ui.step("building the vCenter simulator (Go, cached after the first time)"):
        build()
    with ui.step(f"starting the vCenter simulator ({vms} VMs)"):
        sim = Vcsim.start(vms=vms, seed=1, api_version="8.0.1.0", gpu_vm_ratio=demo_gpu_vm_ratio(vms))
        stack.callback(sim.stop)
    (work / "estate.json").write_text(json.dumps(sim.manifest, indent=1, default=str))
    password_file = work / "vcenter.password"
    password_file.touch(mode=0o600)
    password_file.write_text(sim.password + "\n")

    plans = plan_agents(sim.manifest)
    write_specs(plans, work / "agents")
    ngpus = sum(len(p.gpus) for p in plans)
    with ui.step(f"starting {len(plans)} simulated GPU agents ({ngpus} GPUs)"):
        by_spec = _start_agents(plans, work, stack)
    agent_urls = [by_spec[p.spec_path.name] for p in plans if p.spec_path is not None]

    bind = os.environ.get("ACCELMON_DEMO_BIND", "127.0.0.1")
    daemon_port = pick_port(DAEMON_PORT, bind)
    cfg_path = work / "accelmon.toml"
    cfg_path.write_text(daemon_config(sim, agent_urls, password_file, f"{bind}:{daemon_port}",
                                      costmail.COST_TOML + costmail.mail_toml(mail_to, data_dir / "mail")))
    cfg = load(cfg_path)
    cli = ["-m", "accelmon.cli", "--config", str(cfg_path), "--data-dir", str(data_dir)]
    live_start = time.time()
    with ui.step("first poll: vCenter inventory, NUMA and PCI facts, vMotions, agents"):
        once = Child.python("accelmon run --once", [*cli, "run", "--once"], work / "logs" / "first-poll.log")
        stack.callback(once.stop)
        if once.proc.wait() != 0:
            raise UserError(f"demo: the first poll failed: {once.log_tail(3)}")

    store = Store(data_dir, gc_grace_seconds=cfg.retention.gc_grace, shard=cfg.shard)
    with ui.step(f"backfilling {HISTORY_DAYS} days of history (accelerated simulated time)", total=None) as upd:
        res = backfill(store, plans, sim.manifest, start=live_start - HISTORY_DAYS * 86400, end=live_start,
                       progress=upd)
        store.compact()
    ui.note(f"backfilled {res.gpu_rows:,} GPU samples of {res.gpus} GPUs, {res.vm_power_rows:,} VM and "
            f"{res.host_power_rows:,} host power samples")

    report_dir = data_dir / "report"
    with ui.step("writing the report"):
        report_doc = _write_report(store, cfg, report_dir, ui)
    report_ok = report_doc is not None
    if report_doc is not None and mail_to:
        with ui.step(f"writing the report mail and the owner digests (dry run, .eml) for {mail_to}"):
            for line in costmail.write_mail(store, cfg, report_doc, report_dir):
                ui.note(f"mail {line}")

    with ui.step("starting the daemon and Prometheus"):
        daemon = Child.python("daemon", [*cli, "run"], work / "logs" / "daemon.log")
        stack.callback(daemon.stop)
        metrics_url = f"http://127.0.0.1:{daemon_port}/metrics"
        _wait_http(metrics_url, daemon, 60)
        _wait_gpus(metrics_url, daemon, ngpus, 30)
        prom = _DemoPrometheus([f"127.0.0.1:{daemon_port}"], scrape_interval="5s",
                               port=pick_port(PROMETHEUS_PORT), rules=RULES if RULES.is_file() else None)
        prom.start()
        stack.callback(prom.stop)

    state["report_summary"] = _report_summary(report_doc)
    if report_doc is not None and costmail.cost_line(report_doc):
        state["report_summary"] += "; " + costmail.cost_line(report_doc)
    state.update({
        "ready": True, "metrics_url": metrics_url, "prometheus_url": prom.url,
        "report": str(report_dir / "report.html") if report_ok else None, "vcenter_url": sim.url,
        "agents": agent_urls, "config": str(cfg_path), "logs": str(work / "logs"),
        "pids": {"vcsim": sim.pid, "daemon": daemon.pid, "prometheus": prom.proc.pid if prom.proc else None},
        "backfill": {"gpus": res.gpus, "gpu_rows": res.gpu_rows, "start": res.start, "end": res.end},
    })
    state_file.write_text(json.dumps(state, indent=1))
    _print_where_to_look(data_dir, state, duration)

    movers = LiveVmotions(sim, ui)
    t0 = time.monotonic()
    task = ui.countdown("running (Ctrl-C stops)" if duration is None else f"running for {duration:g} s",
                        duration)
    joined = 0
    while duration is None or time.monotonic() - t0 < duration:
        time.sleep(1.0)
        for name, child in (("daemon", daemon),):
            if not child.alive():
                raise UserError(f"demo: the {name} exited unexpectedly: {child.log_tail(3)}")
        movers.maybe(time.monotonic() - t0)
        if int(time.monotonic() - t0) % 5 == 0:
            joined = max(joined, _joined_gpu_series(metrics_url))
            state["joined_gpu_series_seen"] = joined
        ui.tick(task, time.monotonic() - t0,
                f"running: {joined} GPU series joined to their VMs on /metrics"
                + ("" if duration is None else f", {max(0.0, duration - (time.monotonic() - t0)):.0f} s left"))
    state["joined_gpu_series_seen"] = max(joined, _joined_gpu_series(metrics_url))
    return 0


class LiveVmotions:
    """DRS-style vMotions of the estate's vGPU VMs while the demo runs (the first after
    VMOTION_FIRST_S, then every VMOTION_EVERY_S): the daemon sees the events and the stun time in
    vmware.log, counts them, and only the placement info changes - the GPU and VM series go on."""

    FIRST_S = 3.0
    EVERY_S = 30.0

    def __init__(self, sim: Any, ui: Display) -> None:
        self.sim = sim
        self.ui = ui
        self.next_s = self.FIRST_S
        self.turn = 0
        hosts = {h["moref"]: h["name"] for h in sim.manifest["hosts"]}
        self.host_name = hosts
        self.vms = [v["moref"] for v in sim.manifest["vms"]
                    if v.get("power_state") == "poweredOn" and v.get("gpus")
                    and all(g["kind"] == "vgpu" for g in v["gpus"])]

    def maybe(self, elapsed_s: float) -> None:
        if not self.vms or elapsed_s < self.next_s:
            return
        self.next_s = elapsed_s + self.EVERY_S
        for _ in range(len(self.vms)):
            vm = self.vms[self.turn % len(self.vms)]
            self.turn += 1
            try:
                m = self.sim.vmotion(vm, drs=True)
            except (ValueError, OSError) as e:  # no free vGPU slot on the other hosts: try the next VM
                log.debug("vmotion %s: %s", vm, e)
                continue
            self.ui.note(f"vMotion (DRS) of {m['vm_name']}: {self.host_name.get(m['source_host'], m['source_host'])}"
                         f" -> {self.host_name.get(m['dest_host'], m['dest_host'])}, stun "
                         f"{m['stun_us'] / 1e6:.1f} s")
            return


def _write_report(store: Any, cfg: Any, out: Path, ui: Display) -> dict[str, Any] | None:
    """Analyse the backfilled week, store the run and render the report; the report's JSON
    document (its summary feeds the demo's one-line summary - no report file is read back)."""
    try:
        a, doc, written = generate(store, cfg, since=f"{HISTORY_DAYS}d", out_dir=out)
    except Exception as e:  # the demo goes on without a report; the log keeps the details
        (out.parent / "demo" / "logs" / "report.log").write_text(traceback.format_exc())
        ui.note(f"report: failed ({type(e).__name__}: {e}); details in demo/logs/report.log")
        return None
    print_summary(a, doc, written)
    if not (written / "report.html").is_file():
        ui.note("report: not written")
        return None
    return doc


def _report_summary(doc: dict[str, Any] | None) -> str:
    """One line from the report's summary (empty if there is no report)."""
    try:
        s = (doc or {}).get("summary") or {}
        return (f"{s['gpus']} GPUs, {s['underutilized']} underutilized, {s['idle_gpu_hours']:.0f} idle GPU-hours, "
                f"{s['numa_misaligned_vms']} NUMA-misaligned VM(s), {s['vmotion_migrations']} vMotions "
                f"({s['vmotion_flagged']} flagged); the plan frees {s['plan_frees_gpus']} GPU(s) with "
                f"{s['plan_steps']} step(s), emptying {s['plan_frees_hosts']} host(s) that save "
                f"{s['plan_watts_saved']:.0f} W ({s['plan_kwh_month_saved']:.0f} kWh/month); "
                f"{s['plan_freed_capacity_gpus']} freed GPU(s) in hosts that stay on are capacity, not watts")
    except (KeyError, TypeError):
        return ""


def _print_where_to_look(data_dir: Path, state: dict[str, Any], duration: float | None) -> None:
    q = SQL_EXAMPLE.replace('"', '\\"')
    lines = [
        "",
        "accelmon demo is running - a simulated estate; its week of history was generated in accelerated "
        "simulated time.",
        f"  /metrics    {state['metrics_url']}",
        f"  Prometheus  {state['prometheus_url']}  (alerts: {state['prometheus_url']}/alerts)",
        f"  report      {state['report'] or 'not written (see above)'}",
        *([f"              {state['report_summary']}"] if state.get("report_summary") else []),
        f'  SQL         accelmon --data-dir {data_dir} sql "{q}"',
        f"  vCenter     {state['vcenter_url']} (simulator; password in {data_dir / 'demo' / 'vcenter.password'})",
        "Stops after " + (f"{duration:g} s" if duration is not None else "Ctrl-C") + "; logs in "
        f"{state['logs']}.",
        "",
    ]
    print("\n".join(lines), flush=True)


class _DemoPrometheus:
    """The shared PrometheusServer helper plus accelmon's alert rules."""

    def __new__(cls, targets: list[str], *, scrape_interval: str, port: int, rules: Path | None) -> Any:
        class WithRules(PrometheusServer):
            def write_config(self) -> Path:
                path = super().write_config()
                if rules is not None:
                    cfg = json.loads(path.read_text())
                    cfg["rule_files"] = [str(rules)]
                    path.write_text(json.dumps(cfg, indent=1))
                return path

        return WithRules(targets, scrape_interval=scrape_interval, port=port)
