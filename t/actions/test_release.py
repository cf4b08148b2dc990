# tests: amavisd/actions/release.py
"""Release of quarantined mail: checks, the stored copy, the released message
(spec/protocols.md 4.5; pipeline.md 3, 20.5, 22.4)."""

from __future__ import annotations

import base64
import email
import gzip
import hashlib
import io
import os
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from amavisd import ids
from amavisd.actions import release as rel
from amavisd.actions.release import ReleaseError, ReleaseRequest
from amavisd.errors import Reply
from amavisd.message import ClientInfo, Message, Recipient
from t.sink import Sink, in_reactor

MAIL_ID = "kX3V0tN-vU4A"
NOW = 1796007763.0          # Mon, 30 Nov 2026 03:02:43 UTC
STORED = (b"Return-Path: <alice@anchor.test>\n"
          b"Delivered-To: banned-quarantine\n"
          b"X-Envelope-From: <alice@anchor.test>\n"
          b"X-Envelope-To: <bob@anchor.test>,\n <\"odd, >name\"@anchor.test>,\n"
          b" <carol@anchor.test>\n"
          b"X-Envelope-To-Blocked: <bob@anchor.test>,\n <carol@anchor.test>\n"
          b"X-Quarantine-ID: <kX3V0tN-vU4A>\n"
          b"X-Amavis-Alert: BANNED, message contains\n application/x-msdownload,evil.exe\n"
          b"X-Spam-Flag: NO\nX-Spam-Score: 0\nX-Spam-Level:\n"
          b"Received: from client.anchor.test ([127.0.0.1])\n by localhost (amavis)\n"
          b"From: Alice <alice@anchor.test>\nSubject: evil\n\nthe body\n")
MESSAGE = STORED[STORED.index(b"Received:"):]


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    import time
    time.tzset()


def b64url(raw: bytes) -> str:
    return base64.b64encode(raw, b"-_").decode()


def view(tmp_path: Path, **kw: Any) -> SimpleNamespace:
    qdir = tmp_path / "virusmails"
    qdir.mkdir(exist_ok=True)
    base = dict(QUARANTINEDIR=str(qdir), quarantine_subdir_levels=1,
                myhostname="mx.anchor.test", localhost_name="localhost",
                allowed_added_header_fields={"received": 1}, auth_required_release=0,
                release_method=None, notify_method="smtp:[127.0.0.1]:10025",
                requeue_method="smtp:[127.0.0.1]:25", spam_quarantine_method="local:spam-%m.gz",
                release_format="resend", report_format="arf", hdrfrom_notify_recip=None,
                hdrfrom_notify_sender=None, child_timeout=60)
    base.update(kw)
    return SimpleNamespace(**base)


def store(tmp_path: Path, name: str = f"k/banned-{MAIL_ID}", data: bytes = STORED) -> Path:
    path = tmp_path / "virusmails" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def request(**kw: Any) -> ReleaseRequest:
    base: dict[str, Any] = dict(kind="release", mail_id=MAIL_ID,
                                mail_file=f"k/banned-{MAIL_ID}", quar_type="F")
    base.update(kw)
    return ReleaseRequest(**base)


def prepare(tmp_path: Path, req: ReleaseRequest, v: Any, stack: ExitStack):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return rel.prepare(req, v, None, mail_id="NEWid0123456", secret_id="s", log_id="rel-NEW",
                       tempdir=str(work), now=NOW, cleanup=stack)


# ------------------------------------------------------------------ mail_id, secret_id


@pytest.mark.parametrize("mail_id", ["kX3V0tN-vU4A", "a", "abc+de_f==", "0123456789abcdef"])
def test_mail_id_syntax_accepts(mail_id: str) -> None:
    rel.check_mail_id(mail_id)


@pytest.mark.parametrize("mail_id", ["", "bad/id", "-abc", "_abc", "ab c", "abc===", "ab\ncd"])
def test_mail_id_syntax_refuses(mail_id: str) -> None:
    with pytest.raises(ReleaseError) as err:
        rel.check_mail_id(mail_id)
    assert str(err.value).startswith("Invalid mail_id '")


def test_secret_id_current_form() -> None:
    """pipeline.md 3: mail_id == base64url(MD5(base64url_decode(secret_id)))[:12]."""
    raw = bytes(range(9))
    secret = b64url(raw)
    mail_id = b64url(hashlib.md5(raw).digest())[:12]
    assert rel.secret_id_matches(mail_id, secret)
    assert not rel.secret_id_matches(mail_id, b64url(bytes(range(1, 10))))
    assert not rel.secret_id_matches(mail_id, "")
    assert not rel.secret_id_matches(mail_id, "caf\xe9")


