"""amavisd-agent: show amavisd's counters as text, or serve them to Prometheus.

A reader of the stats segment (amavisd/stats.py).  Text mode keeps the options and
the output layout of the Perl tool (spec/monitoring.md section 2); ``--prometheus``
serves ``/metrics`` instead (docs/monitoring.md).  Entry point: :func:`main`.
"""

from __future__ import annotations

from amavisd_agent.main import main

__all__ = ["main"]
