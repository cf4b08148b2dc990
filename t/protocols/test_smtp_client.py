# tests: amavisd/protocols/smtp_client.py
"""The outgoing SMTP/LMTP client (spec protocols.md 5.3, 5.4, 5.7, 9.1).

Most tests drive ``ForwardClient`` over a ``StringTransport`` with a ``Clock``
(STYLE.md section 7), so each exchange is exact and time is under control.
Tests that need real sockets against ``t/sink.py`` live in t/actions/test_forward.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from amavisd.errors import Reply
from amavisd.message import ClientInfo, Message, Recipient
from amavisd.protocols.smtp_client import (
    Capabilities,
    ClientOptions,
    DotStuffer,
    ForwardClient,
    MtaReply,
    SessionError,
    TransactionOutcome,
    enhance_reply,
    mail_command,
    rcpt_command,
    stage_timeout,
    xforward_command,
    xforward_value,
)

MTA = "smtp:[127.0.0.1]:10025"
EHLO_FULL = (b"250-sink.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
             b"250-DSN\r\n250 SMTPUTF8\r\n")
EHLO_PLAIN = b"250-sink.test\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n"


# --------------------------------------------------------------------------- pure helpers

WIRE_CASES = [
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    (b".x\n..y\nz.\n", b"..x\r\n...y\r\nz.\r\n.\r\n"),
    (b"no final newline", b"no final newline\r\n.\r\n"),
    (b"bare\rcr\r\nx\n", b"barecr\r\nx\r\n.\r\n"),
    (b"nul\0here\n", b"nul\xc0\x80here\r\n.\r\n"),
    (b"", b".\r\n"),
    (b".\n", b"..\r\n.\r\n"),
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 4096])
@pytest.mark.parametrize(("spool", "wire"), WIRE_CASES)
def test_dot_stuffing_survives_any_chunking(spool: bytes, wire: bytes, size: int) -> None:
    """A '.' at a line start is doubled wherever the chunk borders fall (spec 5.3 step 13)."""
    st = DotStuffer()
    out = b"".join(st.feed(spool[i:i + size]) for i in range(0, len(spool), size))
    assert out + st.finish() == wire


def test_dot_stuffer_lf_mode_for_bsmtp() -> None:
    st = DotStuffer(b"\n")
    assert st.feed(b"H: v\r\n\r\n.b\n") + st.finish() == b"H: v\n\n..b\n.\n"


def test_xforward_exactly_as_observed_in_spec_10() -> None:
    client = ClientInfo(addr="192.0.2.10", name="mail.example.org", port="41234",
                        proto="ESMTP", helo="mail.example.org", source="REMOTE", ident="4ABCDEF")
    offered = "NAME ADDR PORT PROTO HELO IDENT SOURCE".split()
    assert xforward_command(client, offered) == (
        "XFORWARD ADDR=192.0.2.10 NAME=mail.example.org PORT=41234 PROTO=ESMTP "
        "HELO=mail.example.org SOURCE=REMOTE IDENT=4ABCDEF")


def test_xforward_only_offered_attributes_ipv6_prefix_and_unknown_client() -> None:
    client = ClientInfo(addr="2001:db8::1", name="x", helo="h")
    assert xforward_command(client, ["ADDR", "HELO"]) == "XFORWARD ADDR=IPv6:2001:db8::1 HELO=h"
    assert xforward_command(ClientInfo(name="x"), ["ADDR", "NAME"]) is None


def test_xforward_value_sanitized_xtext_and_cut() -> None:
    """Non-printables and <>()\\";@ become '?', then xtext, then 255 chars (spec 5.3 step 7)."""
    assert xforward_value('a b<c>(d)"e;f@g\\h+i=j\x01') == "a?b?c??d??e?f?g?h+2Bi+3Dj?"
    assert len(xforward_value("x" * 400)) == 255


