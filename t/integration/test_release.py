# tests: amavisd/actions/release.py, amavisd/release_client.py, AM.PDP release (daemon)
"""Releasing quarantined mail through the real daemon (spec/protocols.md 4.5, 7.2;
pipeline.md 20.5, 22.4).

A banned message is quarantined by the daemon (Debian's profile: ``banned-%m`` in
one subfolder level), then released over the AM.PDP Unix socket by our
``amavisd-release`` and by Debian's Perl script (a copy with the socket path
edited in: the installed one is never touched).  The released message must reach
the sink with its Resent-* fields and the original body.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from t.helpers import pg
from t.integration.conftest import Client, send_message, wait_for
from t.integration.test_golden import PROFILE_PASS
from t.sink import Sink

PERL_RELEASE = Path("/usr/sbin/amavisd-release")
ALICE, BOB, CAROL = "alice@anchor.test", "bob@anchor.test", "carol@anchor.test"
BODY_LINE = b"TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA"
EXE = (b"From: Alice <alice@anchor.test>\r\nTo: Bob <bob@anchor.test>\r\n"
       b"Date: Mon, 30 Nov 2026 03:01:54 +0000\r\nSubject: evil\r\n"
       b"Message-ID: <evil@anchor.test>\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
       b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
       b"--b1\r\nContent-Type: application/octet-stream\r\n"
       b"Content-Disposition: attachment; filename=\"evil.exe\"\r\n"
       b"Content-Transfer-Encoding: base64\r\n\r\n" + BODY_LINE + b"\r\n--b1--\r\n")
ORIGINAL_BODY = EXE.split(b"\r\n\r\n", 1)[1]
pg_schema = pg.pg_schema            # the fixture: a private PostgreSQL schema per test


def start(amavisd, tmp_path: Path, extra: str = "", auth: int = 0):
    """The daemon with an AM.PDP bank on a Unix socket, like Debian's AM.PDP-SOCK."""
    path = tmp_path / "home" / "amavisd.sock"
    daemon = amavisd(PROFILE_PASS + f"unix_socketname = {str(path)!r}\n"
                     "unix_socket_mode = 0o666\n"
                     "interface_policy = {'SOCK': 'AM.PDP-SOCK'}\n"
                     "policy_bank = {'AM.PDP-SOCK': {'protocol': 'AM.PDP', "
                     f"'auth_required_release': {auth}}}}}\n" + extra)
    return daemon, path


def quarantine_banned(daemon, rcpts=(BOB,), seen: int = 0) -> str:
    """Send the banned message over SMTP; return the log's ``quarantine:`` location."""
    client = Client(daemon.port)
    assert client.reply()[0].startswith("220 ")
    reply = send_message(client, ALICE, list(rcpts), EXE)
    assert reply[0].startswith("250 2.7.0 Ok, discarded"), reply
    client.cmd("QUIT")

    def found():
        hits = re.findall(r"Blocked BANNED .*?, quarantine: (\S+?),", daemon.logfile_text())
        return hits[seen] if len(hits) > seen else None

    return wait_for(found, 15, "the Blocked line with its quarantine location")


def our_client(kind: str, *args: str, sock: Path | str, stdin: bytes | None = None,
               ) -> subprocess.CompletedProcess:
    """The console script (``amavisd-release``/``-requeue``/``-report``) as installed."""
    exe = shutil.which(f"amavisd-{kind}")
    func = {"release": "main", "requeue": "main_requeue", "report": "main_report"}[kind]
    argv = [exe] if exe else [sys.executable, "-c",
                              f"import sys; from amavisd.release_client import {func}; "
                              f"sys.exit({func}())"]
    return subprocess.run([*argv, "--socket", str(sock), *args], input=stdin,
                          capture_output=True, timeout=60)


def perl_client(tmp_path: Path, sock: Path, *args: str,
                name: str = "amavisd-release") -> subprocess.CompletedProcess:
    """Debian's script, copied with our socket path (spec 7.2: it is hard-coded)."""
    script = PERL_RELEASE.read_text()
    needle = "$socketname = '/var/lib/amavis/amavisd.sock';"
    assert needle in script
    copy = tmp_path / name
    copy.write_text(script.replace(needle, f"$socketname = '{sock}';"))
    os.chmod(copy, 0o755)
    return subprocess.run(["perl", "-T", str(copy), *args], capture_output=True, timeout=60)


