# tests: amavisd/log.py (writer thread, syslog client), and the daemon on a stalled syslog
"""Log writes never hold up a session (monitoring.md 5.2; docs/logging.md).

* The writer thread takes entries from a bounded queue; a full queue drops new
  entries, counts them (``LogEntriesDropped``) and says so once it catches up.
* Syslog datagrams have the C library's format, the bank's ident and facility,
  the priority of the level, and amavis's splitting of long entries.
* The real daemon on a syslog socket that nobody reads (a stalled syslogd: the
  kernel queue of 10 datagrams fills and every further send blocks) answers DATA
  at once, and its main log line reaches syslog once the socket is read again.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from amavisd import log as amavis_log
from t.integration.conftest import (  # noqa: F401 - amavisd, sink, tmp_path: fixtures
    Client,
    amavisd,
    send_message,
    sink,
    tmp_path,
)


class Blocking(amavis_log.AmavisHandler):
    """A destination that hangs until released, like a stalled syslog socket (it
    never accepts a write without blocking: everything goes through the writer)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.lines: list[str] = []
        self.setFormatter(amavis_log.AmavisFormatter())

    def prepare(self, record):
        return self.format(record), 1

    def write(self, entry) -> None:
        self.gate.wait(10)
        self.lines.append(entry)


def record(text: str, level: int = amavis_log.NOTICE, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("amavis", level, __file__, 1, text, (), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


@pytest.fixture
def writer():
    amavis_log.drain_log_counts()
    w = amavis_log.start_writer(size=3)
    yield w
    amavis_log.stop_writer(5)


def test_a_full_queue_drops_counts_and_reports(writer):
    handler = Blocking()
    started = time.monotonic()
    handler.emit(record("first"))
    deadline = time.monotonic() + 5
    while not writer.queue.empty() and time.monotonic() < deadline:
        time.sleep(0.01)                    # the thread holds "first", blocked in write
    for i in range(9):
        handler.emit(record(f"line {i}"))
    assert time.monotonic() - started < 1.0        # emit never waited for the destination
    counts = amavis_log.drain_log_counts()
    # three entries may wait (the one being written counts): 7 of the 9 are dropped
    assert counts["LogEntriesDropped"] == 7 and counts["LogEntries"] == 10
    handler.gate.set()
    assert writer.flush()
    assert handler.lines == ["first", "line 0", "line 1",
                             "(!)log writer: 7 log entries dropped, the log destination was "
                             "too slow"]
    handler.emit(record("direct again"))
    assert writer.flush() and handler.lines[-1] == "direct again"


def test_entries_keep_their_task_id_when_written_later(writer):
    handler = Blocking()
    amavis_log.set_task_id("12345-01")
    try:
        handler.emit(record("in the task"))
    finally:
        amavis_log.set_task_id(None)
    handler.emit(record("between tasks"))
    handler.gate.set()
    assert writer.flush()
    assert handler.lines == ["(12345-01) in the task", "between tasks"]


class SyslogReceiver:
    """A stand-in syslogd: a datagram socket read by a thread that can be paused."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)
        self.path = str(folder / "log")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)          # the daemon writes as 'nobody'
        self.sock.settimeout(0.1)
        self.lines: list[str] = []
        self.reading = threading.Event()
        self.reading.set()
        self.paused = threading.Event()
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done:
            if not self.reading.is_set():
                self.paused.set()           # parked: no recv in progress
                self.reading.wait(0.1)
                continue
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.lines.append(data.decode("utf-8", "replace"))

    def pause(self) -> None:
        """Stop reading, and wait until the thread is out of any recv it was in: a
        datagram taken after fill() would leave room for one more send (a flaky
        test, regression)."""
        self.paused.clear()
        self.reading.clear()
        assert self.paused.wait(5), "the receiver thread did not pause"

    def fill(self) -> int:
        """Fill the socket's kernel queue (10 datagrams here) while nobody reads it."""
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        filler.connect(self.path)
        sent = 0
        try:
            while True:
                filler.send(b"<13>filler", socket.MSG_DONTWAIT)
                sent += 1
        except BlockingIOError:
            return sent
        finally:
            filler.close()

    def close(self) -> None:
        self.done = True
        self.reading.set()
        self.thread.join(5)
        self.sock.close()

    def wait_for(self, pattern: str, timeout: float = 10.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no syslog line matching {pattern!r}: {self.lines[-5:]}")


@pytest.fixture
def receiver(tmp_path):  # noqa: F811
    r = SyslogReceiver(tmp_path / "syslog")
    yield r
    r.close()


def test_syslog_format_priority_identity_and_split(receiver):
    handler = amavis_log.SyslogHandler("amavis", "mail", 60, receiver.path)
    handler.setFormatter(amavis_log.AmavisFormatter())
    amavis_log.set_task_id("12345-01")
    try:
        handler.emit(record("Passed CLEAN {RelayedInbound}, a\\b"))
        handler.emit(record('{"s":"a\\\\b \\"q\\""}', raw_backslash=True))
        handler.emit(record("x" * 100, logging.WARNING))
        amavis_log.set_syslog_identity("amavis-bank", "local3")
        handler.emit(record("bank line", amavis_log.py_level(2)))
    finally:
        amavis_log.set_task_id(None)
        amavis_log.set_syslog_identity(None, None)
        handler.close()
    receiver.wait_for("bank line")
    head = rf"\w{{3}} [ \d]\d \d\d:\d\d:\d\d amavis\[{os.getpid()}\]: "
    lines = receiver.lines
    assert re.fullmatch(r"<21>" + head + r"\(12345-01\) Passed CLEAN \{RelayedInbound\}, "
                        r"a\\\\b", lines[0])                         # mail.notice, \ doubled
    assert lines[1].endswith(': (12345-01) {"s":"a\\\\b \\"q\\""}')  # JSON kept as it is
    # mail.warning, split at 60 characters: every piece has the id and the alert mark
    pieces = [x.split("]: ", 1)[1] for x in lines[2:-1]]
    assert all(x.startswith("<20>") for x in lines[2:-1])
    assert pieces[0] == "(12345-01) (!)" + "x" * 43 + "..."
    assert all(len(p) <= 60 for p in pieces)
    assert pieces[1].startswith("(12345-01) (!)...x") and not pieces[-1].endswith("...")
    assert "".join(p.split(")", 2)[2].strip(".!()") for p in pieces) == "x" * 100
    assert re.fullmatch(r"<158>\w{3} [ \d]\d \d\d:\d\d:\d\d amavis-bank\[\d+\]: "
                        r"\(12345-01\) bank line", lines[-1])        # local3.info


def test_a_free_destination_is_written_at_once_then_queued_when_it_stalls(receiver, writer):
    """Lines are out before the reply as in amavis while syslogd keeps up; once a
    send would block, this and every later entry go to the writer, in order."""
    handler = amavis_log.SyslogHandler("amavis", "mail", 980, receiver.path)
    handler.setFormatter(amavis_log.AmavisFormatter())
    try:
        receiver.pause()
        handler.emit(record("at once"))
        assert writer.pending == 0           # written by emit itself, nothing queued
        receiver.fill()
        handler.emit(record("later 1"))
        handler.emit(record("later 2"))
        assert writer.pending == 2
        receiver.reading.set()
        assert writer.flush()
        receiver.wait_for("later 2")
        texts = [x.split("]: ", 1)[1] for x in receiver.lines if "]: " in x]
        assert texts == ["at once", "later 1", "later 2"]
    finally:
        handler.close_socket()


SYSLOG_CONF = """
DO_SYSLOG = 1
syslog_socket = {path!r}
log_level = 5
max_servers = 1
policy_bank = {{'MYNETS': {{'syslog_ident': 'amavis-mynets', 'syslog_facility': 'local5'}}}}
"""


def test_stalled_syslog_does_not_delay_the_smtp_reply(amavisd, sink, receiver):  # noqa: F811
    daemon = amavisd(SYSLOG_CONF.format(path=receiver.path))
    receiver.wait_for(r"amavis\[\d+\]: .*starting\.")
    time.sleep(0.5)                         # the child's start-up lines are read too
    receiver.pause()                        # syslogd stalls ...
    receiver.fill()                         # ... with its queue full: every send blocks
    client = Client(daemon.port, timeout=10)
    assert client.reply()[0].startswith("220 ")
    data = (b"From: alice@anchor.test\r\nTo: bob@anchor.test\r\nSubject: stall\r\n"
            b"Date: Mon, 30 Nov 2026 03:01:54 +0000\r\nMessage-ID: <stall@anchor.test>\r\n"
            b"\r\nHi\r\n")
    started = time.monotonic()
    assert client.cmd("EHLO mta.anchor.test")[-1].startswith("250 ")
    assert client.cmd("XFORWARD ADDR=10.0.0.5 PORT=40000 PROTO=ESMTP")[0].startswith("250 ")
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], data, ehlo="")
    took = time.monotonic() - started
    assert reply[0].startswith("250 2.0.0 from MTA(")
    assert took < 5.0, took                 # blocked writes would never let it answer
    assert client.cmd("QUIT")[0].startswith("221 ")
    assert not any("Passed CLEAN" in x for x in receiver.lines)      # still queued
    receiver.reading.set()
    line = receiver.wait_for(r"Passed CLEAN .*<stall@anchor\.test>", 20)
    # the MYNETS bank (client 10.0.0.5) logs with its own ident and facility: local5.notice
    assert re.match(r"<173>\w{3} [ \d]\d \d\d:\d\d:\d\d amavis-mynets\[\d+\]: \(\d{5}-\d\d\) "
                    r"Passed CLEAN \{RelayedInternal\}, MYNETS LOCAL \[10\.0\.0\.5\]:40000 ",
                    line), line
    # level 2 (syslog info, local5 of the bank): the timing report, rundown last at 100 %
    timing = receiver.wait_for(r"TIMING", 10)
    assert re.search(r"^<174>.*: \(\d{5}-\d\d\) size: 140, TIMING \[total \d+ ms\] - "
                     r"SMTP DATA: [\d.]+ \(\d+%\)\d+, .*, rundown: [\d.]+ \(\d+%\)100$", timing), \
        timing