def test_secret_id_legacy_forms_and_our_ids() -> None:
    """MD5 of the string itself, '+/' written as '-_' or '-.' (the pre-2.7 form)."""
    for _ in range(50):
        mail_id, secret = ids.generate_mail_id(72)
        assert rel.secret_id_matches(mail_id, secret)
    for i in range(2000):                       # find a digest with '/' in its first 12
        secret = f"legacy{i}"
        digest = base64.b64encode(hashlib.md5(secret.encode()).digest()).decode()[:12]
        if "/" in digest:
            break
    else:
        pytest.fail("no digest with '/'")
    assert rel.secret_id_matches(digest.replace("+", "-").replace("/", "."), secret)
    assert rel.secret_id_matches(digest.replace("+", "-").replace("/", "_"), secret)
    assert not rel.secret_id_matches(digest, secret)       # plain '/' is no mail_id form


def test_secret_id_length_rule() -> None:
    """A longer mail_id is compared whole (Perl: never matches); a shorter one never."""
    mail_id, secret = ids.generate_mail_id(96)
    assert len(mail_id) == 16 and rel.secret_id_matches(mail_id, secret)
    assert not rel.secret_id_matches(mail_id[:12] + "AAAA", secret)
    assert not rel.secret_id_matches(mail_id[:4], secret)


def test_authorize() -> None:
    mail_id, secret = ids.generate_mail_id(72)
    rel.authorize(request(mail_id=mail_id, secret_id=""), auth_required=False)
    rel.authorize(request(mail_id=mail_id, secret_id=secret), auth_required=True)
    with pytest.raises(ReleaseError) as err:
        rel.authorize(request(mail_id=mail_id, secret_id=""), auth_required=True)
    assert str(err.value) == f"Secret_id  does not match mail_id {mail_id}"
    with pytest.raises(ReleaseError) as err:       # a non-empty one is always checked
        rel.authorize(request(mail_id=mail_id, secret_id="AAAAAAAAAAAA"), auth_required=False)
    assert str(err.value) == f"Secret_id AAAAAAAAAAAA does not match mail_id {mail_id}"


# ------------------------------------------------------------------ where the copy is


@pytest.mark.parametrize("name", ["k/banned-kX3V0tN-vU4A", "spam-kX3V0tN-vU4A.gz", "a_b+c=d"])
def test_safe_mail_file_accepts(name: str) -> None:
    assert rel.safe_mail_file(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/../b", "/etc/passwd", "a//b", ".hidden",
                                  "a/.", "a b", "a\nb", "k/banned-x;rm", "x" * 1100])
def test_safe_mail_file_refuses(name: str) -> None:
    with pytest.raises(ReleaseError) as err:
        rel.safe_mail_file(name)
    assert str(err.value).startswith("Suspicious quarantine file name '")


def test_file_candidates_and_guess(tmp_path: Path) -> None:
    q = str(tmp_path)
    assert rel.file_candidates(request(), "F", q, 1) == [tmp_path / f"k/banned-{MAIL_ID}"]
    assert rel.file_candidates(request(mail_file=None), "Z", q, 1) == [
        tmp_path / "k" / f"{MAIL_ID}.gz", tmp_path / f"{MAIL_ID}.gz"]
    assert rel.file_candidates(request(mail_file=MAIL_ID), "F", q, 0) == [tmp_path / MAIL_ID]


def test_open_file_refusals(tmp_path: Path) -> None:
    v = view(tmp_path)
    with ExitStack() as stack:
        with pytest.raises(ReleaseError) as err:
            rel.open_file(request(), "F", v, stack)
        assert str(err.value) == f"File {tmp_path}/virusmails/k/banned-{MAIL_ID} does not exist"
        outside = tmp_path / "secret.txt"
        outside.write_bytes(STORED)
        (tmp_path / "virusmails" / "k").mkdir()
        os.symlink(outside, tmp_path / "virusmails" / "k" / f"banned-{MAIL_ID}")
        with pytest.raises(ReleaseError) as err:
            rel.open_file(request(), "F", v, stack)
        assert str(err.value).endswith("lies outside $QUARANTINEDIR")
        (tmp_path / "virusmails" / "dir").mkdir()
        with pytest.raises(ReleaseError) as err:
            rel.open_file(request(mail_file="dir"), "F", v, stack)
        assert str(err.value).endswith("is not a regular file")
        with pytest.raises(ReleaseError) as err:
            rel.open_file(request(), "F", view(tmp_path, QUARANTINEDIR=""), stack)
        assert str(err.value) == "Config variable $QUARANTINEDIR is empty"


