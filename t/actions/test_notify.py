# tests: amavisd/actions/notify.py amavisd/actions/notice_context.py amavisd/actions/notice_mime.py
"""Administrator and recipient notifications (spec pipeline.md 19, 20.6; monitoring.md 1.3).

Settings go through the real registry (``Config`` with its after-defaults), the
notices through the real template engine and our default templates, delivery to the
in-test SMTP sink; the stats segment is a real one in a temp file.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor

from amavisd import stats
from amavisd.actions import notify
from amavisd.checks.badheader import HeaderFault
from amavisd.checks.banned import BannedVerdict
from amavisd.config.model import Config
from amavisd.constants import D_BOUNCE, D_DISCARD, D_PASS
from amavisd.content import ContentResult
from amavisd.errors import Reply, TempFail
from amavisd.message import ClientInfo, Message, Recipient
from amavisd.parts import PartsTree
from t.sink import Sink, in_reactor

HEADER = (b"Received: from pc.example.net ([93.184.216.34])\n\tby submit.anchor.test (Postfix) "
          b"with ESMTPSA id 4QJ\n\tfor <bob@anchor.test>; Mon, 30 Nov 2026 03:02:24 +0000\n"
          b"From: Alice <alice@anchor.test>\nTo: Bob <bob@anchor.test>\n"
          b"Subject: Invoice November\nMessage-ID: <n1@anchor.test>\n")
BODY = HEADER + b"\nInvoice attached.\n"
RX_TIME = 1796007751.0
QDIR = "/var/lib/amavis/virusmails"


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def make_view(**settings: Any) -> Any:
    """A BankView over a Config with the registry's defaults and after-defaults."""
    config = Config()
    base = dict(myhostname="mx.anchor.test", mydomain="anchor.test",
                QUARANTINEDIR=QDIR, notify_method="smtp:[127.0.0.1]:1")
    for name, value in {**base, **settings}.items():
        config.assign(name, value, "test")
    config.finish()
    return config.view()


def make_msg(tmp_path: Path, *rcpts: str, body: bytes = BODY,
             sender: str = "alice@anchor.test") -> Message:
    spool = tmp_path / "email.txt"
    spool.write_bytes(body)
    return Message(sender, sender, [Recipient(r, r) for r in rcpts or ("bob@anchor.test",)],
                   spool, len(body) + body.count(b"\n"), "21149-04", mail_id="yx2g70Z0SLkS",
                   rx_time=RX_TIME,
                   client=ClientInfo(addr="127.0.0.1", mta_addr="127.0.0.1",
                                     mta_helo="client.anchor.test", local_addr="127.0.0.1",
                                     local_port=10024))


def block(msg: Message, rcpt: Recipient, ccat: str, *, destiny: int = D_DISCARD,
          text: str = "Ok, discarded") -> None:
    """What decide leaves on a blocked recipient."""
    rcpt.destiny, rcpt.done, rcpt.ccat_blocking = destiny, 1, ccat
    rcpt.ccats = [ccat, ccat.split(",")[0], "1"] if "," in ccat else [ccat, "1"]
    code = "554 5.7.0" if destiny == D_BOUNCE else "250 2.7.0"
    rcpt.reply = Reply.parse(f"{code} {text}, id={msg.log_id}")
    _message_ccats(msg)


def passed(msg: Message, rcpt: Recipient, *ccats: str) -> None:
    rcpt.destiny, rcpt.ccats = D_PASS, [*ccats, "1"]
    _message_ccats(msg)


def _message_ccats(msg: Message) -> None:
    cats = {c for r in msg.recipients for c in r.ccats}
    msg.findings["ccats"] = sorted(cats, key=lambda c: tuple(int(x) for x in c.split(",")),
                                   reverse=True)
    msg.findings["ccat_main"] = msg.findings["ccats"][0] if cats else "1"


def banned(msg: Message, rcpt: Recipient, reason: str = ".exe,invoice-2026-11.exe") -> None:
    verdict = BannedVerdict(banned_parts=["p003/p001"], banned_parts_as_attr=["P=p003"],
                            banning_rule_key=[r"(?i)\.exe$"], banning_rule_comment=["exe"],
                            banning_rule_rhs=[True], banning_reason_short=reason)
    content = msg.findings.setdefault(
        "content", ContentResult(tree=PartsTree(), header_faults=[], banned_hits=[], banned={}))
    content.banned[rcpt.address] = verdict
    rcpt.banning_reason_short = reason                     # type: ignore[attr-defined]


