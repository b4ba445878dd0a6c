"""Rendering of an analytics run: report.html (self-contained), findings.csv, findings.json.

Renderers decide nothing: every number comes from :mod:`accelmon.analytics`.
"""
