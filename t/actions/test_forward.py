# tests: amavisd/actions/forward.py
"""Forwarding to a real sink over loopback (spec protocols.md 5.1-5.8, 6, 10).

``t/sink.py`` is a plain-threads SMTP/LMTP server; our Twisted code runs in a
reactor thread through ``in_reactor``.  Recipient local parts steer the sink:
rej* 550 at RCPT, tmp* 450 at RCPT, many* 452, datarej* rejected at the dot.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import reactor

from amavisd.actions.forward import (
    Method,
    expand_template,
    failover_order,
    forward,
    parse_method,
    pipe_argv,
)
from amavisd.message import ClientInfo, Message, Recipient
from t.sink import Sink, free_port, in_reactor

BODY = (b"Received: from pc.x.test\n\tby mta.x.test\nSubject: test\nFrom: a@x.test\n\n"
        b"Hello,\n.a line with a leading dot\n..two dots\nend\n")
PREFIX = b"Received: from mta.example.net ([127.0.0.1])\r\n by localhost (amavis, port 1)\r\n"


def settings(**kw: Any) -> SimpleNamespace:
    base = dict(localhost_name="localhost", tls_security_level_out=None,
                smtp_tls_client_options={}, propagate_dsn_if_possible=True,
                terminate_dsn_on_notify_success=False, local_client_bind_address=None,
                QUARANTINEDIR=None, myhostname="amavis-test.example.com")
    base.update(kw)
    return SimpleNamespace(**base)


def make_msg(tmp_path: Path, *names: str, body: bytes = BODY, **kw: Any) -> Message:
    spool = tmp_path / "email.txt"
    spool.write_bytes(body)
    rcpts = [Recipient(n if "@" in n else f"{n}@example.com",
                       n if "@" in n else f"{n}@example.com") for n in names]
    msg = Message("alice@example.org", "alice@example.org", rcpts, spool, len(body), "17016-01",
                  mail_id="MAILID123456",
                  client=ClientInfo(mta_addr="127.0.0.1", mta_helo="mta.example.net",
                                    local_addr="127.0.0.1", local_port=10024))
    for k, v in kw.items():
        setattr(msg, k, v)
    return msg


def run(msg: Message, method: str | list[str], *, per_rcpt: bool = False,
        prefix: bytes = PREFIX, body_offset: int = 0, **kw: Any) -> list[str]:
    in_reactor(forward, msg, msg.recipients, method, prefix, body_offset, settings(**kw),
               reactor, per_rcpt, time.time() + 300)
    return [str(r.reply) for r in msg.recipients]


def wire(body: bytes) -> bytes:
    return body.replace(b"\n", b"\r\n")


@pytest.fixture
def sink() -> Any:
    with Sink() as s:
        yield s


# --------------------------------------------------------------------------- method strings


@pytest.mark.parametrize(("text", "expect"), [
    ("smtp:[127.0.0.1]:10025", Method("smtp", "127.0.0.1", 10025,
                                      raw="smtp:[127.0.0.1]:10025", arg="[127.0.0.1]:10025")),
    ("lmtp:[::1]:24", Method("lmtp", "::1", 24, raw="lmtp:[::1]:24", arg="[::1]:24")),
    ("smtp:mx.example:25", Method("smtp", "mx.example", 25, raw="smtp:mx.example:25",
                                  arg="mx.example:25")),
    ("lmtp:/var/run/sock", Method("lmtp", unix_path="/var/run/sock", raw="lmtp:/var/run/sock",
                                  arg="/var/run/sock")),
])
def test_parse_method_forms(text: str, expect: Method) -> None:
    assert parse_method(text) == expect


def test_mta_ids() -> None:
    assert parse_method("smtp:[127.0.0.1]:10025").mta_id == "smtp:[127.0.0.1]:10025"
    assert parse_method("lmtp:[::1]:24").mta_id == "lmtp:[::1]:24"
    assert parse_method("lmtp:/path/sock").mta_id == "lmtp:/path/sock"


def test_parse_method_dynamic_destination() -> None:
    """'*' host is the MTA's IP, '*' port our port + 1 (spec 5.1)."""
    client = ClientInfo(mta_addr="192.0.2.7", local_port=10024)
    m = parse_method("smtp:*:*", client)
    assert (m.host, m.port) == ("192.0.2.7", 10025)
    assert parse_method("smtp:[*]:2525", client).host == "192.0.2.7"
    with pytest.raises(ValueError):
        parse_method("smtp:*:25")