def _msg(tmp_path: Path, rcpts: list[Recipient] | None = None, body: bytes = b"S: x\n\nhi\n",
         **kw: object) -> Message:
    spool = tmp_path / "email.txt"
    spool.write_bytes(body)
    rcpts = rcpts if rcpts is not None else [Recipient("bob@x.test", "bob@x.test")]
    msg = Message("alice@x.test", "alice@x.test", rcpts, spool, len(body), "123-01",
                  mail_id="MID")
    for k, v in kw.items():
        setattr(msg, k, v)
    return msg


def test_mail_and_rcpt_exactly_as_observed_in_spec_10(tmp_path: Path) -> None:
    msg = _msg(tmp_path, dsn_ret="HDRS", dsn_envid="env+2B123")
    caps = Capabilities.parse(["x", "8BITMIME", "DSN"])
    assert mail_command(msg, caps, False, True, False) == (
        "MAIL FROM:<alice@x.test> RET=HDRS BODY=7BIT ENVID=env+2B123")
    bob = Recipient("bob@example.com", "bob@example.com", notify=["SUCCESS", "FAILURE"],
                    orcpt="rfc822;bob@example.com")
    assert rcpt_command(msg, bob, True, False, False) == (
        "RCPT TO:<bob@example.com> ORCPT=rfc822;bob@example.com NOTIFY=SUCCESS,FAILURE")
    assert rcpt_command(msg, bob, False, False, False) == "RCPT TO:<bob@example.com>"


def test_notify_rules(tmp_path: Path) -> None:
    """terminate_dsn_on_notify_success strips SUCCESS, empty -> NEVER; null sender: none."""
    msg = _msg(tmp_path)
    r = Recipient("b@x.test", "b@x.test", notify=["SUCCESS"])
    assert rcpt_command(msg, r, True, True, False) == "RCPT TO:<b@x.test> NOTIFY=NEVER"
    msg.sender = msg.sender_quoted = ""
    assert rcpt_command(msg, r, True, False, False) == "RCPT TO:<b@x.test>"


def test_mail_without_8bitmime_has_no_body_and_smtputf8_last(tmp_path: Path) -> None:
    msg = _msg(tmp_path)
    assert mail_command(msg, Capabilities(), False, False, False) == "MAIL FROM:<alice@x.test>"
    caps = Capabilities.parse(["x", "8BITMIME", "SMTPUTF8"])
    assert mail_command(msg, caps, True, False, True) == (
        "MAIL FROM:<alice@x.test> BODY=8BITMIME SMTPUTF8")


def test_idn_domain_converted_when_not_smtputf8(tmp_path: Path) -> None:
    msg = _msg(tmp_path)
    r = Recipient("bob@bücher.test", "bob@bücher.test")
    assert rcpt_command(msg, r, False, False, False) == "RCPT TO:<bob@xn--bcher-kva.test>"
    assert rcpt_command(msg, r, False, False, True) == "RCPT TO:<bob@bücher.test>"


def test_enhance_reply_forms() -> None:
    """Spec 5.4: enhanced code from the MTA, else class digit + stage default."""
    ok = MtaReply(250, ["2.0.0 Ok: queued as Q62477"])
    assert str(enhance_reply(ok, "dot", "smtp:[127.0.0.1]:20025")) == (
        "250 2.0.0 from MTA(smtp:[127.0.0.1]:20025): 250 2.0.0 Ok: queued as Q62477")
    assert enhance_reply(MtaReply(550, ["nope"]), "rcpt", MTA).enhanced == "5.1.0"
    assert enhance_reply(MtaReply(452, ["full"]), "rcpt", MTA).enhanced == "4.5.3"
    assert enhance_reply(MtaReply(554, ["no"]), "data", MTA).enhanced == "5.5.0"
    assert enhance_reply(MtaReply(451, ["x"]), "dot", MTA).enhanced == "4.6.0"
    assert enhance_reply(MtaReply(550, ["4.1.1 wrong class"]), "mail", MTA).enhanced == "5.1.0"
    multi = enhance_reply(MtaReply(554, ["5.7.1 first", "second"]), "dot", MTA)
    assert multi.text == f"from MTA({MTA}): 554 5.7.1 first\nsecond"


