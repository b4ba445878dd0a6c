"""The guest agent (``accelmon agent``): polls NVML in a GPU VM and serves counters on /metrics.

Entry point: :func:`accelmon.collector.agent.main.run_agent`. See docs/agent.md.
"""
