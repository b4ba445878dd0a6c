"""``accelmon demo``: the seeded vCenter simulator, simulated GPU agents, the daemon, Prometheus
and the report, end to end in one command (see :mod:`accelmon.demo.runner`)."""

from __future__ import annotations

from pathlib import Path


def run_demo(data_dir: Path, *, duration: float | None = None, vms: int = 60, mail_to: str | None = None) -> int:
    from accelmon.demo.runner import run_demo as _run

    return _run(data_dir, duration=duration, vms=vms, mail_to=mail_to)


__all__ = ["run_demo"]
