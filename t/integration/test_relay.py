# tests: amavisd (daemon process): SMTP in, forwarding out, replies, headers, log line
"""The relay path end to end: a real client, the real daemon, a recording sink."""

from __future__ import annotations

import re
import smtplib
import ssl
import subprocess

from t.integration.conftest import CERT_DIR, Client, message, send_message, wait_for
from t.replies import S220_GREETING

EHLO_LINES = [
    "250-[127.0.0.1]", "250-VRFY", "250-PIPELINING", "250-SIZE", "250-ENHANCEDSTATUSCODES",
    "250-8BITMIME", "250-SMTPUTF8", "250-DSN",
    "250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE",
]
RECEIVED_RE = re.compile(
    rb"^Received: from client\.anchor\.test \(\[127\.0\.0\.1\]\)\r\n"
    rb" by localhost \(mx\.anchor\.test \[127\.0\.0\.1\]\) \(amavis, port (\d+)\) with ESMTP\r\n"
    rb" id ([A-Za-z0-9_-]{12}) for <bob@anchor\.test>; "
    rb"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4} \(\w+\)\r\n")


def test_banner_and_ehlo_are_amavis_exactly(amavisd):
    daemon = amavisd()
    client = Client(daemon.port)
    assert client.reply() == [S220_GREETING]
    assert client.cmd("EHLO client.anchor.test") == EHLO_LINES
    assert client.cmd("QUIT") == ["221 2.0.0 [127.0.0.1] amavis closing transmission channel"]


def test_clean_message_is_forwarded_byte_identical_with_our_received(amavisd, sink):
    """protocols.md 3.8/3.10: 2xx only after the back end accepted; body unchanged."""
    daemon = amavisd()
    client = Client(daemon.port)
    client.reply()
    data = message("clean", body=b"line one\r\n.starts with a dot\r\n\r\nend\r\n")
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], data)
    assert len(reply) == 1
    assert re.fullmatch(rf"250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:{sink.port}\): "
                        r"250 2\.0\.0 Ok: queued as Q\w+", reply[0]), reply
    assert len(sink.messages) == 1
    got = sink.messages[0]
    assert got.mail == b"MAIL FROM:<alice@anchor.test> BODY=7BIT"
    assert got.rcpts == [b"RCPT TO:<bob@anchor.test>"]
    match = RECEIVED_RE.match(got.data)
    assert match, got.data[:300]
    assert int(match.group(1)) == daemon.port
    assert got.data[match.end():] == data
    mail_id = match.group(2).decode()
    queued = reply[0].rsplit(" ", 1)[1]
    log = wait_for(lambda: "Passed CLEAN" in daemon.logfile_text() and daemon.logfile_text(),
                   what="the main log line")
    line = next(x for x in log.splitlines() if "Passed CLEAN" in x)
    assert re.search(r"\(\d{5}-\d\d\) Passed CLEAN \{RelayedInbound\}, \[127\.0\.0\.1\] "
                     r"<alice@anchor\.test> -> <bob@anchor\.test>, "
                     rf"Message-ID: <clean@anchor\.test>, mail_id: {re.escape(mail_id)}, "
                     rf"Hits: -, size: {len(data)}, queued_as: {queued}, \d+ ms$", line), line
    client.cmd("QUIT")