def test_session_error_replies() -> None:
    """Timeout 4.4.2, connect 4.4.1 (fixes bug 9.12), anything else 4.5.0 (spec 5.4)."""
    assert str(SessionError("timeout", "fwd-data-end", "x").reply(MTA, "1-01")) == (
        f"450 4.4.2 Timed out during fwd-data-end, MTA({MTA}), id=1-01")
    assert str(SessionError("connect", "fwd-connect", "refused").reply(MTA, "1-01")) == (
        f"450 4.4.1 Can't connect to {MTA}: refused, MTA({MTA}), id=1-01")
    assert str(SessionError("other", "fwd-connect", "Negative greeting: 554 no")
               .reply(MTA, "1-01")) == (
        f"451 4.5.0 From MTA({MTA}) during fwd-connect (Negative greeting: 554 no): id=1-01")


def test_stage_timeout_formula() -> None:
    """Spec 5.7: max(60, min(X, deadline - now))."""
    assert stage_timeout("dot", 1000.0, 0.0) == 600
    assert stage_timeout("dot", 100.0, 0.0) == 100
    assert stage_timeout("dot", 10.0, 0.0) == 60
    assert stage_timeout("connect", None, 0.0) == 60


def test_capabilities_ignore_malformed_lines() -> None:
    caps = Capabilities.parse(["host", "PIPELINING", "", "!!bad", "xforward name addr"])
    assert set(caps.keywords) == {"PIPELINING", "XFORWARD"}
    assert caps.keywords["XFORWARD"] == ["NAME", "ADDR"]


# --------------------------------------------------------------------------- the protocol


class Session:
    """A ForwardClient on a StringTransport with a Clock."""

    def __init__(self, msg: Message, *, lmtp: bool = False, per_rcpt: bool = False,
                 eight_bit: bool = False, deadline: float | None = None):
        self.clock = Clock()
        self.proto = ForwardClient(msg, msg.recipients, b"X-Head: 1\r\n",
                                   ClientOptions(deadline=deadline), lmtp=lmtp,
                                   per_recipient_capable=per_rcpt, eight_bit=eight_bit,
                                   mta_id=MTA, clock=self.clock)
        self.outcome: list[TransactionOutcome] = []
        self.proto.result.addCallback(self.outcome.append)
        self.tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 10025))
        self.proto.makeConnection(self.tr)

    def server(self, data: bytes) -> bytes:
        """Feed server bytes; return (and clear) what the client wrote in answer."""
        self.proto.dataReceived(data)
        out = self.tr.value()
        self.tr.clear()
        return out

    def pump(self) -> bytes:
        """Let the pull producer run to the end, as the reactor would."""
        while self.tr.producer is not None:
            self.tr.producer.resumeProducing()
        out = self.tr.value()
        self.tr.clear()
        return out

    def replies(self) -> list[str]:
        assert self.outcome, "result has not fired"
        o = self.outcome[0]
        return [str(r.reply or (o.error and o.error.reply(MTA, "123-01"))) for r in o.results]


def _rcpts(*names: str) -> list[Recipient]:
    return [Recipient(f"{n}@x.test", f"{n}@x.test") for n in names]


def test_pipelining_sends_mail_rcpts_and_data_in_one_write(tmp_path: Path) -> None:
    """Spec 5.3 step 11; the result fires on the dot reply, QUIT is already on the wire."""
    s = Session(_msg(tmp_path, _rcpts("bob", "carol")))
    assert s.server(b"220 hi\r\n") == b"EHLO localhost\r\n"
    assert s.server(EHLO_FULL) == (b"MAIL FROM:<alice@x.test> BODY=7BIT\r\n"
                                   b"RCPT TO:<bob@x.test>\r\nRCPT TO:<carol@x.test>\r\nDATA\r\n")
    assert s.server(b"250 ok\r\n250 ok\r\n250 ok\r\n") == b""
    assert s.server(b"354 go\r\n") == b"X-Head: 1\r\n"
    assert s.pump() == b"S: x\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    assert not s.outcome
    s.server(b"250 2.0.0 Ok: queued as ABC\r\n")
    assert s.replies() == [f"250 2.0.0 from MTA({MTA}): 250 2.0.0 Ok: queued as ABC"] * 2
    assert s.outcome[0].data_delivered and not s.tr.disconnecting
    s.server(b"221 bye\r\n")
    assert s.tr.disconnecting


