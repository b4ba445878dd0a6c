"""The daemon (``accelmon run``): scheduler, write buffer, in-memory state for /metrics.

Entry point: :func:`accelmon.daemon.main.run_daemon`. See docs/daemon.md.
"""