def to(sink: Sink, address: str) -> list:
    return [m for m in sink.messages if any(f"<{address}>".encode() in r for r in m.rcpts)]


def header_fields(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return re.split(r"\r\n(?![ \t])", head)


def check_resent(data: bytes, mail_id: str, resent_to: str) -> str:
    """Spec 20.5 fields on top, then amavis's quarantine-time Received, then the
    original header and body; returns the new mail_id."""
    fields = header_fields(data)
    names = [f.split(":", 1)[0] for f in fields]
    assert names[:7] == ["Received", "Resent-From", "Resent-To", "Resent-Date",
                         "Resent-Message-ID", "Received", "From"], names
    assert fields[1] == ('Resent-From: "Content-filter at mx.anchor.test" '
                         '<postmaster@mx.anchor.test>')
    assert fields[2] == f"Resent-To: {resent_to}"
    m = re.fullmatch(rf"Resent-Message-ID: <{re.escape(mail_id)}-([A-Za-z0-9_-]{{12}})"
                     r"@mx\.anchor\.test>", fields[4])
    assert m, fields[4]
    new_id = m.group(1)
    assert re.match(rf"Received: from unknown\s+by localhost \(amavis, unix socket\)\s+"
                    rf"id {new_id}", fields[0]), fields[0]
    assert not any(n.startswith(("X-Envelope-", "X-Quarantine-ID", "Delivered-To",
                                 "Return-Path", "X-Amavis-Alert", "X-Spam-")) for n in names)
    assert data.split(b"\r\n\r\n", 1)[1] == ORIGINAL_BODY
    return new_id


# ------------------------------------------------------------------ release, our client


def test_release_to_blocked_recipient_with_our_client(amavisd, sink, tmp_path):
    """The banned copy goes to the blocked recipient with Resent-* fields (20.5);
    stderr shows the setreply, exit status 0; the log has the 22.4 line."""
    daemon, sock = start(amavisd, tmp_path)
    location = quarantine_banned(daemon)
    mail_id = location.split("-", 1)[1]
    qfile = tmp_path / "home" / "virusmails" / location
    assert qfile.is_file() and sink.messages == []
    done = our_client("release", location, sock=sock)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rb"250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:\d+\): "
                        rb"250 2\.0\.0 Ok: queued as \S+\n", done.stderr), done.stderr
    (msg,) = to(sink, BOB)
    assert msg.mail == b"MAIL FROM:<alice@anchor.test> BODY=7BIT"   # the stored sender
    new_id = check_resent(msg.data, mail_id, f"<{BOB}>")
    log = wait_for(lambda: "Quarantined message release" in (t := daemon.logfile_text()) and t,
                   10, "the release log line")
    assert f"(rel-{new_id}) Quarantined message release (miscategorized): {mail_id} " \
           f"<{ALICE}> -> <{BOB}>" in log
    assert qfile.is_file()                   # releasing never removes the quarantined copy


def test_release_to_alternate_recipients_and_stdin_mode(amavisd, sink, tmp_path):
    """Alternate recipients replace the blocked ones (7.2); ``-`` reads request lines,
    all on one connection; Resent-To is undisclosed for several recipients."""
    daemon, sock = start(amavisd, tmp_path)
    location = quarantine_banned(daemon)
    mail_id = location.split("-", 1)[1]
    lines = (f"# comment\n\n{location} {CAROL}\n"
             f"{location} {CAROL} dave@anchor.test\n").encode()
    done = our_client("release", "-", sock=sock, stdin=lines)
    assert done.returncode == 0, done.stderr
    assert len(done.stderr.splitlines()) == 3          # one setreply per recipient
    assert to(sink, BOB) == []
    first, second = to(sink, CAROL)
    check_resent(first.data, mail_id, f"<{CAROL}>")
    check_resent(second.data, mail_id, "undisclosed-recipients:;")
    assert second.rcpts == [b"RCPT TO:<carol@anchor.test>", b"RCPT TO:<dave@anchor.test>"]


def test_gz_quarantine_release(amavisd, sink, tmp_path):
    """A ``.gz`` copy (spam-style template) is read through zlib: quar_type Z."""
    daemon, sock = start(amavisd, tmp_path,
                         "banned_files_quarantine_method = 'local:spam-%m.gz'\n")
    location = quarantine_banned(daemon)
    assert location.endswith(".gz")
    mail_id = location.split("-", 1)[1][:-3]
    done = our_client("release", location, sock=sock)
    assert done.returncode == 0, done.stderr
    (msg,) = to(sink, BOB)
    check_resent(msg.data, mail_id, f"<{BOB}>")