def test_swaks_as_client(amavisd, sink):
    daemon = amavisd()
    out = subprocess.run(["swaks", "--server", f"127.0.0.1:{daemon.port}", "--from",
                          "alice@anchor.test", "--to", "bob@anchor.test", "--helo",
                          "client.anchor.test"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"<-  250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:\d+\): 250 2\.0\.0 Ok",
                     out.stdout)
    assert len(sink.messages) == 1


def test_pipelined_transactions_in_one_session(amavisd, sink):
    """Two transactions, each MAIL+RCPT+DATA in one write; the 2nd gets log id -2."""
    daemon = amavisd()
    client = Client(daemon.port)
    client.reply()
    client.cmd("EHLO client.anchor.test")
    for n in (1, 2):
        rcpts = ["bob@anchor.test", "carol@example.net"] if n == 1 else ["bob@anchor.test"]
        batch = b"MAIL FROM:<alice@anchor.test>\r\n" + b"".join(
            f"RCPT TO:<{r}>\r\n".encode() for r in rcpts) + b"DATA\r\n"
        client.send(batch)
        assert client.reply() == ["250 2.1.0 Sender <alice@anchor.test> OK"]
        for r in rcpts:
            assert client.reply() == [f"250 2.1.5 Recipient <{r}> OK"]
        assert client.reply() == ["354 End data with <CR><LF>.<CR><LF>"]
        client.send(message(f"pipe{n}") + b".\r\nNOOP\r\n")
        assert client.reply()[0].startswith("250 2.0.0 from MTA(")
        assert client.reply() == ["250 2.0.0 Ok NOOP"]
    client.cmd("QUIT")
    assert len(sink.messages) == 2
    first, second = (m.data.split(b"\r\n\r\n", 1)[0] for m in sink.messages)
    assert b" for <" not in first.split(b"Received:", 2)[1]      # two recipients: no 'for'
    assert b"for <bob@anchor.test>;" in second
    log = wait_for(lambda: "-2) Passed" in daemon.logfile_text() and daemon.logfile_text(),
                   what="the log line of the 2nd transaction")
    assert re.search(r"\(\d{5}-\d\d\) Passed CLEAN \{RelayedInbound,RelayedOpenRelay\}", log)


def test_dsn_and_xforward_are_passed_on(amavisd, sink):
    """protocols.md 5.3 and section 10 (observed): XFORWARD, RET, ENVID, NOTIFY, ORCPT."""
    daemon = amavisd()
    client = Client(daemon.port)
    client.reply()
    client.cmd("EHLO mta.example.net")
    assert client.cmd("XFORWARD ADDR=192.0.2.10 NAME=mail.example.org PORT=41234 "
                      "PROTO=ESMTP HELO=mail.example.org") == ["250 2.5.0 Ok XFORWARD"]
    assert client.cmd("XFORWARD SOURCE=REMOTE IDENT=4ABCDEF") == ["250 2.5.0 Ok XFORWARD"]
    assert client.cmd("MAIL FROM:<alice@example.org> RET=HDRS ENVID=env+2B123") == [
        "250 2.1.0 Sender <alice@example.org> OK"]
    client.cmd("RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com")
    client.cmd("RCPT TO:<carol@example.com>")
    client.cmd("DATA")
    client.send(message("dsn") + b".\r\n")
    assert client.reply()[0].startswith("250 2.0.0 from MTA(")
    commands = sink.commands()
    assert (b"XFORWARD ADDR=192.0.2.10 NAME=mail.example.org PORT=41234 PROTO=ESMTP "
            b"HELO=mail.example.org SOURCE=REMOTE IDENT=4ABCDEF") in commands
    got = sink.messages[0]
    assert sorted(got.mail.split()[2:]) == [b"BODY=7BIT", b"ENVID=env+2B123", b"RET=HDRS"]
    assert got.rcpts[0].split()[0] == b"RCPT"
    assert set(got.rcpts[0].split()[1:]) == {b"TO:<bob@example.com>",
                                             b"NOTIFY=SUCCESS,FAILURE",
                                             b"ORCPT=rfc822;bob@example.com"}
    assert got.rcpts[1] == b"RCPT TO:<carol@example.com>"
    assert got.data.startswith(b"Received: from mta.example.net ([127.0.0.1])\r\n")
    log = wait_for(lambda: "Passed CLEAN" in daemon.logfile_text() and daemon.logfile_text())
    assert "[192.0.2.10]:41234 [192.0.2.10] <alice@example.org> -> <bob@example.com>," \
           "<carol@example.com>, " \
           "Queue-ID: 4ABCDEF, Message-ID: <dsn@anchor.test>" in log


def test_smtputf8_is_passed_on(amavisd, sink):
    daemon = amavisd()
    client = Client(daemon.port)
    client.reply()
    client.cmd("EHLO client.anchor.test")
    assert client.cmd("MAIL FROM:<älice@anchor.test> SMTPUTF8")[0].startswith("250 2.1.0")
    client.cmd("RCPT TO:<bøb@anchor.test>")
    client.cmd("DATA")
    client.send(message("utf8", body="Grüße\r\n".encode()) + b".\r\n")
    assert client.reply()[0].startswith("250 2.0.0 from MTA(")
    got = sink.messages[0]
    assert got.mail.split()[0:2] == [b"MAIL", "FROM:<älice@anchor.test>".encode()]
    assert b"SMTPUTF8" in got.mail.split() and b"BODY=8BITMIME" in got.mail.split()
    assert got.rcpts == ["RCPT TO:<bøb@anchor.test>".encode()]
    assert b" with UTF8SMTP\r\n" in got.data.split(b"\r\n\r\n")[0]


def test_lmtp_in_gives_one_reply_per_recipient(amavisd, sink):
    """protocols.md 3.8 (LMTP) and section 10: ok / 550 / 450 at the next hop."""
    daemon = amavisd()
    client = Client(daemon.port)
    client.reply()
    client.cmd("LHLO client.anchor.test")
    client.cmd("MAIL FROM:<alice@anchor.test>")
    for r in ("bob@anchor.test", "rej1@anchor.test", "tmp1@anchor.test"):
        client.cmd(f"RCPT TO:<{r}>")
    client.cmd("DATA")
    client.send(message("lmtp") + b".\r\n")
    replies = [client.reply()[0] for _ in range(3)]
    mta = rf"MTA\(smtp:\[127\.0\.0\.1\]:{sink.port}\)"
    assert re.fullmatch(rf"250 2\.0\.0 from {mta}: 250 2\.0\.0 Ok: queued as Q\w+", replies[0])
    assert re.fullmatch(rf"550 5\.1\.1 id=\d{{5}}-\d\d - Rejected by next-hop MTA on relaying, "
                        rf"from {mta}: 550 5\.1\.1 <rej1@anchor\.test>: .*", replies[1]), replies
    assert re.fullmatch(rf"450 4\.2\.0 id=\d{{5}}-\d\d - Temporary MTA failure on relaying, "
                        rf"from {mta}: 450 4\.2\.0 <tmp1@anchor\.test>: .*", replies[2]), replies
    assert [m.rcpts for m in sink.messages] == [[b"RCPT TO:<bob@anchor.test>"]]


def test_backend_tempfail_on_one_recipient_tempfails_the_whole_smtp_message(amavisd, sink):
    """protocols.md 5.3 step 12 and 5.5: no dot is sent, so a retry makes no duplicate."""
    daemon = amavisd()
    client = Client(daemon.port)
    client.reply()
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test", "tmp1@anchor.test"],
                         message("partial"))
    assert reply[0].startswith("451 4.5.0 id="), reply
    assert "Temporary MTA failure on relaying" in reply[0]
    sink.wait_closed()
    assert sink.messages == []
    assert any(s.aborted_in_data or b"DATA" in s.commands for s in sink.sessions)