@pytest.mark.parametrize("bad", ["smtp:[1.2.3.4]", "smtp:host:0", "smtp:host:70000",
                                 "foo:bar", "smtp", "smtp:[1.2.3.4:25", "smtp:host:x"])
def test_parse_method_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_method(bad)


def test_failover_moves_one_random_pick_to_the_front() -> None:
    methods = ["smtp:[127.0.0.1]:1", "smtp:[127.0.0.1]:2", "smtp:[127.0.0.1]:3"]
    firsts = {failover_order(methods, random.Random(seed))[0] for seed in range(30)}
    assert firsts == set(methods)
    assert sorted(failover_order(methods, random.Random(1))) == sorted(methods)


# --------------------------------------------------------------------------- smtp / lmtp


def test_clean_forward_is_byte_exact(tmp_path: Path, sink: Sink) -> None:
    msg = make_msg(tmp_path, "bob")
    replies = run(msg, f"smtp:[127.0.0.1]:{sink.port}")
    got = sink.messages[0]
    assert replies == [f"250 2.0.0 from MTA(smtp:[127.0.0.1]:{sink.port}): "
                       f"250 2.0.0 Ok: queued as {got.queue_id}"]
    assert got.data == PREFIX + wire(BODY)
    r = msg.recipients[0]
    assert (r.done, r.queued_as, r.mailbox) == (2, got.queue_id, f"smtp:[127.0.0.1]:{sink.port}")
    sink.wait_closed()
    assert sink.commands()[-1] == b"QUIT"


#: A rewritten header section and where BODY's body starts (after its empty line).
NEW_HEADER = b"X-New: 1\r\nSubject: rewritten\r\n\r\n"
BODY_OFFSET = BODY.index(b"\n\n") + 2


def test_rewritten_header_then_body_from_offset(tmp_path: Path, sink: Sink) -> None:
    """forward() sends ``header`` and the spool from ``body_offset`` (pipeline.md 20.2)."""
    msg = make_msg(tmp_path, "bob")
    run(msg, f"smtp:[127.0.0.1]:{sink.port}", prefix=NEW_HEADER, body_offset=BODY_OFFSET)
    assert sink.messages[0].data == NEW_HEADER + wire(BODY[BODY_OFFSET:])


def test_8bit_only_in_skipped_original_header_is_7bit(tmp_path: Path, sink: Sink) -> None:
    """BODY= looks at what is sent: an 8-bit original header that was replaced does not count."""
    body = b"Subject: Gr\xfc\xdfe\n\nplain body\n"
    msg = make_msg(tmp_path, "bob", body=body)
    run(msg, f"smtp:[127.0.0.1]:{sink.port}", prefix=b"Subject: x\r\n\r\n",
        body_offset=body.index(b"\n\n") + 2)
    assert sink.messages[0].mail.endswith(b"BODY=7BIT")


def test_dsn_params_and_xforward_exactly_as_observed(tmp_path: Path, sink: Sink) -> None:
    """The command lines of spec section 10 'Clean SMTP pass-through with XFORWARD'."""
    msg = make_msg(tmp_path, "bob", "carol", dsn_ret="HDRS", dsn_envid="env+2B123")
    msg.client = ClientInfo(addr="192.0.2.10", name="mail.example.org", port="41234",
                            proto="ESMTP", helo="mail.example.org", source="REMOTE",
                            ident="4ABCDEF", mta_addr="127.0.0.1")
    msg.recipients[0].notify = ["SUCCESS", "FAILURE"]
    msg.recipients[0].orcpt = "rfc822;bob@example.com"
    run(msg, f"smtp:[127.0.0.1]:{sink.port}")
    sink.wait_closed()
    assert sink.commands() == [
        b"EHLO localhost",
        b"XFORWARD ADDR=192.0.2.10 NAME=mail.example.org PORT=41234 PROTO=ESMTP "
        b"HELO=mail.example.org SOURCE=REMOTE IDENT=4ABCDEF",
        b"MAIL FROM:<alice@example.org> RET=HDRS BODY=7BIT ENVID=env+2B123",
        b"RCPT TO:<bob@example.com> ORCPT=rfc822;bob@example.com NOTIFY=SUCCESS,FAILURE",
        b"RCPT TO:<carol@example.com>",
        b"DATA",
        b"QUIT",
    ]