def infected(msg: Message, name: str = "Eicar-Test-Signature") -> None:
    msg.findings["virus_names"] = [name]
    msg.findings["detecting_scanners"] = ["ClamAV-clamd"]


def parse(path: Path) -> email.message.Message:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)


LOCAL = re.compile(r".*@(?:.*\.)?anchor\.test\Z")


def is_local(address: str) -> bool:
    return bool(LOCAL.match(address))


# ------------------------------------------------------------------ who is notified


def test_virus_goes_to_virus_admin_from_the_legacy_scalar(tmp_path: Path) -> None:
    """Debian's $virus_admin = postmaster@$mydomain feeds @virus_admin_maps, which
    also serves banned (via @banned_admin_maps) and UNCHECKED mail."""
    view = make_view(virus_admin="postmaster@anchor.test")
    for ccat in ("9", "8", "7"):
        msg = make_msg(tmp_path)
        block(msg, msg.recipients[0], ccat)
        assert notify.admin_addresses(msg, view) == ["postmaster@anchor.test"], ccat
    msg = make_msg(tmp_path)
    block(msg, msg.recipients[0], "6")                     # spam: $spam_admin, unset
    assert notify.admin_addresses(msg, view) == []


def test_no_admin_configured_no_notice(tmp_path: Path) -> None:
    """Upstream defaults: every *_admin undef, nothing is sent."""
    msg = make_msg(tmp_path)
    block(msg, msg.recipients[0], "9")
    assert notify.admin_addresses(msg, make_view()) == []
    assert notify.recipient_notices(msg, make_view(), is_local) == []


def test_each_category_has_its_admin_and_the_union_is_notified(tmp_path: Path) -> None:
    view = make_view(virus_admin="virus@anchor.test", banned_admin="banned@anchor.test",
                     spam_admin="spam@anchor.test", bad_header_admin="badh@anchor.test")
    msg = make_msg(tmp_path, "a@anchor.test", "b@anchor.test", "c@anchor.test",
                   "d@anchor.test", "e@anchor.test")
    a, b, c, d, e = msg.recipients
    block(msg, a, "9")
    block(msg, b, "8")
    block(msg, c, "6")
    passed(msg, d, "4,2", "4")          # not blocked: its category list is walked
    passed(msg, e, "5")                 # SPAMMY has no admin entry
    assert notify.admin_addresses(msg, view) == ["virus@anchor.test", "banned@anchor.test",
                                                 "spam@anchor.test", "badh@anchor.test"]


def test_per_recipient_admin_tables_and_no_duplicates(tmp_path: Path) -> None:
    view = make_view(virus_admin_maps=[{"bob@anchor.test": "admin1@anchor.test",
                                        ".example.com": "admin2@example.com"},
                                       "fallback@anchor.test"])
    msg = make_msg(tmp_path, "bob@anchor.test", "carol@example.com", "dave@sub.example.com",
                   "erin@elsewhere.test")
    for rcpt in msg.recipients:
        block(msg, rcpt, "9")
    assert notify.admin_addresses(msg, view) == ["admin1@anchor.test", "admin2@example.com",
                                                 "fallback@anchor.test"]


def test_admin_maps_by_ccat_overrides(tmp_path: Path) -> None:
    """%admin_maps_by_ccat: an entry replaces the built-in table of its category."""
    view = make_view(virus_admin="postmaster@anchor.test",
                     admin_maps_by_ccat={"9": ["security@anchor.test"], "5": ["spammy@x.test"]})
    msg = make_msg(tmp_path, "a@anchor.test", "b@anchor.test")
    block(msg, msg.recipients[0], "9")
    passed(msg, msg.recipients[1], "5")
    assert notify.admin_addresses(msg, view) == ["security@anchor.test", "spammy@x.test"]