def test_backend_down_gives_4xx_and_nothing_is_delivered(amavisd, sink):
    from t.helpers.daemon import free_port

    dead = free_port()
    daemon = amavisd(forward=f"smtp:[127.0.0.1]:{dead}")
    client = Client(daemon.port)
    client.reply()
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], message("down"))
    assert reply[0].startswith("450 4.4.1 id="), reply
    assert f"MTA(smtp:[127.0.0.1]:{dead})" in reply[0]
    assert sink.messages == []
    log = wait_for(lambda: "Blocked MTA-BLOCKED" in daemon.logfile_text()
                   and daemon.logfile_text())
    assert "Blocked MTA-BLOCKED {TempFailedInbound}" in log


def test_size_limit_is_enforced(amavisd, sink):
    """protocols.md 3.7 and docs/differences.md #1: advertised and enforced."""
    daemon = amavisd("smtpd_message_size_limit = 70000")
    client = Client(daemon.port)
    client.reply()
    assert "250-SIZE 70000" in client.cmd("EHLO client.anchor.test")
    body = b"".join(b"%06d " % i + b"x" * 62 + b"\r\n" for i in range(2000))
    data = message("big", body=body)
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], data, ehlo="")
    assert reply == [f"552 5.3.4 Message size ({len(data) + 0} B) exceeds size limit"] or \
        re.fullmatch(r"552 5\.3\.4 Message size \(\d+ B\) exceeds size limit", reply[0]), reply
    assert client.cmd("NOOP") == ["250 2.0.0 Ok NOOP"]
    assert client.cmd("MAIL FROM:<alice@anchor.test> SIZE=200000")[0].startswith("250")
    assert client.cmd("RCPT TO:<bob@anchor.test>") == [
        "552 5.3.4 Declared message size (200000 B) exceeds size limit for recipient "
        "<bob@anchor.test>"]
    assert sink.messages == []


