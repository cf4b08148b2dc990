# tests: amavisd as a running daemon (shared fixtures of t/integration)
"""Fixtures that run the real daemon as a subprocess against an in-test sink.

The daemon starts as root and drops to ``nobody`` like a production install; the
sink (t/sink.py) stands in for the back-end MTA and records every byte.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from t.helpers.daemon import free_port, start_daemon
from t.sink import Sink

CERT_DIR = Path(__file__).resolve().parents[1] / "certs"


def base_config(tmp_path: Path, port: int, forward: str, extra: str = "") -> str:
    home = tmp_path / "home"
    return f"""
daemon_user = 'nobody'
daemon_group = 'nogroup'
MYHOME = {str(home)!r}
TEMPBASE = MYHOME + '/tmp'
myhostname = 'mx.anchor.test'
mydomain = 'anchor.test'
local_domains_acl = ['.anchor.test', 'example.com']
inet_socket_port = {port}
inet_socket_bind = '127.0.0.1'
forward_method = {forward!r}
LOGFILE = MYHOME + '/amavis.log'
DO_SYSLOG = 0
log_level = 2
enable_db = 1
max_servers = 2
bypass_virus_checks_maps = [1]   # as the anchor's profile pass: no X-Virus-Scanned
bypass_spam_checks_maps = [1]
{extra}
"""


@pytest.fixture
def tmp_path(request):
    """A temp folder the daemon user can reach (pytest's own is 0700 under root)."""
    import os
    import shutil
    import tempfile

    base = Path(tempfile.gettempdir()) / "amavisd-tests"
    base.mkdir(mode=0o711, exist_ok=True)
    os.chmod(base, 0o711)
    path = Path(tempfile.mkdtemp(prefix=request.node.name[:40] + "-", dir=base))
    os.chmod(path, 0o711)
    yield path
    if os.environ.get("AMAVISD_KEEP_TEST_DIRS") != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _close_clients():
    """Every raw client a test opened is closed afterwards."""
    yield
    while Client.opened:
        Client.opened.pop().close()


@pytest.fixture
def sink():
    with Sink() as s:
        yield s


@pytest.fixture
def amavisd(tmp_path, sink):
    """Factory: ``amavisd(extra='...', args=('-m', '1'))`` -> a started Daemon."""
    started = []

    def start(extra: str = "", args=(), forward: str | None = None):
        port = free_port()
        fwd = forward or f"smtp:[127.0.0.1]:{sink.port}"
        daemon = start_daemon(base_config(tmp_path, port, fwd, extra), tmp_path, args)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


class Client:
    """A raw SMTP client that shows exactly what the server said."""

    opened: list[Client] = []

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        Client.opened.append(self)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; partial: {self.buf!r}")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\r\n", 1)
        return raw.decode("utf-8", "replace")

    def reply(self) -> list[str]:
        """One whole (possibly multi-line) reply."""
        lines = [self.line()]
        while lines[-1][3:4] == "-":
            lines.append(self.line())
        return lines

    def cmd(self, text: str) -> list[str]:
        self.send(text.encode("utf-8") + b"\r\n")
        return self.reply()

    def eof(self, timeout: float = 10.0) -> bytes:
        """Read until the server closes; returns what came before the close."""
        self.sock.settimeout(timeout)
        data = self.buf
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def message(subject: str = "hello", body: bytes = b"Hi Bob,\r\nsee you.\r\n",
            extra: bytes = b"") -> bytes:
    """A small message with CRLF line ends (as on the wire, not yet dot-stuffed)."""
    return (b"From: Alice <alice@anchor.test>\r\nTo: Bob <bob@anchor.test>\r\n"
            b"Date: Mon, 30 Nov 2026 03:01:54 +0000\r\n"
            b"Subject: " + subject.encode() + b"\r\nMessage-ID: <" + subject.encode()
            + b"@anchor.test>\r\n" + extra + b"\r\n" + body)


def send_message(client: Client, sender: str, rcpts: list[str], data: bytes,
                 ehlo: str = "EHLO client.anchor.test") -> list[str]:
    """EHLO (when given), MAIL, RCPTs, DATA; returns the final reply (all its lines)."""
    if ehlo:
        assert client.cmd(ehlo)[-1].startswith("250 ")
    assert client.cmd(f"MAIL FROM:<{sender}>")[0].startswith("250 ")
    for rcpt in rcpts:
        client.cmd(f"RCPT TO:<{rcpt}>")
    assert client.cmd("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    client.send(stuffed + b".\r\n")
    return client.reply()


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