def test_header_then_spool_from_body_offset(tmp_path: Path) -> None:
    """The new header section replaces the original one: the spool is read from the offset."""
    msg = _msg(tmp_path, body=b"Old: header\n\n.body\n")
    clock = Clock()
    proto = ForwardClient(msg, msg.recipients, b"New: header\r\n\r\n", ClientOptions(),
                          lmtp=False, per_recipient_capable=False, eight_bit=False,
                          mta_id=MTA, clock=clock, body_offset=len(b"Old: header\n\n"))
    tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 10025))
    proto.makeConnection(tr)
    proto.dataReceived(b"220 hi\r\n" + EHLO_FULL + b"250 ok\r\n250 ok\r\n354 go\r\n")
    while tr.producer is not None:
        tr.producer.resumeProducing()
    assert tr.value().split(b"DATA\r\n", 1)[1] == b"New: header\r\n\r\n..body\r\n.\r\nQUIT\r\n"


def test_without_pipelining_one_command_at_a_time(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path, _rcpts("bob", "rej")))
    s.server(b"220 hi\r\n")
    assert s.server(EHLO_PLAIN) == b"MAIL FROM:<alice@x.test> BODY=7BIT\r\n"
    assert s.server(b"250 ok\r\n") == b"RCPT TO:<bob@x.test>\r\n"
    assert s.server(b"250 ok\r\n") == b"RCPT TO:<rej@x.test>\r\n"
    assert s.server(b"550 5.1.1 unknown\r\n") == b"DATA\r\n"
    s.server(b"354 go\r\n")
    assert s.pump().endswith(b"hi\r\n.\r\n")
    assert s.server(b"250 2.0.0 Ok\r\n") == b"QUIT\r\n"
    assert s.replies() == [f"250 2.0.0 from MTA({MTA}): 250 2.0.0 Ok",
                           f"550 5.1.1 from MTA({MTA}): 550 5.1.1 unknown"]


def test_no_accepted_recipient_without_pipelining_sends_rset_not_data(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path, _rcpts("rej")))
    s.server(b"220 hi\r\n")
    s.server(EHLO_PLAIN)
    s.server(b"250 ok\r\n")
    assert s.server(b"550 5.1.1 unknown\r\n") == b"RSET\r\n"
    assert s.replies() == [f"550 5.1.1 from MTA({MTA}): 550 5.1.1 unknown"]


def test_tempfailed_rcpt_pipelined_smtp_input_bails_out_without_dot(tmp_path: Path) -> None:
    """Spec 5.3 step 12: DATA got 354, but a 4xx RCPT and non-LMTP input -> drop, no dot."""
    s = Session(_msg(tmp_path, _rcpts("bob", "tmp")))
    s.server(b"220 hi\r\n")
    s.server(EHLO_FULL)
    out = s.server(b"250 ok\r\n250 ok\r\n450 4.2.0 later\r\n354 go\r\n")
    assert out == b"" and s.tr.disconnecting and s.tr.disconnected
    bail = (f"451 4.5.0 From MTA({MTA}) during fwd-data-chkpnt (Bail out, DATA accepted but "
            f"tempfailed recips, not an LMTP input): id=123-01")
    assert s.replies() == [bail, bail]


def test_tempfailed_rcpt_lock_step_smtp_input_rsets(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path, _rcpts("tmp", "bob")))
    s.server(b"220 hi\r\n")
    s.server(EHLO_PLAIN)
    s.server(b"250 ok\r\n")
    s.server(b"450 4.2.0 later\r\n")
    assert s.server(b"250 ok\r\n") == b"RSET\r\n"
    assert all(r.startswith("451 4.5.0 ") and "Bail out" in r for r in s.replies())