def test_smuggling_attempts_stay_one_message(amavisd, sink):
    """A bare-LF or bare-CR dot inside DATA is data, never an end (SMTP smuggling)."""
    daemon = amavisd()
    client = Client(daemon.port)
    client.reply()
    smuggled = (b"Subject: one\r\n\r\nbody\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\n"
                b"DATA\r\nSubject: two\r\n\r\nx\r.\r\nmore\r\n.\r\nQUIT\r\n")
    client.cmd("EHLO client.anchor.test")
    client.cmd("MAIL FROM:<alice@anchor.test>")
    client.cmd("RCPT TO:<bob@anchor.test>")
    assert client.cmd("DATA")[0].startswith("354")
    client.send(smuggled)
    first = client.reply()
    assert first[0].startswith("250 2.0.0 from MTA("), first
    assert client.reply() == ["221 2.0.0 [127.0.0.1] amavis closing transmission channel"]
    assert len(sink.messages) == 1
    # forwarded as one message: bare LF became CRLF and the dot line was stuffed, bare CR
    # dropped (protocols.md 5.3 step 13); the sink unstuffed it again
    data = sink.messages[0].data
    assert b"body\r\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\nDATA\r\n" in data
    assert data.endswith(b"Subject: two\r\n\r\nx.\r\nmore\r\n")


def test_starttls_inbound(amavisd, sink):
    daemon = amavisd(f"tls_security_level_in = 'may'\nsmtpd_tls_server_options = "
                     f"{{'SSL_cert_file': {str(CERT_DIR / 'localhost.crt')!r}, "
                     f"'SSL_key_file': {str(CERT_DIR / 'localhost.key')!r}}}")
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.anchor.test",
                      timeout=30) as smtp:
        code, text = smtp.ehlo()
        assert b"STARTTLS" in text
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        assert smtp.starttls(context=context)[0] == 220
        smtp.ehlo()
        refused = smtp.sendmail("alice@anchor.test", ["bob@anchor.test"], message("tls"))
        assert refused == {}
    head = sink.messages[0].data.split(b"\r\n\r\n")[0]
    assert re.search(rb"\(\[127\.0\.0\.1\]\) \(using TLS with cipher [A-Z0-9_-]+\)", head), head
    assert b" with ESMTPS\r\n" in head


def test_starttls_outbound(tmp_path):
    from t.helpers.daemon import free_port, start_daemon
    from t.integration.conftest import base_config
    from t.sink import Sink

    with Sink(tls=True) as tls_sink:
        port = free_port()
        conf = base_config(tmp_path, port, f"smtp:[127.0.0.1]:{tls_sink.port}",
                           "tls_security_level_out = 'encrypt'\n"
                           "smtp_tls_client_options = {'SSL_verify_mode': 0}")
        daemon = start_daemon(conf, tmp_path)
        try:
            client = Client(port)
            client.reply()
            reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"],
                                 message("tlsout"))
            assert reply[0].startswith("250 2.0.0 from MTA("), reply
            assert tls_sink.sessions[0].tls
            assert len(tls_sink.messages) == 1
        finally:
            daemon.stop()


def test_forward_method_maps_choose_the_next_hop_per_recipient(amavisd, sink):
    """pipeline.md section 2 step 28: @forward_method_maps per recipient, else
    $forward_method (regression: every recipient went to $forward_method)."""
    from t.sink import Sink

    with Sink() as other:
        daemon = amavisd(f"forward_method_maps = [{{'carol@anchor.test': "
                         f"'smtp:[127.0.0.1]:{other.port}'}}]\n")
        client = Client(daemon.port)
        client.reply()
        reply = send_message(client, "alice@anchor.test",
                             ["bob@anchor.test", "carol@anchor.test"], message("split"))
        assert reply[0].startswith("250 2.0.0 "), reply
        client.cmd("QUIT")
        assert [m.rcpts for m in sink.messages] == [[b"RCPT TO:<bob@anchor.test>"]]
        assert [m.rcpts for m in other.messages] == [[b"RCPT TO:<carol@anchor.test>"]]