def test_no_dsn_params_when_the_server_lacks_dsn(tmp_path: Path) -> None:
    with Sink(dsn=False, xforward=False) as s:
        msg = make_msg(tmp_path, "bob", dsn_ret="FULL", dsn_envid="e1")
        msg.client.addr = "192.0.2.1"
        msg.recipients[0].notify = ["NEVER"]
        run(msg, f"smtp:[127.0.0.1]:{s.port}")
        assert s.commands()[:3] == [b"EHLO localhost", b"MAIL FROM:<alice@example.org> BODY=7BIT",
                                    b"RCPT TO:<bob@example.com>"]


def test_smtputf8_and_8bit_body(tmp_path: Path, sink: Sink) -> None:
    body = "Subject: grüße\n\nbody ü\n".encode()
    msg = make_msg(tmp_path, "bøb@exämple.com", body=body, smtputf8=True)
    msg.sender = msg.sender_quoted = "älice@example.org"
    replies = run(msg, f"smtp:[127.0.0.1]:{sink.port}")
    assert replies[0].startswith("250 2.0.0 ")
    assert sink.commands()[1:3] == [
        "MAIL FROM:<älice@example.org> BODY=8BITMIME SMTPUTF8".encode(),
        "RCPT TO:<bøb@exämple.com>".encode()]
    assert sink.messages[0].data == PREFIX + wire(body)


def test_non_ascii_sender_without_smtputf8_support(tmp_path: Path) -> None:
    with Sink(smtputf8=False) as s:
        msg = make_msg(tmp_path, "bob", smtputf8=True)
        msg.sender = msg.sender_quoted = "älice@example.org"
        assert run(msg, f"smtp:[127.0.0.1]:{s.port}") == [
            "550 5.6.7 Non-ASCII addresses not permitted for sender"]
        assert not s.messages


def test_8bit_body_without_8bitmime(tmp_path: Path) -> None:
    with Sink(eightbit=False) as s:
        msg = make_msg(tmp_path, "bob", "carol", body="S: x\n\nü\n".encode())
        replies = run(msg, f"smtp:[127.0.0.1]:{s.port}")
        assert replies == ["550 5.6.3 Conversion to 7BIT required but not supported"] * 2
        assert not s.messages and msg.recipients[0].done == 1


@pytest.mark.parametrize("pipelining", [True, False])
def test_partial_550(tmp_path: Path, pipelining: bool) -> None:
    with Sink(pipelining=pipelining) as s:
        msg = make_msg(tmp_path, "bob", "rej1")
        replies = run(msg, f"smtp:[127.0.0.1]:{s.port}")
        mta = f"smtp:[127.0.0.1]:{s.port}"
        assert replies == [
            f"250 2.0.0 from MTA({mta}): 250 2.0.0 Ok: queued as {s.messages[0].queue_id}",
            f"550 5.1.1 from MTA({mta}): 550 5.1.1 <rej1@example.com>: Recipient address "
            f"rejected: User unknown"]
        assert s.messages[0].rcpts == [b"RCPT TO:<bob@example.com>"]
        assert [r.done for r in msg.recipients] == [2, 2]


@pytest.mark.parametrize("pipelining", [True, False])
def test_one_450_with_smtp_input_sends_nothing(tmp_path: Path, pipelining: bool) -> None:
    """Spec 5.3 step 12 / 6.2: no dot, the sink has no message, everyone gets 451."""
    with Sink(pipelining=pipelining) as s:
        msg = make_msg(tmp_path, "bob", "tmp1")
        replies = run(msg, f"smtp:[127.0.0.1]:{s.port}")
        s.wait_closed()
        assert not s.messages
        assert all(r.startswith(f"451 4.5.0 From MTA(smtp:[127.0.0.1]:{s.port}) during "
                                f"fwd-data-chkpnt (Bail out, ") for r in replies)
        assert all(r.endswith("not an LMTP input): id=17016-01") for r in replies)
        if pipelining:
            assert s.sessions[0].aborted_in_data
        else:
            assert b"DATA" not in s.commands() and b"RSET" in s.commands()


def test_one_450_with_lmtp_input_delivers_to_the_others(tmp_path: Path, sink: Sink) -> None:
    msg = make_msg(tmp_path, "bob", "tmp1")
    replies = run(msg, f"smtp:[127.0.0.1]:{sink.port}", per_rcpt=True)
    assert replies[0].startswith("250 2.0.0") and replies[1].startswith("450 4.2.0 from MTA(")
    assert len(sink.messages) == 1


