# tests: amavisd/protocols/smtp_cache.py, amavisd/protocols/smtp_client.py (session reuse)
"""Outgoing connection caching over real sockets (spec/protocols.md 5.6, 5.3, 5.7).

``Backend`` below is a small threaded SMTP server written for these tests: it
records every connection and every command, and can misbehave on request
(close a cached connection between transactions, reset or answer 421 at a
given MAIL, stay silent, refuse NOOP), which t/sink.py does not do.  The
client side is the real ``forward`` in the shared reactor thread; the cache and
the client timers run on a ``Clock`` so idle times and timeouts are exact.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.task import Clock

from amavisd import stats
from amavisd.actions.forward import forward
from amavisd.message import ClientInfo, Message, Recipient
from amavisd.protocols import smtp_cache
from amavisd.protocols.smtp_cache import SessionCache
from t.sink import Sink, in_reactor

BODY = b"Subject: cache test\nFrom: a@x.test\n\nHello.\n.dot line\n"


# --------------------------------------------------------------------------- test back end


@dataclass
class Conn:
    """One connection as the back end saw it."""

    commands: list[bytes] = field(default_factory=list)
    messages: int = 0
    closed: bool = False
    quit_pipelined_after_dot: list[bool] = field(default_factory=list)


@dataclass
class Rules:
    """Misbehaviour, by (connection number, MAIL number in it), both counted from 1."""

    rst_at_mail: set[tuple[int, int]] = field(default_factory=set)
    reply_421_at_mail: set[tuple[int, int]] = field(default_factory=set)
    silent_at_mail: set[tuple[int, int]] = field(default_factory=set)
    close_after_dot_without_reply: set[tuple[int, int]] = field(default_factory=set)
    close_idle_after_messages: int | None = None   # server-side close between transactions
    noop_reply: str = "250 2.0.0 Ok"
    pipelining: bool = True
    watch_quit: bool = False      # note whether QUIT came with the dot (costs 0.1 s)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        conn = Conn()
        with self.server.lock:
            self.server.conns.append(conn)
            number = len(self.server.conns)
        try:
            self._serve(conn, number)
        except OSError:
            pass
        finally:
            conn.closed = True

    def _reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def _reset(self) -> None:
        """Close with RST: what a dead peer or a crashed server looks like."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _serve(self, conn: Conn, number: int) -> None:
        rules = self.server.rules
        self._reply("220 backend.test ESMTP")
        mails = 0
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.rstrip(b"\r\n")
            conn.commands.append(cmd)
            verb = cmd.split(b" ", 1)[0].upper()
            if verb == b"EHLO":
                kws = ["backend.test", "ENHANCEDSTATUSCODES", "8BITMIME"]
                kws += ["PIPELINING"] if rules.pipelining else []
                self.wfile.write("".join(f"250-{k}\r\n" for k in kws[:-1]).encode()
                                 + f"250 {kws[-1]}\r\n".encode())
            elif verb == b"MAIL":
                mails += 1
                key = (number, mails)
                if key in rules.rst_at_mail:
                    self._reset()
                    return
                if key in rules.reply_421_at_mail:
                    self._reply("421 4.4.2 backend.test Error: timeout exceeded")
                    return
                if key in rules.silent_at_mail:
                    while self.rfile.readline():   # read on, never answer
                        pass
                    return
                self._reply("250 2.1.0 Ok")
            elif verb == b"RCPT":
                self._reply("250 2.1.5 Ok")
            elif verb == b"DATA":
                self._reply("354 End data with <CR><LF>.<CR><LF>")
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    pass
                if not data:
                    return
                if (number, mails) in rules.close_after_dot_without_reply:
                    conn.messages += 1
                    self._reset()
                    return
                if rules.watch_quit:
                    conn.quit_pipelined_after_dot.append(self._quit_waiting())
                conn.messages += 1
                self._reply(f"250 2.0.0 Ok: queued as C{number}M{conn.messages}")
                if rules.close_idle_after_messages == conn.messages:
                    time.sleep(0.05)
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
            elif verb == b"NOOP":
                self._reply(rules.noop_reply)
                if not rules.noop_reply.startswith("2"):
                    return
            elif verb == b"RSET":
                self._reply("250 2.0.0 Ok")
            elif verb == b"QUIT":
                self._reply("221 2.0.0 Bye")
                return
            else:
                self._reply("502 5.5.2 Error: command not recognized")

    def _quit_waiting(self) -> bool:
        """Whether QUIT came with the dot, before our reply to it (non-blocking peek)."""
        time.sleep(0.1)
        self.connection.setblocking(False)
        try:
            head = self.rfile.peek(4)[:4]
        except BlockingIOError:
            head = b""
        finally:
            self.connection.setblocking(True)
        return head.upper() == b"QUIT"


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, rules: Rules):
        self.rules = rules
        self.lock = threading.Lock()
        self.conns: list[Conn] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class Backend:
    def __init__(self, **rules: Any):
        self.server = _Server(Rules(**rules))
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def conns(self) -> list[Conn]:
        return self.server.conns

    def commands(self, i: int) -> list[bytes]:
        return [c.split(b" ", 1)[0] for c in self.conns[i].commands]

    def wait(self, predicate: Any, what: str, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}: {self.conns}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- helpers