def test_mbox_quarantine_release(amavisd, sink, tmp_path):
    """A ``local:`` mailbox (the predefined ``archive-mbox``): the message named by
    its mail_id is picked out of the mbox, unquoted, and released."""
    daemon, sock = start(amavisd, tmp_path, "banned_quarantine_to_maps = ['archive-mbox']\n")
    assert quarantine_banned(daemon) == "archive.mbox"
    assert quarantine_banned(daemon, seen=1) == "archive.mbox"
    ids = re.findall(r"Blocked BANNED .*?, mail_id: (\S+?),", daemon.logfile_text())
    assert len(ids) == 2 and ids[0] != ids[1]
    # the name holds no mail_id, so the request names it (as a web front end would)
    raw = socket.socket(socket.AF_UNIX)
    raw.settimeout(30)
    raw.connect(str(sock))
    raw.sendall(f"request=release\r\nmail_id={ids[1]}\r\nquar_type=F\r\n"
                "mail_file=archive.mbox\r\n\r\n".encode())
    reply = b""
    while not reply.endswith(b"\r\n\r\n"):
        chunk = raw.recv(4096)
        assert chunk, reply
        reply += chunk
    raw.close()
    assert reply.startswith(b"setreply=250 2.0.0"), reply
    (msg,) = wait_for(lambda: to(sink, BOB) or None, 15, "the released message")
    check_resent(msg.data, ids[1], f"<{BOB}>")


def test_body_digest_names_the_quarantine_file(amavisd, sink, tmp_path):
    """``%b`` in a quarantine file name is the MD5 of the stored body (pipeline.md 5)."""
    daemon, sock = start(amavisd, tmp_path,
                         "banned_files_quarantine_method = 'local:banned-%m-%b'\n")
    location = quarantine_banned(daemon)
    stored_body = ORIGINAL_BODY.replace(b"\r\n", b"\n")
    assert location.endswith("-" + hashlib.md5(stored_body).hexdigest()), location


# ------------------------------------------------------------------ Debian's Perl client


@pytest.mark.skipif(not PERL_RELEASE.exists() or not shutil.which("perl"),
                    reason="Debian's amavisd-release (amavisd-new package) is not installed")
def test_debian_perl_client(amavisd, sink, tmp_path):
    """Debian's amavisd-release (socket path edited into a copy) releases to the
    blocked recipient and to an alternate one; its stderr shows our setreply."""
    daemon, sock = start(amavisd, tmp_path)
    location = quarantine_banned(daemon)
    mail_id = location.split("-", 1)[1]
    done = perl_client(tmp_path, sock, location)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rb"250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:\d+\): "
                        rb"250 2\.0\.0 Ok: queued as \S+\n", done.stderr), done.stderr
    (msg,) = to(sink, BOB)
    check_resent(msg.data, mail_id, f"<{BOB}>")
    done = perl_client(tmp_path, sock, location, CAROL)
    assert done.returncode == 0, done.stderr
    (msg,) = to(sink, CAROL)
    check_resent(msg.data, mail_id, f"<{CAROL}>")
    # Perl exits 0 on a failure; the text is ours (no " at ... line N.")
    done = perl_client(tmp_path, sock, "x/banned-AAAAAAAAAAAA")
    assert done.returncode == 0
    assert done.stderr.decode() == (f"450 4.5.0 Failure: File {tmp_path}/home/virusmails/"
                                    "x/banned-AAAAAAAAAAAA does not exist\n")


# ------------------------------------------------------------------ refusals


def test_wrong_secret_id_is_refused_and_nothing_sent(amavisd, sink, tmp_path):
    """auth_required_release=1: no or a wrong secret_id -> the failure triple (4.5)."""
    daemon, sock = start(amavisd, tmp_path, auth=1)
    location = quarantine_banned(daemon)
    mail_id = location.split("-", 1)[1]
    done = our_client("release", location, "AAAAAAAAAAAA", sock=sock)
    assert done.returncode == 75
    assert done.stderr.decode() == (f"450 4.5.0 Failure: Secret_id AAAAAAAAAAAA does not "
                                    f"match mail_id {mail_id}\n")
    done = our_client("release", location, sock=sock)
    assert done.returncode == 75
    assert done.stderr.decode() == (f"450 4.5.0 Failure: Secret_id  does not match mail_id "
                                    f"{mail_id}\n")
    time.sleep(0.3)
    assert sink.messages == []
    assert "Quarantined message release" not in daemon.logfile_text()


