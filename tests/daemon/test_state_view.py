"""The exporter reads the daemon's state through its own interface (accelmon.exporter.view.StateView)
and imports nothing from accelmon.daemon (issue 16: no circle between the exporter and the daemon)."""

from __future__ import annotations

import subprocess
import sys

from accelmon.daemon.state import DaemonState
from accelmon.exporter.view import Snapshot, StateView


def test_the_exporter_imports_nothing_of_the_daemon() -> None:
    code = ("import sys, accelmon.exporter.server, accelmon.exporter.collectors, accelmon.exporter.view; "
            "print(sorted(m for m in sys.modules if m.startswith('accelmon.daemon')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "[]"


def test_daemon_state_is_the_exporters_state_view() -> None:
    st: StateView = DaemonState()
    snap = st.snapshot(now=st.started)
    assert isinstance(snap, Snapshot) and snap.now == st.started and snap.plan is None