@pytest.mark.parametrize(("level", "black", "white", "notified"), [
    (9.0, False, False, True), (12.0, False, False, False), (1.0, True, False, False),
    (1.0, True, True, True)])
def test_spam_admin_cutoff(tmp_path: Path, level: float, black: bool, white: bool,
                           notified: bool) -> None:
    view = make_view(spam_admin="spam@anchor.test", spam_notifyadmin_cutoff_level_maps=[10])
    msg = make_msg(tmp_path)
    rcpt = msg.recipients[0]
    block(msg, rcpt, "6")
    rcpt.spam_level, rcpt.blacklisted, rcpt.whitelisted = level, black, white
    assert notify.admin_addresses(msg, view) == (["spam@anchor.test"] if notified else [])


def test_newvirus_admin_only_for_a_virus_never_seen(tmp_path: Path) -> None:
    """@newvirus_admin_maps: the stats segment's virus.byname.* counters say what was
    seen before (the virus check has already counted this message: > 1 is "seen")."""
    seg = stats.StatsSegment.create(str(tmp_path / "stats.mmap"), 2, os.getpid())
    try:
        writer = seg.writer(0, os.getpid())
        view = make_view(newvirus_admin="new@anchor.test")
        msg = make_msg(tmp_path)
        block(msg, msg.recipients[0], "9")
        infected(msg, "Brand.New")
        writer.add_dynamic("virus.byname.Brand.New")
        assert not notify.virus_seen_before(writer, ["Brand.New"])
        assert notify.admin_addresses(msg, view, new_virus=True) == ["new@anchor.test"]
        writer.add_dynamic("virus.byname.Brand.New")            # a second message
        assert notify.virus_seen_before(writer, ["Brand.New"])
        assert notify.admin_addresses(msg, view, new_virus=False) == []
        assert not notify.virus_seen_before(None, ["Brand.New"])  # no segment: all new
    finally:
        seg.close()


@pytest.mark.parametrize(("settings", "rcpt", "ccat", "warned"), [
    ({"warnbannedrecip": 1}, "bob@anchor.test", "8", True),
    ({"warnbannedrecip": 1}, "bob@example.org", "8", False),          # not local
    ({"warnbannedrecip": 1, "warn_offsite": 1}, "bob@example.org", "8", True),
    ({"warnbannedrecip": 1}, "bob@anchor.test", "9", False),           # virus: warnvirus
    ({"warnvirusrecip_maps": [{"bob@anchor.test": 1}]}, "bob@anchor.test", "9", True),
    ({"warnvirusrecip_maps": [{"bob@anchor.test": 1}]}, "carol@anchor.test", "9", False),
    ({"warnbadhrecip": 1}, "bob@anchor.test", "4", True),
    ({"warnvirusrecip": 1, "warnbannedrecip": 1, "warnbadhrecip": 1},
     "bob@anchor.test", "6", False),                                   # SPAM: never
    ({"warnbannedrecip": 1, "notify_virus_recips_templ": ""}, "bob@anchor.test", "8",
     False),                                                           # empty template
])
def test_who_gets_a_recipient_notice(tmp_path: Path, settings: dict[str, Any], rcpt: str,
                                     ccat: str, warned: bool) -> None:
    msg = make_msg(tmp_path, rcpt)
    block(msg, msg.recipients[0], ccat)
    wanted = notify.recipient_notices(msg, make_view(**settings), is_local)
    assert [w.rcpt.address for w in wanted] == ([rcpt] if warned else [])
    if warned:
        assert wanted[0].template == "notify_virus_recips_templ"


# ------------------------------------------------------------------ the notices


def admin_notice(tmp_path: Path, msg: Message, view: Any, admins: list[str],
                 **kw: Any) -> notify.BuiltNotice:
    from amavisd.actions.notice_context import notice_context
    from amavisd.header import read_header_block

    block_ = read_header_block(msg.spool_path)
    ctx = notice_context(msg, view, block_, is_local=is_local)
    built = notify.build_admin(msg, view, ctx, admins, block_, **kw)
    assert built is not None
    return built