def settings(**kw: Any) -> SimpleNamespace:
    base = dict(localhost_name="localhost", tls_security_level_out=None,
                smtp_tls_client_options={}, propagate_dsn_if_possible=True,
                terminate_dsn_on_notify_success=False, local_client_bind_address=None,
                QUARANTINEDIR=None, myhostname="amavis-test.example.com")
    base.update(kw)
    return SimpleNamespace(**base)


class Harness:
    """The cache on a Clock, and ``send`` to forward one message (a new task each time)."""

    def __init__(self, tmp_path: Path, port: int, *, enable: bool = True,
                 on_demand: bool = False, scheme: str = "smtp"):
        self.tmp_path, self.port, self.scheme = tmp_path, port, scheme
        self.clock = Clock()
        self.cache = in_reactor(self._activate, enable, on_demand)
        self.tasks = 0
        stats.drain_pending()

    def _activate(self, enable: bool, on_demand: bool) -> SessionCache:
        return smtp_cache.activate(SimpleNamespace(smtp_connection_cache_enable=enable,
                                                   smtp_connection_cache_on_demand=on_demand),
                                   self.clock)

    def message(self, *names: str, log_id: str | None = None, sender: str = "a@x.test"
                ) -> Message:
        self.tasks += 1
        spool = self.tmp_path / f"email-{self.tasks}.txt"
        spool.write_bytes(BODY)
        rcpts = [Recipient(f"{n}@y.test", f"{n}@y.test") for n in names or ("bob",)]
        return Message(sender, sender, rcpts, spool, len(BODY),
                       log_id or f"1000-{self.tasks:02d}", mail_id=f"MID{self.tasks}",
                       client=ClientInfo())

    def start(self, msg: Message, **kw: Any) -> Any:
        """Begin forwarding in the reactor; returns the Deferred (still running)."""
        method = kw.pop("method", f"{self.scheme}:[127.0.0.1]:{self.port}")
        return forward(msg, msg.recipients, method, b"X-Cache-Test: 1\r\n\r\n", 0,
                       kw.pop("settings", settings()), reactor, False, time.time() + 600,
                       clock=self.clock, **kw)

    def send(self, *names: str, **kw: Any) -> list[str]:
        msg = self.message(*names)
        in_reactor(self.start, msg, **kw)
        return [str(r.reply) for r in msg.recipients]

    def advance(self, seconds: float) -> None:
        in_reactor(self.clock.advance, seconds)

    def rundown(self, everything: bool = False) -> int:
        return int(in_reactor(self.cache.rundown, everything))

    def idle(self) -> list[str]:
        return list(in_reactor(self.cache.sessions))


@pytest.fixture
def backend():
    servers: list[Backend] = []

    def make(**rules: Any) -> Backend:
        servers.append(Backend(**rules))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


