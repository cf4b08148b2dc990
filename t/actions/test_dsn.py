# tests: amavisd/actions/dsn.py
"""Delivery status notifications (spec pipeline.md 18, 20.6; protocols.md 3.8, 5.3 step 9)."""

from __future__ import annotations

import email
import email.policy
import re
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import reactor

from amavisd.actions import dsn
from amavisd.config.lookup import new_RE
from amavisd.constants import D_BOUNCE, D_DISCARD, D_PASS, D_REJECT
from amavisd.errors import Reply, TempFail
from amavisd.message import ClientInfo, Message, Recipient
from t.sink import Sink, in_reactor

HEADER = (b"Received: from pc.x.test\n\tby mta.x.test\n"
          b"From: Alice <alice@anchor.test>\nTo: Bob <bob@anchor.test>\n"
          b"Subject: Test: EICAR attachment\nMessage-ID: <golden-eicar@anchor.test>\n")
BODY = HEADER + b"\nHello,\n.dot line\nend\n"
RX_TIME = 1796007763.0
BOUNCE = Reply(554, "5.7.0", "Bounce, id=21574-03 - INFECTED: Eicar-Test-Signature")


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def view(**kw: Any) -> SimpleNamespace:
    base = dict(myhostname="mx.anchor.test", localhost_name="localhost",
                notify_method="smtp:[127.0.0.1]:1", propagate_dsn_if_possible=True,
                tls_security_level_out=None, smtp_tls_client_options={},
                terminate_dsn_on_notify_success=False, local_client_bind_address=None)
    base.update(kw)
    return SimpleNamespace(**base)


def make_msg(tmp_path: Path, *rcpts: str, body: bytes = BODY, sender: str = "alice@anchor.test",
             **findings: Any) -> Message:
    spool = tmp_path / "email.txt"
    spool.write_bytes(body)
    msg = Message(sender, sender, [Recipient(r, r) for r in rcpts or ("bob@anchor.test",)],
                  spool, len(body), "21574-03", mail_id="kULeRChqr0W1", rx_time=RX_TIME,
                  client=ClientInfo(mta_addr="127.0.0.1", mta_helo="mta.anchor.test",
                                    local_addr="127.0.0.1", local_port=10024))
    msg.findings.update(findings)
    return msg


def bounce(rcpt: Recipient, ccat: str = "9", reply: Reply = BOUNCE) -> None:
    rcpt.destiny, rcpt.reply, rcpt.done, rcpt.ccat_blocking = D_BOUNCE, reply, 1, ccat
    rcpt.ccats = [ccat, "1"]                                  # type: ignore[attr-defined]


def passed(rcpt: Recipient) -> None:
    rcpt.destiny, rcpt.done = D_PASS, 2
    rcpt.reply = Reply(250, "2.0.0", "from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok")


# ------------------------------------------------------------------ who is reported (18)


def test_bounced_recipient_is_reported_as_failed(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, virus_names=["Eicar-Test-Signature"])
    bounce(msg.recipients[0])
    p = dsn.plan(msg, view(viruses_that_fake_sender_maps=[0]), per_recipient_capable=False)
    assert [(e.rcpt.address, e.action) for e in p.entries] == [("bob@anchor.test", "failed")]


@pytest.mark.parametrize("sender,notify", [("", None), ("alice@anchor.test", ["NEVER"]),
                                           ("alice@anchor.test", ["DELAY"])])
def test_null_sender_and_notify_suppress(tmp_path: Path, sender: str,
                                         notify: list[str] | None) -> None:
    msg = make_msg(tmp_path, sender=sender)
    bounce(msg.recipients[0], "8")
    msg.recipients[0].notify = notify
    p = dsn.plan(msg, view(), per_recipient_capable=False)
    assert not p.needed and [r.address for r, _ in p.suppressed] == ["bob@anchor.test"]


def test_virus_that_fakes_sender_suppresses(tmp_path: Path) -> None:
    """Upstream default ``(..., 1)``: every virus fakes; Debian's table exempts EICAR."""
    msg = make_msg(tmp_path, virus_names=["Eicar-Test-Signature"])
    bounce(msg.recipients[0])
    p = dsn.plan(msg, view(), per_recipient_capable=False)
    assert not p.needed and "INFECTED" in p.suppressed[0][1]
    debian = [new_RE(("(?i)EICAR", 0), (".", 1))]
    p = dsn.plan(msg, view(viruses_that_fake_sender_maps=debian), per_recipient_capable=False)
    assert p.needed


