"""deploy/prometheus/central.yml, with real Prometheus servers: two site Prometheus (each with its
external `site` label) scrape a static accelmon /metrics page; a central one, configured from
central.yml, federates both. Every dashboard query that returns data at a site returns it on the
central one for both sites (docs/operations.md, "Many vCenters")."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from accelmon.demo.prometheus import PrometheusServer
from tests.daemon.procs import wait_until
from tests.dashboards.promql import ROOT, metric_names, queries, substitute

CENTRAL = ROOT / "deploy" / "prometheus" / "central.yml"
RULES = ROOT / "deploy" / "prometheus" / "accelmon.rules.yml"


def _page(site: str) -> str:
    """A fixed accelmon exposition: one GPU VM per site (the daemon's metric and label names)."""
    g = f'gpu_uuid="GPU-{site}",vm_name="vm-{site}",vm_uuid="5000-{site}",vcenter="vc-{site}"'
    v = f'vcenter="vc-{site}",vm_uuid="5000-{site}",vm_name="vm-{site}"'
    return "\n".join([
        "# TYPE accelmon_gpu_busy_seconds_total counter", f"accelmon_gpu_busy_seconds_total{{{g}}} 120",
        "# TYPE accelmon_gpu_idle_seconds_total counter", f"accelmon_gpu_idle_seconds_total{{{g}}} 480",
        "# TYPE accelmon_gpu_utilization_ratio gauge", f"accelmon_gpu_utilization_ratio{{{g}}} 0.2",
        "# TYPE accelmon_gpu_memory_utilization_ratio gauge", f"accelmon_gpu_memory_utilization_ratio{{{g}}} 0.1",
        "# TYPE accelmon_gpu_fb_used_bytes gauge", f"accelmon_gpu_fb_used_bytes{{{g}}} 1e9",
        "# TYPE accelmon_gpu_fb_total_bytes gauge", f"accelmon_gpu_fb_total_bytes{{{g}}} 4e10",
        "# TYPE accelmon_gpu_power_watts gauge", f"accelmon_gpu_power_watts{{{g}}} 60",
        "# TYPE accelmon_gpu_energy_joules_total counter", f"accelmon_gpu_energy_joules_total{{{g}}} 36000",
        "# TYPE accelmon_gpu_last_sample_timestamp_seconds gauge",
        f"accelmon_gpu_last_sample_timestamp_seconds{{{g}}} 1.8e9",
        "# TYPE accelmon_gpu_underutilized gauge", f"accelmon_gpu_underutilized{{{g}}} 1",
        "# TYPE accelmon_gpu_info gauge",
        f'accelmon_gpu_info{{gpu_uuid="GPU-{site}",vm_uuid="5000-{site}",source="agent",model="A100",'
        f'backing="passthrough",vgpu_profile="",agent="a",match_evidence="host_pci_id"}} 1',
        "# TYPE accelmon_gpu_placement_info gauge",
        f'accelmon_gpu_placement_info{{gpu_uuid="GPU-{site}",vm_uuid="5000-{site}",host="esx-{site}",'
        f'cluster="cl-{site}",host_pci_id="0000:3b:00.0",host_numa_node="0"}} 1',
        "# TYPE accelmon_vm_placement_info gauge",
        f'accelmon_vm_placement_info{{{v},host="esx-{site}",cluster="cl-{site}"}} 1',
        "# TYPE accelmon_vm_power_watts gauge", f"accelmon_vm_power_watts{{{v}}} 300",
        "# TYPE accelmon_source_success gauge", 'accelmon_source_success{source="agent",target="a"} 1',
        "# TYPE accelmon_store_writable gauge", "accelmon_store_writable 1",
        "",
    ])


class _Static:
    def __init__(self, text: str) -> None:
        body = text.encode()

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.target = f"127.0.0.1:{self.srv.server_address[1]}"


class _Site(PrometheusServer):
    """A site's Prometheus: scrapes its daemon, labels everything it federates with ``site``."""

    def __init__(self, site: str, targets: list[str], workdir: Path) -> None:
        super().__init__(targets, workdir=workdir, scrape_interval="1s")
        self.site = site

    def write_config(self) -> Path:
        path = super().write_config()
        cfg = json.loads(path.read_text())
        cfg["global"]["external_labels"] = {"site": self.site}
        path.write_text(json.dumps(cfg))
        return path


class _Central(PrometheusServer):
    """deploy/prometheus/central.yml as shipped, only the site addresses, intervals and rule path set."""

    def __init__(self, sites: list[str], workdir: Path) -> None:
        super().__init__([], workdir=workdir, scrape_interval="1s")
        self.sites = sites

    def write_config(self) -> Path:
        cfg = yaml.safe_load(CENTRAL.read_text())
        cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
        cfg["rule_files"] = [str(RULES)]
        (job,) = cfg["scrape_configs"]
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"] = [{"targets": self.sites}]
        path = self.dir / "prometheus.yml"
        path.write_text(json.dumps(cfg))
        return path


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, _Site], _Central]]:
    tmp = tmp_path_factory.mktemp("fed")
    pages = {s: _Static(_page(s)) for s in ("a", "b")}
    sites = {s: _Site(s, [p.target], tmp / f"site-{s}").start() for s, p in pages.items()}
    central = _Central([f"127.0.0.1:{p.port}" for p in sites.values()], tmp / "central")
    try:
        central.start()
        wait_until(lambda: {r["metric"].get("site") for r in central.query("accelmon_gpu_info")} == {"a", "b"},
                   60, "both sites federated")
        wait_until(lambda: len(central.query("count_over_time(accelmon_gpu_busy_seconds_total[10m]) >= 3")) == 2,
                   60, "three federated samples per series (increase() needs two)")
        yield sites, central
    finally:
        for p in [central, *sites.values()]:
            p.stop()
        for pg in pages.values():
            pg.srv.shutdown()