def test_bad_input_touches_nothing(amavisd, sink, tmp_path):
    """Unsafe mail_file, a bad mail_id, a missing file, a BSMTP file: refused, with
    the exact failure triple, and the connection stays usable."""
    import socket

    daemon, sock = start(amavisd, tmp_path)
    qdir = tmp_path / "home" / "virusmails"
    location = quarantine_banned(daemon)
    mail_id = location.split("-", 1)[1]
    bsmtp = qdir / "bsmtp-AAAAAAAAAAAA"
    bsmtp.write_bytes(b"EHLO localhost\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\nx\n.\nQUIT\n")
    os.chmod(bsmtp, 0o644)
    raw = socket.socket(socket.AF_UNIX)
    raw.settimeout(30)
    raw.connect(str(sock))

    def ask(text: str) -> bytes:
        raw.sendall(text.encode() + b"\r\n")
        buf = b""
        while not buf.endswith(b"\r\n\r\n"):
            chunk = raw.recv(65536)
            assert chunk, buf
            buf += chunk
        return buf

    def failure(text: str) -> bytes:
        enc = "".join(c if 0x21 <= ord(c) <= 0x7e and c != "%" else f"%{ord(c):02x}"
                      for c in text)
        return (f"setreply=450 4.5.0 Failure:%20{enc}\r\nreturn_value=tempfail\r\n"
                "exit_code=75\r\n\r\n").encode()

    assert ask(f"request=release\r\nmail_id={mail_id}\r\nmail_file=../../etc/passwd\r\n") \
        == failure("Suspicious quarantine file name '../../etc/passwd'")
    assert ask(f"request=release\r\nmail_id={mail_id}\r\nmail_file=/etc/passwd\r\n") \
        == failure("Suspicious quarantine file name '/etc/passwd'")
    assert ask("request=release\r\nmail_id=bad/id\r\n") == failure("Invalid mail_id 'bad/id'")
    assert ask("request=requeue\r\nmail_id=AAAAAAAAAAAA\r\nquar_type=F\r\n") \
        == failure(f"File {qdir}/A/AAAAAAAAAAAA does not exist")
    assert ask("request=release\r\nmail_id=AAAAAAAAAAAA\r\nmail_file=bsmtp-AAAAAAAAAAAA\r\n") \
        == failure("Releasing messages from a BSMTP quarantine is not supported")
    # another message's file under this mail_id: X-Quarantine-ID says no
    assert ask(f"request=release\r\nmail_id=BBBBBBBBBBBB\r\nmail_file={location}\r\n") \
        == failure("Stored X-Quarantine-ID does not match mail_id BBBBBBBBBBBB")
    raw.close()
    time.sleep(0.3)
    assert sink.messages == []


def test_no_recipients_nothing_to_do(amavisd, sink, tmp_path):
    """A stored copy with an empty X-Envelope-To-Blocked and no alternates (4.5)."""
    import socket

    daemon, sock = start(amavisd, tmp_path)
    qdir = tmp_path / "home" / "virusmails"
    copy = qdir / "kept-CCCCCCCCCCCC"
    copy.write_bytes(b"X-Envelope-From: <a@anchor.test>\nX-Envelope-To: <b@anchor.test>\n"
                     b"X-Envelope-To-Blocked:\nX-Quarantine-ID: <CCCCCCCCCCCC>\n"
                     b"Subject: kept\n\nbody\n")
    os.chmod(copy, 0o644)
    raw = socket.socket(socket.AF_UNIX)
    raw.settimeout(30)
    raw.connect(str(sock))
    raw.sendall(b"request=release\r\nmail_id=CCCCCCCCCCCC\r\nmail_file=kept-CCCCCCCCCCCC\r\n"
                b"\r\n")
    buf = b""
    while not buf.endswith(b"\r\n\r\n"):
        chunk = raw.recv(65536)
        assert chunk, buf
        buf += chunk
    raw.close()
    assert buf == b"setreply=250 2.5.0 No%20recipients,%20nothing%20to%20do\r\n\r\n"
    assert sink.messages == []


# ------------------------------------------------------------------ requeue and report