@pytest.fixture(autouse=True)
def _no_cache_left():
    yield
    in_reactor(smtp_cache.deactivate)


def ok(port: int, conn: int, n: int) -> str:
    return (f"250 2.0.0 from MTA(smtp:[127.0.0.1]:{port}): 250 2.0.0 Ok: queued as "
            f"C{conn}M{n}")


# --------------------------------------------------------------------------- reuse


def test_messages_in_a_row_share_one_connection(tmp_path, backend):
    """Spec 5.6: one session per destination carries every transaction; EHLO once, no QUIT."""
    be = backend()
    h = Harness(tmp_path, be.port)
    for n in range(1, 6):
        assert h.send("bob") == [ok(be.port, 1, n)]
    assert len(be.conns) == 1
    assert be.commands(0) == [b"EHLO"] + [b"MAIL", b"RCPT", b"DATA"] * 5
    assert h.idle() == [f"smtp:[127.0.0.1]:{be.port}"]
    counts = stats.drain_pending()
    assert {k: counts.get(k, 0) for k in ("OutConnNew", "OutConnTransact",
                                          "OutConnReuseRecent", "OutConnQuit")} == {
        "OutConnNew": 1, "OutConnTransact": 5, "OutConnReuseRecent": 4, "OutConnQuit": 0}
    in_reactor(smtp_cache.deactivate)              # child exit: QUIT
    be.wait(lambda: be.conns[0].closed, "the QUIT")
    assert be.commands(0)[-1] == b"QUIT"


def test_reused_session_sends_no_quit_after_the_dot(tmp_path, backend):
    """Caching on: the QUIT is not pipelined after the dot (spec 5.3 step 15)."""
    be = backend(watch_quit=True)
    h = Harness(tmp_path, be.port)
    h.send("bob")
    assert be.conns[0].quit_pipelined_after_dot == [False]
    assert not be.conns[0].closed


def test_session_idle_18s_is_used_as_is_older_is_probed_with_noop(tmp_path, backend):
    """Spec 5.6: idle <= 18 s: as is; idle 20 s: NOOP first (observed in section 10)."""
    be = backend()
    h = Harness(tmp_path, be.port)
    h.send("bob")
    h.advance(18)
    h.send("bob")
    assert b"NOOP" not in be.commands(0)
    h.advance(20)
    assert h.send("bob") == [ok(be.port, 1, 3)]
    assert be.commands(0)[-4:] == [b"NOOP", b"MAIL", b"RCPT", b"DATA"]
    assert len(be.conns) == 1
    assert stats.drain_pending().get("OutConnReuseRefreshed") == 1


def test_failed_noop_probe_means_a_new_connection(tmp_path, backend):
    be = backend(noop_reply="421 4.4.2 backend.test Error: timeout exceeded")
    h = Harness(tmp_path, be.port)
    h.send("bob")
    h.advance(25)
    assert h.send("bob") == [ok(be.port, 2, 1)]
    assert len(be.conns) == 2 and be.commands(0)[-1] == b"NOOP"
    assert be.commands(1) == [b"EHLO", b"MAIL", b"RCPT", b"DATA"]
    assert stats.drain_pending().get("OutConnReuseFail") == 1


def test_noop_probe_times_out_after_15s(tmp_path, backend):
    """A probe that gets no answer costs 15 s, not the 60 s floor of other stages (5.7)."""
    be = backend()
    h = Harness(tmp_path, be.port)
    h.send("bob")
    h.advance(25)
    proto = h.cache.sessions()[f"smtp:[127.0.0.1]:{be.port}"]
    proto.transport.pauseProducing()            # our side stops reading: no NOOP reply
    msg = h.message("bob")
    d = in_reactor(lambda: SimpleNamespace(d=h.start(msg)))   # running, not awaited
    be.wait(lambda: b"NOOP" in be.commands(0), "the NOOP")
    h.advance(14.9)
    assert not d.d.called
    h.advance(0.1)
    be.wait(lambda: len(be.conns) == 2 and be.conns[1].messages == 1, "the new connection")
    for _ in range(100):
        if d.d.called:
            break
        time.sleep(0.02)
    assert [str(r.reply) for r in msg.recipients] == [ok(be.port, 2, 1)]