def test_admin_notice_structure_and_headers(tmp_path: Path) -> None:
    """Section 19: multipart/mixed, the text, then the original header section as
    text/rfc822-headers with Return-Path first; fields from the template in its order
    after Content-Type, Content-Transfer-Encoding 8bit and MIME-Version (20.6)."""
    view = make_view(virus_admin="postmaster@anchor.test")
    msg = make_msg(tmp_path)
    rcpt = msg.recipients[0]
    block(msg, rcpt, "8", text="Ok, discarded, id=21149-04 - BANNED: .exe")
    banned(msg, rcpt)
    msg.findings["quarantined_to"] = [f"{QDIR}/y/banned-yx2g70Z0SLkS"]
    built = admin_notice(tmp_path, msg, view, ["postmaster@anchor.test"], boundary="BOUND")
    raw = built.path.read_bytes()
    head = raw.split(b"\n\n", 1)[0].decode()
    assert head.splitlines()[:3] == ['Content-Type: multipart/mixed; boundary="BOUND"',
                                     "Content-Transfer-Encoding: 8bit", "MIME-Version: 1.0"]
    m = parse(built.path)
    assert [k for k in m.keys()][3:] == ["From", "Date", "Subject", "To", "Message-ID"]
    assert m["From"] == '"Content-filter at mx.anchor.test" <postmaster@mx.anchor.test>'
    assert m["To"] == "<postmaster@anchor.test>"
    assert m["Date"] == "Mon, 30 Nov 2026 03:02:31 +0000 (UTC)"
    assert m["Message-ID"] == "<VAyx2g70Z0SLkS@mx.anchor.test>"
    assert " ".join(m["Subject"].split()) == \
        "Banned contents (.exe,invoice-2026-11.exe) - sent by [127.0.0.1] <alice@anchor.test>"
    text, headers = m.get_payload()
    assert (text.get_content_type(), text["Content-Transfer-Encoding"]) == ("text/plain", "7bit")
    assert text.get_content_charset() == "us-ascii"
    body = text.get_payload()
    assert "Banned part: .exe,invoice-2026-11.exe\n" in body
    assert "Quarantined as: y/banned-yx2g70Z0SLkS\n" in body
    assert "Not delivered to:\n  <bob@anchor.test>:\n   250 2.7.0 Ok, discarded" in body
    assert "Reference: 21149-04/yx2g70Z0SLkS\n" in body
    assert headers.get_content_type() == "text/rfc822-headers"
    assert headers.get_filename() == "header.hdr"
    assert headers["Content-Description"] == "Message header section"
    assert headers.get_payload() == "Return-Path: <alice@anchor.test>\n" + HEADER.decode()
    assert raw.endswith(b"\n--BOUND--\n")
    assert built.sender == "postmaster@mx.anchor.test"       # from hdrfrom_notify_admin
    assert built.recipients == ["postmaster@anchor.test"]
    assert built.size == len(raw) + raw.count(b"\n")
    assert oct(built.path.stat().st_mode & 0o777) == "0o600"


def test_virus_notice_names_virus_scanner_output_and_faked_sender(tmp_path: Path) -> None:
    """%V, %W, %v from the virus check; a sender-faking virus shows ?@[ip] as %o."""
    from amavisd.checks.virus import ScannerResult, VirusResult

    view = make_view(virus_admin="postmaster@anchor.test",
                     notify_virus_recips_templ="Subject: x\n\n(%V) %o [:W|x]\n",
                     warnvirusrecip=1)
    msg = make_msg(tmp_path)
    block(msg, msg.recipients[0], "9")
    infected(msg, "Worm.Fake")
    msg.findings["virus"] = VirusResult(
        status=True, virus_names=["Worm.Fake"], detecting_scanners=["ClamAV-clamd"],
        output="p002: Worm.Fake FOUND",
        results=[ScannerResult("ClamAV-clamd", True, "", ["Worm.Fake"])])
    body = parse(admin_notice(tmp_path, msg, view, ["postmaster@anchor.test"]).path) \
        .get_payload()[0].get_payload()
    assert "Virus: Worm.Fake\n" in body
    assert "Detected by: ClamAV-clamd\n" in body
    assert "Scanner output:\n  p002: Worm.Fake FOUND\n" in body
    from amavisd.actions.notice_context import notice_context
    from amavisd.header import read_header_block

    ctx = notice_context(msg, view, read_header_block(msg.spool_path), is_local=is_local,
                         fakes_sender=True)
    (wanted,) = notify.recipient_notices(msg, view, is_local)
    built = notify.build_recipient(msg, view, ctx, wanted)
    assert parse(built.path).get_payload() == \
        "(Worm.Fake) ?@[93.184.216.34] ClamAV-clamd:[Worm.Fake]\n"


