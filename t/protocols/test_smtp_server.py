# tests: amavisd/protocols/smtp_server.py
"""The inbound SMTP/LMTP server, byte for byte (spec/protocols.md sections 3.1-3.11).

No sockets: ``StringTransport`` and ``task.Clock``, as Twisted's own SMTP tests do.
Expected texts come from ``t/replies.py``, typed from the spec.
"""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport

from amavisd.constants import D_BOUNCE, D_PASS, D_REJECT, D_TEMPFAIL, ST_DATA, ST_MAIL
from amavisd.errors import Reply, TempFail
from amavisd.protocols.smtp_server import SizePolicy, SMTPServer
from t import replies as R

FWD_OK = "250 2.0.0 from MTA(smtp:[127.0.0.1]:20025): 250 2.0.0 Ok: queued as Q62477"
BANNED = "554 5.7.0 Reject, id=12160-01 - BANNED: application/octet-stream,evil.exe"
BOUNCE = "554 5.7.0 Bounce, id=12160-01 - spam"
CERT_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "certs"


def make_settings(**overrides) -> SimpleNamespace:
    values = dict(
        smtpd_timeout=480,
        smtpd_greeting_banner="${helo-name} ${protocol} ${product} service ready",
        smtpd_quit_banner="${helo-name} ${product} closing transmission channel",
        smtpd_message_size_limit=None,
        enforce_smtpd_message_size_limit_64kb_min=1,
        smtpd_recipient_limit=1100,
        smtpd_discard_ehlo_keywords=[],
        tls_security_level_in=None,
        smtpd_tls_server_options={},
        auth_mech_avail=[],
        auth_required_inp=None,
        haproxy_target_enabled=None,
        protocol=None,
        myhostname="amavis-test.example.com",
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def pass_all(msg) -> None:
    for r in msg.recipients:
        r.reply, r.destiny, r.done = Reply.parse(FWD_OK), D_PASS, 2


class FakeHandler:
    """Records every call; ``process`` runs ``decide`` and answers at once or later."""

    def __init__(self, tmp_path, **settings):
        self.settings = make_settings(**settings)
        self.tmp_path = tmp_path
        self.events: list[tuple] = []
        self.messages = []
        self.bodies: list[bytes] = []
        self.decide = pass_all
        self.hold = False                  # process() returns a Deferred fired by release()
        self.fail: BaseException | None = None
        self.size_policies: dict[str, SizePolicy] = {}
        self.refuse = False
        self._pending: list[defer.Deferred] = []
        self._n = 0

    def session_started(self, client):
        self.events.append(("session_started", client))
        if self.refuse:
            raise PermissionError("DENIED ACCESS")

    def transaction_started(self):
        self._n += 1
        self.events.append(("transaction_started",))
        return f"12160-{self._n:02d}", self.tmp_path / f"email-{self._n}.txt"

    def client_info_at_mail(self, client):
        self.events.append(("client_info_at_mail", client))

    def state(self, letter):
        self.events.append(("state", letter))

    def process(self, msg):
        self.messages.append(msg)
        self.bodies.append(msg.spool_path.read_bytes())
        self.events.append(("process", msg.log_id))
        if self.fail is not None:
            return defer.fail(self.fail)
        self.decide(msg)
        if self.hold:
            d = defer.Deferred()
            self._pending.append(d)
            return d
        return defer.succeed(None)

    def release(self):
        self._pending.pop(0).callback(None)

    def transaction_ended(self, msg):
        self.events.append(("transaction_ended", msg))

    def session_ended(self):
        self.events.append(("session_ended",))

    def recipient_size_policy(self, rcpt):
        return self.size_policies.get(rcpt.address)

    def names(self) -> list[str]:
        return [e[0] for e in self.events]


class RecordingTransport(StringTransport):
    """A StringTransport that counts writes and records STARTTLS and TCP_NODELAY."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.writes = 0
        self.tls_context = None
        self.nodelay = None

    def write(self, data):
        self.writes += 1
        super().write(data)

    def startTLS(self, context):
        self.tls_context = context

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled

    def getHandle(self):
        return SimpleNamespace(get_cipher_name=lambda: "TLS_AES_256_GCM_SHA384")


class Session:
    """One server protocol on a fake transport and clock."""

    def __init__(self, handler, peer=None, host=None, tls_factory=None):
        self.handler = handler
        self.clock = task.Clock()
        self.clock.advance(1_764_470_000)
        self.transport = RecordingTransport(
            peerAddress=peer or IPv4Address("TCP", "127.0.0.1", 41234),
            hostAddress=host or IPv4Address("TCP", "127.0.0.1", 10024))
        self.proto = SMTPServer(handler, reactor=self.clock,
                                tls_context_factory=tls_factory or (lambda options: "CTX"))
        self.proto.makeConnection(self.transport)

    def read(self) -> list[str]:
        data = self.transport.value()
        self.transport.clear()
        assert data == b"" or data.endswith(b"\r\n")
        return data.decode("utf-8").split("\r\n")[:-1]

    def send(self, data: bytes | str) -> list[str]:
        self.proto.dataReceived(data.encode() if isinstance(data, str) else data)
        return self.read()

    def cmd(self, line: str) -> list[str]:
        return self.send(line + "\r\n")

    def envelope(self, *rcpts: str, mail: str = "MAIL FROM:<alice@example.org>") -> None:
        assert self.cmd(mail)[0].startswith("250 ")
        for rcpt in rcpts:
            assert self.cmd(f"RCPT TO:<{rcpt}>")[0].startswith("250 ")

    def message(self, body: bytes = b"Subject: t\r\n\r\nhi\r\n") -> list[str]:
        assert self.cmd("DATA") == [R.S354_DATA]
        return self.send(body + b".\r\n")

    def lost(self) -> None:
        self.proto.connectionLost(None)


@pytest.fixture
def handler(tmp_path):
    return FakeHandler(tmp_path)


@pytest.fixture
def session(handler):
    s = Session(handler)
    assert s.read() == [R.S220_GREETING]
    return s


# --- 3.1 session start, banners ------------------------------------------------------

def test_greeting_and_session_started(handler):
    s = Session(handler)
    assert s.read() == [R.S220_GREETING]
    (name, client), = handler.events
    assert name == "session_started"
    assert (client.mta_addr, client.mta_port, client.local_addr, client.local_port) == (
        "127.0.0.1", 41234, "127.0.0.1", 10024)
    assert s.transport.nodelay is True


def test_greeting_lmtp_bank(tmp_path):
    s = Session(FakeHandler(tmp_path, protocol="LMTP"))
    assert s.read() == [R.S220_GREETING_LMTP]


def test_unix_socket_helo_name_is_localhost(tmp_path):
    h = FakeHandler(tmp_path, protocol="LMTP")
    s = Session(h, peer=UNIXAddress(None), host=UNIXAddress("/var/amavis/amavisd.sock"))
    assert s.read() == ["220 [localhost] LMTP amavis service ready"]
    client = h.events[0][1]
    assert (client.local_addr, client.local_port, client.unix_socket) == (
        "", 0, "/var/amavis/amavisd.sock")


def test_banner_variables(tmp_path):
    h = FakeHandler(tmp_path, smtpd_greeting_banner="$myhostname ${version-id} $version-date x",
                    smtpd_quit_banner="${myhostname} $protocol ${nosuch} bye")
    s = Session(h)
    assert s.read() == ["220 amavis-test.example.com 2.13.0 20230106 x"]
    assert s.cmd("LHLO mta")[-1].startswith("250 XFORWARD")
    assert s.cmd("QUIT") == ["221 2.0.0 amavis-test.example.com LMTP ${nosuch} bye"]


def test_refused_session_gets_no_bytes(handler):
    handler.refuse = True
    s = Session(handler)
    assert s.read() == []
    assert s.transport.disconnecting
    s.lost()
    assert handler.names() == ["session_started", "session_ended"]


# --- 3.2 input rules --------------------------------------------------------------------

@pytest.mark.parametrize("wire, expected", [
    (b"NOOP\r\n", [R.S250_NOOP]),
    (b"  noop   \r\n", [R.S250_NOOP]),
    (b"\tNoOp extra args\r\n", [R.S250_NOOP]),
    (b"NOOP\nNOOP\r\n", [R.S500_BAD_SYNTAX]),
    (b"\r\n", [R.S500_BAD_SYNTAX]),
    (b"1NOOP\r\n", [R.S500_BAD_SYNTAX]),
    (b"NOOP:\r\n", [R.S500_BAD_SYNTAX]),
])
def test_command_syntax(session, wire, expected):
    assert session.send(wire) == expected


def test_line_ends_only_at_crlf(session):
    """A bare LF stays in the buffer; no reply until a CRLF arrives (spec 3.2)."""
    assert session.send(b"NOOP\n") == []
    assert session.send(b"NOOP\r") == []
    assert session.send(b"\n") == [R.S500_BAD_SYNTAX]


@pytest.mark.parametrize("chunk", [1, 7, 4096, 100_000])
def test_command_line_too_long(session, chunk):
    """Our cap (not Perl's): 500 5.5.2 and the line is dropped, then business as usual."""
    wire = b"NOOP " + b"x" * 70_000 + b"\r\nNOOP\r\n"
    out = []
    for i in range(0, len(wire), chunk):
        out += session.send(wire[i:i + chunk])
    assert out == [R.S500_LINE_TOO_LONG, R.S250_NOOP]
    assert len(session.proto._buffer) == 0


def test_command_line_at_the_limit_is_fine(session):
    assert session.send(b"NOOP " + b"x" * (65536 - 5) + b"\r\n") == [R.S250_NOOP]


# --- 3.3 simple commands -------------------------------------------------------------------

def test_quit(session, handler):
    assert session.cmd("QUIT") == [R.S221_QUIT]
    assert session.transport.disconnecting
    assert session.send(b"NOOP\r\n") == []
    session.lost()
    assert handler.names()[-1] == "session_ended"


@pytest.mark.parametrize("line, expected", [
    ("QUIT x", [R.S501_QUIT_ARGS]),
    ("RSET", [R.S250_RSET]),
    ("RSET x", [R.S501_RSET_ARGS]),
    ("HELO client.example.org", [R.S250_HELO]),
    ("HELP", R.S214_HELP),
    ("HELP me", R.S214_HELP),
    ("VRFY", [R.S501_VRFY]),
    ("VRFY bob", [R.S252_VRFY]),
    ("STARTTLS", [R.S502_STARTTLS_UNAVAILABLE]),
    ("AUTH PLAIN", [R.S500_AUTH_UNKNOWN]),
    ("DATA", [R.S503_NEED_MAIL_DATA]),
    ("RCPT TO:<bob@example.com>", [R.S503_NEED_MAIL_RCPT]),
])
def test_simple_replies(session, line, expected):
    assert session.cmd(line) == expected


@pytest.mark.parametrize("verb", ["EXPN", "TURN", "ETRN", "SEND", "SOML", "SAML"])
def test_not_implemented(session, verb):
    assert session.cmd(f"{verb.lower()} x") == [R.s502_not_implemented(verb)]


@pytest.mark.parametrize("verb", ["BDAT", "XCLIENT", "FOOBAR"])
def test_not_recognized(session, verb):
    assert session.cmd(f"{verb} 1") == [R.s500_not_recognized(verb)]


def test_transaction_order_errors(session):
    session.envelope()
    assert session.cmd("MAIL FROM:<x@y>") == [R.S503_NESTED_MAIL]
    assert session.cmd("DATA") == [R.S503_NEED_RCPT_DATA]
    assert session.cmd("RCPT TO:<bob@example.com>") == [R.s250_recipient("bob@example.com")]
    assert session.cmd("DATA x") == [R.S501_DATA_ARGS]


def test_data_no_valid_recipients_smtp(session):
    session.envelope()
    assert session.cmd("RCPT TO:bob") == [R.S501_RCPT_SYNTAX]
    assert session.cmd("DATA") == [R.S554_NO_VALID_RCPTS]


def test_data_no_valid_recipients_lmtp(session):
    session.cmd("LHLO mta")
    session.envelope()
    assert session.cmd("RCPT TO:<bob@example.com> FOO") == [R.s555_rcpt_param("FOO")]
    assert session.cmd("DATA") == [R.S503_NO_VALID_RCPTS_LMTP]


# --- 3.4 EHLO ------------------------------------------------------------------------------

def test_ehlo_default(session):
    assert session.cmd("EHLO client.example.org") == R.EHLO_DEFAULT


def test_lhlo_same_list(session):
    assert session.cmd("LHLO client.example.org") == R.EHLO_DEFAULT


@pytest.mark.parametrize("limit, enforce, expected", [
    (70000, 1, "250-SIZE 70000"), (1000, 1, "250-SIZE 65536"), (1000, 0, "250-SIZE 1000"),
])
def test_ehlo_size(tmp_path, limit, enforce, expected):
    s = Session(FakeHandler(tmp_path, smtpd_message_size_limit=limit,
                            enforce_smtpd_message_size_limit_64kb_min=enforce))
    s.read()
    assert s.cmd("EHLO x")[3] == expected


def test_ehlo_discard_keywords(tmp_path):
    """Discarding 8BITMIME also discards SMTPUTF8; matching by first word, any case."""
    s = Session(FakeHandler(tmp_path, smtpd_discard_ehlo_keywords=["8bitmime", "Dsn", "SIZE"]))
    s.read()
    assert s.cmd("EHLO x") == ["250-[127.0.0.1]", "250-VRFY", "250-PIPELINING",
                               "250-ENHANCEDSTATUSCODES",
                               "250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"]


def tls_settings(level="may"):
    return dict(tls_security_level_in=level, smtpd_tls_server_options={
        "SSL_cert_file": str(CERT_DIR / "localhost.crt"),
        "SSL_key_file": str(CERT_DIR / "localhost.key")})


def test_ehlo_starttls_and_auth(tmp_path):
    s = Session(FakeHandler(tmp_path, auth_mech_avail=["PLAIN", "LOGIN"], **tls_settings()))
    s.read()
    lines = s.cmd("EHLO x")
    assert lines[-3:] == ["250-STARTTLS", "250-AUTH PLAIN LOGIN",
                          "250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"]
    assert lines[:-3] == R.EHLO_DEFAULT[:-1]
    s.cmd("STARTTLS")
    assert "250-STARTTLS" not in s.cmd("EHLO x")


# --- 3.5 MAIL ------------------------------------------------------------------------------

@pytest.mark.parametrize("params, expected", [
    ("FOO=bar", R.s504_mail_param("FOO=bar")),
    ("BODY", R.s501_value_required("BODY")),
    ("RET", R.s501_value_required("RET")),
    ("ENVID", R.s501_value_required("ENVID")),
    ("AUTH", R.s501_value_required("AUTH")),
    ("BODY=BINARYMIME", R.S501_BODY),
    ("RET=XYZ", R.s501_ret("XYZ")),
    ("RET=FULL RET=HDRS", R.S501_RET_DUP),
    ("SIZE=abc", R.S501_SIZE),
    ("SIZE", R.S501_SIZE),
    ("SIZE=" + "1" * 21, R.S501_SIZE),
    ("SMTPUTF8=yes", R.S501_SMTPUTF8),
    ("AUTH=<> AUTH=<>", R.s504_auth_dup("AUTH=<>")),
    ("SIZE==1", R.S501_MAIL_PARAMS),
    ("-X=1", R.S501_MAIL_PARAMS),
    ("FOO=bar BODY=BINARYMIME", R.s504_mail_param("FOO=bar")),
])
def test_mail_parameter_errors(session, handler, params, expected):
    assert session.cmd(f"MAIL FROM:<alice@example.org> {params}") == [expected]
    assert "transaction_started" not in handler.names()
    assert session.cmd("MAIL FROM:<alice@example.org>") == [R.s250_sender("alice@example.org")]


@pytest.mark.parametrize("line", ["MAIL FROM:alice@example.org", "MAIL TO:<a@b>",
                                  "MAIL FROM:<a@b>SIZE=1", "MAIL FROM:<a@b", "MAIL",
                                  "MAIL FROM:<a<b@c>"])
def test_mail_syntax_errors(session, line):
    assert session.cmd(line) == [R.S501_MAIL_SYNTAX]


def test_mail_observed_parameters_and_message_fields(session, handler):
    """Observed in section 10; the values reach the Message as the spec says."""
    assert session.cmd("mail from: <alice@example.org> SIZE=1000 BODY=8BITMIME RET=HDRS "
                       "ENVID=abc+2Bdef AUTH=<>") == [R.s250_sender("alice@example.org")]
    session.cmd("RCPT TO:<bob@example.com>")
    assert session.message() == [FWD_OK]
    msg, = handler.messages
    assert (msg.declared_size, msg.body_type, msg.dsn_ret, msg.dsn_envid, msg.auth_submitter) \
        == (1000, "8BITMIME", "HDRS", "abc+2Bdef", "<>")


@pytest.mark.parametrize("path, internal", [
    ("", ""),
    ('"john doe"@example.com', "john doe@example.com"),
    ('"a\\"b"@example.com', 'a"b@example.com'),
    ("@relay.example,@r2.example:user@example.com", "user@example.com"),
    ("user@[192.0.2.1]", "user@[192.0.2.1]"),
])
def test_mail_paths_are_echoed_and_unquoted(session, handler, path, internal):
    assert session.cmd(f"MAIL FROM:<{path}>") == [R.s250_sender(path)]
    session.cmd("RCPT TO:<bob@example.com>")
    session.message()
    assert (handler.messages[0].sender, handler.messages[0].sender_quoted) == (internal, path)


def test_mail_side_effects_order(session, handler):
    session.cmd("MAIL FROM:<a@b>")
    assert handler.names()[1:] == ["state", "transaction_started", "client_info_at_mail"]
    assert handler.events[1] == ("state", ST_MAIL)


def test_auth_required(tmp_path):
    h = FakeHandler(tmp_path, auth_required_inp=1, auth_mech_avail=["PLAIN"])
    s = Session(h)
    s.read()
    assert s.cmd("MAIL FROM:<a@b>") == [R.S530_AUTH_REQUIRED]
    plain = base64.b64encode(b"\0user\0secret").decode()
    assert s.cmd(f"AUTH PLAIN {plain}") == [R.S235_AUTH_OK]
    assert s.cmd("MAIL FROM:<a@b> AUTH=sub+2Bmitter@x") == [R.s250_sender("a@b")]
    s.cmd("RCPT TO:<c@d>")
    s.message()
    assert h.messages[0].auth_submitter == "sub+mitter@x"
    assert h.messages[0].protocol == "ESMTPA"


def test_mail_failure_in_handler_is_451(session, handler):
    def broken():
        raise TempFail("prepare_tempdir", "disk full")
    handler.transaction_started = broken
    assert session.cmd("MAIL FROM:<a@b>") == [
        R.s451_processing("", "prepare_tempdir", "disk full")]
    assert session.cmd("RCPT TO:<c@d>") == [R.S503_NEED_MAIL_RCPT]


# --- 3.6 RCPT ------------------------------------------------------------------------------

@pytest.mark.parametrize("params, expected", [
    ("FOO", R.s555_rcpt_param("FOO")),
    ("Foo=1", R.s555_rcpt_param("Foo")),
    ("NOTIFY=NEVER,SUCCESS", R.s501_notify_combination("NEVER,SUCCESS")),
    ("NOTIFY=BOGUS", R.s501_notify_illegal("BOGUS")),
    ("NOTIFY=SUCCESS,", R.s501_notify_missing("SUCCESS,")),
    ("NOTIFY", R.S501_NOTIFY_NO_VALUE),
    ("NOTIFY=SUCCESS NOTIFY=FAILURE", R.S501_NOTIFY_DUP),
    ("ORCPT=rfc822;a@b ORCPT=rfc822;a@b", "501 5.5.4 Syntax error in RCPT parameter ORCPT"),
    ("ORCPT=noaddrtype", "501 5.5.4 Syntax error in RCPT parameter ORCPT"),
    ("NOTIFY==x", "501 5.5.4 Syntax error in RCPT TO parameters"),
])
def test_rcpt_parameter_errors(session, params, expected):
    session.envelope()
    assert session.cmd(f"RCPT TO:<bob@example.com> {params}") == [expected]


def test_rcpt_parameters_reach_the_recipient(session, handler):
    session.envelope()
    assert session.cmd("RCPT TO:<bob@example.com> ORCPT=rfc822;bob+2Bx@example.com "
                       "NOTIFY=success,Failure") == [R.s250_recipient("bob@example.com")]
    session.cmd("RCPT TO:<carol@example.com> ORCPT=utf-8;b\\x{00FC}b@example.com")
    session.cmd('RCPT TO:<"dave"@example.com>')
    session.cmd("RCPT TO:<eve@example.com> NOTIFY=NEVER")
    session.message()
    r1, r2, r3, r4 = handler.messages[0].recipients
    assert (r1.address, r1.notify, r1.orcpt) == (
        "bob@example.com", ["SUCCESS", "FAILURE"], "rfc822;bob+x@example.com")
    assert r2.orcpt == "utf-8;büb@example.com"
    assert (r3.address, r3.quoted, r3.orcpt) == (
        "dave@example.com", '"dave"@example.com', ';"dave"@example.com')
    assert (r4.notify, r4.orcpt) == (["NEVER"], None)


def test_recipient_limit_counts_every_attempt(tmp_path):
    h = FakeHandler(tmp_path, smtpd_recipient_limit=2)
    s = Session(h)
    s.read()
    s.envelope()
    assert s.cmd("RCPT TO:bad") == [R.S501_RCPT_SYNTAX]
    assert s.cmd("RCPT TO:<a@b>") == [R.s250_recipient("a@b")]
    assert s.cmd("RCPT TO:<c@d>") == [R.S452_TOO_MANY]
    s.message()
    assert [r.address for r in h.messages[0].recipients] == ["a@b"]


@pytest.mark.parametrize("destiny, code_enh, accepted", [
    (D_BOUNCE, "552 5.3.4", False), (D_REJECT, "552 5.3.4", False),
    (D_TEMPFAIL, "452 4.3.4", False), (D_PASS, "250 2.3.4", True),
])
def test_declared_size_over_recipient_limit(session, handler, destiny, code_enh, accepted):
    """Observed: 552 5.3.4 Declared message size (200000 B) exceeds ... <bob@example.com>."""
    handler.size_policies["bob@example.com"] = SizePolicy(70000, destiny)
    session.cmd("MAIL FROM:<alice@example.org> SIZE=200000")
    assert session.cmd("RCPT TO:<bob@example.com>") == [
        R.declared_size(code_enh, 200000, "bob@example.com")]
    assert session.cmd("RCPT TO:<carol@example.com>") == [R.s250_recipient("carol@example.com")]
    assert [r.address for r in session.proto.txn.recipients] == (
        ["bob@example.com"] if accepted else []) + ["carol@example.com"]


def test_declared_size_over_global_limit(tmp_path):
    s = Session(FakeHandler(tmp_path, smtpd_message_size_limit=70000))
    s.read()
    s.cmd("MAIL FROM:<a@b> SIZE=70001")
    assert s.cmd("RCPT TO:<bob@example.com>") == [
        R.declared_size("552 5.3.4", 70001, "bob@example.com")]
    s.cmd("RSET")
    s.cmd("MAIL FROM:<a@b> SIZE=70000")
    assert s.cmd("RCPT TO:<bob@example.com>") == [R.s250_recipient("bob@example.com")]


# --- 3.7 DATA, size limits -------------------------------------------------------------------

def test_data_spools_and_replies(session, handler):
    session.cmd("EHLO mta.example.net")
    session.envelope("bob@example.com", "carol@example.com")
    assert session.message(b"Subject: t\r\n\r\n..dot\r\n") == [FWD_OK]
    assert handler.bodies == [b"Subject: t\n\n.dot\n"]
    msg = handler.messages[0]
    assert (msg.sender, msg.log_id, msg.size, msg.lmtp, msg.protocol) == (
        "alice@example.org", "12160-01", 20, False, "ESMTP")
    assert [r.address for r in msg.recipients] == ["bob@example.com", "carol@example.com"]
    assert msg.client.mta_helo == "mta.example.net"
    assert msg.rx_time == session.clock.seconds()
    assert msg.findings["eight_bit"] is False
    assert ("state", ST_DATA) in handler.events
    assert handler.events[-1] == ("transaction_ended", msg)


def test_second_transaction_gets_new_ids(session, handler):
    for _ in range(2):
        session.envelope("bob@example.com")
        assert session.message() == [FWD_OK]
    assert [m.log_id for m in handler.messages] == ["12160-01", "12160-02"]
    assert handler.messages[1].spool_path.name == "email-2.txt"


def test_size_limit_enforced_protocols_3_7(tmp_path):
    """Our deliberate difference: $smtpd_message_size_limit alone is enforced."""
    h = FakeHandler(tmp_path, smtpd_message_size_limit=70000)
    s = Session(h)
    s.read()
    s.envelope("bob@example.com")
    s.cmd("DATA")
    body = (b"x" * 998 + b"\r\n") * 141
    assert s.send(body + b".\r\nNOOP\r\n") == [R.s552_message_size(141000), R.S250_NOOP]
    assert "process" not in h.names()
    assert ("transaction_ended", None) in h.events
    assert s.proto.txn is None


def test_per_recipient_limit_enforced_lmtp(tmp_path):
    """The largest non-PASS per-recipient limit; LMTP gets one 552 per recipient."""
    h = FakeHandler(tmp_path)
    h.size_policies = {"a@b": SizePolicy(70000, D_BOUNCE), "c@d": SizePolicy(80000, D_REJECT),
                       "e@f": SizePolicy(70000, D_PASS)}
    s = Session(h)
    s.read()
    s.cmd("LHLO x")
    s.envelope("a@b", "c@d", "e@f")
    s.cmd("DATA")
    assert s.send((b"y" * 78 + b"\r\n") * 1001 + b".\r\n") == [R.s552_message_size(80080)] * 3
    s.envelope("a@b", "c@d")
    assert s.message((b"y" * 78 + b"\r\n") * 1000) == [FWD_OK] * 2


def test_spool_write_error_is_451_and_session_continues(session, handler, monkeypatch):
    session.envelope("bob@example.com")
    session.cmd("DATA")
    spool = session.proto._spool

    def fail(out):
        spool.error, spool.state = "No space left on device", type(spool.state).FAILED
    monkeypatch.setattr(spool, "_write", fail)
    assert session.send(b"data\r\n.\r\n") == ["451 4.5.0 Error in processing: "
                                               "No space left on device"]
    assert session.cmd("NOOP") == [R.S250_NOOP]


def test_data_and_dot_in_one_packet_with_pipelined_commands(session, handler):
    session.envelope("bob@example.com")
    out = session.send(b"DATA\r\nbody\r\n.\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\n")
    assert out == [R.S354_DATA, FWD_OK, R.s250_sender("x@y"), R.s250_recipient("z@w")]


# --- 3.8 final replies ----------------------------------------------------------------------

def test_smtp_mixed_result_one_reply(session, handler):
    def decide(msg):
        pass_all(msg)
        msg.recipients[1].reply, msg.recipients[1].destiny = Reply.parse(BANNED), D_REJECT
    handler.decide = decide
    session.envelope("bob@example.com", "rej1@example.com")
    assert session.message() == [FWD_OK + ", but 1 REJECT"]


def test_lmtp_one_reply_per_recipient(session, handler):
    def decide(msg):
        pass_all(msg)
        msg.recipients[1].reply, msg.recipients[1].destiny = Reply.parse(BANNED), D_REJECT
        msg.recipients[2].reply, msg.recipients[2].destiny = Reply.parse(BOUNCE), D_BOUNCE
    handler.decide = decide
    session.cmd("LHLO mta")
    session.envelope("bob@example.com", "rej1@example.com", "b@example.com")
    assert session.message() == [FWD_OK, BANNED,
                                 f"250 2.5.0 Ok <b@example.com>, DSN was sent ({BOUNCE})"]
    assert handler.messages[0].lmtp and handler.messages[0].protocol == "LMTP"


def test_lmtp_bank_starts_in_lmtp_mode_and_ehlo_turns_it_off(tmp_path):
    h = FakeHandler(tmp_path, protocol="LMTP")
    s = Session(h)
    s.read()
    s.envelope("a@b", "c@d")
    assert s.message() == [FWD_OK, FWD_OK]
    s.cmd("EHLO x")
    s.envelope("a@b", "c@d")
    assert s.message() == [FWD_OK]


def test_process_tempfail_gives_451_to_every_recipient(session, handler):
    handler.fail = TempFail("virus_scan", "clamd: connection refused")
    session.cmd("LHLO x")
    session.envelope("a@b", "c@d")
    expected = R.s451_processing("12160-01", "virus_scan", "clamd: connection refused")
    assert session.message() == [expected, expected]


def test_process_crash_gives_451_check_mail(session, handler):
    handler.fail = RuntimeError("boom")
    session.envelope("a@b", "c@d")
    assert session.message() == [R.s451_processing("12160-01", "check_mail", "boom")]
    assert session.cmd("NOOP") == [R.S250_NOOP]


def test_reply_is_sanitized_and_wrapped(session, handler):
    def decide(msg):
        for r in msg.recipients:
            r.reply, r.destiny, r.done = Reply(554, "5.7.0", "line1\nline\x01two"), D_REJECT, 1
    handler.decide = decide
    session.envelope("a@b")
    assert session.message() == ["554-5.7.0 line1", "554 5.7.0 line\\x01two"]


# --- 3.9 pipelining, timeouts, shutdown --------------------------------------------------------

def test_pipelined_batch_one_write_in_order(session):
    """Observed: NOOP NOOP RSET MAIL RCPT RSET -> six replies, in order."""
    session.transport.writes = 0
    out = session.send(b"NOOP\r\nNOOP\r\nRSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRSET\r\n")
    assert out == [R.S250_NOOP, R.S250_NOOP, R.S250_RSET, R.s250_sender("a@b"),
                   R.s250_recipient("c@d"), R.S250_RSET]
    assert session.transport.writes == 1


def test_input_after_dot_waits_for_the_final_reply(session, handler):
    handler.hold = True
    session.envelope("a@b")
    session.cmd("DATA")
    assert session.send(b"x\r\n.\r\nNOOP\r\nQUIT\r\n") == []
    assert session.transport.producerState == "paused"
    session.clock.advance(10_000)                  # no timeout while we are busy
    assert session.read() == []
    handler.release()
    assert session.read() == [FWD_OK, R.S250_NOOP, R.S221_QUIT]
    assert session.transport.producerState == "producing"


def test_idle_timeout(tmp_path):
    h = FakeHandler(tmp_path, smtpd_timeout=6)
    s = Session(h)
    s.read()
    s.clock.advance(5)
    s.cmd("NOOP")
    s.clock.advance(5)
    assert s.read() == []
    s.clock.advance(1)
    assert s.read() == [R.S421_IDLE_TIMEOUT]
    assert s.transport.disconnecting and s.proto.timed_out
    s.lost()
    assert h.names()[-1] == "session_ended"


def test_timeout_inside_data(tmp_path):
    h = FakeHandler(tmp_path, smtpd_timeout=6)
    s = Session(h)
    s.read()
    s.envelope("a@b")
    s.cmd("DATA")
    s.send(b"partial line")
    s.clock.advance(6)
    assert s.read() == [R.S421_DATA_TIMEOUT]
    s.lost()
    assert h.names()[-2:] == ["transaction_ended", "session_ended"]
    assert h.events[-2] == ("transaction_ended", None)


def test_graceful_shutdown_idle(session):
    session.proto.graceful_shutdown("TERM")
    assert session.read() == [R.S421_IDLE_TIMEOUT]
    assert session.transport.disconnecting


def test_graceful_shutdown_while_processing(session, handler):
    handler.hold = True
    session.envelope("a@b")
    session.message()
    session.proto.graceful_shutdown("TERM")
    assert session.read() == [R.S421_SHUTDOWN_BUSY]
    session.lost()
    assert "session_ended" not in handler.names()
    handler.release()
    assert session.read() == []
    assert handler.names()[-2:] == ["transaction_ended", "session_ended"]


def test_session_ended_exactly_once(session, handler):
    session.envelope("a@b")
    session.lost()
    session.lost()
    assert handler.names().count("session_ended") == 1
    assert handler.names().count("transaction_ended") == 1


# --- 3.10 proto strings ----------------------------------------------------------------------

@pytest.mark.parametrize("greeting, expected", [
    ("HELO x", "SMTP"), ("EHLO x", "ESMTP"), ("LHLO x", "LMTP"), (None, "ESMTP")])
def test_proto_string(session, handler, greeting, expected):
    if greeting:
        session.cmd(greeting)
    session.envelope("a@b")
    session.message()
    assert handler.messages[0].protocol == expected


def test_smtputf8_proto_sticks_for_the_session_quirk_9_4(session, handler):
    session.cmd("EHLO x")
    session.envelope("a@b", mail="MAIL FROM:<ä@example.org> SMTPUTF8")
    session.message()
    session.envelope("a@b")
    session.message()
    assert [(m.smtputf8, m.protocol) for m in handler.messages] == [
        (True, "UTF8SMTP"), (False, "UTF8SMTP")]
    assert handler.messages[0].sender == "ä@example.org"
    session.cmd("LHLO x")
    session.envelope("a@b", mail="MAIL FROM:<a@b> SMTPUTF8")
    session.message()
    assert handler.messages[2].protocol == "UTF8LMTP"


# --- 3.11 XFORWARD ---------------------------------------------------------------------------

def test_xforward_values_reach_client_info(session, handler):
    assert session.cmd("XFORWARD NAME=mail.example.org ADDR=192.0.2.10 PORT=41234") == [
        R.S250_XFORWARD]
    assert session.cmd("XFORWARD PROTO=ESMTP HELO=[UNAVAILABLE] IDENT=4ABC+2BDEF "
                       "SOURCE=REMOTE LOGIN=joe") == [R.S250_XFORWARD]
    session.envelope("a@b")
    client = handler.events[-1][1]
    assert (client.name, client.addr, client.port, client.proto, client.helo, client.ident,
            client.source, client.login) == ("mail.example.org", "192.0.2.10", "41234",
                                             "ESMTP", None, "4ABC+DEF", "REMOTE", "joe")
    assert client.mta_addr == "127.0.0.1"
    session.message()
    assert handler.messages[0].client is client
    session.envelope("a@b")
    assert handler.events[-1][1].addr is None       # consumed at MAIL


@pytest.mark.parametrize("args, expected", [
    ("FOO=bar", R.s501_xforward_param("FOO=bar")),
    ("ADDR", R.S501_XFORWARD_SYNTAX),
    ("", R.S501_XFORWARD_SYNTAX),
    ("NAME=" + "x" * 256, R.S501_XFORWARD_SYNTAX),
    ("NAME=ok ADDR=1.2.3.4 BAD", R.S501_XFORWARD_SYNTAX),
])
def test_xforward_errors(session, args, expected):
    assert session.cmd(f"XFORWARD {args}".rstrip()) == [expected]


def test_xforward_in_transaction_and_reset_by_rset(session, handler):
    session.cmd("XFORWARD ADDR=192.0.2.1")
    session.cmd("RSET")
    session.cmd("MAIL FROM:<a@b>")
    assert handler.events[-1][1].addr is None
    assert session.cmd("XFORWARD ADDR=192.0.2.1") == [R.S503_XFORWARD_IN_TXN]


# --- 3.11 STARTTLS -----------------------------------------------------------------------------

def test_starttls(tmp_path):
    h = FakeHandler(tmp_path, **tls_settings())
    s = Session(h)
    s.read()
    s.cmd("EHLO x")
    assert s.cmd("STARTTLS x") == [R.S501_STARTTLS_ARGS]
    assert s.send(b"STARTTLS\r\nMAIL FROM:<smuggled@x>\r\n") == [R.S220_STARTTLS]
    assert s.transport.tls_context == "CTX"
    assert "transaction_started" not in h.names()          # plaintext was discarded
    assert s.cmd("STARTTLS") == [R.S554_TLS_ACTIVE]
    s.cmd("EHLO x")
    s.envelope("a@b")
    s.message()
    assert (h.messages[0].protocol, h.messages[0].tls_cipher) == (
        "ESMTPS", "TLS_AES_256_GCM_SHA384")


def test_tls_required_before_other_commands(tmp_path):
    s = Session(FakeHandler(tmp_path, **tls_settings("encrypt")))
    s.read()
    assert s.cmd("MAIL FROM:<a@b>") == [R.S530_STARTTLS_FIRST]
    assert s.cmd("HELO x") == [R.S530_STARTTLS_FIRST]
    assert s.cmd("NOOP") == [R.S250_NOOP]
    assert s.cmd("EHLO x")[0] == "250-[127.0.0.1]"
    assert s.cmd("STARTTLS") == [R.S220_STARTTLS]
    assert s.cmd("MAIL FROM:<a@b>") == [R.s250_sender("a@b")]


def test_default_tls_context_handshakes(tmp_path):
    """The PEM files give a server context that completes a real TLS handshake."""
    from OpenSSL import SSL

    from amavisd.protocols.smtp_server import default_tls_context_factory
    options = tls_settings()["smtpd_tls_server_options"]
    server = SSL.Connection(default_tls_context_factory(options).getContext(), None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    assert server.get_cipher_name() and client.get_cipher_name() == server.get_cipher_name()


# --- 3.11 AUTH ---------------------------------------------------------------------------------

@pytest.fixture
def auth_session(tmp_path):
    s = Session(FakeHandler(tmp_path, auth_mech_avail=["PLAIN", "LOGIN", "ANONYMOUS"]))
    s.read()
    s.cmd("EHLO x")
    return s


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_auth_plain_with_initial_response(auth_session):
    assert auth_session.cmd(f"AUTH PLAIN {b64(b'authz' + bytes(1) + b'joe' + bytes(1) + b'pw')}") \
        == [R.S235_AUTH_OK]
    assert (auth_session.proto.auth_user, auth_session.proto.auth_password) == ("joe", "pw")
    assert auth_session.cmd("AUTH PLAIN") == [R.S503_AUTH_TWICE]


def test_auth_plain_with_empty_challenge(auth_session):
    assert auth_session.cmd("AUTH PLAIN") == [R.S334_EMPTY]
    assert auth_session.cmd(b64(b"\0joe\0pw")) == [R.S235_AUTH_OK]


def test_auth_login(auth_session):
    assert auth_session.cmd("AUTH LOGIN") == [R.S334_USERNAME]
    assert auth_session.cmd(b64(b"joe")) == [R.S334_PASSWORD]
    assert auth_session.cmd(b64(b"pw")) == [R.S235_AUTH_OK]
    assert auth_session.proto.auth_user == "joe"


def test_auth_login_with_initial_username(auth_session):
    assert auth_session.cmd(f"AUTH LOGIN {b64(b'joe')}") == [R.S334_PASSWORD]
    assert auth_session.cmd(b64(b"pw")) == [R.S235_AUTH_OK]


def test_auth_anonymous(auth_session):
    assert auth_session.cmd("AUTH ANONYMOUS") == [R.S334_EMPTY]
    assert auth_session.cmd(b64(b"trace")) == [R.S235_AUTH_OK]


@pytest.mark.parametrize("lines, expected", [
    (["AUTH PLAIN", "*"], R.S501_AUTH_ABORTED),
    (["AUTH LOGIN", "*"], R.S501_AUTH_ABORTED),
    (["AUTH PLAIN", "!!notbase64"], R.S501_AUTH_MALFORMED),
    ([f"AUTH PLAIN {b64(b'no-nuls')}"], R.S501_AUTH_MALFORMED),
    (["AUTH"], R.S501_AUTH_SYNTAX),
    (["AUTH PLAIN a b"], R.S501_AUTH_SYNTAX),
    (["AUTH CRAM-MD5"], R.S504_AUTH_MECH),
    (["AUTH PLAIN", "A" * 12289], R.S500_AUTH_TOO_LONG),
])
def test_auth_errors(auth_session, lines, expected):
    for line in lines:
        out = auth_session.cmd(line)
    assert out == [expected]
    assert auth_session.proto.auth_user is None
    assert auth_session.cmd("NOOP") == [R.S250_NOOP]


def test_auth_in_transaction(auth_session):
    auth_session.cmd("MAIL FROM:<a@b>")
    assert auth_session.cmd("AUTH PLAIN") == [R.S503_AUTH_IN_TXN]


# --- 3.11 HAProxy --------------------------------------------------------------------------------

def test_haproxy_v4(tmp_path):
    h = FakeHandler(tmp_path, haproxy_target_enabled=1)
    s = Session(h)
    assert s.read() == []
    assert h.events == []
    assert s.cmd("PROXY TCP4 192.0.2.7 198.51.100.1 56324 10024") == [
        "220 [198.51.100.1] ESMTP amavis service ready"]
    client = h.events[0][1]
    assert (client.mta_addr, client.mta_port, client.local_addr, client.local_port) == (
        "192.0.2.7", 56324, "198.51.100.1", 10024)


def test_haproxy_v6(tmp_path):
    h = FakeHandler(tmp_path, haproxy_target_enabled=1)
    s = Session(h, peer=IPv6Address("TCP", "::1", 5), host=IPv6Address("TCP", "::1", 6))
    assert s.cmd("PROXY TCP6 2001:db8::1 2001:db8::2 1 65535")[0].startswith(
        "220 [2001:db8::2] ")


@pytest.mark.parametrize("line", [
    "PROXY UNKNOWN", "PROXY TCP4 192.0.2.7 198.51.100.1 56324 65536",
    "PROXY TCP4 192.0.2.7 198.51.100.1 056324 10024", "PROXY TCP6 192.0.2.7 ::1 1 2",
    "EHLO x", "PROXY TCP4 192.0.2.300 198.51.100.1 1 2", "PROXY  TCP4 1.2.3.4 1.2.3.4 1 2",
    "PROXY TCP4 1.2.3.4 1.2.3.4 1 2 " + "x" * 200,
])
def test_haproxy_bad_header_closes_silently(tmp_path, line):
    h = FakeHandler(tmp_path, haproxy_target_enabled=1)
    s = Session(h)
    assert s.cmd(line) == []
    assert s.transport.disconnecting
    assert "session_started" not in h.names()


# --- a real socket: STARTTLS over TCP, pause/resume, a large message -------------------------

LIVE_SERVER = r'''
import sys
from pathlib import Path
from types import SimpleNamespace
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from amavisd.errors import Reply
from amavisd.protocols.smtp_server import SMTPServer

certs, tmp = Path(sys.argv[1]), Path(sys.argv[2])
settings = SimpleNamespace(
    smtpd_timeout=30, smtpd_greeting_banner="${helo-name} ${protocol} ${product} service ready",
    smtpd_quit_banner="${helo-name} ${product} closing transmission channel",
    smtpd_message_size_limit=None, enforce_smtpd_message_size_limit_64kb_min=1,
    smtpd_recipient_limit=1100, smtpd_discard_ehlo_keywords=[], tls_security_level_in="may",
    smtpd_tls_server_options={"SSL_cert_file": str(certs / "localhost.crt"),
                              "SSL_key_file": str(certs / "localhost.key")},
    auth_mech_avail=[], auth_required_inp=None, haproxy_target_enabled=None, protocol=None,
    myhostname="localhost")

class Handler:
    settings = settings
    n = 0
    def session_started(self, client): pass
    def transaction_started(self):
        Handler.n += 1
        return f"live-{Handler.n:02d}", tmp / f"email-{Handler.n}.txt"
    def client_info_at_mail(self, client): pass
    def state(self, letter): pass
    def process(self, msg):
        d = defer.Deferred()
        def done():
            for r in msg.recipients:
                r.reply = Reply(250, "2.0.0", f"Ok size={msg.size} proto={msg.protocol} "
                                              f"cipher={bool(msg.tls_cipher)}")
                r.destiny, r.done = 1, 1
            d.callback(None)
        reactor.callLater(0.05, done)
        return d
    def transaction_ended(self, msg): pass
    def session_ended(self): reactor.callLater(0, reactor.stop)

port = reactor.listenTCP(0, Factory.forProtocol(lambda: SMTPServer(Handler(), reactor=reactor)),
                         interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
'''


def test_live_starttls_and_big_message(tmp_path):
    """Through a real TCP socket: STARTTLS handshake, then a 3 MB message over TLS."""
    import smtplib
    import ssl
    import subprocess
    import sys

    root = CERT_DIR.parent.parent
    proc = subprocess.Popen([sys.executable, "-c", LIVE_SERVER, str(CERT_DIR), str(tmp_path)],
                            cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            assert client.ehlo()[0] == 250 and client.has_extn("starttls")
            assert client.starttls(context=context)[0] == 220
            client.ehlo()
            assert not client.has_extn("starttls")
            body = b"Subject: big\r\n\r\n" + b".leading dot line\r\n" * 160_000
            assert client.mail("a@example.org")[0] == 250
            assert client.rcpt("b@example.org")[0] == 250
            code, text = client.data(body)
        expected_size = len(body)      # smtplib's stuffing dots do not count (RFC 1870)
        assert (code, text.decode()) == (
            250, f"2.0.0 Ok size={expected_size} proto=ESMTPS cipher=True")
        assert proc.wait(timeout=20) == 0
        assert (tmp_path / "email-1.txt").read_bytes() == body.replace(b"\r\n", b"\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