def test_default_quar_type() -> None:
    assert rel.quar_type_of(request(quar_type=None), SimpleNamespace()) == "F"
    sql = SimpleNamespace(spam_quarantine_method="sql:")
    assert rel.quar_type_of(request(quar_type=""), sql) == "Q"
    assert rel.quar_type_of(request(quar_type="z"), sql) == "Z"
    with pytest.raises(ReleaseError, match="Unknown quar_type 'X'"):
        rel.quar_type_of(request(quar_type="X"), sql)


# ------------------------------------------------------------------ the leading fields


def test_parse_stored_release() -> None:
    reader = io.BytesIO(STORED)
    stored = rel.parse_stored(reader, MAIL_ID, keep_report_fields=False)
    assert stored.sender == "alice@anchor.test"
    assert stored.recipients == ["bob@anchor.test", '"odd, >name"@anchor.test',
                                 "carol@anchor.test"]
    assert stored.blocked == ["bob@anchor.test", "carol@anchor.test"]
    assert stored.quarantine_id == MAIL_ID
    assert stored.kept == b""
    assert stored.first + reader.read() == MESSAGE


def test_parse_stored_report_keeps_alert_and_spam_fields() -> None:
    reader = io.BytesIO(STORED)
    stored = rel.parse_stored(reader, MAIL_ID, keep_report_fields=True)
    assert stored.kept == (b"X-Amavis-Alert: BANNED, message contains\n"
                           b" application/x-msdownload,evil.exe\n"
                           b"X-Spam-Flag: NO\nX-Spam-Score: 0\nX-Spam-Level:\n")
    assert stored.first.startswith(b"Received: ")


def test_parse_stored_stops_at_first_other_field() -> None:
    """A field after the original header's first one is the message's, never ours."""
    data = (b"X-Quarantine-ID: <kX3V0tN-vU4A>\nX-Envelope-From: <a@b>\nSubject: x\n"
            b"X-Envelope-To: <evil@b>\n\nbody\n")
    reader = io.BytesIO(data)
    stored = rel.parse_stored(reader, MAIL_ID, keep_report_fields=False)
    assert stored.recipients == [] and stored.blocked is None
    assert stored.first + reader.read() == b"Subject: x\nX-Envelope-To: <evil@b>\n\nbody\n"


MBOX = (b"From <a@x> Mon Nov 30 00:00:00 2026\nReturn-Path: <a@x>\nX-Quarantine-ID: <AAA>\n"
        b"Subject: one\n\nbody1\n>From me\n\n"
        b"From <a@x> Mon Nov 30 00:00:01 2026\nReturn-Path: <a@x>\nX-Envelope-To: <b@y>\n"
        b"X-Envelope-To-Blocked: <b@y>\nX-Quarantine-ID: <BBB>\nSubject: two\n\nbody2\n"
        b">>From x\n\n\n"
        b"From <a@x> Mon Nov 30 00:00:02 2026\nX-Quarantine-ID: <CCC>\n\nthree\n\n")


@pytest.mark.parametrize(("mail_id", "message"), [
    ("AAA", b"Subject: one\n\nbody1\nFrom me\n"),
    ("BBB", b"Subject: two\n\nbody2\n>From x\n\n"),      # its own empty line is kept
    ("CCC", b"\nthree\n"),
])
def test_mbox_message_is_picked_by_its_quarantine_id(mail_id: str, message: bytes) -> None:
    """mboxrd quoting undone, the separator's blank line dropped, the others skipped."""
    reader = io.BufferedReader(io.BytesIO(MBOX))
    stored = rel.parse_stored(reader, mail_id, keep_report_fields=False)
    assert stored.quarantine_id == mail_id
    assert stored.first + stored.body.read(1 << 20) == message
    assert stored.blocked == (["b@y"] if mail_id == "BBB" else None)


