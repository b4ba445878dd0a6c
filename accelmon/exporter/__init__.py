"""The daemon's /metrics: prometheus_client custom collectors over the in-memory state.

See docs/metrics.md for every metric and its labels.
"""
