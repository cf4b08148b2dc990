# tests: amavisd/pipeline.py (virus and spam checks run at the same time)
"""The message waits for the slower of the virus and spam checks, not their sum.

A real spamd cannot be made slow on demand, so the spam side is a small stand-in
that answers like spamd after a delay (the real-spamd path is in test_spam.py);
the virus side is a real command-line scanner, a shell script that sleeps.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from t.helpers.daemon import free_port
from t.integration.conftest import Client, message, send_message, wait_for

DELAY = 1.5


class SlowSpamd:
    """Accepts spamc requests and answers ``Spam: False ; 1.5 / 5.0`` after DELAY seconds."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                self.requests += 1
                time.sleep(DELAY)
                reply = b"SLOW_TEST_RULE\r\n"
                conn.sendall(b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\n"
                             b"Spam: False ; 1.5 / 5.0\r\n\r\n" % len(reply) + reply)

    def close(self) -> None:
        self.sock.close()


def test_virus_and_spam_checks_overlap(amavisd, sink, tmp_path):
    spamd = SlowSpamd()
    scanner = tmp_path / "slow-av.sh"
    scanner.write_text(f"#!/bin/sh\nsleep {DELAY}\necho OK\nexit 0\n")
    os.chmod(scanner, 0o755)
    try:
        daemon = amavisd(
            "bypass_virus_checks_maps = []\nbypass_spam_checks_maps = []\n"
            "virus_scanners_failure_is_fatal = 1\n"
            f"av_scanners = [('Slow-AV', {str(scanner)!r}, '{{}}', [0], [1], r'(.*) FOUND')]\n"
            f"spam_scanners = [['Slow-spamd', 'spamd', 'address', '127.0.0.1:{spamd.port}']]\n")
        client = Client(daemon.port)
        client.reply()
        client.cmd("EHLO client.anchor.test")
        started = time.monotonic()
        reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"],
                             message("overlap"), ehlo="")
        elapsed = time.monotonic() - started
        assert reply[0].startswith("250 2.0.0 from MTA("), reply
        assert spamd.requests == 1
        log = wait_for(lambda: " Passed " in daemon.logfile_text() and daemon.logfile_text())
        assert "Hits: 1.5," in log                    # the spam verdict was used
        assert "X-Virus-Scanned" in sink.messages[0].data.decode(errors="replace")
        # both slow checks ran: one after the other would take 2 * DELAY
        assert DELAY <= elapsed < 2 * DELAY - 0.3, f"took {elapsed:.2f} s"
    finally:
        spamd.close()