def test_data_dot_reject(tmp_path: Path, sink: Sink) -> None:
    msg = make_msg(tmp_path, "bob", "datarej1")
    assert run(msg, f"smtp:[127.0.0.1]:{sink.port}") == [
        f"554 5.7.1 from MTA(smtp:[127.0.0.1]:{sink.port}): 554 5.7.1 Rejected by sink policy"] * 2


def test_lmtp_per_recipient_with_rejected_rcpt_does_not_hang(tmp_path: Path) -> None:
    """Bug 9.1 fixed: three recipients ok / 550 / data-dot 552, the result comes at once."""
    with Sink(lmtp=True) as s:
        msg = make_msg(tmp_path, "bob", "rej1", "datarej1")
        t0 = time.monotonic()
        replies = run(msg, f"lmtp:[127.0.0.1]:{s.port}", per_rcpt=True)
        assert time.monotonic() - t0 < 5
        mta = f"lmtp:[127.0.0.1]:{s.port}"
        qid = s.messages[0].queue_id
        assert replies == [
            f"250 2.0.0 from MTA({mta}): 250 2.0.0 <bob@example.com> {qid} Saved",
            f"550 5.1.1 from MTA({mta}): 550 5.1.1 <rej1@example.com>: Recipient address "
            f"rejected: User unknown",
            f"552 5.2.2 from MTA({mta}): 552 5.2.2 <datarej1@example.com>: mailbox full"]
        assert msg.recipients[0].queued_as == f"250 2.0.0 <bob@example.com> {qid} Saved"
        s.wait_closed()
        assert s.commands()[0] == b"LHLO localhost" and s.commands()[-1] == b"QUIT"


def test_back_end_down_gives_450_4_4_1(tmp_path: Path) -> None:
    port = free_port()
    msg = make_msg(tmp_path, "bob", "carol")
    replies = run(msg, f"smtp:[127.0.0.1]:{port}")
    mta = f"smtp:[127.0.0.1]:{port}"
    assert all(r.startswith(f"450 4.4.1 Can't connect to {mta}: ") for r in replies)
    assert all(r.endswith(f", MTA({mta}), id=17016-01") for r in replies)
    assert "refused" in replies[0].lower()
    assert msg.recipients[0].done == 2


def test_failover_list_skips_a_dead_entry(tmp_path: Path, sink: Sink) -> None:
    dead = f"smtp:[127.0.0.1]:{free_port()}"
    live = f"smtp:[127.0.0.1]:{sink.port}"
    for _ in range(3):
        msg = make_msg(tmp_path, "bob")
        assert run(msg, [dead, live])[0].startswith(f"250 2.0.0 from MTA({live})")


def test_452_deferred_recipients_get_a_second_transaction(tmp_path: Path) -> None:
    """Spec 6.8: 452 recipients are retried only after a transaction delivered data."""
    with Sink(pipelining=False) as s:
        msg = make_msg(tmp_path, "bob", "many1")
        replies = run(msg, f"smtp:[127.0.0.1]:{s.port}")
        assert replies[0].startswith("250 2.0.0") and replies[1].startswith("452 4.5.3 from MTA(")
        assert s.commands().count(b"RCPT TO:<many1@example.com>") == 2
        assert len(s.messages) == 1


def test_starttls_to_a_tls_sink(tmp_path: Path) -> None:
    with Sink(tls=True) as s:
        msg = make_msg(tmp_path, "bob")
        replies = run(msg, f"smtp:[127.0.0.1]:{s.port}", tls_security_level_out="encrypt")
        assert replies[0].startswith("250 2.0.0 ")
        assert s.sessions[0].tls
        assert s.commands()[:3] == [b"EHLO localhost", b"STARTTLS", b"EHLO localhost"]
        assert s.messages[0].data == PREFIX + wire(BODY)


def test_tls_may_without_starttls_goes_in_clear_but_required_fails(tmp_path: Path,
                                                                    sink: Sink) -> None:
    msg = make_msg(tmp_path, "bob")
    assert run(msg, f"smtp:[127.0.0.1]:{sink.port}",
               tls_security_level_out="may")[0].startswith("250 ")
    msg = make_msg(tmp_path, "bob")
    reply = run(msg, f"smtp:[127.0.0.1]:{sink.port}", tls_security_level_out="encrypt")[0]
    assert reply.startswith("451 4.5.0 From MTA(") and "but TLS is required" in reply