def test_banned_rule_suppress_reason(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    bounce(msg.recipients[0], "8")
    msg.recipients[0].dsn_suppress_reason = "BANNED:DISCARD suggested by rule"  # type: ignore
    p = dsn.plan(msg, view(), per_recipient_capable=False)
    assert p.suppressed[0][1] == "suppress reason: BANNED:DISCARD suggested by rule"


def test_discard_and_pass_give_no_dsn(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob@anchor.test", "carol@anchor.test")
    r0, r1 = msg.recipients
    r0.destiny, r0.done, r0.reply = D_DISCARD, 1, Reply(250, "2.7.0", "Ok, discarded")
    passed(r1)
    p = dsn.plan(msg, view(), per_recipient_capable=False)
    assert not p.needed and not p.suppressed


def test_reject_propagated_when_all_reject_else_bounced(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob@anchor.test", "carol@anchor.test")
    for r in msg.recipients:
        r.destiny, r.done, r.reply = D_REJECT, 1, Reply(554, "5.7.0", "Reject, id=x - BANNED")
    p = dsn.plan(msg, view(), per_recipient_capable=False)
    assert not p.needed and len(p.propagated) == 2
    passed(msg.recipients[1])
    p = dsn.plan(msg, view(), per_recipient_capable=False)
    assert [e.rcpt.address for e in p.entries] == ["bob@anchor.test"]
    p = dsn.plan(msg, view(), per_recipient_capable=True)      # LMTP: per recipient 5xx
    assert not p.needed and p.propagated


def test_spam_cutoffs(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    bounce(msg.recipients[0], "6")
    msg.recipients[0].spam_level = 12.0                       # type: ignore[attr-defined]
    assert not dsn.plan(msg, view(sa_dsn_cutoff_level=10), per_recipient_capable=False).needed
    assert dsn.plan(msg, view(sa_dsn_cutoff_level=15), per_recipient_capable=False).needed
    v = view(spam_dsn_cutoff_level_maps=[{"bob@anchor.test": 11}],
             spam_dsn_cutoff_level_bysender_maps=[])
    assert dsn.plan(msg, v, per_recipient_capable=False).suppressed


@pytest.mark.parametrize("extra,expect", [(b"Precedence: bulk\n", "bulk"),
                                          (b"List-Id: <l.example.org>\n", "ml:l.example.org"),
                                          (b"Auto-Submitted: auto-replied\n",
                                           "Auto-Submitted:auto-replied"),
                                          (b"", None)])
def test_bulk_mail_suppresses(tmp_path: Path, extra: bytes, expect: str | None) -> None:
    msg = make_msg(tmp_path, body=HEADER + extra + b"\nbody\n")
    bounce(msg.recipients[0], "8")
    assert dsn.bulk_kind(HEADER + extra, msg.sender) == expect
    p = dsn.plan(msg, view(), per_recipient_capable=False)
    assert p.needed is (expect is None)


# ------------------------------------------------------------------ the message


def built(tmp_path: Path, msg: Message, **kw: Any) -> email.message.Message:
    v = view(**kw)
    p = dsn.plan(msg, v, per_recipient_capable=False)
    out = tmp_path / "dsn.txt"
    dsn.build(msg, p, v, out, boundary="----------=_TEST", mail_id="NEWID0000001")
    return email.message_from_bytes(out.read_bytes(), policy=email.policy.compat32)


def test_structure_and_delivery_status_fields(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, virus_names=["Eicar-Test-Signature"])
    bounce(msg.recipients[0])
    msg.recipients[0].orcpt = "rfc822;Bob@Anchor.test"
    msg.dsn_envid = "ENV+2B1"
    m = built(tmp_path, msg, viruses_that_fake_sender_maps=[0])
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    assert m["From"] == '"Content-filter at mx.anchor.test" <postmaster@mx.anchor.test>'
    assert m["To"] == "<alice@anchor.test>"
    assert m["Date"] == "Mon, 30 Nov 2026 03:02:43 +0000 (UTC)"
    assert m["Message-ID"] == "<VSkULeRChqr0W1@mx.anchor.test>"
    assert m["MIME-Version"] == "1.0"
    # the wording comes from the template (VIRUS: $notify_virus_sender_templ, ours)
    assert m["Subject"] == "Your message contains a virus (Eicar-Test-Signature)"
    assert m["In-Reply-To"] == "<golden-eicar@anchor.test>"
    assert m.keys()[:4] == ["Content-Type", "Content-Transfer-Encoding", "MIME-Version",
                            "Subject"]
    assert m.keys()[-3:] == ["From", "To", "Date"]
    text, status, headers = m.get_payload()
    assert text.get_content_type() == "text/plain"
    assert "    virus: Eicar-Test-Signature\n" in text.get_payload()
    assert "Reference: 21574-03/kULeRChqr0W1\n" in text.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    assert status.get_filename() == "dsn_status.dsn"
    assert status["Content-Description"] == "Delivery error report"
    raw = status.as_bytes().split(b"\n\n", 1)[1].decode()
    assert raw == (
        "Reporting-MTA: dns; mx.anchor.test\n"
        "Received-From-MTA: dns; mta.anchor.test ([127.0.0.1])\n"
        "Arrival-Date: Mon, 30 Nov 2026 03:02:43 +0000 (UTC)\n"
        "Original-Envelope-Id: ENV+1\n"
        "\n"
        "Original-Recipient: rfc822;Bob@Anchor.test\n"
        "Final-Recipient: rfc822;bob@anchor.test\n"
        "Action: failed\n"
        "Status: 5.7.0\n"
        "Diagnostic-Code: smtp; 554-5.7.0 Bounce, id=21574-03 - INFECTED:\n"
        " 554 5.7.0 Eicar-Test-Signature\n"
        "Last-Attempt-Date: Mon, 30 Nov 2026 03:02:43 +0000 (UTC)\n"
        "Final-Log-ID: 21574-03/kULeRChqr0W1\n")
    assert headers.get_content_type() == "text/rfc822-headers"
    assert headers.get_filename() == "header.hdr"
    assert headers.get_payload() == "Return-Path: <alice@anchor.test>\n" + HEADER.decode()


EN_US = Path("/etc/amavis/en_US")


def need_en_us() -> None:
    if not EN_US.is_dir():
        pytest.skip("Debian's /etc/amavis/en_US is not installed (CI installs amavisd-new)")


@pytest.mark.parametrize(("ccat", "setting", "subject"), [
    ("9", "notify_virus_sender_templ",
     "VIRUS in message apparently from you (Eicar-Test-Signature)"),
    ("4", "notify_sender_templ", "Undeliverable mail, invalid header section"),
    ("6", "notify_spam_sender_templ", None),
])
def test_text_comes_from_the_template_of_the_category(tmp_path: Path, ccat: str, setting: str,
                                                      subject: str | None) -> None:
    """Section 18: VIRUS/BANNED -> $notify_virus_sender_templ, SPAM ->
    $notify_spam_sender_templ, else $notify_sender_templ (here Debian's files)."""
    need_en_us()
    from amavisd.templates import read_l10n_templates

    texts = read_l10n_templates(str(EN_US))
    msg = make_msg(tmp_path, virus_names=["Eicar-Test-Signature"] if ccat == "9" else [])
    bounce(msg.recipients[0], ccat)
    marker = f"MARKER-{setting}"
    templates = {**texts, setting: texts[setting].replace("Message-ID:", f"X-Which: {marker}\n"
                                                          "Message-ID:", 1)}
    m = built(tmp_path, msg, viruses_that_fake_sender_maps=[0], **templates)
    assert m["X-Which"] == marker
    if subject is not None:
        assert " ".join(m["Subject"].split()) == subject
    assert m["From"] == '"Content-filter at mx.anchor.test" <postmaster@mx.anchor.test>'
    text = m.get_payload()[0].get_payload()
    assert "21574-03/kULeRChqr0W1" in text


def test_from_to_date_are_forced_over_the_template(tmp_path: Path) -> None:
    """Section 18/20.6: From/To/Date are the program's even when the template sets them;
    other template fields keep their place; a non-ASCII text goes out quoted-printable."""
    msg = make_msg(tmp_path)
    bounce(msg.recipients[0], "8")
    template = ("Date: yesterday\nFrom: nobody@x\nSubject: Zurückgewiesen: %s\n"
                "To: somebody@x\nMessage-ID: <T%i@%h>\n\nNachricht für %s blockiert.\n")
    m = built(tmp_path, msg, notify_virus_sender_templ=template,
              hdrfrom_notify_sender="Filter <filter@${myhostname}>")
    assert m.keys()[3:] == ["Date", "From", "Subject", "To", "Message-ID"]
    assert m["Date"] == "Mon, 30 Nov 2026 03:02:43 +0000 (UTC)"
    assert m["From"] == "Filter <filter@mx.anchor.test>"
    assert m["To"] == "<alice@anchor.test>"
    assert m["Subject"] == "=?UTF-8?Q?Zur=C3=BCckgewiesen:?= <alice@anchor.test>"
    assert m["Message-ID"] == "<TkULeRChqr0W1@mx.anchor.test>"
    text = m.get_payload()[0]
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text.get_content_charset() == "utf-8"
    assert text.get_payload(decode=True).decode() == \
        "Nachricht für <alice@anchor.test> blockiert.\n"


def test_short_diagnostic_code_stays_on_one_line() -> None:
    assert dsn.diagnostic_code(Reply(550, "5.1.1", "User unknown")) == \
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\n"


def test_ret_hdrs_vs_full(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    bounce(msg.recipients[0], "8")
    msg.dsn_ret = "HDRS"
    assert built(tmp_path, msg).get_payload()[2].get_content_type() == "text/rfc822-headers"
    msg.dsn_ret = "FULL"
    part = built(tmp_path, msg).get_payload()[2]
    assert part.get_content_type() == "message/rfc822"
    (inner,) = part.get_payload()
    assert inner["Return-Path"] == "<alice@anchor.test>"
    assert inner["Message-ID"] == "<golden-eicar@anchor.test>"
    assert inner.get_payload() == "Hello,\n.dot line\nend\n"
    part = built(tmp_path, msg, dsn_return_full_message=False).get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"   # Perl's behaviour


def test_full_20mb_original_streamed_with_bounded_memory(tmp_path: Path) -> None:
    line = b"x" * 76 + b"\n"
    msg = make_msg(tmp_path, body=b"")
    spool = msg.spool_path
    with open(spool, "wb") as fh:
        fh.write(HEADER + b"\n")
        for _ in range(20 * 1024 * 1024 // len(line)):
            fh.write(line)
    bounce(msg.recipients[0], "8")
    msg.dsn_ret = "FULL"
    v = view()
    p = dsn.plan(msg, v, per_recipient_capable=False)
    out = tmp_path / "dsn.txt"
    tracemalloc.start()
    try:
        built_dsn = dsn.build(msg, p, v, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert built_dsn.full_message
    assert out.stat().st_size > spool.stat().st_size
    assert peak < 2 * 1024 * 1024, peak


# ------------------------------------------------------------------ sending (3.8, 5.3)


def test_sent_to_sink_with_null_sender_orcpt_and_envid(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    bounce(msg.recipients[0], "8")
    with Sink() as sink:
        v = view(notify_method=f"smtp:[127.0.0.1]:{sink.port}")
        outcome = in_reactor(dsn.send, msg, v, reactor, per_recipient_capable=False,
                             deadline=time.time() + 60, forwarded_any=False)
        sink.wait_closed()
    assert outcome.dsn_sent == 1 and msg.findings["dsn_sent"] == 1
    (got,) = sink.messages
    mail = got.mail.decode()
    m = re.fullmatch(r"MAIL FROM:<> BODY=7BIT ENVID=AM\.(\S+)\.20261130T030243Z@mx\.anchor\.test",
                     mail)
    assert m and m.group(1) == outcome.message.mail_id != msg.mail_id
    assert got.rcpts == [b"RCPT TO:<alice@anchor.test> ORCPT=rfc822;alice@anchor.test"]
    parsed = email.message_from_bytes(got.data.replace(b"\r\n", b"\n"))
    assert parsed.get_content_type() == "multipart/report"
    assert not list(tmp_path.glob("dsn-*"))                  # temp file removed


def test_tempfail_submitting_dsn(tmp_path: Path) -> None:
    """4xx: TempFail when nothing was forwarded yet, else only logged (protocols.md 3.8)."""
    msg = make_msg(tmp_path, sender="tmp-alice@anchor.test")
    bounce(msg.recipients[0], "8")
    with Sink() as sink:
        v = view(notify_method=f"smtp:[127.0.0.1]:{sink.port}")
        with pytest.raises(TempFail, match="temporarily unable to send DSN"):
            in_reactor(dsn.send, msg, v, reactor, per_recipient_capable=False,
                       deadline=time.time() + 60, forwarded_any=False)
        outcome = in_reactor(dsn.send, msg, v, reactor, per_recipient_capable=False,
                             deadline=time.time() + 60, forwarded_any=True)
        sink.wait_closed()
    assert outcome.dsn_sent == 0 and outcome.reply.is_tempfail
    assert not sink.messages


def test_suppressed_marks_dsn_sent_2(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, sender="")
    bounce(msg.recipients[0], "8")
    outcome = in_reactor(dsn.send, msg, view(), reactor, per_recipient_capable=False,
                         deadline=time.time() + 60, forwarded_any=False)
    assert outcome.dsn_sent == 2 and msg.findings["dsn_sent"] == 2


def test_template_over_its_bounds_tempfails_before_forwarding(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    bounce(msg.recipients[0], "8")
    v = view(notify_virus_sender_templ='[= loop |["[@ loop]"]][@ loop]')
    with pytest.raises(TempFail, match="temporarily unable to send DSN to <alice@anchor.test>: "
                                       "template expansion exceeds"):
        in_reactor(dsn.send, msg, v, reactor, per_recipient_capable=False,
                   deadline=time.time() + 60, forwarded_any=False)
    outcome = in_reactor(dsn.send, msg, v, reactor, per_recipient_capable=False,
                         deadline=time.time() + 60, forwarded_any=True)
    assert outcome.dsn_sent == 0
    assert not list(tmp_path.glob("dsn-*"))