def test_tempfailed_rcpt_with_lmtp_input_delivers_the_rest(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path, _rcpts("bob", "tmp")), per_rcpt=True)
    s.server(b"220 hi\r\n")
    s.server(EHLO_FULL)
    s.server(b"250 ok\r\n250 ok\r\n450 4.2.0 later\r\n354 go\r\n")
    assert s.pump().endswith(b"\r\n.\r\nQUIT\r\n")
    s.server(b"250 2.0.0 Ok\r\n")
    assert s.replies() == [f"250 2.0.0 from MTA({MTA}): 250 2.0.0 Ok",
                           f"450 4.2.0 from MTA({MTA}): 450 4.2.0 later"]


def test_lmtp_reads_one_dot_reply_per_accepted_recipient_only(tmp_path: Path) -> None:
    """Fixes bug 9.1: a rejected RCPT gets no data-dot reply, and we do not wait for one."""
    s = Session(_msg(tmp_path, _rcpts("bob", "rej", "datarej")), lmtp=True, per_rcpt=True)
    assert s.server(b"220 hi\r\n") == b"LHLO localhost\r\n"
    s.server(EHLO_FULL)
    s.server(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n")
    s.pump()
    s.server(b"250 2.0.0 <bob@x.test> Saved\r\n")
    assert not s.outcome
    s.server(b"552 5.2.2 <datarej@x.test> full\r\n")
    lmtp = "lmtp:[127.0.0.1]:10025"
    assert s.replies() == [f"250 2.0.0 from MTA({lmtp}): 250 2.0.0 <bob@x.test> Saved",
                           f"550 5.1.1 from MTA({lmtp}): 550 5.1.1 no",
                           f"552 5.2.2 from MTA({lmtp}): 552 5.2.2 <datarej@x.test> full"]


def test_lmtp_requires_pipelining_and_enhancedstatuscodes(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path), lmtp=True)
    s.server(b"220 hi\r\n")
    assert s.server(EHLO_PLAIN) == b"QUIT\r\n"
    assert "PIPELINING" in s.replies()[0] and s.replies()[0].startswith("451 4.5.0")


def test_lhlo_failure_is_fatal_but_ehlo_falls_back_to_helo(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path), lmtp=True)
    s.server(b"220 hi\r\n")
    s.server(b"500 what\r\n")
    assert "Negative LHLO response: 500 what" in s.replies()[0]
    s = Session(_msg(tmp_path))
    s.server(b"220 hi\r\n")
    assert s.server(b"502 no ehlo\r\n") == b"HELO localhost\r\n"
    assert s.server(b"250 hello\r\n") == b"MAIL FROM:<alice@x.test>\r\n"


def test_negative_greeting(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path))
    s.server(b"554-go away\r\n554 really\r\n")
    assert s.replies() == [f"451 4.5.0 From MTA({MTA}) during fwd-connect (Negative greeting: "
                           f"554 go away\nreally): id=123-01"]


def test_greeting_timeout_uses_the_clock(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path))
    s.clock.advance(59)
    assert not s.outcome
    s.clock.advance(1)
    assert s.replies() == [f"450 4.4.2 Timed out during fwd-connect, MTA({MTA}), id=123-01"]
    assert s.tr.disconnected


def test_data_dot_timeout_respects_the_deadline(tmp_path: Path) -> None:
    """The dot stage allows 600 s, cut to deadline - now but never below 60 (spec 5.7)."""
    s = Session(_msg(tmp_path), deadline=200.0)
    s.server(b"220 hi\r\n")
    s.server(EHLO_FULL)
    s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    s.pump()
    s.clock.advance(199)
    assert not s.outcome
    s.clock.advance(1)
    assert s.replies() == [f"450 4.4.2 Timed out during fwd-data-end, MTA({MTA}), id=123-01"]