# --------------------------------------------------------------------------- dead sessions


def test_server_closing_the_idle_session_is_noticed(tmp_path, backend):
    """The back end drops the connection between transactions: the next one reconnects."""
    be = backend(close_idle_after_messages=1)
    h = Harness(tmp_path, be.port)
    assert h.send("bob") == [ok(be.port, 1, 1)]
    be.wait(lambda: be.conns[0].closed, "the server-side close")
    time.sleep(0.1)
    assert h.idle() == []
    assert h.send("bob") == [ok(be.port, 2, 1)]
    assert [c.messages for c in be.conns] == [1, 1]


@pytest.mark.parametrize("rule", ["rst_at_mail", "reply_421_at_mail"])
def test_cached_session_dead_at_mail_is_retried_on_a_new_connection(tmp_path, backend, rule):
    """RST or 421 at MAIL on a cached session: no 4xx, delivered once on a new connection."""
    be = backend(**{rule: {(1, 2)}})
    h = Harness(tmp_path, be.port)
    assert h.send("bob", "carol") == [ok(be.port, 1, 1)] * 2
    assert h.send("bob", "carol") == [ok(be.port, 2, 1)] * 2
    assert [c.messages for c in be.conns] == [1, 1]
    assert be.commands(1) == [b"EHLO", b"MAIL", b"RCPT", b"RCPT", b"DATA"]
    counts = stats.drain_pending()
    assert counts.get("OutConnReuseFail") == 1 and counts.get("OutConnNew") == 2
    assert counts.get("OutMsgsAttemptFails", 0) == 0
    assert h.idle() == [f"smtp:[127.0.0.1]:{be.port}"]


def test_cached_session_silent_at_mail_times_out_and_is_retried(tmp_path, backend):
    """A timeout at MAIL (300 s, spec 5.7) on a cached session: retried, never a 4xx."""
    be = backend(silent_at_mail={(1, 2)})
    h = Harness(tmp_path, be.port)
    h.send("bob")
    msg = h.message("bob")
    d = in_reactor(lambda: SimpleNamespace(d=h.start(msg)))
    be.wait(lambda: len(be.commands(0)) == 5, "the second MAIL")
    h.advance(299)
    assert not d.d.called and len(be.conns) == 1
    h.advance(1)
    be.wait(lambda: len(be.conns) == 2 and be.conns[1].messages == 1, "the retry")
    for _ in range(100):
        if d.d.called:
            break
        time.sleep(0.02)
    assert [str(r.reply) for r in msg.recipients] == [ok(be.port, 2, 1)]


def test_failure_after_the_dot_is_not_retried(tmp_path, backend):
    """The server had the whole message: a retry could deliver it twice, so 451 (spec 6.3)."""
    be = backend(close_after_dot_without_reply={(1, 2)})
    h = Harness(tmp_path, be.port)
    h.send("bob")
    reply = h.send("bob")
    assert reply == [f"451 4.5.0 From MTA(smtp:[127.0.0.1]:{be.port}) during fwd-data-end "
                     f"(No response to .): id=1000-02"]
    time.sleep(0.2)
    assert len(be.conns) == 1 and be.conns[0].messages == 2


def test_a_fresh_connection_failing_is_not_retried(tmp_path, backend):
    """Only a reused session is retried: a new one's failure is the answer (no loop)."""
    be = backend(reply_421_at_mail={(1, 1)})
    h = Harness(tmp_path, be.port)
    assert h.send("bob") == [f"421 4.4.2 from MTA(smtp:[127.0.0.1]:{be.port}): 421 4.4.2 "
                             "backend.test Error: timeout exceeded"]
    assert len(be.conns) == 1 and h.idle() == []


# --------------------------------------------------------------------------- caching off


