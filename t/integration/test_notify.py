# tests: amavisd (daemon process): admin, recipient and sender notifications end to end
"""The running daemon sends the notices of spec/pipeline.md 18-19 to the sink.

* The postmaster notifications the Perl amavisd sent for three golden cases
  (t/data/golden/clamd: EICAR and clam.zip through clamd, a banned .exe in a zip,
  the last one without clamd) are rebuilt
  by our daemon from the same input and compared field by field and line by line,
  after masking what changes on every run (ids, dates, MIME boundaries).  The
  anchor's Perl daemon used amavis's built-in admin template (its config does not
  call read_l10n_templates); the test hands our daemon that same text, read from
  the installed Amavis.pm, as ``$notify_virus_admin_templ``.
* A sender notification (the DSN of a bounced banned message) worded by Debian's
  en_US templates; a recipient notification (``$warnbannedrecip``) with our own.
* A notice the next hop refuses with 4xx tempfails the message (the MTA keeps it);
  a 5xx is logged and the message goes on.
"""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

import pytest

from amavisd.stats import DEFAULT_FILENAME, StatsSegment
from t.helpers.clamd import ClamdServer, clamd_available
from t.integration.conftest import Client, send_message, wait_for
from t.integration.test_golden import PROFILE_PASS, replay, sections
from t.integration.test_virus import ENTRY

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "clamd"
AMAVIS_PM = Path("/usr/share/perl5/Amavis.pm")
EN_US = Path("/etc/amavis/en_US")
SENDER, BOB, POSTMASTER = "alice@anchor.test", "bob@anchor.test", "postmaster@anchor.test"
#: Debian's 20-debian_defaults: $virus_admin = "postmaster\@$mydomain" (anchor base conf)
VIRUS_ADMIN = "virus_admin = 'postmaster@anchor.test'\n"


def need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is not installed (amavisd-new); CI installs it")


def builtin_admin_template(tmp_path: Path) -> Path:
    """amavis's built-in admin template (5th __DATA__ section of Amavis.pm), as a file."""
    need(AMAVIS_PM)
    data = AMAVIS_PM.read_text(encoding="utf-8").split("\n__DATA__\n", 1)[1]
    path = tmp_path / "builtin-virus-admin.txt"
    path.write_text(data.split("__DATA__\n")[5], encoding="utf-8")
    path.chmod(0o644)
    return path


def golden_case(case: str) -> tuple[dict[str, str], bytes]:
    golden = sections((GOLDEN / f"{case}.txt").read_text(errors="surrogateescape"))
    data = golden["INPUT MESSAGE"].rstrip("\n").encode(errors="surrogateescape") \
        .replace(b"\n", b"\r\n") + b"\r\n"
    return golden, data


def mask(text: str) -> str:
    """What changes on every run: boundaries, mail_ids, log ids, pids, dates."""
    text = re.sub(r"----------=_\d+-\d+-\d+", "----------=_BOUNDARY", text)
    text = re.sub(r"<VA[A-Za-z0-9_-]{12}@", "<VA-MAILID@", text)
    text = re.sub(r"\d+-\d\d/[A-Za-z0-9_-]{12}\b", "LOGID/MAILID", text)
    text = re.sub(r"quarantined as: \w/(\w+)-[A-Za-z0-9_-]{12}", r"quarantined as: X/\1-MAILID",
                  text)
    text = re.sub(r"id=\d+-\d\d\b", "id=LOGID", text)
    return re.sub(r"\w{3}, [ \d]\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}( \(\w+\))?", "DATE",
                  text)


def to(sink, address: str) -> list:
    return [m for m in sink.messages if f"<{address}>".encode() in b" ".join(m.rcpts)]


def assert_matches_golden(golden: dict[str, str], sink, daemon) -> None:
    """Our postmaster notice == the Perl daemon's, envelope, header section and body."""
    notices = wait_for(lambda: to(sink, POSTMASTER), 15, "the postmaster notification")
    assert len(notices) == 1
    got = notices[0]
    envelope = golden["envelope as seen by smtp-sink"]
    want_from = re.search(r"^X-Mail-Args: (<[^>]*>) ENVID=AM\.[\w-]{12}\.\d{8}T\d{6}Z"
                          r"@mx\.anchor\.test$", envelope, re.M)
    want_rcpt = re.search(r"^X-Rcpt-Args: (.*)$", envelope, re.M).group(1)
    assert want_from, envelope
    # ours adds BODY=7BIT where amavis sends no BODY for its notices (differences.md)
    assert re.fullmatch(rf"MAIL FROM:{re.escape(want_from.group(1))} BODY=7BIT "
                        r"ENVID=AM\.[\w-]{12}\.\d{8}T\d{6}Z@mx\.anchor\.test",
                        got.mail.decode()), got.mail
    assert got.rcpts == [f"RCPT TO:{want_rcpt}".encode()]
    head, body = got.data.decode().replace("\r\n", "\n").split("\n\n", 1)
    assert mask(head) == mask(golden["delivered header section"].strip("\n"))
    assert mask(body) == mask(golden["delivered body"].rstrip("\n") + "\n")
    log_line = next(x for x in daemon.logfile_text().splitlines() if " Blocked " in x)
    mail_id = re.search(r"mail_id: ([\w-]{12}),", log_line).group(1)
    assert f"Message-ID: <VA{mail_id}@mx.anchor.test>" in head   # the original's id