def test_requeue_goes_to_requeue_method(amavisd, sink, tmp_path):
    """requeue -> ``$requeue_method`` (a second sink), not the release/notify method."""
    with Sink() as mta:
        daemon, sock = start(amavisd, tmp_path,
                             f"requeue_method = 'smtp:[127.0.0.1]:{mta.port}'\n")
        location = quarantine_banned(daemon)
        mail_id = location.split("-", 1)[1]
        done = our_client("requeue", location, sock=sock)
        assert done.returncode == 0, done.stderr
        assert f"smtp:[127.0.0.1]:{mta.port}" in done.stderr.decode()
        (msg,) = to(mta, BOB)
        check_resent(msg.data, mail_id, f"<{BOB}>")
        assert sink.messages == []
        assert "Quarantined message requeue (miscategorized)" in daemon.logfile_text()


def test_report_is_an_arf_feedback_report(amavisd, sink, tmp_path):
    """report -> ``$report_format`` arf: RFC 5965 multipart/report around the message."""
    daemon, sock = start(amavisd, tmp_path)
    location = quarantine_banned(daemon)
    mail_id = location.split("-", 1)[1]
    done = our_client("report", location, "abuse@anchor.test", sock=sock)
    assert done.returncode == 0, done.stderr
    (msg,) = to(sink, "abuse@anchor.test")
    assert msg.mail.startswith(b"MAIL FROM:<>")
    text = msg.data.decode()
    head = text.split("\r\n\r\n", 1)[0]
    assert "Content-Type: multipart/report; report-type=feedback-report;" in head
    assert "Subject: Fw: evil\r\n" in head
    assert "\r\nContent-Type: message/feedback-report\r\n" in text
    assert "\r\nFeedback-Type: abuse\r\n" in text
    assert f"\r\nOriginal-Mail-From: <{ALICE}>\r\nOriginal-Rcpt-To: <{BOB}>\r\n" in text
    assert "\r\nContent-Type: message/rfc822\r\n" in text
    assert f"held in quarantine as {mail_id}" in text
    assert "X-Amavis-Alert: BANNED" in text        # kept for a report (22.4)
    assert BODY_LINE.decode() in text


# ------------------------------------------------------------------ SQL quarantine (Q)


@pytest.mark.skipif(not PERL_RELEASE.exists() or not shutil.which("perl"),
                    reason="Debian's amavisd-release (amavisd-new package) is not installed")
def test_sql_quarantine_release_by_both_clients(amavisd, sink, tmp_path, pg_schema):
    """``sql:`` quarantine (22.3): the copy is read back from table ``quarantine``
    (quar_type Q is the default when $spam_quarantine_method is sql:); with
    auth_required_release=1 the secret_id from ``msgs`` is required and accepted."""
    daemon, sock = start(amavisd, tmp_path, auth=1, extra=(
        f"storage_sql_dsn = [{pg_schema.dsn!r}]\n"
        "banned_files_quarantine_method = 'sql:'\nspam_quarantine_method = 'sql:'\n"))
    location = quarantine_banned(daemon)
    mail_id = location
    ((secret_id, quar_type, quar_loc),) = wait_for(lambda: pg_schema.rows(
        "SELECT secret_id, quar_type, quar_loc FROM msgs WHERE mail_id=%s AND content IS NOT "
        "NULL", [mail_id.encode()]), 15, "the msgs row")
    assert (quar_type, quar_loc) == ("Q", mail_id)
    secret_id = bytes(secret_id).decode()
    assert pg_schema.rows("SELECT count(*) FROM quarantine WHERE mail_id=%s",
                          [mail_id.encode()])[0][0] >= 1
    assert not (tmp_path / "home" / "virusmails" / mail_id[0] / mail_id).exists()
    done = our_client("release", mail_id, "AAAAAAAAAAAA", sock=sock)
    assert (done.returncode, done.stderr.decode()) == (
        75, f"450 4.5.0 Failure: Secret_id AAAAAAAAAAAA does not match mail_id {mail_id}\n")
    done = our_client("release", mail_id, secret_id, sock=sock)
    assert done.returncode == 0, done.stderr
    (msg,) = to(sink, BOB)
    check_resent(msg.data, mail_id, f"<{BOB}>")
    done = perl_client(tmp_path, sock, f"{mail_id}[0]", secret_id, CAROL)
    assert done.returncode == 0 and done.stderr.startswith(b"250 2.0.0 from MTA("), done.stderr
    (msg,) = to(sink, CAROL)
    check_resent(msg.data, mail_id, f"<{CAROL}>")