def test_caching_off_one_connection_per_message_quit_right_after_the_dot(tmp_path, backend):
    """Spec 5.6/5.3 step 15: with pipelining the QUIT goes out with the dot."""
    be = backend(watch_quit=True)
    h = Harness(tmp_path, be.port, enable=False)
    for n in range(1, 4):
        assert h.send("bob") == [ok(be.port, n, 1)]
    be.wait(lambda: all(c.closed for c in be.conns), "every session closed")
    assert len(be.conns) == 3
    for i in range(3):
        assert be.commands(i) == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT"]
        assert be.conns[i].quit_pipelined_after_dot == [True]
    assert h.idle() == []


def test_caching_off_without_pipelining_quits_after_the_reply(tmp_path, backend):
    be = backend(pipelining=False, watch_quit=True)
    h = Harness(tmp_path, be.port, enable=False)
    h.send("bob")
    be.wait(lambda: be.conns[0].closed, "the QUIT")
    assert be.commands(0)[-1] == b"QUIT" and be.conns[0].quit_pipelined_after_dot == [False]


def test_on_demand_switch():
    """Under 5 s since the previous task: on; 15 s or more: off; in between: unchanged."""
    clock = Clock()
    cache = SessionCache(clock, enable=True, on_demand=True)
    assert cache.begin_task("t1") is True          # starts as $smtp_connection_cache_enable
    cache.transaction_ended()
    clock.advance(15)
    assert cache.begin_task("t2") is False
    assert cache.begin_task("t2") is False         # same task: no new decision
    cache.transaction_ended()
    clock.advance(10)
    assert cache.begin_task("t3") is False         # 5..15 s: stays off
    cache.transaction_ended()
    clock.advance(4.9)
    assert cache.begin_task("t4") is True
    cache.transaction_ended()
    clock.advance(14.9)
    assert cache.begin_task("t5") is True          # stays on
    fixed = SessionCache(clock, enable=True, on_demand=False)
    fixed.transaction_ended()
    clock.advance(100)
    assert fixed.begin_task("x") is True


def test_on_demand_off_after_a_quiet_period_quits_after_the_dot(tmp_path, backend):
    """Observed (section 10): more than 15 s since the previous task -> QUIT follows the dot."""
    be = backend(watch_quit=True)
    h = Harness(tmp_path, be.port, on_demand=True)
    h.send("bob")
    h.advance(16)                 # caching turns off; the cached session is used once more
    h.send("bob")
    be.wait(lambda: be.conns[0].closed, "the QUIT")
    assert len(be.conns) == 1
    assert be.commands(0) == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"MAIL", b"RCPT", b"DATA",
                              b"QUIT"]
    assert be.conns[0].quit_pipelined_after_dot == [False, True]


# --------------------------------------------------------------------------- rundown


def test_rundown_keeps_fresh_sessions_and_quits_old_ones(tmp_path, backend):
    """After an inbound session: QUIT when 60 s old even if used a moment ago (spec 5.6)."""
    be = backend()
    h = Harness(tmp_path, be.port)
    h.send("bob")                 # t=0: connected
    h.advance(25)
    h.send("bob")                 # t=25 (NOOP first)
    h.advance(25)
    h.send("bob")                 # t=50
    h.advance(9)
    assert h.rundown() == 0       # t=59: idle 9 s, 59 s old: kept
    h.advance(1)
    assert h.rundown() == 1       # t=60: 60 s old
    be.wait(lambda: be.conns[0].closed, "the QUIT")
    assert be.commands(0)[-1] == b"QUIT" and h.idle() == []
    assert stats.drain_pending().get("OutConnQuit") == 1


def test_rundown_quits_sessions_idle_30s(tmp_path, backend):
    be = backend()
    h = Harness(tmp_path, be.port)
    h.send("bob")
    h.cache._cancel_timer(f"smtp:[127.0.0.1]:{be.port}")   # only the rundown rule here
    h.advance(29)
    assert h.rundown() == 0
    h.advance(1)
    assert h.rundown() == 1
    be.wait(lambda: be.conns[0].closed, "the QUIT")