def test_unix_socket_lmtp(tmp_path: Path) -> None:
    """Same code path over a Unix socket, with the 'lmtp:/path' mta_id (spec 5.4)."""
    import socket
    with Sink(lmtp=True) as s:
        path = tmp_path / "lmtp.sock"
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(str(path))
        srv.listen(1)

        def relay() -> None:
            conn, _ = srv.accept()
            up = socket.create_connection(("127.0.0.1", s.port))
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=_copy, args=(a, b), daemon=True).start()

        threading.Thread(target=relay, daemon=True).start()
        msg = make_msg(tmp_path, "bob")
        replies = run(msg, f"lmtp:{path}", per_rcpt=True)
        srv.close()
        assert replies[0].startswith(f"250 2.0.0 from MTA(lmtp:{path}): 250 2.0.0 ")


def _copy(src: Any, dst: Any) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


def test_unknown_and_unsupported_schemes(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob")
    assert run(msg, "foo:bar")[0].startswith("451 4.5.0 Bad delivery method: unknown")
    msg = make_msg(tmp_path, "bob")
    assert run(msg, "sql:x")[0].startswith("451 4.5.0 Delivery method sql: not supported")
    assert msg.recipients[0].done == 1


def test_empty_method_leaves_recipients_undone(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob")
    run(msg, "")
    assert (msg.recipients[0].reply, msg.recipients[0].done) == (None, 0)


# --------------------------------------------------------------------------- bsmtp


def test_bsmtp_file_content(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob", "carol", dsn_ret="HDRS")
    msg.recipients[0].notify = ["FAILURE"]
    replies = run(msg, "bsmtp:out-%n-%m.bsmtp", QUARANTINEDIR=str(tmp_path))
    path = tmp_path / "out-17016-01-MAILID123456.bsmtp"
    assert replies == [f"250 2.6.0 Ok, queued as BSMTP {path}, id=17016-01"] * 2
    assert path.read_bytes() == (
        b"EHLO localhost\nMAIL FROM:<alice@example.org> RET=HDRS BODY=7BIT\n"
        b"RCPT TO:<bob@example.com> NOTIFY=FAILURE\nRCPT TO:<carol@example.com>\nDATA\n"
        + PREFIX.replace(b"\r\n", b"\n")
        + BODY.replace(b"\n.a", b"\n..a").replace(b"\n..two", b"\n...two") + b".\n")
    assert oct(path.stat().st_mode & 0o777) == oct(0o640 & ~_umask())
    assert not Path(f"{path}.tmp").exists()


def test_bsmtp_rewritten_header_and_body_offset(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob")
    run(msg, "bsmtp:out.bsmtp", QUARANTINEDIR=str(tmp_path), prefix=NEW_HEADER,
        body_offset=BODY_OFFSET)
    data = (tmp_path / "out.bsmtp").read_bytes()
    assert data.split(b"DATA\n", 1)[1] == (
        NEW_HEADER.replace(b"\r\n", b"\n")
        + BODY[BODY_OFFSET:].replace(b"\n.a", b"\n..a").replace(b"\n..two", b"\n...two")
        + b".\n")


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_bsmtp_failure(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob")
    replies = run(msg, f"bsmtp:{tmp_path}/missing-dir/x.bsmtp")
    assert replies == [f"451 4.5.0 Writing {tmp_path}/missing-dir/x.bsmtp.tmp failed: "
                       f"No such file or directory"]


def test_template_expansion(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob")
    got = expand_template("%m|%n|%b|%P|%s|%%|%i", msg, 0.0)
    parts = got.split("|")
    assert parts[:6] == ["MAILID123456", "17016-01", "MAILID123456", str(os.getpid()),
                         "alice@example.org", "%"]
    assert len(parts[6]) == 15 and parts[6][8] == "T"


# --------------------------------------------------------------------------- pipe

SCRIPT = """\
import sys, os, json
out = os.environ.get("PIPE_OUT") or sys.argv[1]
data = sys.stdin.buffer.read()
open(out, "w").write(json.dumps({"argv": sys.argv[2:], "stdin": data.decode("latin-1")}))
sys.exit(int(sys.argv[sys.argv.index("--exit") + 1]) if "--exit" in sys.argv else 0)
"""


def _pipe(tmp_path: Path, extra: str) -> str:
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    return (f"pipe:flags=q argv={sys.executable} {script} {tmp_path}/out.json {extra} "
            f"-f ${{sender}} -- ${{recipient}}")


def test_pipe_argv_and_stdin(tmp_path: Path) -> None:
    import json
    msg = make_msg(tmp_path, "bob", "carol")
    assert run(msg, _pipe(tmp_path, "")) == ["250 2.6.0 Ok, id=17016-01"] * 2
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["argv"] == ["-f", "alice@example.org", "--", "bob@example.com",
                           "carol@example.com"]
    assert got["stdin"].encode("latin-1") == PREFIX.replace(b"\r\n", b"\n") + BODY


def test_pipe_rewritten_header_and_body_offset(tmp_path: Path) -> None:
    import json
    msg = make_msg(tmp_path, "bob")
    run(msg, _pipe(tmp_path, ""), prefix=NEW_HEADER, body_offset=BODY_OFFSET)
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["stdin"].encode("latin-1") == (NEW_HEADER.replace(b"\r\n", b"\n")
                                              + BODY[BODY_OFFSET:])


@pytest.mark.parametrize(("code", "reply"), [
    (75, "450 4.5.0 Temporary failure submitting message, id=17016-01"),
    (67, "554 5.1.1 Recipient unknown, id=17016-01"),
    (69, "554 5.5.0 Mail submission service unavailable, id=17016-01"),
    (3, "451 4.5.0 Failed to submit a message: exit 3, id=17016-01"),
])
def test_pipe_exit_status(tmp_path: Path, code: int, reply: str) -> None:
    msg = make_msg(tmp_path, "bob")
    assert run(msg, _pipe(tmp_path, f"--exit {code}")) == [reply]


def test_pipe_null_sender_and_sendmail_flags(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob", "carol", dsn_envid="E1")
    msg.sender = msg.sender_quoted = ""
    for r in msg.recipients:
        r.notify = ["NEVER"]
    m = parse_method("pipe:flags=q argv=/usr/sbin/sendmail -i -f ${sender} -- ${recipient}")
    assert pipe_argv(m, msg, msg.recipients, settings()) == [
        "/usr/sbin/sendmail", "-V", "E1", "-N", "NEVER", "-i", "-f", "<>", "--",
        "bob@example.com", "carol@example.com"]
    assert pipe_argv(m, msg, msg.recipients, settings(propagate_dsn_if_possible=False))[1] == "-i"


# --------------------------------------------------------------------------- big message


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.timeout(120)
def test_50mb_message_streams_with_bounded_memory(tmp_path: Path) -> None:
    """256 KiB chunks through a pull producer: RSS growth stays far below the message size."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-=+0123456789\n"
    spool = tmp_path / "big.txt"
    with open(spool, "wb") as fh:
        fh.write(b"Subject: big\n\n")
        block = (line + b"." + line) * 1000
        while fh.tell() < 50 * 1024 * 1024:
            fh.write(block)
    size = spool.stat().st_size
    sink_dir = tmp_path / "sink"
    proc = subprocess.Popen([sys.executable, "-m", "t.sink", "--port", "0", "--dir",
                             str(sink_dir)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        msg = make_msg(tmp_path, "bob", body=b"")
        msg.spool_path = spool
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(_rss_kib())
                time.sleep(0.01)

        base = _rss_kib()
        t = threading.Thread(target=sample)
        t.start()
        t0 = time.monotonic()
        reply = run(msg, f"smtp:[127.0.0.1]:{port}")[0]
        elapsed = time.monotonic() - t0
        stop.set()
        t.join()
        growth_mib = (max(samples) - base) / 1024
        print(f"\n50 MB forward: {size / elapsed / 1e6:.1f} MB/s, "
              f"{elapsed:.2f} s, peak RSS growth {growth_mib:.1f} MiB")
        assert reply.startswith("250 2.0.0 ")
        stored = next(sink_dir.glob("*.eml"))
        assert stored.stat().st_size == len(PREFIX) + size + _count_lf(spool)
        assert growth_mib < 20
    finally:
        proc.terminate()
        proc.wait()
        proc.stdout.close()


def _count_lf(spool: Path) -> int:
    """LF -> CRLF adds one byte per line to the unstuffed message."""
    n = 0
    with open(spool, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
    return n
