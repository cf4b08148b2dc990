"""Content checks: each module records findings and exposes ``NAME`` and ``run()``.

spec STYLE.md section 5: checks add facts only; ``decide`` decides, actions act.
"""
