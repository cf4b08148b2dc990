# tests: amavisd/config/demo.py and `amavisd demo` (README's first command)
"""The demo runs with no config and no MTA: passed mail lands in BSMTP files."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys

from t.helpers.daemon import REPO_ROOT, free_port
from t.integration.conftest import wait_for


def test_demo_passes_mail_into_bsmtp_files(tmp_path):
    port = free_port()
    home = tmp_path / "demo"
    env = dict(os.environ, AMAVISD_DEMO_HOME=str(home), PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "amavisd", "-p", f"127.0.0.1:{port}",
                             "demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=REPO_ROOT, env=env)
    try:
        def answers():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
                    return smtp.noop()[0] == 250
            except OSError:
                return False

        wait_for(answers, timeout=20, what="the demo daemon")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            refused = smtp.sendmail("alice@example.com", ["bob@example.com"],
                                    "From: alice@example.com\r\n"
                                    "Date: Mon, 30 Nov 2026 03:01:54 +0000\r\n"
                                    "Subject: hello\r\nMessage-ID: <demo@x>\r\n\r\nhi\r\n")
        assert refused == {}
        out = home / "out"
        files = wait_for(lambda: list(out.glob("*.bsmtp")), what="a BSMTP file")
        text = files[0].read_bytes()
        assert text.startswith(b"EHLO localhost\nMAIL FROM:<alice@example.com>")
        assert b"RCPT TO:<bob@example.com>\nDATA\nReceived: from " in text
        assert text.endswith(b"\nhi\n.\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    assert f"amavisd demo: listening on 127.0.0.1:{port}" in output
    assert f"swaks --server 127.0.0.1:{port}" in output
    assert "Passed CLEAN {RelayedInbound}" in output
    assert proc.returncode == 0