@pytest.mark.parametrize(("data", "why"), [
    (b"EHLO localhost\nMAIL FROM:<a@b>\n", "Releasing messages from a BSMTP quarantine is "
                                           "not supported"),
    (b"From a@b Mon Nov 30 03:02:43 2026\nX-Quarantine-ID: <OTHERid01234>\n\nbody\n"
     b"From a@b Mon Nov 30 03:02:44 2026\nSubject: no id\n\nkX3V0tN-vU4A\n",
     "Quarantined mailbox holds no message kX3V0tN-vU4A"),
    (b"X-Envelope-From: <a@b>\nSubject: x\n\nbody\n",
     "Quarantined message kX3V0tN-vU4A has no X-Quarantine-ID field"),
    (b"X-Quarantine-ID: <OTHERid01234>\nSubject: x\n\nbody\n",
     "Stored X-Quarantine-ID does not match mail_id kX3V0tN-vU4A"),
    (b"X-Envelope-To: <" + b"a" * rel.LINE_LIMIT + b">\n",
     "Quarantined message: a leading header line is too long"),
])
def test_parse_stored_refusals(data: bytes, why: str) -> None:
    with pytest.raises(ReleaseError) as err:
        rel.parse_stored(io.BytesIO(data), MAIL_ID, keep_report_fields=False)
    assert str(err.value) == why


def test_split_addresses() -> None:
    assert rel.split_addresses('<a@b>, <"x,y>z"@c>,\t<>') == ["a@b", '"x,y>z"@c', ""]
    assert rel.split_addresses("a@b, c@d") == ["a@b", "c@d"]
    assert rel.split_addresses("") == []


# ------------------------------------------------------------------ the released message


def released_msg(*rcpts: str) -> Message:
    return Message("alice@anchor.test", "alice@anchor.test",
                   [Recipient(r, r) for r in rcpts], Path("/nonexistent"), 0, "rel-NEW",
                   mail_id="NEWid0123456", client=ClientInfo(), protocol="", rx_time=NOW)


def test_resend_fields_exact(tmp_path: Path) -> None:
    """Spec 20.5: Received on top, then Resent-From/-To/-Date/-Message-ID."""
    v = view(tmp_path)
    assert rel.resend_fields(released_msg("bob@anchor.test"), MAIL_ID, v, None, NOW) == (
        b"Received: from unknown by localhost (amavis, unix socket) id NEWid0123456\n"
        b" for <bob@anchor.test>; Mon, 30 Nov 2026 03:02:43 +0000 (UTC)\n"
        b'Resent-From: "Content-filter at mx.anchor.test" <postmaster@mx.anchor.test>\n'
        b"Resent-To: <bob@anchor.test>\n"
        b"Resent-Date: Mon, 30 Nov 2026 03:02:43 +0000 (UTC)\n"
        b"Resent-Message-ID: <kX3V0tN-vU4A-NEWid0123456@mx.anchor.test>\n")


def test_resend_fields_requested_by_and_several_recipients(tmp_path: Path) -> None:
    v = view(tmp_path, allowed_added_header_fields={"received": 0},
             hdrfrom_notify_recip="Quarantine <quar@${myhostname}>")
    out = rel.resend_fields(released_msg("a@x.test", "b@x.test"), MAIL_ID, v,
                            "admin@anchor.test", NOW).decode()
    assert out.splitlines() == [
        "Resent-From: <admin@anchor.test>",
        "Resent-Sender: Quarantine <quar@mx.anchor.test>",
        "Resent-To: undisclosed-recipients:;",
        "Resent-Date: Mon, 30 Nov 2026 03:02:43 +0000 (UTC)",
        "Resent-Message-ID: <kX3V0tN-vU4A-NEWid0123456@mx.anchor.test>"]


def test_prepare_resend_to_blocked_recipients(tmp_path: Path) -> None:
    store(tmp_path)
    v = view(tmp_path)
    with ExitStack() as stack:
        prepared = prepare(tmp_path, request(), v, stack)
        assert prepared is not None
        msg = prepared.message
        assert [r.quoted for r in msg.recipients] == ["bob@anchor.test", "carol@anchor.test"]
        assert (msg.sender, msg.log_id, msg.mail_id) == ("alice@anchor.test", "rel-NEW",
                                                         "NEWid0123456")
        assert msg.originating and msg.findings["parent_mail_id"] == MAIL_ID
        assert msg.spool_path.read_bytes() == MESSAGE
        assert msg.size == len(MESSAGE) + MESSAGE.count(b"\n")
        assert prepared.header.startswith(b"Received: from unknown by localhost")
        assert b"\nResent-To: undisclosed-recipients:;\n" in prepared.header
        assert prepared.method == "smtp:[127.0.0.1]:10025"          # $notify_method
        assert prepared.summary == ("Quarantined message release (miscategorized): "
                                    f"{MAIL_ID} <alice@anchor.test> -> "
                                    "<bob@anchor.test>,<carol@anchor.test>")
        spool = msg.spool_path
    assert not spool.exists()                       # the private copy is gone afterwards
    assert list((tmp_path / "work").iterdir()) == []