def test_bad_header_texts_in_the_notice(tmp_path: Path) -> None:
    view = make_view(bad_header_admin="badh@anchor.test")
    msg = make_msg(tmp_path)
    passed(msg, msg.recipients[0], "4,2", "4")
    msg.findings["bad_headers"] = [HeaderFault("8bit", 2, "Non-encoded 8-bit data "
                                               "(char E9 hex): Subject: Caf\\xE9")]
    assert notify.admin_addresses(msg, view) == ["badh@anchor.test"]
    m = parse(admin_notice(tmp_path, msg, view, ["badh@anchor.test"]).path)
    assert m["Subject"].startswith("Message with an invalid header - sent by")
    assert "Header problems:\n  Non-encoded 8-bit data (char E9 hex): Subject: Caf\\xE9\n" \
        in m.get_payload()[0].get_payload()
    assert "Delivered to:\n  <bob@anchor.test>\n" in m.get_payload()[0].get_payload()


def test_spam_notice_uses_the_spam_template_and_spamadmin_from(tmp_path: Path) -> None:
    view = make_view(spam_admin="spam@anchor.test",
                     mailfrom_notify_spamadmin="spam-report@anchor.test",
                     notify_spam_admin_templ="From: %f\nSubject: SPAM %c\nTo: [%T|, ]\n\n"
                                             "score %c\n")
    msg = make_msg(tmp_path)
    rcpt = msg.recipients[0]
    block(msg, rcpt, "6")
    rcpt.spam_level = 12.5
    built = admin_notice(tmp_path, msg, view, ["spam@anchor.test"])
    m = parse(built.path)
    assert m["From"] == '"Content-filter at mx.anchor.test" <spam-report@anchor.test>'
    assert m["Subject"] == "SPAM 12.5"
    assert built.sender == "spam-report@anchor.test"


def test_mailfrom_and_hdrfrom_settings(tmp_path: Path) -> None:
    """$hdrfrom_notify_admin wins; $mailfrom_notify_admin '' sends with the null sender."""
    view = make_view(hdrfrom_notify_admin="Virus Desk <desk@${myhostname}>",
                     mailfrom_notify_admin="")
    msg = make_msg(tmp_path)
    block(msg, msg.recipients[0], "9")
    built = admin_notice(tmp_path, msg, view, ["postmaster@anchor.test"])
    assert parse(built.path)["From"] == "Virus Desk <desk@mx.anchor.test>"
    assert built.sender == ""


def test_empty_admin_template_sends_nothing(tmp_path: Path) -> None:
    view = make_view(virus_admin="postmaster@anchor.test", notify_virus_admin_templ="")
    msg = make_msg(tmp_path)
    block(msg, msg.recipients[0], "9")
    from amavisd.actions.notice_context import notice_context

    ctx = notice_context(msg, view, HEADER, is_local=is_local)
    assert notify.build_admin(msg, view, ctx, ["postmaster@anchor.test"], HEADER) is None


def test_recipient_notice_is_one_text_part_with_its_own_banned_details(tmp_path: Path) -> None:
    """Section 19: single text part, no attachment; F and banned_parts are the
    recipient's own; To is the recipient."""
    view = make_view(warnbannedrecip=1)
    msg = make_msg(tmp_path, "bob@anchor.test", "carol@anchor.test")
    bob, carol = msg.recipients
    block(msg, bob, "8")
    block(msg, carol, "8")
    banned(msg, bob, ".exe,bob.exe")
    banned(msg, carol, ".exe,carol.exe")
    from amavisd.actions.notice_context import notice_context

    ctx = notice_context(msg, view, HEADER, is_local=is_local)
    notices = notify.recipient_notices(msg, view, is_local)
    assert [n.rcpt.address for n in notices] == ["bob@anchor.test", "carol@anchor.test"]
    built = notify.build_recipient(msg, view, ctx, notices[1])
    m = parse(built.path)
    assert not m.is_multipart()
    assert m.keys() == ["MIME-Version", "From", "Date", "Subject", "To", "Message-ID",
                        "Content-Type", "Content-Disposition", "Content-Transfer-Encoding"]
    assert m["To"] == "Bob <bob@anchor.test>"        # the template copies the original To
    assert built.recipients == ["carol@anchor.test"]
    assert "banned part: .exe,carol.exe" in m.get_payload()
    assert "bob.exe" not in m.get_payload()
    assert m["Message-ID"] == "<VRyx2g70Z0SLkS@mx.anchor.test>"


