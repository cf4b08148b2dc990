"""amavisd-nanny: show each child's state and age, and stop stuck children.

A reader of the stats segment (amavisd/stats.py) with the options and output of
the Perl tool (spec/monitoring.md section 3).  Entry point: :func:`main`.
"""

from __future__ import annotations

from amavisd_nanny.main import main

__all__ = ["main"]