@pytest.fixture
def clamd_server(tmp_path):
    if not clamd_available():
        pytest.skip("clamd or clamav-testfiles missing")
    with ClamdServer(tmp_path) as server:
        yield server


@pytest.mark.parametrize("case", ["eicar", "clam-zip"])
def test_golden_virus_postmaster_notification(case, clamd_server, amavisd, sink, tmp_path):
    """EICAR (and clam.exe in a zip) through the real clamd: the virus notice to
    $virus_admin (Debian's postmaster@$mydomain) matches the Perl daemon's (golden
    clamd/eicar, clamd/clam-zip)."""
    golden, data = golden_case(case)
    template = builtin_admin_template(tmp_path)
    daemon = amavisd(PROFILE_PASS + ENTRY.format(query="CONTSCAN {}\n",
                                                 spec=clamd_server.socket_path)
                     + VIRUS_ADMIN + f"notify_virus_admin_templ = read_text({str(template)!r})\n")
    replay(Client(daemon.port), golden, data)
    assert_matches_golden(golden, sink, daemon)
    assert to(sink, BOB) == []


def test_golden_banned_postmaster_notification(amavisd, sink, tmp_path):
    """A banned .exe in a zip, no virus scanner: the banned notice goes to
    @banned_admin_maps, which falls back to $virus_admin (golden clamd/banned-exe-in-zip)."""
    golden, data = golden_case("banned-exe-in-zip")
    template = builtin_admin_template(tmp_path)
    daemon = amavisd(PROFILE_PASS + VIRUS_ADMIN
                     + f"notify_virus_admin_templ = read_text({str(template)!r})\n")
    replay(Client(daemon.port), golden, data)
    assert_matches_golden(golden, sink, daemon)


def test_default_admin_template_and_no_admin_no_notice(amavisd, sink, tmp_path):
    """Without $notify_virus_admin_templ our own text is used; without any admin
    (upstream default) no notice is sent at all."""
    _golden, data = golden_case("banned-exe-in-zip")
    daemon = amavisd(PROFILE_PASS)
    client = Client(daemon.port)
    client.reply()
    assert send_message(client, SENDER, [BOB], data)[0].startswith("250 2.7.0 Ok, discarded")
    wait_for(lambda: " Blocked BANNED " in daemon.logfile_text(), 15, "the main log line")
    assert sink.messages == []
    daemon = amavisd(PROFILE_PASS + VIRUS_ADMIN)
    client = Client(daemon.port)
    client.reply()
    send_message(client, SENDER, [BOB], data)
    (notice,) = wait_for(lambda: to(sink, POSTMASTER), 15, "the notification")
    m = email.message_from_bytes(notice.data.replace(b"\r\n", b"\n"),
                                  policy=email.policy.compat32)
    assert " ".join(m["Subject"].split()) == (
        "Banned contents (.asc,invoice-2026-11.exe) - sent by [127.0.0.1] <alice@anchor.test>")
    text, headers = m.get_payload()
    assert "Category:  Banned\n" in text.get_payload()
    assert headers.get_content_type() == "text/rfc822-headers"


def test_sender_notification_is_a_dsn_worded_by_debian_template(amavisd, sink, tmp_path):
    """final_banned_destiny D_BOUNCE: the DSN's text comes from Debian's
    template-virus-sender.txt (read_l10n_templates), From/To/Date set by us."""
    need(EN_US)
    _golden, data = golden_case("banned-exe-in-zip")
    daemon = amavisd(PROFILE_PASS + "final_banned_destiny = D_BOUNCE\n"
                     "read_l10n_templates('en_US', '/etc/amavis')\n")
    client = Client(daemon.port)
    client.reply()
    reply = send_message(client, SENDER, [BOB], data)
    assert re.fullmatch(r"250 2\.5\.0 Ok, id=\d+-\d\d, BOUNCE", reply[0]), reply
    (dsn,) = wait_for(lambda: [m for m in sink.messages if m.mail.startswith(b"MAIL FROM:<>")],
                      15, "the DSN")
    assert dsn.rcpts[0].startswith(f"RCPT TO:<{SENDER}>".encode())
    m = email.message_from_bytes(dsn.data.replace(b"\r\n", b"\n"), policy=email.policy.compat32)
    assert m.get_content_type() == "multipart/report"
    assert m["Subject"] == "BANNED contents from you (.asc,invoice-2026-11.exe)"
    assert m["In-Reply-To"] == "<golden-banned-exe-in-zip@anchor.test>"
    assert m["From"] == '"Content-filter at mx.anchor.test" <postmaster@mx.anchor.test>'
    assert m["To"] == f"<{SENDER}>"
    mail_id = re.search(r"mail_id: ([\w-]{12}),", daemon.logfile_text()).group(1)
    assert m["Message-ID"] == f"<VS{mail_id}@mx.anchor.test>"
    text = m.get_payload()[0].get_payload()
    assert text.startswith("BANNED CONTENTS ALERT\n")
    assert "banned name: .asc,invoice-2026-11.exe" in text
    assert re.search(rf"Our internal reference code for your message is \d+-\d\d/{mail_id}\n",
                     text)