def test_utf8_subject_is_encoded_and_text_quoted_printable(tmp_path: Path) -> None:
    view = make_view(virus_admin="postmaster@anchor.test",
                     notify_virus_admin_templ="Subject: Virus für %s\nTo: [%T|, ]\n\n"
                                              "Grüße, %h\n")
    msg = make_msg(tmp_path)
    block(msg, msg.recipients[0], "9")
    m = parse(admin_notice(tmp_path, msg, view, ["postmaster@anchor.test"]).path)
    assert m["Subject"] == "Virus =?UTF-8?Q?f=C3=BCr?= <alice@anchor.test>"
    text = m.get_payload()[0]
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text.get_payload(decode=True).decode("utf-8") == "Grüße, mx.anchor.test\n"
    view = make_view(virus_admin="postmaster@anchor.test", hdr_encoding_qb="B",
                     notify_virus_admin_templ="Subject: Virus für dich\n\nüüüüü\n")
    m = parse(admin_notice(tmp_path, msg, view, ["postmaster@anchor.test"]).path)
    assert m["Subject"] == "=?UTF-8?B?VmlydXMgZsO8ciBkaWNo?="
    assert m.get_payload()[0]["Content-Transfer-Encoding"] == "base64"


def test_template_cannot_replace_the_mime_structure(tmp_path: Path) -> None:
    view = make_view(virus_admin="postmaster@anchor.test",
                     notify_virus_admin_templ="Content-Type: text/html\nMIME-Version: 9\n"
                                              "Subject: a\nSubject: b\n\nbody\n")
    msg = make_msg(tmp_path)
    block(msg, msg.recipients[0], "9")
    m = parse(admin_notice(tmp_path, msg, view, ["postmaster@anchor.test"]).path)
    assert m.get_content_type() == "multipart/mixed" and m["MIME-Version"] == "1.0"
    assert m.get_all("Subject") == ["b"]                    # a later line replaces


# ------------------------------------------------------------------ sending


def send(msg: Message, view: Any, **kw: Any) -> notify.NotifyResult:
    return in_reactor(notify.send, msg, view, reactor, is_local=is_local,
                      deadline=time.time() + 60, **kw)


def test_sent_to_the_sink_with_envelope_envid_and_counters(tmp_path: Path) -> None:
    """Admin then recipient notice via $notify_method; MAIL FROM the From's address,
    ENVID AM.<new mail_id>.<rx time>@<host>; OutMsgsSubmitNotif counted; temp files gone."""
    stats.drain_pending()
    msg = make_msg(tmp_path)
    rcpt = msg.recipients[0]
    block(msg, rcpt, "8")
    banned(msg, rcpt)
    with Sink() as sink:
        view = make_view(virus_admin="postmaster@anchor.test", warnbannedrecip=1,
                         notify_method=f"smtp:[127.0.0.1]:{sink.port}")
        result = send(msg, view)
        sink.wait_closed()
    assert [o.kind for o in result.outcomes] == ["admin", "recipient"]
    admin, recip = sink.messages
    m = re.fullmatch(rb"MAIL FROM:<postmaster@mx\.anchor\.test> BODY=7BIT "
                     rb"ENVID=AM\.(\S+)\.20261130T030231Z@mx\.anchor\.test", admin.mail)
    assert m and m.group(1).decode() == result.outcomes[0].message.mail_id != msg.mail_id
    assert admin.rcpts == [b"RCPT TO:<postmaster@anchor.test>"]
    assert recip.rcpts == [b"RCPT TO:<bob@anchor.test>"]
    assert b"Subject: Banned contents (.exe,invoice-2026-11.exe) - sent by" in admin.data
    assert b"\r\nContent-Type: text/rfc822-headers" in admin.data
    assert b"multipart" not in recip.data
    assert not list(tmp_path.glob("notif-*"))
    counts = stats.drain_pending()
    assert counts["OutMsgsSubmitNotif"] == 2
    assert counts["OutMsgsProtoSMTPSubmit"] == 2
    assert counts["OutMsgsDelivers"] == 2


