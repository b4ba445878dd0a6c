"""The one place sources are registered (node_exporter style).

Each source kind maps to a factory that builds its instances from the config. A kind is on
unless ``[sources] <kind> = false``. Source modules are imported only when their kind is
used, so the daemon starts without, say, pyvmomi being importable when no vCenter is
configured.

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

A source may expose several schedules (vCenter: inventory, perf, events) by having a
``jobs()`` method returning :class:`SourceJob` tuples; otherwise it is polled by ``collect``
at the instance's interval.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accelmon.collector.base import CollectResult, Source

from accelmon.config import Config
from accelmon.errors import UserError


@dataclass(frozen=True)
class SourceJob:
    """One schedule of one source instance."""

    name: str  # job name: "vcenter.inventory", "agent", …
    interval_s: float
    collect: Callable[[Any], CollectResult]


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


def _load(module: str, cls: str) -> Any:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise UserError(f"source module {module} is not available ({e.name} not found)") from None
    try:
        return getattr(mod, cls)
    except AttributeError:
        raise UserError(f"source module {module} has no {cls}") from None


def _vcenter(cfg: Config) -> list[SourceInstance]:
    out = []
    for vc in cfg.vcenter:

        def build(vc: Any = vc) -> Source:
            return _load("accelmon.collector.vcenter.source", "VCenterSource")(  # type: ignore[no-any-return]
                vc, owners=cfg.owners)

        out.append(SourceInstance("vcenter", vc.url, vc.perf_interval, build))
    return out


def agent_instance(cfg: Config, url: str) -> SourceInstance:
    a = cfg.agents

    def build() -> Source:
        cls = _load("accelmon.collector.agent_source", "AgentSource")
        token = a.token.get_secret_value() if a.token is not None else None
        if token is None and a.token_file is not None:
            token = a.token_file.read_text().strip()
        kw: dict[str, Any] = {"token": token, "timeout": a.timeout, "max_body_bytes": a.max_body_bytes}
        verify: Any = str(a.ca_bundle) if a.ca_bundle is not None else a.verify_tls
        try:
            return cls(url, verify=verify, **kw)  # type: ignore[no-any-return]
        except TypeError:  # older signature without TLS options
            return cls(url, **kw)  # type: ignore[no-any-return]

    return SourceInstance("agent", url, a.scrape_interval, build)


def _agents_static(cfg: Config) -> list[SourceInstance]:
    # discovered agents are added at run time from the vCenter inventory (collector/discovery.py)
    return [agent_instance(cfg, u) for u in cfg.agents.static]


def _exporters(kind: str, cls_name: str) -> Callable[[Config], list[SourceInstance]]:
    def instances(cfg: Config) -> list[SourceInstance]:
        out = []
        for e in getattr(cfg, kind):

            def build(e: Any = e) -> Source:
                cls = _load("accelmon.collector.exporters", cls_name)
                return cls(e.url, timeout=e.timeout, vm_bios_uuid=e.vm_bios_uuid)  # type: ignore[no-any-return]

            out.append(SourceInstance(kind, e.url, e.interval, build))
        return out

    return instances


KINDS: dict[str, SourceKind] = {
    k.name: k
    for k in (
        SourceKind("vcenter", "vCenter inventory, NUMA/PCI facts, power perf, vMotion events", _vcenter),
        SourceKind("agent", "accelmon guest agents (discovered + static)", _agents_static),
        SourceKind("dcgm", "dcgm-exporter endpoints", _exporters("dcgm", "DcgmExporterSource")),
        SourceKind(
            "nvidia_gpu_exporter",
            "nvidia_gpu_exporter endpoints",
            _exporters("nvidia_gpu_exporter", "NvidiaGpuExporterSource"),
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
    """The schedules of a built source: its own ``jobs()`` if it has them, else one ``collect``."""
    fn = getattr(src, "jobs", None)
    if callable(fn):
        js = list(fn())
        if js:
            return [j if isinstance(j, SourceJob) else SourceJob(*j) for j in js]
    return [SourceJob(kind, interval_s, src.collect)]