def test_central_config_federates_accelmon_series_with_the_sites_labels() -> None:
    cfg = yaml.safe_load(CENTRAL.read_text())
    (job,) = cfg["scrape_configs"]
    assert job["metrics_path"] == "/federate" and job["honor_labels"] is True
    assert job["params"]["match[]"] == ['{__name__=~"accelmon_.*"}']


def test_federated_series_keep_site_job_and_instance(federation: tuple[dict[str, _Site], _Central]) -> None:
    sites, central = federation
    got = central.query("accelmon_gpu_busy_seconds_total")
    assert {(r["metric"]["site"], r["metric"]["job"], r["metric"]["instance"], r["metric"]["gpu_uuid"]) for r in got} \
        == {(s, p.job, p.targets[0], f"GPU-{s}") for s, p in sites.items()}  # honor_labels: the sites' own
    assert {float(r["value"][1]) for r in got} == {120.0}
    assert central.query('{__name__=~"go_.*|prometheus_.*", job="accelmon"}') == []  # match[] is accelmon only


def test_every_dashboard_query_that_works_at_a_site_works_centrally_for_both_sites(
    federation: tuple[dict[str, _Site], _Central],
) -> None:
    sites, central = federation
    page_metrics = {ln.split("{")[0].split(" ")[0] for ln in _page("a").splitlines() if ln and ln[0] != "#"}
    variables = {n: ".*" for n in ("vcenter", "cluster", "host", "vm", "gpu", "datasource", "team", "owner")}
    checked = 0
    for q in queries():
        if not metric_names(q.expr) <= page_metrics:
            continue  # a metric the static page does not serve (findings, self-metrics, `up`, …)
        expr = substitute(q.expr, variables, range_="10m", rate_interval="10m")
        at_site = sites["a"].query(expr)
        if not at_site:
            continue  # e.g. a rate() over a counter that never moves here
        central_res = central.query(expr)
        assert central_res, f"{q.dashboard} / {q.panel}: no data on the central Prometheus: {expr}"
        labels = [r["metric"] for r in central_res]
        if all("vm_name" in m or "gpu_uuid" in m or "site" in m for m in labels):
            seen = {m.get("site") or m.get("vm_name", m.get("gpu_uuid", ""))[-1] for m in labels}
            assert seen >= {"a", "b"}, f"{q.dashboard} / {q.panel}: {labels}"
        checked += 1
    assert checked >= 10, checked