def test_error_while_sending_data_closes_without_the_dot(tmp_path: Path) -> None:
    """Spec 6.4: no truncated message may be delivered."""
    s = Session(_msg(tmp_path, body=b"line\n" * 200_000))
    s.server(b"220 hi\r\n")
    s.server(EHLO_FULL)
    s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    s.tr.producer.resumeProducing()
    s.server(b"garbage\r\n")
    assert not s.tr.value().endswith(b".\r\n") and s.tr.disconnected
    assert s.replies()[0].startswith("451 4.5.0 From MTA(") and "Bad resp." in s.replies()[0]


def test_runaway_server_line_aborts(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path))
    s.server(b"2" * 500_001)
    assert "Runaway server line" in s.replies()[0]


def test_mail_rejected_applies_to_every_recipient(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path, _rcpts("bob", "carol")))
    s.server(b"220 hi\r\n")
    s.server(EHLO_FULL)
    s.server(b"553 sender bad\r\n503 no\r\n503 no\r\n503 no\r\n")
    assert s.replies() == [f"553 5.1.0 from MTA({MTA}): 553 sender bad"] * 2


def test_data_refused_keeps_rcpt_rejections_and_rsets(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path, _rcpts("bob", "rej")))
    s.server(b"220 hi\r\n")
    s.server(EHLO_FULL)
    assert s.server(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n554 no way\r\n") == b"RSET\r\n"
    assert s.replies() == [f"554 5.5.0 from MTA({MTA}): 554 no way",
                           f"550 5.1.1 from MTA({MTA}): 550 5.1.1 no"]


def test_eight_bit_without_8bitmime(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path, _rcpts("bob", "carol")), eight_bit=True)
    s.server(b"220 hi\r\n")
    assert s.server(b"250 plain\r\n") == b"QUIT\r\n"
    assert s.replies() == ["550 5.6.3 Conversion to 7BIT required but not supported"] * 2


def test_starttls_required_but_not_offered(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path))
    s.proto.options.tls_security_level_out = "encrypt"
    s.server(b"220 hi\r\n")
    s.server(EHLO_FULL)
    assert "MTA does not offer STARTTLS, but TLS is required" in s.replies()[0]


def test_connection_lost_while_waiting(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path))
    s.server(b"220 hi\r\n")
    s.proto.connectionLost(None)
    assert s.replies() == [f"451 4.5.0 From MTA({MTA}) during fwd-connect (No response to "
                           f"EHLO): id=123-01"]


def test_reply_type_is_errors_reply(tmp_path: Path) -> None:
    s = Session(_msg(tmp_path))
    s.server(b"554 no\r\n")
    assert isinstance(s.outcome[0].error.reply(MTA, "x"), Reply)


def test_tcp_nodelay_is_set(tmp_path: Path) -> None:
    """Perl lost ~40 ms per larger message without TCP_NODELAY (brief, spec 5.3)."""
    calls: list[bool] = []

    class NoDelayTransport(StringTransport):
        def setTcpNoDelay(self, enabled: bool) -> None:
            calls.append(enabled)

    msg = _msg(tmp_path)
    proto = ForwardClient(msg, msg.recipients, b"", ClientOptions(), lmtp=False,
                          per_recipient_capable=False, eight_bit=False, mta_id=MTA,
                          clock=Clock())
    proto.makeConnection(NoDelayTransport())
    assert calls == [True]


def test_pipelined_data_accepted_without_valid_recipient_sends_a_lone_dot(tmp_path: Path) -> None:
    """RFC 2920 via spec 5.3 step 12: an empty body and a lone '.'."""
    s = Session(_msg(tmp_path, _rcpts("rej")))
    s.server(b"220 hi\r\n")
    s.server(EHLO_FULL)
    assert s.server(b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n") == b".\r\n"
    assert s.server(b"554 no valid recipients\r\n") == b"QUIT\r\n"
    assert s.replies() == [f"550 5.1.1 from MTA({MTA}): 550 5.1.1 no"]