def test_recipient_notification_warnbannedrecip(amavisd, sink, tmp_path):
    """$warnbannedrecip: the local recipient of a blocked banned message is told, in
    one text part; a recipient outside local_domains_maps is not ($warn_offsite off)."""
    _golden, data = golden_case("banned-exe-in-zip")
    daemon = amavisd(PROFILE_PASS + "warnbannedrecip = 1\n")
    client = Client(daemon.port)
    client.reply()
    send_message(client, SENDER, [BOB, "dave@elsewhere.test"], data)
    (notice,) = wait_for(lambda: to(sink, BOB), 15, "the recipient notification")
    assert re.fullmatch(rb"MAIL FROM:<postmaster@mx\.anchor\.test> BODY=7BIT "
                        rb"ENVID=AM\.[\w-]{12}\.\d{8}T\d{6}Z@mx\.anchor\.test", notice.mail)
    m = email.message_from_bytes(notice.data.replace(b"\r\n", b"\n"),
                                  policy=email.policy.compat32)
    assert not m.is_multipart()
    assert m.get_content_type() == "text/plain"
    assert " ".join(m["Subject"].split()) == \
        "Banned contents (.asc,invoice-2026-11.exe) in mail to you from <alice@anchor.test>"
    assert m["To"] == "Bob Example <bob@anchor.test>"
    assert m["From"] == '"Content-filter at mx.anchor.test" <postmaster@mx.anchor.test>'
    assert "banned part: .asc,invoice-2026-11.exe" in m.get_payload()
    wait_for(lambda: " Blocked BANNED " in daemon.logfile_text(), 15, "the main log line")
    assert to(sink, "dave@elsewhere.test") == []
    assert len(sink.messages) == 1
    # monitoring.md 1.3: a notice amavis originates counts as Submit<Notif>
    seg = StatsSegment.open_readonly(str(tmp_path / "home" / "db" / DEFAULT_FILENAME))
    try:
        counters = wait_for(lambda: (c := seg.snapshot().counters)["InMsgs"] == 1 and c, 15,
                            "the counter flush")
    finally:
        seg.close()
    assert counters["OutMsgsSubmitNotif"] == 1
    assert counters["OutMsgsSizeSubmitNotif"] == len(notice.data)    # RFC 1870: CRLF
    assert counters["OutMsgsProtoSMTPSubmit"] == 1
    assert counters["OutMsgsSubmitDsn"] == 0


def test_notification_4xx_tempfails_5xx_is_logged(amavisd, sink, tmp_path):
    """Amavis.pm: a 4xx on an admin notice dies in quar+notif (451: the MTA keeps the
    mail and retries), a 5xx is logged 'FAILED to notify admin' and the mail goes on."""
    _golden, data = golden_case("banned-exe-in-zip")
    daemon = amavisd(PROFILE_PASS + "virus_admin = 'tmp-admin@anchor.test'\n")
    client = Client(daemon.port)
    client.reply()
    reply = send_message(client, SENDER, [BOB], data)
    assert re.fullmatch(r"451 4\.5\.0 Error in processing, id=\d+-\d\d, quar\+notif FAILED: "
                        r"temporarily unable to notify admin: 450 4\.2\.0 .*", reply[0]), reply
    daemon = amavisd(PROFILE_PASS + "virus_admin = 'rej-admin@anchor.test'\n")
    client = Client(daemon.port)
    client.reply()
    reply = send_message(client, SENDER, [BOB], data)
    assert reply[0].startswith("250 2.7.0 Ok, discarded, id="), reply
    log = wait_for(lambda: " Blocked BANNED " in (t := daemon.logfile_text()) and t, 15,
                   "the main log line")
    assert re.search(r"\(!\)FAILED to notify admin: 550 5\.1\.1 ", log), log
    assert sink.messages == []
