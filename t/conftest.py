# tests: the test suite itself (a skip in CI is a failure)
"""Suite-wide rules.

Some tests skip when a real component (clamd, spamd, perl's Amavis modules, net-snmp,
clamav-testfiles) is missing, so a developer without them can still run the rest.
CI installs every one of them (.ci/install), so there a skip can only mean a broken
install step: with ``CI`` set, a skipped test is reported as a failure.
"""

from __future__ import annotations

import os

import pytest

STRICT = bool(os.environ.get("CI"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (every component is installed there): {reason}"