def test_rundown_quits_everything_when_caching_is_off(tmp_path, backend):
    be = backend()
    h = Harness(tmp_path, be.port)
    h.send("bob")
    h.cache.caching = False
    assert h.rundown() == 1
    be.wait(lambda: be.conns[0].closed, "the QUIT")


def test_an_idle_session_is_quit_after_30s_without_a_rundown(tmp_path, backend):
    """Ours, not Perl's: a child waiting for work does not hold the back end's smtpd."""
    be = backend()
    h = Harness(tmp_path, be.port)
    h.send("bob")
    h.advance(29.9)
    assert h.idle()
    h.advance(0.1)
    be.wait(lambda: be.conns[0].closed, "the QUIT")
    assert be.commands(0)[-1] == b"QUIT" and h.idle() == []


# --------------------------------------------------------------------------- details


def test_other_ehlo_name_does_not_reuse_the_session(tmp_path, backend):
    be = backend()
    h = Harness(tmp_path, be.port)
    h.send("bob")
    h.send("bob", settings=settings(localhost_name="other.test"))
    assert len(be.conns) == 2
    be.wait(lambda: be.conns[0].closed, "the first session's QUIT")


def test_two_transactions_at_once_use_two_connections_one_stays(tmp_path, backend):
    """At most one cached session per destination; the second to come back is QUIT."""
    be = backend()
    h = Harness(tmp_path, be.port)
    from twisted.internet import defer

    m1, m2 = h.message("bob"), h.message("carol")
    in_reactor(lambda: defer.gatherResults([h.start(m1), h.start(m2)]))
    assert len(be.conns) == 2
    be.wait(lambda: sum(c.closed for c in be.conns) == 1, "one QUIT")
    assert len(h.idle()) == 1
    assert h.send("dave").pop().endswith("M2")     # the kept one carries the next message


def test_dsn_and_notifications_use_the_same_sessions(tmp_path, backend):
    """Spec 5.6: mail amavis originates goes through the same cache."""
    be = backend()
    h = Harness(tmp_path, be.port)
    h.send("bob")
    msg = h.message("alice", sender="")
    in_reactor(h.start, msg, submit="Dsn")
    assert str(msg.recipients[0].reply) == ok(be.port, 1, 2)
    assert len(be.conns) == 1


def test_next_transaction_started_from_the_outcome_callbacks_reuses_the_session(tmp_path,
                                                                                backend):
    """The pipeline sends a DSN from the forward's own callback chain: the session must
    already be back in the cache then (it goes IDLE before the outcome fires)."""
    be = backend()
    h = Harness(tmp_path, be.port)
    m1, dsn = h.message("bob"), h.message("alice", sender="")
    in_reactor(lambda: h.start(m1).addCallback(lambda _: h.start(dsn, submit="Dsn")))
    assert str(dsn.recipients[0].reply) == ok(be.port, 1, 2)
    assert len(be.conns) == 1


def test_lmtp_session_is_reused(tmp_path):
    with Sink(lmtp=True) as sink:
        h = Harness(tmp_path, sink.port, scheme="lmtp")
        for _ in range(3):
            assert h.send("bob")[0].startswith("250 2.0.0 from MTA(lmtp:[127.0.0.1]:")
        assert len(sink.sessions) == 1 and len(sink.messages) == 3
        assert [c for c in sink.commands() if c.startswith(b"LHLO")] == [b"LHLO localhost"]


def test_starttls_session_is_reused_with_its_tls(tmp_path):
    """The TLS layer stays: one STARTTLS, one EHLO after it, three messages."""
    with Sink(tls=True) as sink:
        h = Harness(tmp_path, sink.port)
        conf = settings(tls_security_level_out="encrypt")
        for _ in range(3):
            assert h.send("bob", settings=conf)[0].startswith("250 2.0.0 from MTA(")
        assert len(sink.sessions) == 1 and sink.sessions[0].tls
        verbs = [c.split(b" ")[0] for c in sink.commands()]
        assert verbs.count(b"STARTTLS") == 1 and verbs.count(b"EHLO") == 2
        assert len(sink.messages) == 3
