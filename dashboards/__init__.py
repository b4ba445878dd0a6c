"""Grafana dashboards for accelmon, generated from code (grafanalib).

``python -m dashboards.generate`` rewrites ``dashboards/json/*.json``; a test fails when the
committed JSON differs from what the code generates.
"""