def test_nothing_to_send_is_quiet(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    passed(msg, msg.recipients[0])
    assert send(msg, make_view(virus_admin="postmaster@anchor.test")).outcomes == []


def test_a_4xx_tempfails_the_message_and_a_5xx_is_only_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Amavis.pm: 'temporarily unable to notify admin' dies (451 for the message, the
    MTA keeps it); any other failure is logged 'FAILED to notify admin'."""
    msg = make_msg(tmp_path)
    block(msg, msg.recipients[0], "9")
    with Sink() as sink:
        port = sink.port
        view = make_view(virus_admin="tmp-admin@anchor.test",
                         notify_method=f"smtp:[127.0.0.1]:{port}")
        with pytest.raises(TempFail, match=r"quar\+notif FAILED: temporarily unable to notify "
                                           r"admin: 450 4\.2\.0"):
            send(msg, view)
        view = make_view(virus_admin="rej-admin@anchor.test",
                         notify_method=f"smtp:[127.0.0.1]:{port}")
        result = send(msg, view)
        sink.wait_closed()
    assert result.outcomes[0].reply.code == 550
    assert "FAILED to notify admin: 550 5.1.1" in caplog.text
    assert not sink.messages
    assert not list(tmp_path.glob("notif-*"))


def test_a_template_that_cannot_expand_is_logged_not_fatal(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A template over the engine's bounds fails the same way on every retry: it is
    logged like a 5xx and the message goes on; the other notices are still sent."""
    msg = make_msg(tmp_path)
    rcpt = msg.recipients[0]
    block(msg, rcpt, "8")
    banned(msg, rcpt)
    with Sink() as sink:
        view = make_view(virus_admin="postmaster@anchor.test", warnbannedrecip=1,
                         notify_virus_admin_templ='[= loop |["[@ loop]"]][@ loop]',
                         notify_method=f"smtp:[127.0.0.1]:{sink.port}")
        result = send(msg, view)
        sink.wait_closed()
    assert "FAILED to notify admin: template: template expansion exceeds" in caplog.text
    assert [o.kind for o in result.outcomes] == ["recipient"]
    assert [m.rcpts for m in sink.messages] == [[b"RCPT TO:<bob@anchor.test>"]]


def test_debian_perl_config_reaches_the_admin_and_recipient_tables(tmp_path: Path) -> None:
    """Debian's 20-debian_defaults line, imported from a Perl amavisd.conf."""
    import shutil

    if shutil.which("perl") is None:
        pytest.skip("perl is not installed")
    from amavisd.config.perlconf import load_perl_config

    conf = tmp_path / "amavisd.conf"
    conf.write_text("use strict;\n$mydomain = 'anchor.test';\n"
                    "$virus_admin = \"postmaster\\@$mydomain\";\n$warnbannedrecip = 1;\n"
                    "$mailfrom_notify_admin = 'virusalert@anchor.test';\n1;\n")
    config = Config()
    load_perl_config([str(conf)], config)
    config.finish()
    view = config.view()
    msg = make_msg(tmp_path)
    block(msg, msg.recipients[0], "8")
    assert notify.admin_addresses(msg, view) == ["postmaster@anchor.test"]
    assert [n.rcpt.address for n in notify.recipient_notices(msg, view, is_local)] == \
        ["bob@anchor.test"]
    assert notify.hdrfrom(view, "admin") == \
        f'"Content-filter at {view.myhostname}" <virusalert@anchor.test>'
    assert notify.mailfrom(view, "admin", notify.hdrfrom(view, "admin")) == \
        "virusalert@anchor.test"