def test_prepare_gz_alternates_sender_and_requeue(tmp_path: Path) -> None:
    store(tmp_path, f"spam-{MAIL_ID}.gz")
    v = view(tmp_path, release_method="smtp:[127.0.0.1]:10026")
    req = request(kind="requeue", mail_file=f"spam-{MAIL_ID}.gz", quar_type="Z",
                  recipients=("<dave@anchor.test>",), sender="<>")
    with ExitStack() as stack:
        prepared = prepare(tmp_path, req, v, stack)
        assert prepared is not None
        assert [r.quoted for r in prepared.message.recipients] == ["dave@anchor.test"]
        assert prepared.message.sender == ""
        assert prepared.message.spool_path.read_bytes() == MESSAGE
        assert prepared.method == "smtp:[127.0.0.1]:25"             # $requeue_method
        assert prepared.summary.startswith("Quarantined message requeue (miscategorized):")
    v = view(tmp_path, release_method="smtp:[127.0.0.1]:10026")
    with ExitStack() as stack:
        prepared = prepare(tmp_path, request(kind="report", mail_file=f"spam-{MAIL_ID}.gz"),
                           v, stack)
        assert prepared is not None and prepared.method == "smtp:[127.0.0.1]:10026"
        assert prepared.summary.startswith("Quarantined message report (abuse):")


def test_prepare_no_recipients(tmp_path: Path) -> None:
    store(tmp_path, data=STORED.replace(b"X-Envelope-To-Blocked: <bob@anchor.test>,\n"
                                        b" <carol@anchor.test>\n", b"X-Envelope-To-Blocked:\n"))
    with ExitStack() as stack:
        assert prepare(tmp_path, request(), view(tmp_path), stack) is None


@pytest.mark.parametrize(("kw", "settings", "why"), [
    ({"recipients": ("bob@x>\r\nBcc: <eve@x",)}, {}, "Invalid recipient address"),
    ({"sender": "a@b\nX: y"}, {}, "Invalid sender address"),
    ({"requested_by": "me@x\r\nX-Evil: 1"}, {}, "Invalid requested_by address"),
    ({}, {"release_format": "dsn"}, "Release format 'dsn' is not supported"),
    ({}, {"release_format": "attach", "attachment_password": "pw"},
     "Release format 'attach' with $attachment_password"),
    ({"quar_type": "M"}, {}, "Releasing from a mailbox quarantine (quar_type M)"),
    ({"kind": "delete"}, {}, "Unknown request 'delete'"),
    ({"secret_id": "wrong"}, {}, "Secret_id wrong does not match mail_id"),
])
def test_prepare_refuses_bad_input(tmp_path: Path, kw: dict[str, Any],
                                   settings: dict[str, Any], why: str) -> None:
    store(tmp_path)
    with ExitStack() as stack, pytest.raises(ReleaseError) as err:
        prepare(tmp_path, request(**kw), view(tmp_path, **settings), stack)
    assert str(err.value).startswith(why)
    assert list((tmp_path / "work").iterdir()) == []


def parse_wrapped(tmp_path: Path, fmt: str, kind: str) -> email.message.Message:
    store(tmp_path)
    v = view(tmp_path, release_format=fmt, report_format=fmt)
    with ExitStack() as stack:
        prepared = prepare(tmp_path, request(kind=kind, requested_by="admin@anchor.test"), v,
                           stack)
        assert prepared is not None and prepared.header == b""
        assert prepared.message.sender == ""                 # our own notice: <>
        data = prepared.message.spool_path.read_bytes()
    return email.message_from_bytes(data)


