"""Mail delivery (docs/report.md, "Mail"): the daily report and the per-owner digests.

A renderer: it reads the analysis (idle cost, analytics/cost.py) and the stored ``findings``
history and decides nothing; :mod:`.digest` only counts the days a GPU stayed flagged.
``compose`` builds the messages, ``smtp`` sends them (stdlib ``smtplib``) or writes ``.eml`` files.
"""
