# tests: amavisd (daemon process): outgoing connection caching, protocols.md 5.6
"""The real daemon forwarding many messages: how many connections the back end sees.

Observed with the Perl daemon (protocols.md section 10): 23 transactions on one
inbound session reused a single outbound session.
"""

from __future__ import annotations

import re

from t.integration.conftest import Client, message, send_message, wait_for

OK_RE = r"250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:\d+\): 250 2\.0\.0 Ok: queued as Q\w+"


def _send_many(port: int, count: int) -> None:
    client = Client(port)
    client.reply()
    for n in range(count):
        reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"],
                             message(f"cache{n}"), ehlo="EHLO client.anchor.test" if n == 0
                             else "")
        assert re.fullmatch(OK_RE, reply[0]), reply
    assert client.cmd("QUIT")[0].startswith("221 ")


def test_twenty_messages_one_outbound_connection_quit_when_the_child_retires(amavisd, sink):
    """20 messages, one inbound session -> 1 outbound session; the child then reaches
    max_requests and retires, and its cached session gets QUIT (not just a close)."""
    daemon = amavisd("max_requests = 20\n", args=("-m", "1"))
    _send_many(daemon.port, 20)
    assert len(sink.messages) == 20
    assert len(sink.sessions) == 1
    verbs = [c.split(b" ", 1)[0] for c in sink.sessions[0].commands]
    assert verbs.count(b"EHLO") == 1 and verbs.count(b"MAIL") == 20
    assert verbs.count(b"XFORWARD") == 20          # per transaction: Postfix resets it
    wait_for(lambda: sink.sessions[0].closed, what="the outbound session's end")
    assert verbs[-1] != b"QUIT" and sink.sessions[0].commands[-1] == b"QUIT"
    log = wait_for(lambda: "Requesting process rundown after 20 tasks" in daemon.logfile_text()
                   and daemon.logfile_text(), what="the retirement")
    assert "TROUBLE" not in log


def test_the_cached_session_outlives_the_inbound_session(amavisd, sink):
    """Rundown after the inbound session keeps a session younger than 60 s (spec 5.6)."""
    daemon = amavisd(args=("-m", "1"))
    _send_many(daemon.port, 2)
    _send_many(daemon.port, 2)
    assert len(sink.messages) == 4 and len(sink.sessions) == 1
    assert not sink.sessions[0].closed


def test_caching_disabled_one_connection_per_message(amavisd, sink):
    daemon = amavisd("smtp_connection_cache_enable = 0\nsmtp_connection_cache_on_demand = 0\n",
                     args=("-m", "1"))
    _send_many(daemon.port, 3)
    sink.wait_closed()
    assert len(sink.sessions) == 3
    for session in sink.sessions:
        assert [c.split(b" ", 1)[0] for c in session.commands] == [
            b"EHLO", b"XFORWARD", b"MAIL", b"RCPT", b"DATA", b"QUIT"]