def test_arf_report(tmp_path: Path) -> None:
    """RFC 5965: multipart/report (feedback-report): text, the report, the message."""
    top = parse_wrapped(tmp_path, "arf", "report")
    assert top.get_content_type() == "multipart/report"
    assert top.get_param("report-type") == "feedback-report"
    assert top["Subject"] == "Fw: evil"
    assert top["Message-ID"] == "<ARFNEWid0123456@mx.anchor.test>"
    assert top["To"] == "undisclosed-recipients:;"
    text, report, original = top.get_payload()
    assert text.get_content_type() == "text/plain"
    assert "held in quarantine as kX3V0tN-vU4A" in text.get_payload()
    assert "Requested by: <admin@anchor.test>" in text.get_payload()
    assert report.get_content_type() == "message/feedback-report"
    fields = report.get_payload()[0]
    assert fields["Feedback-Type"] == "abuse" and fields["Version"] == "1"
    assert fields.get_all("Original-Rcpt-To") == [
        "<bob@anchor.test>", '<"odd, >name"@anchor.test>', "<carol@anchor.test>"]
    assert original.get_content_type() == "message/rfc822"
    inner = original.get_payload()[0]
    assert inner["Subject"] == "evil" and inner["X-Amavis-Alert"].startswith("BANNED")
    assert inner.get_payload() == "the body\n"


def test_attach_and_plain(tmp_path: Path) -> None:
    top = parse_wrapped(tmp_path, "attach", "release")
    assert top.get_content_type() == "multipart/mixed"
    assert top["Subject"] == "Released quarantined message: evil"
    text, original = top.get_payload()
    assert original.get_content_type() == "message/rfc822"
    assert original.get_filename() == "msg-kX3V0tN-vU4A.eml"
    assert original.get_payload()[0]["X-Amavis-Alert"] is None      # release drops it
    (tmp_path / "plain").mkdir()
    top = parse_wrapped(tmp_path / "plain", "plain", "release")
    text, original = top.get_payload()
    assert original.get_content_type() == "text/plain"
    assert original.get_payload().endswith("the body\n")


# ------------------------------------------------------------------ the whole request


def test_release_delivers_to_a_sink(tmp_path: Path) -> None:
    """release() end to end with a real SMTP sink: one reply per recipient."""
    store(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    with Sink() as sink:
        v = view(tmp_path, release_method=f"smtp:[127.0.0.1]:{sink.port}")
        from twisted.internet import reactor
        replies = in_reactor(rel.release, request(), v, None, reactor, mail_id="NEWid0123456",
                             secret_id="s", log_id="rel-NEW", tempdir=str(work),
                             clock=lambda: NOW)
        assert [r.code for r in replies] == [250, 250]
        assert replies[0].text.startswith(f"from MTA(smtp:[127.0.0.1]:{sink.port}): 250 ")
        (msg,) = sink.messages
    assert msg.rcpts == [b"RCPT TO:<bob@anchor.test>", b"RCPT TO:<carol@anchor.test>"]
    assert b"\r\nResent-Message-ID: <kX3V0tN-vU4A-NEWid0123456@mx.anchor.test>\r\n" in msg.data
    assert msg.data.endswith(MESSAGE.replace(b"\n", b"\r\n"))
    assert list(work.iterdir()) == []


def test_release_without_method_answers_error_per_recipient(tmp_path: Path) -> None:
    store(tmp_path)
    (tmp_path / "work").mkdir()
    v = view(tmp_path, notify_method=None)
    from twisted.internet import reactor
    replies = in_reactor(rel.release, request(), v, None, reactor, mail_id="NEWid0123456",
                         secret_id="s", log_id="rel-NEW", tempdir=str(tmp_path / "work"))
    want = Reply(450, "4.5.0", "ERROR: no delivery method ($release_method, $notify_method "
                               "or $requeue_method) is set")
    assert replies == [want, want]


def test_release_nothing_to_do(tmp_path: Path) -> None:
    store(tmp_path)
    (tmp_path / "work").mkdir()
    from twisted.internet import reactor
    store(tmp_path, "empty-kX3V0tN-vU4A", STORED.replace(
        b"X-Envelope-To-Blocked: <bob@anchor.test>,\n <carol@anchor.test>\n",
        b"X-Envelope-To-Blocked:\n"))
    replies = in_reactor(rel.release, request(mail_file="empty-kX3V0tN-vU4A"), view(tmp_path),
                         None, reactor, mail_id="N", secret_id="s", log_id="rel-N",
                         tempdir=str(tmp_path / "work"))
    assert replies == [Reply(250, "2.5.0", "No recipients, nothing to do")]
