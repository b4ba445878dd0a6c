"""The one place sources are registered (node_exporter style).

Each source kind maps to a factory that builds its instances from the config. A kind is on
unless ``[sources] <kind> = false``. Every source class implements the
:class:`~accelmon.collector.base.Source` Protocol (checked by mypy): no attribute probing, no
signature fallbacks.

==========================  =========================================  ==================
kind                        module / class                             instances
==========================  =========================================  ==================
``vcenter``                 ``collector/vcenter/source.py``            one per ``[[vcenter]]``
                            ``VCenterSource``
``agent``                   ``collector/agent_source.py``              one per discovered or
                            ``AgentSource``                            static agent URL
``dcgm``                    ``collector/exporters.py``                 one per ``[[dcgm]]``
``nvidia_gpu_exporter``     ``collector/exporters.py``                 one per ``[[nvidia_gpu_exporter]]``
``prometheus``              ``collector/prometheus_backfill.py``       on demand (``accelmon backfill``)
==========================  =========================================  ==================

A source's ``jobs(interval_s)`` gives its schedules: one ``collect`` at the instance's interval,
or several of its own (vCenter: inventory, perf, events).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accelmon.collector.agent_source import AgentSource
from accelmon.collector.base import Source, SourceJob
from accelmon.collector.exporters import DcgmExporterSource, NvidiaGpuExporterSource
from accelmon.collector.vcenter.source import VCenterSource
from accelmon.config import Config
from accelmon.errors import UserError


@dataclass
class SourceInstance:
    kind: str
    target: str  # URL, never with credentials
    interval_s: float
    build: Callable[[], Source]


@dataclass(frozen=True)
class SourceKind:
    name: str
    doc: str
    instances: Callable[[Config], list[SourceInstance]]


def _vcenter(cfg: Config) -> list[SourceInstance]:
    out = []
    for vc in cfg.vcenter:

        def build(vc: Any = vc) -> Source:
            return VCenterSource(vc, owners=cfg.owners)

        out.append(SourceInstance("vcenter", vc.url, vc.perf_interval, build))
    return out


def agent_instance(cfg: Config, url: str) -> SourceInstance:
    a = cfg.agents

    def build() -> Source:
        token = a.token.get_secret_value() if a.token is not None else None
        if token is None and a.token_file is not None:
            token = a.token_file.read_text().strip()
        verify: bool | str = str(a.ca_bundle) if a.ca_bundle is not None else a.verify_tls
        return AgentSource(url, token=token, timeout=a.timeout, max_body_bytes=a.max_body_bytes, verify=verify)

    return SourceInstance("agent", url, a.scrape_interval, build)


def _agents_static(cfg: Config) -> list[SourceInstance]:
    # discovered agents are added at run time from the vCenter inventory (collector/discovery.py)
    return [agent_instance(cfg, u) for u in cfg.agents.static]


def _exporters(
    kind: str, endpoints: Callable[[Config], list[Any]], cls: type[DcgmExporterSource | NvidiaGpuExporterSource]
) -> Callable[[Config], list[SourceInstance]]:
    def instances(cfg: Config) -> list[SourceInstance]:
        out = []
        for e in endpoints(cfg):

            def build(e: Any = e) -> Source:
                return cls(e.url, timeout=e.timeout, vm_bios_uuid=e.vm_bios_uuid)

            out.append(SourceInstance(kind, e.url, e.interval, build))
        return out

    return instances


KINDS: dict[str, SourceKind] = {
    k.name: k
    for k in (
        SourceKind("vcenter", "vCenter inventory, NUMA/PCI facts, power perf, vMotion events", _vcenter),
        SourceKind("agent", "accelmon guest agents (discovered + static)", _agents_static),
        SourceKind("dcgm", "dcgm-exporter endpoints", _exporters("dcgm", lambda c: c.dcgm, DcgmExporterSource)),
        SourceKind(
            "nvidia_gpu_exporter",
            "nvidia_gpu_exporter endpoints",
            _exporters("nvidia_gpu_exporter", lambda c: c.nvidia_gpu_exporter, NvidiaGpuExporterSource),
        ),
        SourceKind("prometheus", "DCGM history from a Prometheus server (accelmon backfill)", lambda cfg: []),
    )
}


def check(cfg: Config) -> None:
    """Unknown names under ``[sources]`` are a config mistake."""
    for name in cfg.sources:
        if name not in KINDS:
            raise UserError(
                f"{cfg.source_file}: sources.{name}: unknown source; known: {', '.join(KINDS)}"
            )


def enabled(cfg: Config, kind: str) -> bool:
    return bool(cfg.sources.get(kind, True))


def instances(cfg: Config) -> list[SourceInstance]:
    """Every statically configured source instance of every enabled kind."""
    check(cfg)
    out: list[SourceInstance] = []
    for k in KINDS.values():
        if enabled(cfg, k.name):
            out += k.instances(cfg)
    return out


def jobs_of(kind: str, src: Source, interval_s: float) -> list[SourceJob]:
    """The schedules of a built ``kind`` source polled every ``interval_s`` (its ``jobs``)."""
    js = src.jobs(interval_s)
    if not js:
        raise ValueError(f"{kind} source {src.target}: no schedule")
    return js


__all__ = ["KINDS", "SourceInstance", "SourceJob", "SourceKind", "agent_instance", "check", "enabled", "instances",
           "jobs_of"]
